"""The building blocks of :mod:`libxen.xenstore.aio` that hold no connection.

Owns the store operations shared by a client and its transactions
(:class:`StoreOps`: each turns arguments into an ``xsd_sockmsg`` payload and a
reply into Python values), a transaction handle (:class:`XsTransaction`)
and the bounded event queue of one watch (:class:`WatchEvents`). The
connection, the reader task and the request multiplexing live in
:mod:`libxen.xenstore.aio`.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio

from hypervisord.public.io.xs_wire import XsdSockmsgType as T
from libxen.xenstore.wire import join_strings
from libxen.xenstore.sync import (
    DirectoryParts, XsConnectionLost, XsError, directory_part_error, nul_strings, to_bytes)

if TYPE_CHECKING:
    from libxen.xenstore.aio import XsClient

Pathish = str | bytes
ABORT_TIMEOUT = 2.0


def text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def shielded(seconds: float) -> trio.CancelScope:
    """A scope immune to outer cancellation but bounded by its own deadline."""
    scope = trio.move_on_after(seconds)
    scope.shield = True
    return scope


class StoreOps:
    """Store operations, shared by the client and its transactions."""

    async def _request(self, msg_type: int, payload: bytes) -> bytes:
        raise NotImplementedError

    async def read(self, path: Pathish) -> bytes:
        return await self._request(T.XS_READ, to_bytes(path) + b"\0")

    async def exists(self, path: Pathish) -> bool:
        try:
            await self.read(path)
        except XsError:
            return False
        return True

    async def write(self, path: Pathish, value: Pathish) -> None:
        await self._request(T.XS_WRITE, to_bytes(path) + b"\0" + to_bytes(value))

    async def mkdir(self, path: Pathish) -> None:
        await self._request(T.XS_MKDIR, to_bytes(path) + b"\0")

    async def rm(self, path: Pathish) -> None:
        await self._request(T.XS_RM, to_bytes(path) + b"\0")

    async def directory(self, path: Pathish) -> list[str]:
        """Children's names; a listing over 4 KiB comes in XS_DIRECTORY_PART chunks."""
        try:
            reply = await self._request(T.XS_DIRECTORY, to_bytes(path) + b"\0")
            return [text(c) for c in nul_strings(reply)]
        except XsError as exc:
            if exc.errno != errno.E2BIG:
                raise
        parts = DirectoryParts()
        while True:
            try:
                reply = await self._request(T.XS_DIRECTORY_PART, parts.request(path))
            except XsError as exc:
                raise directory_part_error(exc) from None
            if parts.feed(reply):
                return [text(c) for c in parts.children()]

    async def get_perms(self, path: Pathish) -> list[str]:
        """``["b0", "r5"]``: the owner (and default) first."""
        reply = await self._request(T.XS_GET_PERMS, to_bytes(path) + b"\0")
        return [text(p) for p in nul_strings(reply)]

    async def set_perms(self, path: Pathish, perms: Iterable[str]) -> None:
        await self._request(T.XS_SET_PERMS, to_bytes(path) + b"\0" + join_strings(list(perms)))


class WatchEvents:
    """The events of one watch: ``async for path, token in events``.

    Ends with :class:`XsConnectionLost` when the connection dies and the
    client does not reconnect.
    """

    def __init__(self, path: str, token: str, depth: int | None, queue_size: int) -> None:
        self.path, self.token, self.depth = path, token, depth
        self._send, self._recv = trio.open_memory_channel[tuple[str, str]](queue_size)
        self._overflow = False
        self._error: BaseException | None = None
        self.generation = -1  # the connection it is registered on

    @property
    def payload(self) -> bytes:
        extra = [] if self.depth is None else [str(self.depth)]
        return join_strings([self.path, self.token, *extra])

    def _deliver(self, path: str, token: str) -> None:
        try:
            self._send.send_nowait((path, token))
        except trio.WouldBlock:
            self._overflow = True
        except trio.ClosedResourceError:
            pass

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._send.close()

    def __aiter__(self) -> "WatchEvents":
        return self

    async def __anext__(self) -> tuple[str, str]:
        try:
            return self._recv.receive_nowait()
        except trio.WouldBlock:
            if self._overflow:  # stand-in for what was dropped
                self._overflow = False
                return self.path, self.token
            try:
                return await self._recv.receive()
            except trio.EndOfChannel:
                pass
        except trio.EndOfChannel:
            pass
        if self._error is not None:
            raise self._error
        raise StopAsyncIteration


class XsTransaction(StoreOps):
    """A transaction: its operations carry its ``tx_id``.

    ``async with xs.transaction() as t`` starts it, commits on a clean exit
    (raising ``XsError("EAGAIN")`` on a conflict) and aborts on an error.
    """

    def __init__(self, client: "XsClient") -> None:
        self._client = client
        self.tx_id = 0
        self.generation = -1
        self.finished = False

    async def start(self) -> "XsTransaction":
        reply, self.generation = await self._client._call(T.XS_TRANSACTION_START, b"\0")
        self.tx_id = int(reply.rstrip(b"\0"))
        return self

    async def _request(self, msg_type: int, payload: bytes) -> bytes:
        if self.finished or not self.tx_id:
            raise RuntimeError("transaction not active")
        reply, _ = await self._client._call(msg_type, payload, self.tx_id, self.generation)
        return reply

    async def commit(self) -> None:
        self.finished = True
        await self._client._call(T.XS_TRANSACTION_END, b"T\0", self.tx_id, self.generation)

    async def abort(self) -> None:
        self.finished = True
        await self._client._call(T.XS_TRANSACTION_END, b"F\0", self.tx_id, self.generation)

    async def __aenter__(self) -> "XsTransaction":
        return self if self.tx_id else await self.start()

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            await self.commit()
            return False
        if not self.finished and self.tx_id:
            with shielded(ABORT_TIMEOUT):
                try:
                    await self.abort()
                except (XsError, XsConnectionLost):
                    pass  # it dies with its connection anyway
        return False
