"""The Unix-socket transport: every dom0 socket client served by one task over one epoll.

A task per connection costs, per request, a trip through trio's scheduler
(park on the socket, epoll, reschedule, resume): measured with one
synchronous client (`python -m bench xenstore`) about 70% of the daemon's
time went to trio's run loop, the store and the framing 10-15%. So the
socket clients are not tasks: :class:`SocketLoop` is one task that owns an
``epoll`` over all their descriptors and waits for that one descriptor
(``trio.lowlevel.wait_readable``). A wake serves every ready client in
turn, synchronously: one non-blocking ``read()`` of up to
:data:`RECEIVE_SIZE`, every complete request in it through the core, the
replies written straight to the socket. A request's watch events for other
socket clients are written to their sockets at once, by the same pass
(:attr:`~xenstored.service.Outbox.kick`); events for domain rings go to
their rings' writer tasks as before.

The rules of the per-task reader of :mod:`xenstored.service` hold here:

- order: requests of one client are handled in order, its replies and
  events leave in the order they were queued;
- bounds and backpressure: a client is not read while anything waits to be
  sent to it (the per-task reader flushed before it read again): its
  descriptor is then watched for room (``EPOLLOUT``) instead of requests,
  and requests already read wait, parsed, until the output is gone. Only
  events caused by others can grow an outbox further, up to its backlog
  limit: then that client is closed, nobody else;
- a bug costs one connection: an exception while serving a client, a
  broken socket included, is logged and closes that client only;
- the journal record of a request is written before its reply is queued
  (:meth:`~xenstored.service.XenstoreService.stage`);
- a framing error answers the good requests before it, then closes.

Fairness: one read per ready client per wake, and every wake goes through
trio's scheduler, so other tasks (domain rings, the committer) run between
two passes.
"""

from __future__ import annotations

import logging
import os
import select

import trio

from libxen.xenstore.wire import FrameParser, Message, ProtocolError
from xenstored import service as svc
from xenstored.connection import Connection
from xenstored.quota import default_max_connections

log = logging.getLogger("xenstored")

#: Bytes read per client per wake, and parsed per step of a read.
RECEIVE_SIZE = 16 << 10
PARSE_STEP = 2048

_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
_NOTHING: tuple[Message, ...] = ()


class _Client:
    """One socket client of the loop."""

    __slots__ = ("conn", "fd", "box", "parser", "queue", "next", "rest", "mask",
                 "error", "closed", "done")

    def __init__(self, conn: Connection, fd: int, box: svc.Outbox) -> None:
        self.conn = conn
        self.fd = fd
        self.box = box
        self.parser = FrameParser()
        self.queue: list[Message] | tuple = _NOTHING  # parsed, not handled yet
        self.next = 0  # index in queue of the next one to handle
        self.rest = b""  # read, not parsed yet (a read is parsed PARSE_STEP at a time)
        self.mask = _IN
        self.error: ProtocolError | None = None  # close once what came before is sent
        self.closed = False
        self.done = trio.Event()

    @property
    def waiting(self) -> bool:
        """Read requests wait for room in its output."""
        return self.next < len(self.queue) or bool(self.rest)


