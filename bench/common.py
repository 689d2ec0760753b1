"""What every benchmark shares: processes, workers, statistics, output.

Stdlib only, no trio: this runs in the controller process, which only
starts processes, hands out work and prints results. The measured work
runs in other processes (servers started as :class:`Service`, clients in
:class:`Worker` processes), so the controller never competes for a core
while a measurement runs; it sleeps in a pipe read.

Rules every benchmark follows: the project and its yardstick run in the same process tree at the
same time, in interleaved rounds (A B A B ...); each measurement is bounded
in count and in time; figures are medians over rounds and comparisons are
ratios of medians; everything lives in a private temporary directory and
talks over Unix sockets; every process is killed at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

#: A benchmark's servers are ready within this many seconds, or it fails.
READY_TIMEOUT = 30.0


def note(msg: str) -> None:
    """Progress for the human; stdout is kept for the table and the JSON line."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """prctl(PR_SET_PDEATHSIG, SIGKILL): no server outlives a killed controller."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def terminate_on_sigterm() -> None:
    """SIGTERM unwinds the controller like ^C, so its cleanup kills every child."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


@contextlib.contextmanager
def private_tmpdir(parent: str | None = None, keep: bool = False) -> Iterator[Path]:
    """A fresh directory for sockets, state and logs; removed unless ``keep``."""
    path = Path(tempfile.mkdtemp(prefix="pvxen-bench-", dir=parent))
    try:
        yield path
    finally:
        if keep:
            note(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def filesystem_of(path: Path) -> str:
    """The mount type holding ``path`` (fsync cost depends on it)."""
    best, fstype = "", "?"
    with contextlib.suppress(OSError), open("/proc/mounts") as f:
        real = str(path.resolve())
        for line in f:
            parts = line.split()
            if len(parts) > 2 and real.startswith(parts[1]) and len(parts[1]) > len(best):
                best, fstype = parts[1], parts[2]
    return fstype


# ---------------------------------------------------------------------------
# Servers: ``python -m <module> ...`` reporting READY=1 on NOTIFY_SOCKET.
# ---------------------------------------------------------------------------

@dataclass
class Service:
    """One server process, started as under systemd (``Type=notify``)."""

    name: str
    argv: list[str]  # after ``python``: ["-m", "xenstored", ...]
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> "Service":
        notify = self.workdir / f"{self.name}.notify"
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(str(notify))
        try:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, *self.argv], stdin=subprocess.DEVNULL,
                    stdout=log, stderr=log, cwd=REPO, preexec_fn=_die_with_parent,
                    env=child_env({**self.env, "NOTIFY_SOCKET": str(notify)}))
            self._wait_ready(ns)
        except BaseException:
            self.kill()
            raise
        finally:
            ns.close()
            notify.unlink(missing_ok=True)
        return self

    def _wait_ready(self, ns: socket.socket) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        ns.settimeout(0.05)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} "
                                   f"before READY=1:\n{self.log()}")
            with contextlib.suppress(socket.timeout):
                if b"READY=1" in ns.recv(4096).split(b"\n"):
                    return
        raise TimeoutError(f"{self.name} not ready after {READY_TIMEOUT}s:\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (lets a profiler write its file), then SIGKILL if needed."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-4000:]


# ---------------------------------------------------------------------------
# Client workers: one JSON command per line in, one JSON result per line out.
# ---------------------------------------------------------------------------

class Worker:
    """A client process running ``python -m <module> worker``."""

    def __init__(self, module: str, name: str, workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, "worker"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=log, cwd=REPO, env=child_env(),
                preexec_fn=_die_with_parent,
                text=True, bufsize=1)

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(5)
            raise RuntimeError(f"{self.name} died ({self.proc.returncode}):\n"
                               f"{self.log_path.read_text(errors='replace')[-4000:]}")
        out = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"{self.name}: {out['error']}")
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def worker_loop(handle) -> int:
    """A worker's main: ``handle(cmd) -> dict`` per line of stdin until EOF."""
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            out = handle(cmd)
        except Exception as e:  # report to the controller, which stops the run
            out = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    return 0


def split(total: int, parts: int) -> list[int]:
    """``total`` clients over at most ``parts`` workers, as evenly as possible."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# ---------------------------------------------------------------------------
# Statistics and output.
# ---------------------------------------------------------------------------

def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def quantile_sample(xs: list[float], points: int = 200) -> list[float]:
    """At most ``points`` evenly spaced order statistics of ``xs``."""
    xs = sorted(xs)
    if len(xs) <= points:
        return xs
    step = (len(xs) - 1) / (points - 1)
    return [xs[round(i * step)] for i in range(points)]


def rotate(items: Sequence[Any], k: int) -> list[Any]:
    """Round ``k``'s order of A/B targets, so no target is always first."""
    k %= len(items)
    return list(items[k:]) + list(items[:k])


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w)
                               for c, w in zip(r, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _numeric(cell: str) -> bool:
    return cell.rstrip("%").replace(".", "", 1).lstrip("-").isdigit() or cell == "-"


def fmt(x: Any) -> str:
    if isinstance(x, float):
        if x != x:
            return "-"
        return f"{x:.2f}" if abs(x) < 10 else f"{x:.0f}"
    return str(x)


def rounded(x: float, digits: int = 3) -> float | None:
    """A JSON-safe number (NaN becomes null)."""
    return None if x != x else round(x, digits)
