"""A trio byte stream over a ``xenstore_domain_interface`` page.

The XenStore ring (``io/xs_wire.h``, ``docs/misc/xenstore-ring.txt``) is
two 1024-byte circular buffers with free-running u32 indices: the guest
produces requests into ``req`` and consumes replies from ``rsp``; xenstored
does the opposite. Both sides signal through one event channel after every
change of an index. The byte stream on the ring is exactly the socket's
(``xsd_sockmsg`` header + payload), so xenstored serves a ring connection
with the same code as a socket one: only this transport differs.

Hostile peers: every index the other side writes is read once per step and
checked (``prod - cons`` must lie in 0..1024, modulo 2**32); a violation
breaks the stream (``trio.BrokenResourceError``), which costs the peer its
connection and nobody else anything.

Indices: each of the four u32 indices is one :class:`~libxen.ringidx.SharedWord`,
loaded and stored with a single atomic access (sequentially consistent), as
Linux's ``drivers/xen/xenbus/xenbus_comms.c`` reads and writes them with
plain aligned accesses between ``virt_rmb()``/``virt_wmb()``/``virt_mb()``.
A ``struct.pack_into`` here let the peer see a transient 0 (it zeroes the
field before packing it) and drop the connection as corrupted.

Reconnection (``docs/misc/xenstore-ring.txt``, "The ring reconnection
feature" and "The connection error feature"): a xenstored that comes back
after a crash cannot know where in a packet the dead one stopped, so it
sets the connection error indicator and serves nothing until the guest
resets the ring. The guest's end sees the error (:attr:`server_error`,
the stream breaks), asks with :meth:`XsRingStream.reconnect`, and the
server empties both queues with :meth:`XsRingStream.reset` on a packet
boundary. Only the guest sets ``connection`` to RECONNECT, only the server
sets it back to CONNECTED.

Wakeups: whoever owns the event channel calls :meth:`XsRingStream.kick`
for every notification on its port. Each side notes the kick count before
looking at the ring and sleeps only if no kick came since, so "check the
ring, then wait" loses no notification that arrives in between (the final
check of ``io/ring.h``), and a reader and a writer waiting at once are
both woken.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from libxen.ringidx import SharedWord
from hypervisord.public.io.xs_wire import (
    XENSTORE_CONNECTED,
    XENSTORE_ERROR_NONE,
    XENSTORE_RECONNECT,
    XENSTORE_RING_SIZE,
    XENSTORE_SERVER_FEATURE_ERROR,
    XS_RING_CONNECTION_OFF,
    XS_RING_ERROR_OFF,
    XS_RING_REQ_CONS_OFF,
    XS_RING_REQ_OFF,
    XS_RING_REQ_PROD_OFF,
    XS_RING_RSP_CONS_OFF,
    XS_RING_RSP_OFF,
    XS_RING_RSP_PROD_OFF,
    XS_RING_SERVER_FEATURES_OFF,
)

_MASK32 = 0xFFFFFFFF


class XsRingStream(trio.abc.Stream):
    """One end of the XenStore ring: ``server=True`` is xenstored's end."""

    def __init__(self, page: memoryview, notify: Callable[[], object], *, server: bool) -> None:
        if len(page) < 2080:
            raise ValueError("xenstore ring page too small")
        self.page = page
        self._notify = notify
        self._kicks = 0
        self._kicked = trio.Event()
        req = (XS_RING_REQ_OFF, XS_RING_REQ_CONS_OFF, XS_RING_REQ_PROD_OFF)
        rsp = (XS_RING_RSP_OFF, XS_RING_RSP_CONS_OFF, XS_RING_RSP_PROD_OFF)
        # server: we consume requests, produce responses; client: the reverse
        in_ring, out_ring = (req, rsp) if server else (rsp, req)
        self._words: list[SharedWord] = []
        self._in_base, self._in_cons, self._in_prod = self._ring(in_ring)
        self._out_base, self._out_cons, self._out_prod = self._ring(out_ring)
        self._connection = SharedWord(self.page, XS_RING_CONNECTION_OFF)
        self._error = SharedWord(self.page, XS_RING_ERROR_OFF)
        self._features = SharedWord(self.page, XS_RING_SERVER_FEATURES_OFF)
        self._words += (self._connection, self._error, self._features)
        self._server = server
        self._closed = False
        self._send_lock = trio.StrictFIFOLock()
        #: the connection error indicator the server set (guest end only)
        self.server_error = XENSTORE_ERROR_NONE

    def kick(self) -> None:
        """The peer signalled the event channel."""
        self._kicks += 1
        self._kicked.set()
        self._kicked = trio.Event()

    async def _wait(self, seen: int) -> None:
        if self._kicks == seen:
            await self._kicked.wait()

    def _ring(self, ring: tuple[int, int, int]) -> tuple[int, SharedWord, SharedWord]:
        base, cons_off, prod_off = ring
        cons, prod = SharedWord(self.page, cons_off), SharedWord(self.page, prod_off)
        self._words += (cons, prod)
        return base, cons, prod

    def release(self) -> None:
        """Drop the index views (idempotent): before the page is unmapped.
        The stream is closed: any further use raises ClosedResourceError."""
        self._closed = True
        self._kicked.set()
        for word in self._words:
            word.close()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("ring stream closed")
        if not self._server:
            self._check_error()

    def _check_error(self) -> None:
        """Guest end: has the server stopped this connection? (read once)"""
        if not self._features.load() & XENSTORE_SERVER_FEATURE_ERROR:
            return  # the field holds no valid data unless the feature is offered
        error = self._error.load()
        if error != XENSTORE_ERROR_NONE:
            self.server_error = error
            raise trio.BrokenResourceError(
                f"xenstored stopped the connection (error indicator {error}): "
                "the ring must be reconnected")

    # -- reconnection (xenstore-ring.txt) ------------------------------------
    @property
    def reconnect_requested(self) -> bool:
        """Server end: the guest set ``connection`` to RECONNECT."""
        return self._connection.load() == XENSTORE_RECONNECT

    def stop(self, error: int) -> None:
        """Server end: set the connection error indicator and tell the guest."""
        self._error.store(error)
        self._notify()

    def reset(self) -> None:
        """Server end: empty both queues, clear the error, CONNECTED, notify.

        While ``connection`` is RECONNECT the guest ignores every other
        field, so the server may write the guest's indices too.
        """
        for word in (self._in_cons, self._in_prod, self._out_cons, self._out_prod):
            word.store(0)
        self._error.store(XENSTORE_ERROR_NONE)
        # xen_wmb(): the empty queues are visible before the state that allows
        # their use; each seq-cst store is ordered after the ones before it.
        self._connection.store(XENSTORE_CONNECTED)
        self._notify()

    async def reconnect(self) -> None:
        """Guest end: ask for a reset and wait until the server has done it.

        Returns with both queues empty, on a packet boundary; the server
        has dropped this guest's watches, transactions and requests.
        """
        self._connection.store(XENSTORE_RECONNECT)
        self._notify()
        while True:
            seen = self._kicks
            if self._connection.load() == XENSTORE_CONNECTED:
                self.server_error = XENSTORE_ERROR_NONE
                return
            await self._wait(seen)
            if self._closed:
                raise trio.ClosedResourceError("ring stream closed")

    # -- receiving ----------------------------------------------------------
    def _take(self, max_bytes: int) -> bytes:
        self._check_open()  # the index views go with the stream
        base = self._in_base
        cons = self._in_cons.load()
        # Read once: the peer may change it any time. The load is an acquire,
        # so the data below is read after it: xen_rmb()/virt_rmb() in xb_read.
        prod = self._in_prod.load()
        avail = (prod - cons) & _MASK32
        if avail > XENSTORE_RING_SIZE:
            raise trio.BrokenResourceError(
                f"peer corrupted the ring indices (cons {cons}, prod {prod})")
        if avail == 0:
            return b""
        start = cons & (XENSTORE_RING_SIZE - 1)
        n = min(avail, max_bytes, XENSTORE_RING_SIZE - start)
        data = bytes(self.page[base + start:base + start + n])
        # xen_mb()/virt_mb() in xb_read: the data is copied out before the
        # space is released. The seq-cst store (x86 xchg) is that full barrier.
        self._in_cons.store(cons + n)
        return data

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        self._check_open()
        want = max_bytes or XENSTORE_RING_SIZE
        while True:
            seen = self._kicks
            data = self._take(want)
            if data:
                self._notify()
                return data
            await self._wait(seen)
            self._check_open()

    # -- sending --------------------------------------------------------------------
    def _put_some(self, data: memoryview) -> int:
        self._check_open()
        base = self._out_base
        # Read once. virt_mb() in xb_write: the data is written only after
        # the consumer index is read; the acquire load orders that.
        cons = self._out_cons.load()
        prod = self._out_prod.load()
        used = (prod - cons) & _MASK32
        if used > XENSTORE_RING_SIZE:
            raise trio.BrokenResourceError(
                f"peer corrupted the ring indices (cons {cons}, prod {prod})")
        space = XENSTORE_RING_SIZE - used
        if space == 0:
            return 0
        start = prod & (XENSTORE_RING_SIZE - 1)
        n = min(space, len(data), XENSTORE_RING_SIZE - start)
        self.page[base + start:base + start + n] = data[:n]
        # xen_wmb()/virt_wmb() in xb_write: the bytes are in place before the
        # index that exposes them; the seq-cst store is at least a release.
        self._out_prod.store(prod + n)
        return n

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._check_open()
        async with self._send_lock:
            view = memoryview(data)
            while view:
                seen = self._kicks
                n = self._put_some(view)
                if n:
                    view = view[n:]
                    self._notify()
                    continue
                await self._wait(seen)
                self._check_open()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self.release()
        await trio.lowlevel.checkpoint()
