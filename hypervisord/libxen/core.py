"""The client end of the hypercall transport (libxencall's job), for trio.

``XenCall`` multiplexes requests from many tasks over one connection (one
reader task matches replies by request id) and returns the file
descriptors that came with a reply. dom0 processes open the privileged
socket; a domU process wraps the descriptor the toolstack gave it
(:meth:`XenCall.from_fd`).

Also :class:`SyncXenCall`, a blocking variant for command-line tools,
which should not pay for an event loop.
"""

from __future__ import annotations

import itertools
import os
import socket
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from hypervisord import rpc
from hypervisord.libxen.daemon import default_runtime_dir
from hypervisord.public.errno import XenErrno


class XenError(OSError):
    """A hypercall returned ``-errno``."""

    def __init__(self, rc: int, what: str, detail: str | None = None) -> None:
        err = -rc
        try:
            name = XenErrno(err).name
        except ValueError:
            name = f"errno {err}"
        msg = f"{what}: {name}" + (f" ({detail})" if detail else "")
        super().__init__(err, msg)
        self.rc = rc
        self.name = name


def privcmd_path(rundir: str | os.PathLike | None = None) -> Path:
    """Where dom0 finds hypervisord: ``$PVXEN_RUNDIR/hypervisord/privcmd``."""
    base = Path(rundir) if rundir else default_runtime_dir()
    return base / "hypervisord" / "privcmd"


class _Waiter:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.reply: rpc.Reply | None = None


class XenCall:
    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Waiter] = {}
        self._broken: BaseException | None = None
        self._send_lock = trio.Lock()

    # -- opening -------------------------------------------------------------------
    @classmethod
    @asynccontextmanager
    async def open(cls, path: str | os.PathLike | None = None):
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            await sock.connect(str(path or privcmd_path()))
        except OSError:
            sock.close()
            raise
        async with cls._running(sock) as xc:
            yield xc

    @classmethod
    @asynccontextmanager
    async def from_fd(cls, fd: int):
        sock = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))
        async with cls._running(sock) as xc:
            yield xc

    @classmethod
    @asynccontextmanager
    async def _running(cls, sock):
        xc = cls(sock)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(xc._reader)
                try:
                    yield xc
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            sock.close()

    async def _reader(self) -> None:
        anc = rpc.ancillary_space()
        try:
            while True:
                data, ancdata, _, _ = await self.sock.recvmsg(rpc.MAX_PACKET, anc)
                if not data:
                    raise ConnectionResetError("hypervisord closed the connection")
                reply = rpc.decode_reply(data, rpc.fds_from_ancillary(ancdata))
                waiter = self._waiting.pop(reply.req_id, None)
                if waiter is None:
                    for fd in reply.fds:
                        os.close(fd)
                    continue
                waiter.reply = reply
                waiter.event.set()
        except (OSError, rpc.RpcError) as e:
            self._broken = e
            for w in self._waiting.values():
                w.event.set()
            self._waiting.clear()

    # -- calling -----------------------------------------------------------------------
    async def call_raw(self, hypercall: int, subop: int, **args: Any) -> rpc.Reply:
        if self._broken is not None:
            raise ConnectionResetError(f"hypercall connection broken: {self._broken}")
        req_id = next(self._ids) & 0xFFFFFFFF
        waiter = _Waiter()
        self._waiting[req_id] = waiter
        packet = rpc.encode_request(rpc.Request(req_id, hypercall, subop, args))
        async with self._send_lock:
            await self.sock.send(packet)
        await waiter.event.wait()
        if waiter.reply is None:
            raise ConnectionResetError(f"hypercall connection broken: {self._broken}")
        return waiter.reply

    async def call(self, hypercall: int, subop: int, **args: Any) -> tuple[int, dict]:
        """Returns ``(rc, result)``; raises :class:`XenError` when rc < 0."""
        reply = await self.call_raw(hypercall, subop, **args)
        return check(reply, hypercall, subop)


def check(reply: rpc.Reply, hypercall: int, subop: int) -> tuple[int, dict]:
    result = dict(reply.result or {})
    if reply.fds:
        result["fds"] = dict(zip(result.get("fds", []), reply.fds))
    if reply.rc < 0:
        for fd in reply.fds:
            os.close(fd)
        raise XenError(reply.rc, f"hypercall {hypercall}/{subop}", result.get("error"))
    return reply.rc, result


class SyncXenCall:
    """Blocking hypercalls for command-line tools (one request at a time)."""

    def __init__(self, path: str | os.PathLike | None = None, *, fd: int | None = None) -> None:
        if fd is not None:
            self.sock = socket.socket(fileno=fd)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.sock.connect(str(path or privcmd_path()))
        self._ids = itertools.count(1)

    def call(self, hypercall: int, subop: int, **args: Any) -> tuple[int, dict]:
        req_id = next(self._ids)
        self.sock.send(rpc.encode_request(rpc.Request(req_id, hypercall, subop, args)))
        while True:
            data, ancdata, _, _ = self.sock.recvmsg(rpc.MAX_PACKET, rpc.ancillary_space())
            if not data:
                raise ConnectionResetError("hypervisord closed the connection")
            reply = rpc.decode_reply(data, rpc.fds_from_ancillary(ancdata))
            if reply.req_id == req_id:
                return check(reply, hypercall, subop)
            for fd in reply.fds:
                os.close(fd)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "SyncXenCall":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
