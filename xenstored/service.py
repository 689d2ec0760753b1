"""The trio shell around :class:`~xenstored.core.XenstoreCore`.

Serves one connection over any byte stream with trio's ``Stream`` methods
(``receive_some``/``send_all``), a task per connection: a domain's shared
ring (``xenstored.transport.ring``). dom0's socket clients are served by one
task for all of them (``xenstored.transport.unix``) under the same rules,
with the same :class:`Outbox`, :meth:`XenstoreService.stage` and
:meth:`XenstoreService.deliver`.

Per connection: the reader parses requests and hands each to the core;
replies and watch events go into the target connection's :class:`Outbox`.
The reader flushes its own replies itself (no task switch on the hot path,
and a client that does not read its replies stops its own reader, nobody
else's); a writer task flushes events caused by other connections.

Bounds (``xenstored.quota``): a connection is not read while
``OUTPUT_HIGH_WATER`` bytes wait for it, dom0 as well as domains, so what a
client that never reads costs is one read buffer and one high-water mark.
Only events caused by others can grow an outbox further; one that passes
``EVENT_BACKLOG`` belongs to a client that does not read: that connection
is closed, the daemon goes on.

A bug costs one connection: any exception while serving a connection, of
any transport, is logged with its traceback and ends that connection only
(a domain's ring is then ignored until the domain is released, as
cxenstored's ``ignore_connection`` in ``tools/xenstored/domain.c``).

Durability: when a request changed the store, its changes are written to
the journal (:meth:`JournalCommitter.stage`) before any message it caused
is queued, so a reply never leaves for a write that a kill could lose.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Protocol

import trio

from hypervisord.public.io.xs_wire import XsdSockmsgType
from xenstored.connection import Connection
from xenstored.core import XenstoreCore
from libxen.xenstore.wire import FrameParser, ProtocolError
from xenstored.quota import EVENT_BACKLOG, OUTPUT_HIGH_WATER

log = logging.getLogger("xenstored")

#: Bytes asked of the transport per read, and parsed per step of a read.
RECEIVE_SIZE = 16 << 10
PARSE_STEP = 2048


class Committer(Protocol):
    def stage(self, changes: list, generation: int) -> object: ...


#: The first four header bytes of an XS_WATCH_EVENT (type, little-endian).
_EVENT_TYPE = int(XsdSockmsgType.XS_WATCH_EVENT).to_bytes(4, "little")


class Outbox:
    """Messages waiting for one connection, in order.

    Bounded in messages and in bytes: a connection that lets either grow
    past its limit is not reading, and is closed. ``full`` is the
    backpressure mark: its reader waits for the peer before going on.

    A watch event identical to one still waiting here is dropped, as
    cxenstored's ``send_event`` (tools/xenstored/core.c) drops one identical
    to an event still on the connection's output list, whichever request
    queued it; special (``@...``) events are exempt, as there. Whoever sends
    takes bytes from the front of ``buf`` (a flush takes all of it, a
    non-blocking writer part of it), so an event is still waiting while its
    last byte lies beyond what has left: ``pushed - len(buf)``.
    """

    def __init__(self, limit: int, byte_limit: int) -> None:
        # One buffer, not a list of messages: what waits is held once, and a
        # flush sends it without joining a copy.
        self.buf = bytearray()
        self.count = 0
        self.limit = limit
        self.byte_limit = byte_limit
        self.sending = False  # a flush is in progress (held across its awaits)
        self.idle: trio.Event | None = None  # made only when a flush must wait
        self.wakeup = trio.Event()
        self.overflowed = False
        self.backpressured = False  # its reader once waited for the peer
        self.cancel: trio.CancelScope | None = None
        self.pushed = 0  # bytes ever queued here
        #: watch event -> its end in the ``pushed`` count (stale once sent)
        self.events: dict[bytes, int] = {}
        #: set by a transport that sends without a writer task (the socket
        #: loop): called once a request has queued events for this box
        self.kick: Callable[[], None] | None = None

    @property
    def bytes(self) -> int:
        return len(self.buf)

    @property
    def full(self) -> bool:
        return len(self.buf) >= OUTPUT_HIGH_WATER

    def push(self, data: bytes, wake: bool) -> None:
        if data[:4] == _EVENT_TYPE and data[16:17] != b"@" and self._duplicate(data):
            return
        self.buf += data
        self.pushed += len(data)
        self.count += 1
        if self.count > self.limit or len(self.buf) > self.byte_limit:
            self.overflowed = True
            if self.cancel is not None:
                self.cancel.cancel()
        if wake:
            self.wakeup.set()

    def _duplicate(self, event: bytes) -> bool:
        """Is ``event`` still waiting here? If not, it is noted as waiting."""
        sent = self.pushed - len(self.buf)
        if self.events and (not self.buf or len(self.events) > 2 * self.count + 64):
            # forget the events that have left (all of them when nothing waits)
            self.events = {e: end for e, end in self.events.items() if end > sent}
        end = self.events.get(event)
        if end is not None and end > sent:
            return True
        self.events[event] = self.pushed + len(event)
        return False

    async def flush(self, stream) -> None:
        """Send everything queued, in order; one flusher at a time."""
        while self.sending:
            if self.idle is None:
                self.idle = trio.Event()
            await self.idle.wait()
        if not self.buf:
            return
        self.sending = True
        try:
            while self.buf:
                data, self.buf = self.buf, bytearray()
                self.count = 0
                await stream.send_all(data)
                del data
        finally:
            self.sending = False
            if self.idle is not None:
                self.idle.set()
                self.idle = None


class XenstoreService:
    def __init__(self, core: XenstoreCore, committer: Committer | None = None, *,
                 outbox_limit_dom0: tuple[int, int] = EVENT_BACKLOG[0],
                 outbox_limit_domu: tuple[int, int] = EVENT_BACKLOG[1]) -> None:
        self.core = core
        self.committer = committer
        self.outboxes: dict[int, Outbox] = {}
        self.limits = (outbox_limit_dom0, outbox_limit_domu)

    def deliver(self, conn: Connection | None, out) -> None:
        """Queue messages; the requester's own replies are flushed by its reader.

        Events for others are handed to their writer task, or sent at once
        by their transport (:attr:`Outbox.kick`) once all are queued.
        """
        kicks: list[Outbox] = []
        for target, data in out:
            box = self.outboxes.get(target.conn_id)
            if box is None:
                continue
            if box.kick is None:
                box.push(data, wake=target is not conn)
            else:
                box.push(data, wake=False)
                if target is not conn and box not in kicks:
                    kicks.append(box)
        for box in kicks:
            assert box.kick is not None
            box.kick()

    def apply(self, change) -> None:
        """Run ``change(out)`` on the core outside any request (domain events)."""
        out: list = []
        change(out)
        self.stage()
        self.deliver(None, out)

    def stage(self) -> None:
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
                    nursery.start_soon(self._guarded, conn, box, stream, self._writer)
                    nursery.start_soon(self._guarded, conn, box, stream, self._reader)
            except* (trio.BrokenResourceError, trio.ClosedResourceError) as group:
                # sending to it failed: a reset socket, or a ring whose
                # indices the domain corrupted; it costs this connection only
                _log_each(_log_broken, conn, group)
            except* Exception as group:
                # A bug of ours (a handler, the committer, a transport): it
                # costs this connection only, whatever carries it.
                _log_each(_log_internal_error, conn, group)
            if box.overflowed:
                log.warning("%s: closed, it does not read its messages "
                            "(%d queued)", conn, box.count)
        finally:
            self.outboxes.pop(conn.conn_id, None)
            self.core.disconnect(conn)
            if box.backpressured or box.overflowed:
                _memory.give_back_soon()

    async def _guarded(self, conn: Connection, box: Outbox, stream, body) -> None:
        """Run the reader or the writer; when it ends, for whatever reason,
        the connection ends. Errors are handled here, inside the task: one
        that left it would tangle trio's nursery bookkeeping with this
        task's frames in a reference cycle, and its buffers would stay
        until a full garbage collection."""
        try:
            await body(conn, box, stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            # a reset socket, or a ring whose indices the domain corrupted
            _log_broken(conn, e)
        except Exception as e:  # a bug of ours: it costs this connection only
            _log_internal_error(conn, e)
        finally:
            assert box.cancel is not None
            box.cancel.cancel()

    async def _writer(self, conn: Connection, box: Outbox, stream) -> None:
        while True:
            await box.wakeup.wait()
            box.wakeup = trio.Event()
            await box.flush(stream)

    async def _reader(self, conn: Connection, box: Outbox, stream) -> None:
        parser = FrameParser()
        # The outstanding-requests quota (cxenstored's, 20 for a domain): at
        # most that many requests are handled before their replies are on
        # their way. Every connection, dom0 too: while OUTPUT_HIGH_WATER
        # bytes wait for it, it is not read (what it sent stays in its
        # socket or ring). A client that does not take its replies stops
        # its own reader there.
        limit = None if conn.privileged else max(1, conn.quotas.outstanding)
        handled = 0
        while True:
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                _log_broken(conn, e)
                return
            if not data:
                return
            view = memoryview(data)
            # Parsed a slice at a time: a chunk of tiny requests becomes a
            # few hundred Message objects at once, never thousands.
            for off in range(0, len(view), PARSE_STEP):
                try:
                    messages = parser.feed(view[off:off + PARSE_STEP])
                except ProtocolError as e:
                    await box.flush(stream)  # answer what came before
                    log.warning("%s: protocol error, closing: %s", conn, e)
                    return
                for msg in messages:
                    if box.full:
                        box.backpressured = True
                    if box.full or (limit is not None and handled >= limit):
                        await box.flush(stream)
                        handled = 0
                    out = self.core.handle(conn, msg)
                    handled += 1
                    self.stage()
                    self.deliver(conn, out)
                del messages
                if parser.error is not None:  # good requests before it are answered
                    await box.flush(stream)
                    log.warning("%s: protocol error, closing: %s", conn, parser.error)
                    return
            del view, data
            await box.flush(stream)
            handled = 0


class _GiveBack:
    """Hands freed heap back to the system once connections that held much
    memory (stalled ones) are gone.

    Python frees their buffers at once, but glibc keeps freed heap pages
    for reuse: without ``malloc_trim`` the daemon's RSS stays at its peak.
    One trim per burst of closes, ``DELAY`` after the last (a system task
    coalesces them); nothing on a C library without ``malloc_trim``.
    """

    DELAY = 0.5

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.run: object | None = None  # the trio run whose task will trim
        try:
            self.trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            self.trim = None

    def give_back_soon(self) -> None:
        if self.trim is None:
            return
        run = trio.lowlevel.current_trio_token()
        pending = self.deadline is not None and self.run is run
        self.deadline = trio.current_time() + self.DELAY
        if pending:
            return
        self.run = run
        try:
            trio.lowlevel.spawn_system_task(self._later, name="xenstored.give-back-memory")
        except RuntimeError:  # the run is ending: nothing left to give back for
            self.deadline = None

    async def _later(self) -> None:
        try:
            while self.deadline is not None and trio.current_time() < self.deadline:
                await trio.sleep_until(self.deadline)
        finally:
            self.deadline = None
        self.trim(0)


_memory = _GiveBack()


def _log_each(log_one, conn: Connection, group: BaseExceptionGroup) -> None:
    """Log every exception of ``group``. In its own frame on purpose: a
    loop variable left in ``serve``'s frame would hold the exception, whose
    traceback holds that frame: a cycle keeping the connection's buffers
    until a full garbage collection (RSS that stayed after clients left)."""
    for e in group.exceptions:
        log_one(conn, e)


def _log_internal_error(conn: Connection, e: BaseException) -> None:
    if conn.privileged:
        log.error("%s: internal error, connection closed", conn, exc_info=e)
    else:  # the domain stays introduced; @releaseDomain fires when it goes
        log.error("%s: internal error, the domain's connection is ignored until it "
                  "is released", conn, exc_info=e)


def _log_broken(conn: Connection, e: BaseException) -> None:
    """A dom0 socket reset is routine; a domain breaking its ring is worth a warning."""
    if conn.privileged:
        log.debug("%s: connection broken: %s", conn, e)
    else:
        log.warning("%s: closing its connection: %s", conn, e or type(e).__name__)
