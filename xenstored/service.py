"""The trio shell around :class:`~xenstored.core.XenstoreCore`.

Serves one connection over any byte stream with trio's ``Stream`` methods
(``receive_some``/``send_all``): the Unix socket today, a domain's shared
ring through the same code once a ring stream exists. So a ring connection
differs from a socket connection only in its transport.

Per connection: the reader parses requests and hands each to the core;
replies and watch events go into the target connection's :class:`Outbox`.
The reader flushes its own replies itself (no task switch on the hot path,
and a client that does not read its replies stops its own reader, nobody
else's); a writer task flushes events caused by other connections. An
outbox that grows past its bound belongs to a client that does not read:
that connection is closed, the daemon goes on.

Durability: when a request changed the store, its changes are written to
the journal (:meth:`JournalCommitter.stage`) before any message it caused
is queued, so a reply never leaves for a write that a kill could lose.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Protocol

import trio

from xenstored.connection import Connection
from xenstored.core import XenstoreCore
from xenstored.protocol.wire import FrameParser, ProtocolError
from xenstored.transport.unix import UnixStream

log = logging.getLogger("xenstored")


class Committer(Protocol):
    def stage(self, changes: list, generation: int) -> int: ...


class Outbox:
    """Messages waiting for one connection, in order.

    Bounded in messages and in bytes: a connection that lets either grow
    past its limit is not reading, and is closed.
    """

    def __init__(self, limit: int, byte_limit: int) -> None:
        self.items: deque[bytes] = deque()
        self.bytes = 0
        self.limit = limit
        self.byte_limit = byte_limit
        self.sending = False  # a flush is in progress (held across its awaits)
        self.idle: trio.Event | None = None  # made only when a flush must wait
        self.wakeup = trio.Event()
        self.overflowed = False
        self.cancel: trio.CancelScope | None = None

    def push(self, data: bytes, wake: bool) -> None:
        self.items.append(data)
        self.bytes += len(data)
        if len(self.items) > self.limit or self.bytes > self.byte_limit:
            self.overflowed = True
            if self.cancel is not None:
                self.cancel.cancel()
        if wake:
            self.wakeup.set()

    async def flush(self, stream) -> None:
        """Send everything queued, in order; one flusher at a time.

        The common case, one reply and nobody else flushing, allocates
        nothing beyond the reply itself.
        """
        while self.sending:
            if self.idle is None:
                self.idle = trio.Event()
            await self.idle.wait()
        items = self.items
        if not items:
            return
        self.sending = True
        try:
            while items:
                data = items.popleft() if len(items) == 1 else b"".join(items)
                items.clear()
                self.bytes = 0
                await stream.send_all(data)
        finally:
            self.sending = False
            if self.idle is not None:
                self.idle.set()
                self.idle = None


class XenstoreService:
    def __init__(self, core: XenstoreCore, committer: Committer | None = None, *,
                 outbox_limit_dom0: tuple[int, int] = (65536, 16 << 20),
                 outbox_limit_domu: tuple[int, int] = (1024, 1 << 20)) -> None:
        self.core = core
        self.committer = committer
        self.outboxes: dict[int, Outbox] = {}
        self.limits = (outbox_limit_dom0, outbox_limit_domu)

    def _deliver(self, conn: Connection | None, out) -> None:
        """Queue messages; the requester's own replies are flushed by its reader."""
        for target, data in out:
            box = self.outboxes.get(target.conn_id)
            if box is not None:
                box.push(data, wake=target is not conn)

    def apply(self, change) -> None:
        """Run ``change(out)`` on the core outside any request (domain events)."""
        out: list = []
        change(out)
        self._stage()
        self._deliver(None, out)

    def _stage(self) -> None:
        """Journal what the last request changed, before its messages are queued."""
        changes = self.core.store.take_changes()
        if changes and self.committer is not None:
            self.committer.stage(changes, self.core.store.generation)

    async def serve(self, conn: Connection, stream) -> None:
        """Serve ``conn`` over ``stream`` until EOF, error or overflow."""
        box = Outbox(*(self.limits[0] if conn.privileged else self.limits[1]))
        self.outboxes[conn.conn_id] = box
        try:
            try:
                async with trio.open_nursery() as nursery:
                    box.cancel = nursery.cancel_scope
                    nursery.start_soon(self._writer, box, stream)
                    await self._reader(conn, box, stream)
                    nursery.cancel_scope.cancel()
            except* (trio.BrokenResourceError, trio.ClosedResourceError) as group:
                # sending to it failed: a reset socket, or a ring whose
                # indices the domain corrupted; it costs this connection only
                for e in group.exceptions:
                    _log_broken(conn, e)
            if box.overflowed:
                log.warning("%s: closed, it does not read its messages "
                            "(%d queued)", conn, len(box.items))
        finally:
            self.outboxes.pop(conn.conn_id, None)
            self.core.disconnect(conn)

    async def _writer(self, box: Outbox, stream) -> None:
        while True:
            await box.wakeup.wait()
            box.wakeup = trio.Event()
            await box.flush(stream)

    async def _reader(self, conn: Connection, box: Outbox, stream) -> None:
        parser = FrameParser()
        while True:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                _log_broken(conn, e)
                return
            if not data:
                return
            try:
                messages = parser.feed(data)
            except ProtocolError as e:
                log.warning("%s: protocol error, closing: %s", conn, e)
                return
            # The outstanding-requests quota (cxenstored's, 20 for a domain):
            # at most that many requests are handled before their replies
            # are on their way; a client that does not take its replies
            # stops its own reader there.
            limit = None if conn.privileged else max(1, conn.quotas.outstanding)
            for i, msg in enumerate(messages):
                if limit is not None and i and i % limit == 0:
                    await box.flush(stream)
                out = self.core.handle(conn, msg)
                self._stage()
                self._deliver(conn, out)
            await box.flush(stream)
            if parser.error is not None:  # good requests before it were answered
                log.warning("%s: protocol error, closing: %s", conn, parser.error)
                return


def _log_broken(conn: Connection, e: BaseException) -> None:
    """A dom0 socket reset is routine; a domain breaking its ring is worth a warning."""
    if conn.privileged:
        log.debug("%s: connection broken: %s", conn, e)
    else:
        log.warning("%s: closing its connection: %s", conn, e or type(e).__name__)


class UnixServer:
    """Accepts socket clients; each is dom0 (privileged), as in cxenstored."""

    def __init__(self, service: XenstoreService) -> None:
        self.service = service

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = self.service.core.connect(0, privileged=True)
        log.debug("%s: connected", conn)
        try:
            await self.service.serve(conn, UnixStream(stream))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            log.debug("%s: connection lost: %s", conn, e)
        except Exception:  # a bug must cost one connection, never the daemon
            log.exception("%s: internal error, connection closed", conn)
        finally:
            await trio.aclose_forcefully(stream)
            log.debug("%s: closed", conn)
