"""Async (trio) XenStore client library for pvxen's daemons and tools.

Owns one multiplexed connection to xenstored::

    async with await XsClient.open() as xs:            # socket discovery as libxenstore
        await xs.write("/local/domain/0/name", "Domain-0")
        async with xs.watch("/local/domain/0/backend") as events:
            async for path, token in events:           # the initial event comes first
                ...
        await xs.run_transaction(update)               # redone on EAGAIN

* **Requests** are :mod:`libxen.xenstore.protocol`'s operations (the same
  ones the blocking face runs); they carry increasing ``req_id`` s, so any
  number of tasks may call at once, and :meth:`XsClient.batch` pipelines
  many. One reader task (in a nursery owned by the ``async with``) matches
  replies to callers and routes ``XS_WATCH_EVENT`` s to watches.
* **Errors**: an ``XS_ERROR`` reply raises :class:`XsError` (wire name and
  errno); a dead connection raises :class:`XsConnectionLost`.
* **Watches** are per connection (docs/misc/xenstore.txt): each
  :meth:`XsClient.watch` has a bounded queue. If its consumer falls behind,
  events are dropped and replaced by one event on the watched path itself
  once the queue has drained: XenStore allows spurious events, and a
  watcher must re-read state on any event anyway.
* **Reconnection** (``reconnect=True``): after the connection breaks (the
  daemon restarted), the client re-opens the socket with back-off and
  re-registers every watch; each then fires its initial event again, which
  tells the watcher to re-read what it may have missed. Requests in flight
  fail with :class:`XsConnectionLost`; a transaction begun on the old
  connection is gone, so its next operation raises ``EAGAIN``, which makes
  :meth:`XsClient.run_transaction` redo it on the new one.
  A client over a domain's ring (:meth:`XsClient.over_stream` with
  ``reopen``) does the same when the stream says it can be reopened: after
  xenstored restarted, the ring's reconnection (``frontends.xenbus``),
  then its watches again, as Linux's ``xs_resume`` does.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from libxen.xenstore import protocol as ops
from libxen.xenstore.aio_ops import Pathish, WatchEvents, XsTransaction, StoreOps, shielded, text
from libxen.xenstore.errors import XsConnectionLost, XsError
from libxen.xenstore.protocol import Batch, Op, Protocol, check_reply
from libxen.xenstore.sync import connect_socket
from libxen.xenstore.wire import Message

__all__ = ["XsClient", "XsConnectionLost", "XsError", "XsTransaction", "WatchEvents"]

log = logging.getLogger(__name__)
R = TypeVar("R")
#: ``reopen(old_stream)``: a new stream after a break, or None (final)
Reopen = Callable[[trio.abc.Stream], Awaitable["trio.abc.Stream | None"]]
SEND_TIMEOUT = 10.0  # a daemon that takes no 4 KiB message in this long is gone
UNWATCH_TIMEOUT = 2.0


def _covers(wpath: str, epath: str) -> bool:
    """Does a watch on ``wpath`` match an event on ``epath``? (xenstore.txt)"""
    return (epath == wpath or wpath == "/" or epath.startswith(wpath + "/")
            or (wpath.startswith("@") and epath.startswith(wpath)))


@dataclass(eq=False)
class _Conn:
    stream: trio.SocketStream
    generation: int
    send_lock: trio.Lock = field(default_factory=trio.Lock)
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    proto: Protocol = field(default_factory=Protocol)


@dataclass(eq=False)
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    reply: Message | None = None
    error: BaseException | None = None


async def _connect(path: str | None, generation: int) -> _Conn:
    sock = await trio.to_thread.run_sync(connect_socket, path)
    sock.setblocking(False)
    return _Conn(trio.SocketStream(trio.socket.from_stdlib_socket(sock)), generation)


class XsClient(StoreOps):
    """One connection to xenstored; see the module docstring."""

    def __init__(self, conn: _Conn, path: str | None, *, reconnect: bool,
                 watch_queue_size: int, reopen: "Reopen | None" = None) -> None:
        self._path = path
        self._reopen_stream = reopen
        self._conn: _Conn | None = conn
        self._generation = conn.generation
        self._reconnect = reconnect
        self._watch_queue_size = watch_queue_size
        self._pending: dict[int, _Pending] = {}
        self._watches: dict[str, list[WatchEvents]] = {}
        self._tokens = itertools.count(1)
        self._connected = trio.Event()
        self._dead: str | None = None
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None

    @classmethod
    async def open(cls, path: str | None = None, *, reconnect: bool = False,
                   watch_queue_size: int = 256) -> "XsClient":
        """Connect (``path``, else discovery as :mod:`libxen.xenstore.sync`)."""
        return cls(await _connect(path, 1), path, reconnect=reconnect,
                   watch_queue_size=watch_queue_size)

    @classmethod
    def over_stream(cls, stream: trio.abc.Stream, *, watch_queue_size: int = 256,
                    reopen: "Reopen | None" = None) -> "XsClient":
        """A client over any byte stream, e.g. a domain's xenstore ring.

        ``reopen(old_stream)`` is called when the stream breaks: it returns
        a new stream to go on with (watches are registered again), or None
        when this break is final.
        """
        return cls(_Conn(stream, 1), None, reconnect=reopen is not None,  # type: ignore[arg-type]
                   watch_queue_size=watch_queue_size, reopen=reopen)

    # -- lifetime -------------------------------------------------------
    async def __aenter__(self) -> "XsClient":
        self._stack = AsyncExitStack()
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        self._connected.set()
        await self._nursery.start(self._supervise)
        return self

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        self._dead = self._dead or "client closed"
        assert self._stack is not None and self._nursery is not None
        self._nursery.cancel_scope.cancel()
        if not isinstance(exc, trio.Cancelled):
            exc_type = exc = tb = None  # keep the body's exception unwrapped
        try:
            return bool(await self._stack.__aexit__(exc_type, exc, tb))
        finally:
            if self._conn is not None:
                await trio.aclose_forcefully(self._conn.stream)
            self._fail_all(XsConnectionLost(self._dead))

    @property
    def connected(self) -> bool:
        return self._conn is not None

    # -- requests -------------------------------------------------------
    async def _current(self) -> _Conn:
        if self._nursery is None:
            raise RuntimeError("use 'async with await XsClient.open() as xs'")
        while self._conn is None:
            if self._dead is not None:
                raise XsConnectionLost(self._dead)
            await self._connected.wait()
        return self._conn

    async def _call(self, conn: _Conn, requests: list[tuple[int, bytes]],
                    tx_id: int) -> list[bytes | XsError]:
        """Send requests in one write, await every reply: payloads or XsErrors."""
        slots: list[tuple[int, int, _Pending | XsError]] = []
        data = []
        for msg_type, payload in requests:
            try:
                req_id, frame = conn.proto.request(msg_type, payload, tx_id)
            except XsError as exc:  # E2BIG: refused before sending
                slots.append((msg_type, 0, exc))
                continue
            slots.append((msg_type, req_id, self._pending.setdefault(req_id, _Pending())))
            data.append(frame)
        try:
            await self._send(conn, b"".join(data))
            for _, _, slot in slots:
                if isinstance(slot, _Pending):
                    await slot.done.wait()
        finally:
            for _, req_id, slot in slots:
                if isinstance(slot, _Pending):
                    del self._pending[req_id]
                    if not slot.done.is_set():
                        conn.proto.forget(req_id)
        results: list[bytes | XsError] = []
        for msg_type, _, slot in slots:
            if isinstance(slot, XsError):
                results.append(slot)
                continue
            if slot.error is not None:
                raise slot.error
            assert slot.reply is not None
            try:
                results.append(check_reply(msg_type, slot.reply))
            except XsError as exc:
                results.append(exc)
            except XsConnectionLost:
                conn.cancel.cancel()
                raise
        return results

    async def _run_batch(self, batch: Iterable[Op[Any]], tx_id: int = 0,
                         generation: int | None = None) -> tuple[list[Any], int]:
        conn = await self._current()
        if generation is not None and generation != conn.generation:
            raise XsError("EAGAIN", "transaction lost with its connection")
        run = Batch(batch)
        while not run.done:
            round_ = run.round()
            replies = await self._call(conn, [r for _, r in round_], tx_id)
            for (i, _), reply in zip(round_, replies):
                run.answer(i, reply)
        return run.results, conn.generation

    async def batch(self, batch: Iterable[Op[Any]], tx_id: int = 0,
                    generation: int | None = None) -> list[Any]:
        """Run every operation pipelined: a result or an :class:`XsError` each, in order."""
        return (await self._run_batch(batch, tx_id, generation))[0]

    async def _run(self, op: Op[R], tx_id: int = 0,
                   generation: int | None = None) -> tuple[R, int]:
        (result,), generation = await self._run_batch([op], tx_id, generation)
        if isinstance(result, XsError):
            raise result
        return result, generation

    async def run(self, op: Op[R], tx_id: int = 0, generation: int | None = None) -> R:
        """One operation; raises its :class:`XsError`."""
        return (await self._run(op, tx_id, generation))[0]

    async def _send(self, conn: _Conn, data: bytes) -> None:
        async with conn.send_lock:
            # Shielded: a message cut short by a cancellation would corrupt
            # the stream for every other task. Bounded by its own deadline.
            with shielded(SEND_TIMEOUT) as scope:
                try:
                    await conn.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                    conn.cancel.cancel()
                    raise XsConnectionLost(f"send: {e}") from e
            if scope.cancelled_caught:
                conn.cancel.cancel()
                raise XsConnectionLost("send timed out")

    # -- the reader -----------------------------------------------------
    async def _supervise(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Read replies and events; on loss, fail callers and maybe reconnect."""
        conn = self._conn
        assert conn is not None
        task_status.started()
        while True:
            reason = await self._read_loop(conn)
            log.info("xenstore connection lost: %s", reason)
            self._lost(conn, reason)
            await trio.aclose_forcefully(conn.stream)
            if not self._reconnect:
                return
            if self._reopen_stream is not None:
                stream = await self._reopen_stream(conn.stream)
                if stream is None:
                    self._reconnect = False
                    self._lost(conn, reason)
                    return
                self._generation += 1
                conn = _Conn(stream, self._generation)  # type: ignore[arg-type]
                log.info("xenstore connection re-established")
            else:
                conn = await self._reopen()
            self._conn = conn
            self._connected.set()
            assert self._nursery is not None
            self._nursery.start_soon(self._reregister, conn)

    async def _read_loop(self, conn: _Conn) -> str:
        events = conn.proto.events
        with conn.cancel:
            try:
                while True:
                    data = await conn.stream.receive_some(65536)
                    if not data:
                        return "daemon closed the connection"
                    for msg in conn.proto.feed(data):
                        self._dispatch(msg)
                    while events:
                        path, token = events.popleft()
                        self._deliver(text(path), text(token))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
                return f"receive: {e}"
            except XsConnectionLost as e:
                return e.reason
        return "connection abandoned after a failed send"

    def _dispatch(self, msg: Message) -> None:
        slot = self._pending.get(msg.req_id)
        if slot is None or slot.done.is_set():
            log.debug("reply %s for no waiting request (cancelled?)", msg.req_id)
            return
        slot.reply = msg
        slot.done.set()

    def _deliver(self, path: str, token: str) -> None:
        watches = self._watches.get(token, [])
        matching = [w for w in watches if _covers(w.path, path)] or watches
        for w in matching:
            w._deliver(path, token)

    def _fail_all(self, exc: XsConnectionLost) -> None:
        for slot in self._pending.values():
            if not slot.done.is_set():
                slot.error = exc
                slot.done.set()

    def _lost(self, conn: _Conn, reason: str) -> None:
        if self._conn is conn:
            self._conn = None
        self._fail_all(XsConnectionLost(reason))
        if self._reconnect and self._dead is None:
            self._connected = trio.Event()
            return
        self._dead = self._dead or reason
        self._connected.set()  # wake waiters: they will see _dead
        for watches in self._watches.values():
            for w in watches:
                w._fail(XsConnectionLost(reason))

    async def _reopen(self) -> _Conn:
        delay = 0.02
        while True:
            self._generation += 1
            try:
                return await _connect(self._path, self._generation)
            except OSError as e:
                log.debug("reconnect failed: %s; retrying in %.2fs", e, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _reregister(self, conn: _Conn) -> None:
        """Watches are per connection: register them again on the new one."""
        for watches in list(self._watches.values()):
            for w in list(watches):
                if w.generation == conn.generation:
                    continue  # registered by its owner since the reconnect
                try:
                    _, w.generation = await self._run(w.register())
                except XsConnectionLost:
                    return  # the next connection will try again
                except XsError as e:
                    log.warning("cannot re-register watch %s: %s", w.path, e)
                    w._fail(e)

    # -- watches --------------------------------------------------------
    @asynccontextmanager
    async def watch(self, path: str, token: str | None = None, *, depth: int | None = None,
                    queue_size: int | None = None) -> AsyncIterator[WatchEvents]:
        """Register a watch for the ``async with`` block; yields its events."""
        token = token or f"pvxen-{next(self._tokens)}"
        w = WatchEvents(path, token, depth, queue_size or self._watch_queue_size)
        self._watches.setdefault(token, []).append(w)  # before XS_WATCH: the
        try:                                            # initial event may be quick
            _, w.generation = await self._run(w.register())
            yield w
        finally:
            self._watches[token].remove(w)
            if not self._watches[token]:
                del self._watches[token]
            if self._conn is not None and w.generation == self._conn.generation:
                with shielded(UNWATCH_TIMEOUT):
                    try:
                        await self.run(ops.unwatch(path, token))
                    except (XsError, XsConnectionLost) as e:
                        log.debug("unwatch %s: %s", path, e)

    async def reset_watches(self) -> None:
        await self.run(ops.reset_watches())

    # -- transactions ---------------------------------------------------
    def transaction(self) -> XsTransaction:
        """A transaction handle; start it with ``async with`` (or ``start()``)."""
        return XsTransaction(self)

    async def transaction_start(self) -> XsTransaction:
        return await XsTransaction(self).start()

    async def run_transaction(self, fn: Callable[[XsTransaction], Awaitable[R]], *,
                              attempts: int | None = None) -> R:
        """Run ``fn(t)`` in a transaction, redoing it all while commits hit EAGAIN."""
        for attempt in itertools.count(1):
            try:
                async with self.transaction() as t:
                    result = await fn(t)
                return result
            except XsError as e:
                if e.name != "EAGAIN" or (attempts is not None and attempt >= attempts):
                    raise
            await trio.sleep(random.uniform(0, min(0.001 * 2 ** attempt, 0.1)))
        raise AssertionError("unreachable")

    # -- domains and control ---------------------------------------------
    async def introduce(self, domid: int, gfn: int, port: int) -> None:
        await self.run(ops.introduce(domid, gfn, port))

    async def release(self, domid: int) -> None:
        await self.run(ops.release(domid))

    async def resume(self, domid: int) -> None:
        await self.run(ops.resume(domid))

    async def set_target(self, domid: int, target: int) -> None:
        await self.run(ops.set_target(domid, target))

    async def get_domain_path(self, domid: int) -> str:
        return text(await self.run(ops.get_domain_path(domid)))

    async def is_domain_introduced(self, domid: int) -> bool:
        return await self.run(ops.is_domain_introduced(domid))

    async def control(self, command: str, *args: Pathish) -> bytes:
        """``XS_CONTROL``: reply payload as sent by the daemon."""
        return await self.run(ops.control(command, *args))
