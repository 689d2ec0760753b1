"""Start real pvxen daemons as processes for tests.

Each daemon runs in its own process with a private runtime directory,
reports readiness on a private NOTIFY_SOCKET (exactly as under systemd),
and is killed on teardown. Its stderr goes to a log file that is printed
when the test fails (see ``tests/conftest.py``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def wait_ready(sock: socket.socket, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"daemon exited with {proc.returncode} before READY=1:\n{log.read_text()}"
            )
        sock.settimeout(0.05)
        try:
            data = sock.recv(4096)
        except (socket.timeout, BlockingIOError):
            continue
        if b"READY=1" in data.split(b"\n"):
            return
    raise TimeoutError(f"daemon not ready after {timeout}s:\n{log.read_text()}")


@dataclass
class DaemonProcess:
    """One daemon process: ``argv`` after ``python -m``."""

    name: str
    argv: list[str]
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, timeout: float = 20.0) -> "DaemonProcess":
        notify = self.workdir / f"{self.name}.notify{self.starts}"
        self.starts += 1
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(str(notify))
        env = dict(os.environ)
        env.update(self.env)
        env["NOTIFY_SOCKET"] = str(notify)
        env.setdefault("PYTHONPATH", str(REPO))
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *self.argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=REPO,
            )
            wait_ready(ns, self.proc, timeout, self.log_path)
        except BaseException:
            self.kill()
            raise
        finally:
            log.close()
            ns.close()
            notify.unlink(missing_ok=True)
        return self

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Xenstored(DaemonProcess):
    """xenstored on ``<workdir>/run/xenstored/socket`` with state in the rundir."""

    def __init__(self, workdir: Path, extra: list[str] | None = None) -> None:
        self.rundir = workdir / "run"
        self.rundir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            name="xenstored",
            argv=["xenstored", "--rundir", str(self.rundir), *(extra or [])],
            workdir=workdir,
        )

    @property
    def socket(self) -> Path:
        return self.rundir / "xenstored" / "socket"

    @property
    def client_env(self) -> dict[str, str]:
        """Environment for any libxenstore client, ours or Debian's."""
        env = dict(os.environ)
        env["XENSTORED_PATH"] = str(self.socket)
        return env


class Hypervisord(DaemonProcess):
    """hypervisord with its privileged socket at ``<workdir>/run/hypervisord/privcmd``."""

    def __init__(self, workdir: Path, extra: list[str] | None = None) -> None:
        self.rundir = workdir / "run"
        self.rundir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            name="hypervisord",
            argv=["hypervisord", "--rundir", str(self.rundir), *(extra or [])],
            workdir=workdir,
        )

    @property
    def privcmd(self) -> Path:
        return self.rundir / "hypervisord" / "privcmd"


class Backendd(DaemonProcess):
    """backendd in ``<workdir>/run`` (beside xenstored and hypervisord there)."""

    def __init__(self, workdir: Path, extra: list[str] | None = None) -> None:
        self.rundir = workdir / "run"
        self.rundir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            name="backendd",
            argv=["backendd", "--rundir", str(self.rundir), *(extra or [])],
            workdir=workdir,
        )

    @property
    def socket(self) -> Path:
        return self.rundir / "backendd" / "socket"

    def status(self) -> list[list[str]]:
        """The devices backendd runs: ``[type, domid, devid, state]`` each."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.socket))
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        return [line.split() for line in data.decode().splitlines()]
