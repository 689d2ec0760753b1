"""Talking to the guest launcher (``launcher.py``), and starting it.

Kept apart from the launcher itself so that ``xl`` stays light: this module
imports msgpack and the RPC helpers, never trio or the guest runtime.

The launcher listens on ``<rundir>/xl/launcher.sock`` (SOCK_SEQPACKET, one
msgpack map per packet, descriptors as SCM_RIGHTS). :func:`connect` starts
it when nobody listens: ``python -m toolstack.launcher
--daemon``, which detaches (its own session, reparented away from the
caller) and holds ``launcher.lock`` so that only one runs per rundir.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import msgpack

from libxen import rpc
from toolstack.hcall import xl_dir

SOCKET_NAME = "launcher.sock"
PIDFILE_NAME = "launcher.pid"
LOCK_NAME = "launcher.lock"
START_TIMEOUT = 15.0


class LaunchError(Exception):
    """A launch request could not be carried out."""


def socket_path(rundir: str | os.PathLike | None) -> Path:
    return xl_dir(rundir) / SOCKET_NAME


def log_dir(rundir: str | os.PathLike | None) -> Path:
    return xl_dir(rundir) / "log"


class LauncherClient:
    """A connection to the launcher (blocking, one request at a time)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            self.sock.connect(str(path))
        except OSError:
            self.sock.close()
            raise

    def request(self, req: dict, fds: dict[str, int] | None = None) -> dict:
        """Send ``req`` (with ``fds``, sent by name); the reply, or LaunchError."""
        fds = fds or {}
        if fds:
            req = dict(req, fds=list(fds))
        self.sock.sendmsg([msgpack.packb(req, use_bin_type=True)],
                          rpc.fds_ancillary(list(fds.values())))
        data = self.sock.recv(rpc.MAX_PACKET)
        if not data:
            raise LaunchError("the launcher closed the connection")
        reply = msgpack.unpackb(data, raw=False)
        if not isinstance(reply, dict) or not reply.get("ok"):
            raise LaunchError(reply.get("error", "launch failed") if isinstance(reply, dict)
                              else "bad reply from the launcher")
        return reply

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "LauncherClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(rundir: str | os.PathLike | None, *, start: bool = True) -> LauncherClient:
    """Connect to the launcher, starting it as a detached daemon if needed."""
    path = socket_path(rundir)
    try:
        return LauncherClient(path)
    except (FileNotFoundError, ConnectionRefusedError):
        if not start:
            raise
    rc = spawn_daemon(rundir)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            return LauncherClient(path)
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline or rc != 0:
                raise LaunchError(f"the launcher did not start; see "
                                  f"{log_dir(rundir)}/launcher.log") from None
            time.sleep(0.01)


def spawn_daemon(rundir: str | os.PathLike | None) -> int:
    """Start the launcher; returns once it has detached (its first process's status)."""
    logs = log_dir(rundir)
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(xl_dir(rundir), 0o700)
    argv = [sys.executable, "-m", "toolstack.launcher", "--daemon"]
    if rundir:
        argv += ["--rundir", str(rundir)]
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(logs / "launcher.log", "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True, env=env, cwd="/")
    return proc.wait(START_TIMEOUT)  # the daemon forks; its first process exits at once
