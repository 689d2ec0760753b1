"""Blocking hypercalls and paths for the toolstack, without trio.

The same envelope as :class:`hypervisord.libxen.core.SyncXenCall`
(``hypervisord/rpc.py``), kept free of trio on purpose: ``xl`` is a
command-line tool, and importing trio costs ~120 ms of every run
(``reference/performance.md``), more than the whole command should take.
Works with the ``hypervisord.libxen.ctrl`` wrappers, which only need a
``call(hypercall, subop, **args)`` method.

Paths follow the project convention (``libxen/daemon.py``): the runtime
directory is ``$PVXEN_RUNDIR``, else ``/run/pvxen`` for root, else
``$XDG_RUNTIME_DIR/pvxen``; hypervisord listens on
``<rundir>/hypervisord/privcmd``, xenstored on ``<rundir>/xenstored/socket``,
and the toolstack keeps its own state under ``<rundir>/xl/``.
"""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path
from typing import Any

from hypervisord import rpc
from hypervisord.public.errno import XenErrno


class XenError(OSError):
    """A hypercall returned ``-errno``; ``rc`` is that negative number."""

    def __init__(self, rc: int, what: str, detail: str | None = None) -> None:
        try:
            name = XenErrno(-rc).name
        except ValueError:
            name = f"errno {-rc}"
        super().__init__(-rc, f"{what}: {name}" + (f" ({detail})" if detail else ""))
        self.rc = rc
        self.name = name


def default_runtime_dir() -> Path:
    env = os.environ.get("PVXEN_RUNDIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/pvxen")
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "pvxen" if xdg else Path(f"/tmp/pvxen-{os.geteuid()}")


def runtime_dir(rundir: str | os.PathLike | None = None) -> Path:
    return Path(rundir) if rundir else default_runtime_dir()


def privcmd_path(rundir: str | os.PathLike | None = None) -> Path:
    return runtime_dir(rundir) / "hypervisord" / "privcmd"


def xenstored_path(rundir: str | os.PathLike | None = None) -> str | None:
    """The xenstored socket for an explicit rundir; None: the client's own search."""
    return str(Path(rundir) / "xenstored" / "socket") if rundir else None


def xl_dir(rundir: str | os.PathLike | None = None) -> Path:
    return runtime_dir(rundir) / "xl"


class SyncHypercall:
    """One blocking privcmd connection (one request at a time)."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            self.sock.connect(str(path or privcmd_path()))
        except OSError:
            self.sock.close()
            raise
        self._ids = itertools.count(1)

    def call(self, hypercall: int, subop: int, **args: Any) -> tuple[int, dict]:
        """``(rc, result)``; fds that came with the reply are in ``result["fds"]``."""
        req_id = next(self._ids) & 0xFFFFFFFF
        self.sock.send(rpc.encode_request(rpc.Request(req_id, hypercall, subop, args)))
        while True:
            data, anc, _, _ = self.sock.recvmsg(rpc.MAX_PACKET, rpc.ancillary_space())
            if not data:
                raise ConnectionResetError("hypervisord closed the connection")
            reply = rpc.decode_reply(data, rpc.fds_from_ancillary(anc))
            if reply.req_id == req_id:
                return _check(reply, hypercall, subop)
            for fd in reply.fds:
                os.close(fd)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "SyncHypercall":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check(reply: rpc.Reply, hypercall: int, subop: int) -> tuple[int, dict]:
    result = dict(reply.result or {})
    if reply.fds:
        result["fds"] = dict(zip(result.get("fds", []), reply.fds))
    if reply.rc < 0:
        for fd in reply.fds:
            os.close(fd)
        raise XenError(reply.rc, f"hypercall {hypercall}/{subop}", result.get("error"))
    return reply.rc, result
