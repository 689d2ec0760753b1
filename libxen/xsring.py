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
    XENSTORE_RING_SIZE,
    XS_RING_REQ_CONS_OFF,
    XS_RING_REQ_OFF,
    XS_RING_REQ_PROD_OFF,
    XS_RING_RSP_CONS_OFF,
    XS_RING_RSP_OFF,
    XS_RING_RSP_PROD_OFF,
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
        self._closed = False
        self._send_lock = trio.StrictFIFOLock()

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
