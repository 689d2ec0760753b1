"""Blocking hypercalls, without trio (libxencall for command-line tools).

``xl`` and friends should not pay ~120 ms for importing an event loop on
every run. Same envelope as the trio client (:mod:`libxen.rpc`);
works with the :mod:`libxen.ctrl` wrappers, which only need a
``call(hypercall, subop, **args)`` method.
"""

from __future__ import annotations

import itertools
import os
import socket
from typing import Any

from libxen import rpc
from libxen.paths import privcmd_path
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


def check(reply: rpc.Reply, hypercall: int, subop: int) -> tuple[int, dict]:
    """``(rc, result)`` of a reply, fds by name in ``result["fds"]``; raise on rc < 0."""
    result = dict(reply.result or {})
    if reply.fds:
        result["fds"] = dict(zip(result.get("fds", []), reply.fds))
    if reply.rc < 0:
        for fd in reply.fds:
            os.close(fd)
        raise XenError(reply.rc, f"hypercall {hypercall}/{subop}", result.get("error"))
    return reply.rc, result


def encode(req: rpc.Request) -> bytes:
    """The request's packet; an oversized one is E2BIG here, before it is sent."""
    try:
        return rpc.encode_request(req)
    except rpc.PacketTooLarge as e:
        raise XenError(-int(XenErrno.XEN_E2BIG), f"hypercall {req.hypercall}/{req.subop}",
                       str(e)) from None


class SyncXenCall:
    """One blocking hypercall connection: privcmd for dom0, or an inherited fd."""

    def __init__(self, path: str | os.PathLike | None = None, *, fd: int | None = None) -> None:
        if fd is not None:
            self.sock = socket.socket(fileno=fd)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            rpc.size_buffers(self.sock)
            try:
                self.sock.connect(str(path or privcmd_path()))
            except OSError:
                self.sock.close()
                raise
        self._ids = itertools.count(1)

    def call(self, hypercall: int, subop: int, **args: Any) -> tuple[int, dict]:
        req_id = next(self._ids) & 0xFFFFFFFF
        self.sock.send(encode(rpc.Request(req_id, hypercall, subop, args)))
        while True:
            data, anc, _, _ = self.sock.recvmsg(rpc.MAX_PACKET, rpc.ancillary_space())
            if not data:
                raise ConnectionResetError("hypervisord closed the connection")
            reply = rpc.decode_reply(data, rpc.fds_from_ancillary(anc))
            if reply.req_id == req_id:
                return check(reply, hypercall, subop)
            for fd in reply.fds:
                os.close(fd)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "SyncXenCall":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: the toolstack's older name for the same thing
SyncHypercall = SyncXenCall
