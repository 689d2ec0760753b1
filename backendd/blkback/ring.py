"""blkback's pure core: a copied request in, a validated request (or the
status to answer it with) out; responses out as bytes.

Follows ``xen/include/public/io/blkif.h`` and the checks of Linux's
``drivers/block/xen-blkback/blkback.c`` (``dispatch_rw_block_io``,
``xen_blkbk_parse_indirect``, ``dispatch_discard_io``, ``xen_vbd_translate``):

* READ/WRITE: ``1 <= nr_segments <= BLKIF_MAX_SEGMENTS_PER_REQUEST``;
  FLUSH_DISKCACHE may carry 0 segments (then it is a pure flush);
* INDIRECT: ``indirect_op`` READ or WRITE, ``1 <= nr_segments <=`` the
  ``feature-max-indirect-segments`` we advertised, its segments come from
  the indirect pages (copied once by the caller, then parsed here);
* every segment ``first_sect <= last_sect < BLKIF_SECTORS_PER_PAGE``;
* the sector range ``[sector_number, sector_number + nr_sects)`` lies in
  the disk, with no wrap-around (``end < sector_number`` is refused, so
  2**64-1 is);
* a non-read on a read-only disk is refused (``-EACCES`` in
  ``xen_vbd_translate``), unknown operations get ``BLKIF_RSP_EOPNOTSUPP``
  (``dispatch_other_io``).

Nothing here touches shared memory: :func:`parse_request` takes the
``bytes`` copy of a slot (``RING_COPY_REQUEST``), so a frontend flipping
the slot meanwhile changes nothing we act on. The request id sits at byte 8
of every variant on x86-64, so even a request refused on its first byte is
answered with its own id.

:class:`PagedSharedRing` is ``io/ring.h``'s shared ring over the separately
mapped pages of a multi-page ring (``ring-ref0..N``): entries that straddle
a page boundary are gathered on copy and scattered on put.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hypervisord.public.io.blkif import (
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST,
    BLKIF_MAX_SEGMENTS_PER_REQUEST,
    BLKIF_REQUEST_DISCARD,
    BLKIF_REQUEST_HDR,
    BLKIF_REQUEST_INDIRECT,
    BLKIF_REQUEST_SEG_OFF,
    BLKIF_REQUEST_SEGMENT,
    BLKIF_RESPONSE,
    BLKIF_SECTOR_SIZE,
    BLKIF_SECTORS_PER_PAGE,
    BLKIF_SEGS_PER_INDIRECT_FRAME,
    BLKIF_DISCARD_SECURE,
    BlkifOp,
    BlkifRsp,
)
from hypervisord.public.io.ring import SRING_RING_OFF, SharedRing, const_ring_size, private_index

Op = BlkifOp
_ID = struct.Struct("<Q")
_ID_OFF = 8
PAGE = 4096


class BadRequest(Exception):
    """The frontend sent a request we answer with ``status`` (and log why)."""

    def __init__(self, status: BlkifRsp, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass(frozen=True, slots=True)
class Segment:
    gref: int
    first_sect: int
    last_sect: int

    @property
    def offset(self) -> int:
        return self.first_sect * BLKIF_SECTOR_SIZE

    @property
    def length(self) -> int:
        return (self.last_sect - self.first_sect + 1) * BLKIF_SECTOR_SIZE


@dataclass(frozen=True, slots=True)
class Request:
    """A validated request. ``op`` is what is done (an INDIRECT's
    ``indirect_op``), also the operation echoed in the response."""

    id: int
    op: BlkifOp
    sector: int
    nr_sects: int
    segments: tuple[Segment, ...] = ()
    indirect_grefs: tuple[int, ...] = ()  #: still to be mapped and parsed
    nr_segments: int = 0  #: of an INDIRECT whose pages are not parsed yet
    secure: bool = False  #: DISCARD: BLKIF_DISCARD_SECURE
    flush: bool = False  #: FLUSH_DISKCACHE (with or without data)

    @property
    def offset(self) -> int:
        return self.sector * BLKIF_SECTOR_SIZE

    @property
    def length(self) -> int:
        return self.nr_sects * BLKIF_SECTOR_SIZE


@dataclass(frozen=True, slots=True)
class Limits:
    """What this device accepts: the disk and what we advertised."""

    sectors: int
    readonly: bool
    max_indirect_segments: int
    discard: bool = True
    discard_secure: bool = False


def request_id(raw: bytes) -> int:
    return _ID.unpack_from(raw, _ID_OFF)[0]


def _check_range(sector: int, nr_sects: int, lim: Limits) -> None:
    end = sector + nr_sects
    if end >= 1 << 64:  # a uint64 wrap in C: refused, as ``end < sector_number``
        raise BadRequest(BlkifRsp.BLKIF_RSP_ERROR, f"sector {sector} + {nr_sects} wraps around")
    if end > lim.sectors:
        raise BadRequest(BlkifRsp.BLKIF_RSP_ERROR,
                         f"sectors {sector}..{end} beyond the disk's {lim.sectors}")


def parse_segments(raw: bytes | memoryview, count: int) -> tuple[Segment, ...]:
    """``count`` blkif_request_segments from a copied buffer, each checked."""
    segs = []
    for gref, first, last in BLKIF_REQUEST_SEGMENT.iter_unpack(raw[:count * BLKIF_REQUEST_SEGMENT.size]):
        if last >= BLKIF_SECTORS_PER_PAGE or last < first:
            raise BadRequest(BlkifRsp.BLKIF_RSP_ERROR, f"segment sectors {first}..{last}")
        segs.append(Segment(gref, first, last))
    return tuple(segs)


def _with_segments(req: Request, segs: tuple[Segment, ...], lim: Limits) -> Request:
    nr_sects = sum(s.last_sect - s.first_sect + 1 for s in segs)
    _check_range(req.sector, nr_sects, lim)
    return Request(req.id, req.op, req.sector, nr_sects, segs, flush=req.flush)


def _check_write(op: BlkifOp, lim: Limits) -> None:
    if op != Op.BLKIF_OP_READ and lim.readonly:
        raise BadRequest(BlkifRsp.BLKIF_RSP_ERROR, f"{op.name} on a read-only disk")


def parse_request(raw: bytes, lim: Limits) -> Request:
    """Validate one copied slot. Raises :class:`BadRequest`."""
    operation, nseg, _handle, rid, sector = BLKIF_REQUEST_HDR.unpack_from(raw)
    if operation in (Op.BLKIF_OP_READ, Op.BLKIF_OP_WRITE, Op.BLKIF_OP_FLUSH_DISKCACHE):
        op = Op(operation)
        flush = op == Op.BLKIF_OP_FLUSH_DISKCACHE
        if (nseg == 0 and not flush) or nseg > BLKIF_MAX_SEGMENTS_PER_REQUEST:
            raise BadRequest(BlkifRsp.BLKIF_RSP_ERROR, f"{op.name} with {nseg} segments")
        _check_write(op, lim)
        segs = parse_segments(raw[BLKIF_REQUEST_SEG_OFF:], nseg)
        return _with_segments(Request(rid, op, sector, 0, flush=flush), segs, lim)
    if operation == Op.BLKIF_OP_INDIRECT:
        (_, indirect_op, nseg, rid, sector, _handle, *grefs) = BLKIF_REQUEST_INDIRECT.unpack_from(raw)
        if indirect_op not in (Op.BLKIF_OP_READ, Op.BLKIF_OP_WRITE):
            raise BadRequest(BlkifRsp.BLKIF_RSP_ERROR, f"INDIRECT with indirect_op {indirect_op}")
        op = Op(indirect_op)
        if lim.max_indirect_segments == 0:
            raise BadRequest(BlkifRsp.BLKIF_RSP_EOPNOTSUPP, "INDIRECT without feature-max-indirect-segments")
        if not 1 <= nseg <= lim.max_indirect_segments:
            raise BadRequest(BlkifRsp.BLKIF_RSP_ERROR,
                             f"INDIRECT with {nseg} segments (max {lim.max_indirect_segments})")
        _check_write(op, lim)
        npages = indirect_pages(nseg)
        assert npages <= BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST
        return Request(rid, op, sector, 0, indirect_grefs=tuple(grefs[:npages]), nr_segments=nseg)
    if operation == Op.BLKIF_OP_DISCARD:
        _, flag, _handle, rid, sector, nr_sectors = BLKIF_REQUEST_DISCARD.unpack_from(raw)
        if not lim.discard:
            raise BadRequest(BlkifRsp.BLKIF_RSP_EOPNOTSUPP, "DISCARD without feature-discard")
        secure = bool(flag & BLKIF_DISCARD_SECURE)
        if secure and not lim.discard_secure:
            raise BadRequest(BlkifRsp.BLKIF_RSP_EOPNOTSUPP, "secure DISCARD, not advertised")
        _check_write(Op.BLKIF_OP_DISCARD, lim)
        _check_range(sector, nr_sectors, lim)
        return Request(rid, Op.BLKIF_OP_DISCARD, sector, nr_sectors, secure=secure)
    raise BadRequest(BlkifRsp.BLKIF_RSP_EOPNOTSUPP, f"operation {operation}")


def finish_indirect(req: Request, pages: list[bytes], lim: Limits) -> Request:
    """The segments of an INDIRECT request, from copies of its indirect pages."""
    data = b"".join(pages)
    return _with_segments(req, parse_segments(data, req.nr_segments), lim)


def indirect_pages(nr_segments: int) -> int:
    """``INDIRECT_PAGES``: indirect frames holding ``nr_segments`` segments."""
    return -(-nr_segments // BLKIF_SEGS_PER_INDIRECT_FRAME)


def response(rid: int, operation: int, status: BlkifRsp) -> bytes:
    """A ``blkif_response``; its padding is zeros (XSA-216)."""
    return BLKIF_RESPONSE.pack(rid, operation & 0xFF, int(status))


class PagedSharedRing(SharedRing):
    """A shared ring over ``pages`` (one memoryview each), not contiguous.

    The header (and so every index) lives in page 0; the entries run on
    across the pages as if they were one area of ``len(pages) * 4096``
    bytes (``__CONST_RING_SIZE`` of the whole area).
    """

    __slots__ = ("_pages",)

    def __init__(self, pages: list[memoryview], entry_size: int, *, index_access=private_index) -> None:
        super().__init__(pages[0], entry_size, PAGE, index_access=index_access)
        self._pages = [memoryview(p).cast("B") for p in pages]
        self.nr_ents = const_ring_size(PAGE * len(pages), entry_size)

    def close(self) -> None:
        super().close()
        for p in self._pages:
            p.release()

    def _spans(self, idx: int):
        off = SRING_RING_OFF + (idx & (self.nr_ents - 1)) * self.entry_size
        end = off + self.entry_size
        while off < end:
            page, start = divmod(off, PAGE)
            n = min(end - off, PAGE - start)
            yield self._pages[page], start, n
            off += n

    def slot(self, idx: int) -> memoryview:
        raise TypeError("a paged ring has no contiguous slot: use copy() and put()")

    def copy(self, idx: int) -> bytes:
        return b"".join(bytes(p[s:s + n]) for p, s, n in self._spans(idx))

    def put(self, idx: int, data: bytes) -> None:
        if len(data) > self.entry_size:
            raise ValueError(f"{len(data)}-byte entry exceeds the {self.entry_size}-byte slot")
        data = data + bytes(self.entry_size - len(data))
        pos = 0
        for p, s, n in self._spans(idx):
            p[s:s + n] = data[pos:pos + n]
            pos += n
