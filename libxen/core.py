"""The client end of the hypercall transport (libxencall's job), for trio.

``XenCall`` multiplexes requests from many tasks over one connection (one
reader task matches replies by request id) and returns the file
descriptors that came with a reply. dom0 processes open the privileged
socket; a domU process wraps the descriptor the toolstack gave it
(:meth:`XenCall.from_fd`).

The blocking variant for command-line tools (:class:`SyncXenCall`) lives
in :mod:`libxen.sync`, free of trio; it is re-exported here.
"""

from __future__ import annotations

import itertools
import os
import socket
from contextlib import asynccontextmanager
from typing import Any

import trio

from libxen import rpc
from libxen.paths import privcmd_path
from libxen.sync import SyncXenCall, XenError, check, encode

__all__ = ["XenCall", "SyncXenCall", "XenError", "privcmd_path"]


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
        rpc.size_buffers(sock)
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
        packet = encode(rpc.Request(req_id, hypercall, subop, args))
        waiter = _Waiter()
        self._waiting[req_id] = waiter
        if not self._send_now(packet):
            async with self._send_lock:
                await self.sock.send(packet)
        await waiter.event.wait()
        if waiter.reply is None:
            raise ConnectionResetError(f"hypercall connection broken: {self._broken}")
        return waiter.reply

    def _send_now(self, packet: bytes) -> bool:
        """Send without a scheduler pass when the socket has room.

        A SOCK_SEQPACKET packet goes whole or not at all, so no lock is
        needed unless a task is already waiting to send (order is kept).
        """
        if self._send_lock.locked():
            return False
        try:
            os.write(self.sock.fileno(), packet)
        except BlockingIOError:
            return False
        return True

    def post(self, hypercall: int, subop: int, **args: Any) -> None:
        """Fire-and-forget a hypercall whose result nobody needs (a notify).

        Like Linux ignoring EVTCHNOP_send's return value: the reply is
        dropped by the reader. Falls back to a background-free blocking
        attempt only when the socket is full (then the call is lost, as a
        notification to a dead port would be).
        """
        if self._broken is not None:
            raise ConnectionResetError(f"hypercall connection broken: {self._broken}")
        req_id = next(self._ids) & 0xFFFFFFFF
        if not self._send_now(encode(rpc.Request(req_id, hypercall, subop, args))):
            raise BlockingIOError("hypercall socket full")

    async def call(self, hypercall: int, subop: int, **args: Any) -> tuple[int, dict]:
        """Returns ``(rc, result)``; raises :class:`XenError` when rc < 0."""
        reply = await self.call_raw(hypercall, subop, **args)
        return check(reply, hypercall, subop)