class SocketLoop:
    """Serves every socket client of ``service`` from one task (:meth:`run`)."""

    def __init__(self, service: svc.XenstoreService) -> None:
        self.service = service
        self.epoll = select.epoll()
        self.clients: dict[int, _Client] = {}  # by descriptor

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        epoll, clients = self.epoll, self.clients
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, events in epoll.poll(0):
                    c = clients.get(fd)
                    if c is not None and not c.closed:
                        self._ready(c, events)
        finally:
            for c in list(clients.values()):
                self.close(c)
            epoll.close()

    async def serve(self, conn: Connection, sock: trio.socket.SocketType) -> None:
        """Serve ``conn`` over the connected socket ``sock`` until it closes."""
        fd = sock.fileno()
        box = svc.Outbox(*self.service.limits[0 if conn.privileged else 1])
        c = _Client(conn, fd, box)
        box.kick = lambda: self._kicked(c)
        self.service.outboxes[conn.conn_id] = box
        self.clients[fd] = c
        self.epoll.register(fd, _IN)
        try:
            await c.done.wait()
        finally:
            self.close(c)

    def close(self, c: _Client) -> None:
        """Forget ``c`` at once (the socket itself is closed by its serve task)."""
        if c.closed:
            return
        c.closed = True
        self.clients.pop(c.fd, None)
        try:
            self.epoll.unregister(c.fd)
        except (OSError, ValueError):  # the loop's epoll is closed already
            pass
        box = c.box
        if box.overflowed:
            log.warning("%s: closed, it does not read its messages (%d queued)",
                        c.conn, box.count)
        self.service.outboxes.pop(c.conn.conn_id, None)
        self.service.core.disconnect(c.conn)
        if box.backpressured or box.overflowed:
            svc._memory.give_back_soon()
        c.queue, c.rest, box.buf = _NOTHING, b"", bytearray()
        c.done.set()

    # -- one client's turn ----------------------------------------------------
    def _ready(self, c: _Client, events: int) -> None:
        """The last-resort guard: whatever goes wrong costs ``c`` alone."""
        try:
            if c.box.buf:
                self._send(c)
            if not c.box.buf:
                if c.waiting:
                    self._pump(c)
                elif c.error is None:
                    self._receive(c)
            self._rearm(c)
        except OSError as e:  # a reset socket
            svc._log_broken(c.conn, e)
            self.close(c)
        except Exception as e:  # a bug of ours (a handler, the committer)
            svc._log_internal_error(c.conn, e)
            self.close(c)

    def _receive(self, c: _Client) -> None:
        try:
            data = os.read(c.fd, RECEIVE_SIZE)
        except BlockingIOError:
            return
        if not data:
            self.close(c)
            return
        if len(data) > PARSE_STEP:
            c.rest = memoryview(data)
        elif not self._parse(c, data):
            return
        self._pump(c)

    def _parse(self, c: _Client, data) -> bool:
        """Parse ``data`` into ``c.queue``; False if there is nothing to handle."""
        try:
            c.queue = c.parser.feed(data)
        except ProtocolError as e:
            c.queue, c.rest, c.error = _NOTHING, b"", e
            return True
        c.next = 0
        if c.parser.error is not None:  # good requests before it are answered
            c.rest, c.error = b"", c.parser.error
        return bool(c.queue) or c.error is not None

    def _pump(self, c: _Client) -> None:
        """Handle what was read, in order, until it is all done or the output is full."""
        service, core, conn, box = self.service, self.service.core, c.conn, c.box
        while True:
            queue = c.queue
            while c.next < len(queue):
                if box.full:
                    box.backpressured = True
                    self._send(c)
                    if box.buf:
                        return  # the rest waits for room (_rearm: EPOLLOUT)
                msg = queue[c.next]
                c.next += 1
                out = core.handle(conn, msg)
                service.stage()
                service.deliver(conn, out)
                if c.closed:
                    return
            c.queue, c.next = _NOTHING, 0
            if not c.rest:
                break
            chunk, c.rest = c.rest[:PARSE_STEP], c.rest[PARSE_STEP:]
            self._parse(c, chunk)
        self._send(c)
        if c.error is not None and not box.buf:
            self._fail(c)

    def _fail(self, c: _Client) -> None:
        log.warning("%s: protocol error, closing: %s", c.conn, c.error)
        self.close(c)

    def _send(self, c: _Client) -> None:
        """Write what waits for ``c`` as far as its socket takes it."""
        box = c.box
        buf = box.buf
        if not buf:
            return
        try:
            sent = os.write(c.fd, buf)
        except BlockingIOError:
            return
        if sent == len(buf):
            # the backlog bounds count what waits since the output was last
            # all sent (with a writer task: since its last flush began)
            box.buf = bytearray()
            box.count = 0
        else:
            del buf[:sent]

    def _rearm(self, c: _Client) -> None:
        """Requests while nothing waits for it; room for output otherwise."""
        if c.closed:
            return
        if c.error is not None and not c.box.buf and not c.waiting:
            self._fail(c)
            return
        # EPOLLOUT also while read requests wait: it fires at once when there
        # is room, so they go on even if the client sends nothing more.
        mask = _OUT if c.box.buf or c.waiting or c.error is not None else _IN
        if mask != c.mask:
            c.mask = mask
            self.epoll.modify(c.fd, mask)

    def _kicked(self, c: _Client) -> None:
        """Another connection queued events for ``c``: send them now."""
        if c.closed:
            return
        if c.box.overflowed:
            self.close(c)
            return
        try:
            self._send(c)
            self._rearm(c)
        except OSError as e:
            svc._log_broken(c.conn, e)
            self.close(c)


class UnixServer:
    """Accepts socket clients; each is dom0 (privileged), as in cxenstored.

    At most ``max_connections`` are served at once (cxenstored has no such
    limit); one more is closed at once, with a warning logged at most every
    ``REFUSAL_LOG_INTERVAL`` seconds.
    """

    REFUSAL_LOG_INTERVAL = 10.0

    def __init__(self, service: svc.XenstoreService, max_connections: int | None = None) -> None:
        self.service = service
        self.loop = SocketLoop(service)
        self.max_connections = (default_max_connections() if max_connections is None
                                else max_connections)
        self.open = 0
        self.refused = 0  # since the last warning
        self.refusal_logged = -float("inf")

    async def serve(self, listeners, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The loop, and ``trio.serve_listeners`` handing it the clients."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.loop.run)
            await nursery.start(trio.serve_listeners, self.handle, listeners)
            task_status.started()

    async def handle(self, stream: trio.SocketStream) -> None:
        if self.max_connections and self.open >= self.max_connections:
            self._refuse()
            await trio.aclose_forcefully(stream)
            return
        self.open += 1
        try:
            conn = self.service.core.connect(0, privileged=True)
            log.debug("%s: connected", conn)
            try:
                await self.loop.serve(conn, stream.socket)
            finally:
                await trio.aclose_forcefully(stream)
                log.debug("%s: closed", conn)
        finally:
            self.open -= 1

    def _refuse(self) -> None:
        self.refused += 1
        now = trio.current_time()
        if now - self.refusal_logged < self.REFUSAL_LOG_INTERVAL:
            return
        more = f" ({self.refused - 1} more since the last warning)" if self.refused > 1 else ""
        log.warning("refusing a socket connection: %d are open (--max-connections %d)%s",
                    self.open, self.max_connections, more)
        self.refusal_logged = now
        self.refused = 0
