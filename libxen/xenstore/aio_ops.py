"""The building blocks of :mod:`libxen.xenstore.aio` that hold no connection.

Owns the store operations shared by a client and its transactions
(:class:`StoreOps`: each turns arguments into an ``xsd_sockmsg`` payload and a
reply into Python values), a transaction handle (:class:`XsTransaction`)
and the bounded event queue of one watch (:class:`WatchEvents`). The
connection, the reader task and the request multiplexing live in
:mod:`libxen.xenstore.aio`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from libxen.xenstore import protocol as ops
from libxen.xenstore.errors import XsConnectionLost, XsError
from libxen.xenstore.protocol import Op, Pathish, text

if TYPE_CHECKING:
    from libxen.xenstore.aio import XsClient

R = TypeVar("R")
ABORT_TIMEOUT = 2.0


def shielded(seconds: float) -> trio.CancelScope:
    """A scope immune to outer cancellation but bounded by its own deadline."""
    scope = trio.move_on_after(seconds)
    scope.shield = True
    return scope


class StoreOps:
    """Store operations, shared by the client and its transactions.

    Each is one of :mod:`libxen.xenstore.protocol`'s operations, run by
    :meth:`run` (the client's or the transaction's); names come back as str.
    """

    async def run(self, op: Op[R]) -> R:
        raise NotImplementedError

    async def batch(self, batch: Iterable[Op[Any]]) -> list[Any]:
        raise NotImplementedError

    async def _request(self, msg_type: int, payload: bytes) -> bytes:
        return await self.run(ops.raw(msg_type, payload))

    async def read(self, path: Pathish) -> bytes:
        return await self.run(ops.read(path))

    async def exists(self, path: Pathish) -> bool:
        return await self.run(ops.exists(path))

    async def write(self, path: Pathish, value: Pathish) -> None:
        await self.run(ops.write(path, value))

    async def mkdir(self, path: Pathish) -> None:
        await self.run(ops.mkdir(path))

    async def rm(self, path: Pathish) -> None:
        await self.run(ops.rm(path))

    async def directory(self, path: Pathish) -> list[str]:
        """Children's names; a listing over 4 KiB comes in XS_DIRECTORY_PART chunks."""
        return [text(c) for c in await self.run(ops.directory(path))]

    async def get_perms(self, path: Pathish) -> list[str]:
        """``["b0", "r5"]``: the owner (and default) first."""
        return [text(p) for p in await self.run(ops.get_perms(path))]

    async def set_perms(self, path: Pathish, perms: Iterable[str]) -> None:
        await self.run(ops.set_perms(path, list(perms)))


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

    def register(self) -> Op[None]:
        """The ``XS_WATCH`` that (re-)registers this watch."""
        return ops.watch(self.path, self.token, self.depth)

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
        self.tx_id, self.generation = await self._client._run(ops.transaction_start())
        return self

    def _check(self) -> None:
        if self.finished or not self.tx_id:
            raise RuntimeError("transaction not active")

    async def run(self, op: Op[R]) -> R:
        self._check()
        return await self._client.run(op, self.tx_id, self.generation)

    async def batch(self, batch: Iterable[Op[Any]]) -> list[Any]:
        self._check()
        return await self._client.batch(batch, self.tx_id, self.generation)

    async def commit(self) -> None:
        self.finished = True
        await self._client.run(ops.transaction_end(True), self.tx_id, self.generation)

    async def abort(self) -> None:
        self.finished = True
        await self._client.run(ops.transaction_end(False), self.tx_id, self.generation)

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
