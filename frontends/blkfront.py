"""blkfront for program guests: a block device over blkif.

What Linux's ``drivers/block/xen-blkfront.c`` does, for a Python guest::

    async with BlockDevice.open(domain) as disk:        # the first vbd
        await disk.write(4096, b"hello")                 # byte offsets
        data = await disk.read(4096, 5)
        await disk.flush()                               # durable from here
        await disk.discard(0, 1 << 20)                   # sector-aligned

Handshake (``talk_to_blkback``): wait for the backend's InitWait, allocate
the ring (``2**ring_page_order`` pages, at most the backend's
``max-ring-page-order``), grant it, allocate an unbound port, write
``ring-ref`` (or ``ring-page-order`` + ``ring-ref0..N``), ``event-channel``,
``protocol`` and ``feature-persistent`` in one switch to Initialised, wait
for Connected, read ``sectors``, ``sector-size``, ``info`` and the
backend's features (``blkfront_gather_backend_features``).

Data lives in guest frames: a pool of pages, granted once and kept
(persistent grants) when the backend agreed to ``feature-persistent``,
else granted for each request and revoked after its response. Requests
larger than ``BLKIF_MAX_SEGMENTS_PER_REQUEST`` pages go as one INDIRECT
request when the backend advertises ``feature-max-indirect-segments``,
else as several. Many requests may be in flight (up to the ring's size);
a task per device takes responses, with ``RING_FINAL_CHECK_FOR_RESPONSES``
before it sleeps.

The backend is dom0 (trusted as Linux trusts it), yet its responses are
checked: an unknown id or an overflowing ``rsp_prod`` breaks the device.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from frontends.xenbus.device import FrontendDevice, FrontendError, find_devices
from hypervisord.public.io.blkif import (
    BLKIF_MAX_SEGMENTS_PER_REQUEST,
    BLKIF_REQUEST_DISCARD,
    BLKIF_REQUEST_HDR,
    BLKIF_REQUEST_INDIRECT,
    BLKIF_REQUEST_SEGMENT,
    BLKIF_RESPONSE,
    BLKIF_SECTOR_SIZE,
    BLKIF_SEGS_PER_INDIRECT_FRAME,
    BLKIF_SRING_ENTRY_SIZE,
    VDISK_READONLY,
    BlkifOp,
    BlkifRsp,
)
from hypervisord.public.io.protocols import XEN_IO_PROTO_ABI_NATIVE
from hypervisord.public.io.ring import FrontRing, RingOverflowError
from libxen.ringidx import shared_ring
from libxen.xenbus import XenbusState

S = XenbusState
Op = BlkifOp
PAGE = 4096
SECTORS_PER_PAGE = PAGE // BLKIF_SECTOR_SIZE
_ID = struct.Struct("<Q")  # the request id, at byte 8 of every request variant
#: guest frames the page pool may take (as Linux bounds its persistent grants)
MAX_POOL_PAGES = 1024
POOL_CHUNK = 64


class BlockError(OSError):
    """A request failed; ``errno`` says how (EIO, EROFS, EOPNOTSUPP, EINVAL)."""


@dataclass(slots=True)
class _Page:
    gfn: int
    view: memoryview
    gref: int | None = None  # a persistent grant, kept


@dataclass(slots=True)
class _Pending:
    done: trio.Event
    status: int = 0
    pages: list[_Page] | None = None


class BlockDevice:
    """One vbd (see the module docstring). Use :meth:`open`."""

    def __init__(self, domain: Any, fe: FrontendDevice) -> None:
        self.domain = domain
        self.fe = fe
        self.sectors = 0
        self.sector_size = BLKIF_SECTOR_SIZE
        self.readonly = False
        self.persistent = False
        self.max_indirect_segments = 0
        self.flush_supported = False
        self.discard_supported = False
        self.ring_page_order = 0
        self._free_pages: list[_Page] = []
        self._pool_size = 0
        self._pool_cap = MAX_POOL_PAGES
        self._pool_changed = trio.Event()
        self._pending: dict[int, _Pending] = {}
        self._broken: str | None = None
        #: requests sent, by kind: what tests and benchmarks look at
        self.stats = {"requests": 0, "indirect": 0, "notifies": 0}

    # -- opening and closing ------------------------------------------------------------
    @classmethod
    @asynccontextmanager
    async def open(cls, domain: Any, devid: int | None = None, *, ring_page_order: int = 0,
                   persistent: bool = True, indirect: bool = True) -> AsyncIterator["BlockDevice"]:
        if devid is None:
            devids = await find_devices(domain, "vbd")
            if not devids:
                raise BlockError(errno.ENODEV, f"domain {domain.domid} has no vbd")
            devid = devids[0]
        fe = await FrontendDevice.open(domain, "vbd", devid)
        dev = cls(domain, fe)
        await dev._connect(ring_page_order, persistent, indirect)  # its errors unwrapped
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dev._responses)
            nursery.start_soon(dev._watch_backend)
            try:
                yield dev
            finally:
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(10):
                        await dev._close()
                nursery.cancel_scope.cancel()

    async def _connect(self, order: int, persistent: bool, indirect: bool) -> None:
        fe, domain = self.fe, self.domain
        await fe.wait_backend(S.XenbusStateInitWait)
        max_order = await fe.backend_uint("max-ring-page-order", 0, limit=16)
        self.ring_page_order = order = min(order, max_order)
        if indirect:
            self.max_indirect_segments = min(
                await fe.backend_uint("feature-max-indirect-segments", 0), 256)
        self.gnttab = gnttab = await domain.open_gnttab()
        self.evtchn = domain.evtchn or await domain.open_evtchn()
        npages = 1 << order
        gfn = domain.alloc_gfns(npages)
        self._ring_mem = memoryview(domain.map_gfn(gfn, npages))
        self._ring_refs = [gnttab.grant_access(fe.backend_id, gfn + i) for i in range(npages)]
        self.sring = shared_ring(self._ring_mem, BLKIF_SRING_ENTRY_SIZE, npages * PAGE)
        self.front = FrontRing.init(self.sring)
        self._ids = list(range(self.front.nr_ents))
        self._slot_freed = trio.Event()  # set when an id comes back to an empty list
        self.port = await self.evtchn.bind_unbound_port(fe.backend_id)
        keys = {"event-channel": str(self.port), "protocol": XEN_IO_PROTO_ABI_NATIVE,
                "feature-persistent": "1" if persistent else "0"}
        if order == 0:
            keys["ring-ref"] = str(self._ring_refs[0])
        else:
            keys["ring-page-order"] = str(order)
            keys |= {f"ring-ref{i}": str(r) for i, r in enumerate(self._ring_refs)}
        await fe.switch(S.XenbusStateInitialised, keys)
        await fe.wait_backend(S.XenbusStateConnected)
        self.sectors = await fe.backend_uint("sectors", limit=2**64 - 1)
        self.sector_size = await fe.backend_uint("sector-size", BLKIF_SECTOR_SIZE)
        self.readonly = bool(await fe.backend_uint("info", 0) & VDISK_READONLY)
        self.persistent = persistent and await fe.backend_uint("feature-persistent", 0) == 1
        self.flush_supported = await fe.backend_uint("feature-flush-cache", 0) == 1
        self.discard_supported = await fe.backend_uint("feature-discard", 0) == 1
        await fe.switch(S.XenbusStateConnected)

    async def _close(self) -> None:
        try:
            await self.fe.close()
        except FrontendError:
            pass  # the backend went first (or never answers): we are Closed anyway
        for page in self._all_pages():
            if page.gref is not None and self.gnttab.try_end_access(page.gref):
                page.gref = None
        for ref in self._ring_refs:
            self.gnttab.try_end_access(ref)

    def _all_pages(self) -> list[_Page]:
        return list(self._free_pages)

    @property
    def size(self) -> int:
        """Bytes (``sectors`` counts 512-byte units whatever ``sector-size`` is)."""
        return self.sectors * BLKIF_SECTOR_SIZE

    # -- the page pool --------------------------------------------------------------------
    async def _get_pages(self, n: int) -> list[_Page]:
        while len(self._free_pages) < n:
            if self._pool_size < self._pool_cap:
                try:
                    self._grow(min(POOL_CHUNK, self._pool_cap - self._pool_size))
                    continue
                except MemoryError:
                    if self._pool_size < n:
                        raise BlockError(errno.ENOMEM, f"{n} pages wanted, guest memory for "
                                         f"only {self._pool_size}") from None
                    self._pool_cap = self._pool_size
            ev = self._pool_changed
            await ev.wait()
        pages, self._free_pages = self._free_pages[-n:], self._free_pages[:-n]
        return pages

    def _grow(self, count: int) -> None:
        gfn = self.domain.alloc_gfns(count)
        mem = memoryview(self.domain.map_gfn(gfn, count))
        for i in range(count):
            page = _Page(gfn + i, mem[i * PAGE:(i + 1) * PAGE])
            if self.persistent:
                page.gref = self.gnttab.grant_access(self.fe.backend_id, page.gfn)
            self._free_pages.append(page)
        self._pool_size += count

    def _put_pages(self, pages: list[_Page]) -> None:
        self._free_pages.extend(pages)
        self._pool_changed.set()
        self._pool_changed = trio.Event()

    def _gref(self, page: _Page, readonly: bool) -> int:
        if page.gref is not None:
            return page.gref
        return self.gnttab.grant_access(self.fe.backend_id, page.gfn, readonly)

    def _ungrant(self, pages: list[_Page], grefs: list[int]) -> None:
        if not self.persistent:
            for ref in grefs:
                self.gnttab.end_access(ref)

    # -- requests -------------------------------------------------------------------------
    async def _submit(self, req: bytearray) -> int:
        """Queue one request (its id goes in here), wait for its status.

        At most one request per ring slot is in flight: an id is a slot's
        worth of room, so ``put_request`` never finds the ring full."""
        while not self._ids:
            if self._broken:
                break
            await self._slot_freed.wait()
        if self._broken:
            raise BlockError(errno.EIO, f"{self.fe.name}: {self._broken}")
        rid = self._ids.pop()
        _ID.pack_into(req, 8, rid)
        pend = self._pending[rid] = _Pending(trio.Event())
        try:
            self.front.put_request(req)
            self.stats["requests"] += 1
            if self.front.push_requests_and_check_notify():
                self.stats["notifies"] += 1
                self.evtchn.notify_soon(self.port)
            await pend.done.wait()
        finally:
            if pend.done.is_set() or self._broken:
                del self._pending[rid]
                self._ids.append(rid)
                if len(self._ids) == 1:
                    self._slot_freed.set()
                    self._slot_freed = trio.Event()
        if self._broken and not pend.done.is_set():
            raise BlockError(errno.EIO, f"{self.fe.name}: {self._broken}")
        return pend.status

    async def _responses(self) -> None:
        front = self.front
        while True:
            try:
                resps = front.take_responses()
            except RingOverflowError as e:
                self._break(f"backend broke the ring: {e}")
                return
            for raw in resps:
                rid, _op, status = BLKIF_RESPONSE.unpack_from(raw)
                pend = self._pending.get(rid)
                if pend is None or pend.done.is_set():
                    self._break(f"backend answered unknown request id {rid}")
                    return
                pend.status = status
                pend.done.set()
            if resps or front.final_check_for_responses():
                continue
            await self.evtchn.wait_port(self.port)

    async def _watch_backend(self) -> None:
        """A backend that closes under us (``blkback_changed``: Closing) ends
        the device: requests in flight and later ones fail with EIO."""
        async with self.fe.watch_backend_state() as states:
            async for state in states:
                if state in (S.XenbusStateClosing, S.XenbusStateClosed) and \
                        self.fe.state == S.XenbusStateConnected:
                    self._break(f"backend {self.fe.backend} is {state.name[11:]}")
                    return

    def _break(self, why: str) -> None:
        self._broken = why
        self._slot_freed.set()
        for pend in self._pending.values():
            pend.done.set()

    def _check(self, op: Op, status: int, sector: int, count: int) -> None:
        if status == BlkifRsp.BLKIF_RSP_OKAY and not self._broken:
            return
        what = f"{self.fe.name}: {op.name[9:]} of sectors {sector}+{count}"
        if self._broken:
            raise BlockError(errno.EIO, f"{what}: {self._broken}")
        if status == BlkifRsp.BLKIF_RSP_EOPNOTSUPP:
            raise BlockError(errno.EOPNOTSUPP, f"{what}: not supported by the backend")
        if self.readonly and op != Op.BLKIF_OP_READ:
            raise BlockError(errno.EROFS, f"{what}: refused, the disk is read-only")
        raise BlockError(errno.EIO, f"{what}: the backend answered BLKIF_RSP_ERROR ({status})")

    def _max_pages(self) -> int:
        return max(self.max_indirect_segments, BLKIF_MAX_SEGMENTS_PER_REQUEST)

    async def _rw(self, op: Op, sector: int, nsect: int, data: memoryview | None,
                  out: memoryview | None) -> None:
        """One request of at most ``_max_pages()`` pages."""
        npages = -(-nsect // SECTORS_PER_PAGE)
        indirect = npages > BLKIF_MAX_SEGMENTS_PER_REQUEST
        nind = -(-npages // BLKIF_SEGS_PER_INDIRECT_FRAME) if indirect else 0
        pages = await self._get_pages(npages + nind)
        grefs: list[int] = []
        try:
            segs = []
            left = nsect
            for i, page in enumerate(pages[:npages]):
                n = min(left, SECTORS_PER_PAGE)
                if data is not None:
                    page.view[:n * 512] = data[i * PAGE:i * PAGE + n * 512]
                gref = self._gref(page, readonly=op == Op.BLKIF_OP_WRITE)
                grefs.append(gref)
                segs.append(BLKIF_REQUEST_SEGMENT.pack(gref, 0, n - 1))
                left -= n
            if indirect:
                self.stats["indirect"] += 1
                igrefs = []
                table = b"".join(segs)
                for j, page in enumerate(pages[npages:]):
                    chunk = table[j * PAGE:(j + 1) * PAGE]
                    page.view[:len(chunk)] = chunk
                    g = self._gref(page, readonly=True)
                    grefs.append(g)
                    igrefs.append(g)
                igrefs += [0] * (8 - len(igrefs))
                req = bytearray(BLKIF_REQUEST_INDIRECT.pack(Op.BLKIF_OP_INDIRECT, op, npages, 0,
                                                            sector, 0, *igrefs))
            else:
                req = bytearray(BLKIF_REQUEST_HDR.pack(op, npages, 0, 0, sector) + b"".join(segs))
            status = await self._submit(req)
            self._check(op, status, sector, nsect)
            if out is not None:
                for i, page in enumerate(pages[:npages]):
                    n = min(nsect - i * SECTORS_PER_PAGE, SECTORS_PER_PAGE) * 512
                    out[i * PAGE:i * PAGE + n] = page.view[:n]
        finally:
            self._ungrant(pages, grefs)
            self._put_pages(pages)

    def _range(self, sector: int, count: int) -> None:
        if sector < 0 or count < 0 or sector + count > self.sectors:
            raise BlockError(errno.EINVAL, f"{self.fe.name}: sectors {sector}+{count} outside "
                             f"the disk's {self.sectors}")

    async def read_sectors(self, sector: int, count: int) -> bytes:
        self._range(sector, count)
        buf = bytearray(count * BLKIF_SECTOR_SIZE)
        out = memoryview(buf)
        per = self._max_pages() * SECTORS_PER_PAGE
        if count <= per:  # one request: no task of its own
            await self._rw(Op.BLKIF_OP_READ, sector, count, None, out)
            return bytes(buf)
        async with trio.open_nursery() as nursery:
            for s in range(0, count, per):
                n = min(per, count - s)
                nursery.start_soon(self._rw, Op.BLKIF_OP_READ, sector + s, n, None,
                                   out[s * 512:(s + n) * 512])
        return bytes(buf)

    async def write_sectors(self, sector: int, data: bytes) -> None:
        if len(data) % BLKIF_SECTOR_SIZE:
            raise BlockError(errno.EINVAL, f"{len(data)} bytes is not whole sectors")
        count = len(data) // BLKIF_SECTOR_SIZE
        self._range(sector, count)
        mv = memoryview(data)
        per = self._max_pages() * SECTORS_PER_PAGE
        if count <= per:
            await self._rw(Op.BLKIF_OP_WRITE, sector, count, mv, None)
            return
        async with trio.open_nursery() as nursery:
            for s in range(0, count, per):
                n = min(per, count - s)
                nursery.start_soon(self._rw, Op.BLKIF_OP_WRITE, sector + s, n,
                                   mv[s * 512:(s + n) * 512], None)

    async def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at byte ``offset``."""
        first, end = offset // 512, -(-(offset + length) // 512)
        data = await self.read_sectors(first, end - first)
        return data[offset - first * 512:offset - first * 512 + length]

    async def write(self, offset: int, data: bytes) -> None:
        """``data`` at byte ``offset`` (partial sectors: read, modify, write)."""
        first, end = offset // 512, -(-(offset + len(data)) // 512)
        head, tail = offset - first * 512, end * 512 - (offset + len(data))
        if head or tail:
            buf = bytearray(await self.read_sectors(first, end - first)) if end - first <= 2 else \
                bytearray(await self.read_sectors(first, 1)) + bytearray((end - first - 2) * 512) + \
                bytearray(await self.read_sectors(end - 1, 1))
            buf[head:head + len(data)] = data
            data = bytes(buf)
        await self.write_sectors(first, data)

    async def flush(self) -> None:
        """FLUSH_DISKCACHE: every write acknowledged before is on disk after."""
        if not self.flush_supported:
            raise BlockError(errno.EOPNOTSUPP, f"{self.fe.name}: no feature-flush-cache")
        status = await self._submit(bytearray(BLKIF_REQUEST_HDR.pack(
            Op.BLKIF_OP_FLUSH_DISKCACHE, 0, 0, 0, 0)))
        self._check(Op.BLKIF_OP_FLUSH_DISKCACHE, status, 0, 0)

    async def discard(self, offset: int, length: int) -> None:
        """DISCARD of whole sectors (the image reads zeros there afterwards)."""
        if offset % 512 or length % 512:
            raise BlockError(errno.EINVAL, f"discard {offset}+{length}: not whole sectors")
        if not self.discard_supported:
            raise BlockError(errno.EOPNOTSUPP, f"{self.fe.name}: no feature-discard")
        sector, count = offset // 512, length // 512
        self._range(sector, count)
        status = await self._submit(bytearray(BLKIF_REQUEST_DISCARD.pack(
            Op.BLKIF_OP_DISCARD, 0, 0, 0, sector, count)))
        self._check(Op.BLKIF_OP_DISCARD, status, sector, count)
