"""blkback's pure core (``backendd/blkback/ring.py``): every field of a
copied request checked as Linux's blkback checks it, responses with zero
padding, and the paged ring of a multi-page ``ring-ref0..N``."""

from __future__ import annotations

import pytest

from backendd.blkback.ring import BadRequest, Limits, PagedSharedRing, finish_indirect, \
    parse_request, request_id, response
from hypervisord.public.io.blkif import (
    BLKIF_REQUEST_DISCARD,
    BLKIF_REQUEST_HDR,
    BLKIF_REQUEST_INDIRECT,
    BLKIF_REQUEST_SEGMENT,
    BLKIF_SRING_ENTRY_SIZE,
    BlkifOp as Op,
    BlkifRsp as Rsp,
)
from hypervisord.public.io.ring import BackRing, FrontRing, SharedRing

LIM = Limits(sectors=2048, readonly=False, max_indirect_segments=256)
RO = Limits(sectors=2048, readonly=True, max_indirect_segments=256)


def rw(op, sector, segs, nseg=None, rid=77):
    raw = BLKIF_REQUEST_HDR.pack(op, len(segs) if nseg is None else nseg, 0, rid, sector)
    raw += b"".join(BLKIF_REQUEST_SEGMENT.pack(*s) for s in segs)
    return raw.ljust(112, b"\0")


def refused(raw, lim=LIM) -> Rsp:
    with pytest.raises(BadRequest) as e:
        parse_request(raw, lim)
    assert request_id(raw) == 77
    return e.value.status


def test_valid_read_and_write_cover_their_segments():
    req = parse_request(rw(Op.BLKIF_OP_READ, 8, [(9, 0, 7), (10, 0, 3)]), LIM)
    assert (req.id, req.op, req.sector, req.nr_sects) == (77, Op.BLKIF_OP_READ, 8, 12)
    assert [(s.gref, s.offset, s.length) for s in req.segments] == [(9, 0, 4096), (10, 0, 2048)]
    assert parse_request(rw(Op.BLKIF_OP_WRITE, 2047, [(9, 3, 3)]), LIM).length == 512


@pytest.mark.parametrize("nseg", [0, 12, 255])
def test_bad_segment_counts_are_errors(nseg):
    assert refused(rw(Op.BLKIF_OP_READ, 0, [(9, 0, 7)] * min(nseg, 11), nseg=nseg)) == Rsp.BLKIF_RSP_ERROR


def test_flush_may_have_no_segments():
    req = parse_request(rw(Op.BLKIF_OP_FLUSH_DISKCACHE, 0, []), LIM)
    assert req.flush and req.segments == () and req.nr_sects == 0


@pytest.mark.parametrize("first,last", [(4, 3), (0, 8), (7, 255)])
def test_bad_segment_sectors_are_errors(first, last):
    assert refused(rw(Op.BLKIF_OP_WRITE, 0, [(9, first, last)])) == Rsp.BLKIF_RSP_ERROR


@pytest.mark.parametrize("sector", [2048, 2041, 2**63, 2**64 - 1])
def test_sectors_beyond_the_disk_or_wrapping_are_errors(sector):
    assert refused(rw(Op.BLKIF_OP_READ, sector, [(9, 0, 7)])) == Rsp.BLKIF_RSP_ERROR


def test_read_only_disk_refuses_writes_flushes_discards_not_reads():
    parse_request(rw(Op.BLKIF_OP_READ, 0, [(9, 0, 7)]), RO)
    assert refused(rw(Op.BLKIF_OP_WRITE, 0, [(9, 0, 7)]), RO) == Rsp.BLKIF_RSP_ERROR
    assert refused(rw(Op.BLKIF_OP_FLUSH_DISKCACHE, 0, []), RO) == Rsp.BLKIF_RSP_ERROR
    discard = BLKIF_REQUEST_DISCARD.pack(Op.BLKIF_OP_DISCARD, 0, 0, 77, 0, 8).ljust(112, b"\0")
    assert refused(discard, RO) == Rsp.BLKIF_RSP_ERROR


@pytest.mark.parametrize("op", [Op.BLKIF_OP_WRITE_BARRIER, Op.BLKIF_OP_RESERVED_1, 7, 255])
def test_unknown_operations_are_not_supported(op):
    assert refused(rw(op, 0, [(9, 0, 7)])) == Rsp.BLKIF_RSP_EOPNOTSUPP


def test_discard_range_and_secure_flag():
    ok = BLKIF_REQUEST_DISCARD.pack(Op.BLKIF_OP_DISCARD, 0, 0, 77, 8, 2040).ljust(112, b"\0")
    assert parse_request(ok, LIM).length == 2040 * 512
    past = BLKIF_REQUEST_DISCARD.pack(Op.BLKIF_OP_DISCARD, 0, 0, 77, 8, 2041).ljust(112, b"\0")
    assert refused(past) == Rsp.BLKIF_RSP_ERROR
    wrap = BLKIF_REQUEST_DISCARD.pack(Op.BLKIF_OP_DISCARD, 0, 0, 77, 1, 2**64 - 1).ljust(112, b"\0")
    assert refused(wrap) == Rsp.BLKIF_RSP_ERROR
    secure = BLKIF_REQUEST_DISCARD.pack(Op.BLKIF_OP_DISCARD, 1, 0, 77, 0, 8).ljust(112, b"\0")
    assert refused(secure) == Rsp.BLKIF_RSP_EOPNOTSUPP


def indirect(nseg, op=Op.BLKIF_OP_READ, grefs=(20,)):
    g = list(grefs) + [0] * (8 - len(grefs))
    return BLKIF_REQUEST_INDIRECT.pack(Op.BLKIF_OP_INDIRECT, op, nseg, 77, 0, 0, *g).ljust(112, b"\0")


def test_indirect_segments_come_from_the_copied_pages():
    req = parse_request(indirect(16), LIM)
    assert req.indirect_grefs == (20,) and req.nr_segments == 16
    page = b"".join(BLKIF_REQUEST_SEGMENT.pack(100 + i, 0, 7) for i in range(16)).ljust(4096, b"\0")
    full = finish_indirect(req, [page], LIM)
    assert full.nr_sects == 128 and full.segments[15].gref == 115
    bad = page[:8 * 3] + BLKIF_REQUEST_SEGMENT.pack(5, 2, 1) + page[32:]
    with pytest.raises(BadRequest):
        finish_indirect(req, [bad], LIM)
    assert parse_request(indirect(513, grefs=(20, 21)), Limits(1 << 20, False, 1024)).indirect_grefs == (20, 21)


@pytest.mark.parametrize("nseg,op", [(0, Op.BLKIF_OP_READ), (257, Op.BLKIF_OP_READ),
                                     (65535, Op.BLKIF_OP_WRITE), (8, Op.BLKIF_OP_DISCARD),
                                     (8, Op.BLKIF_OP_INDIRECT)])
def test_bad_indirect_requests_are_errors(nseg, op):
    assert refused(indirect(nseg, op)) == Rsp.BLKIF_RSP_ERROR


def test_indirect_past_the_disk_is_an_error():
    req = parse_request(BLKIF_REQUEST_INDIRECT.pack(Op.BLKIF_OP_INDIRECT, 0, 16, 77, 2000, 0, 20,
                                                    *[0] * 7).ljust(112, b"\0"), LIM)
    page = b"".join(BLKIF_REQUEST_SEGMENT.pack(100, 0, 7) for _ in range(16))
    with pytest.raises(BadRequest):
        finish_indirect(req, [page], LIM)


def test_response_padding_is_zero():
    raw = response(0x1122334455667788, Op.BLKIF_OP_READ, Rsp.BLKIF_RSP_ERROR)
    assert raw == bytes.fromhex("8877665544332211") + b"\x00\x00\xff\xff" + b"\0" * 4


def test_paged_ring_is_the_contiguous_ring_across_pages():
    """Four separately held pages behave as one 4-page area: a front ring
    on the contiguous buffer and a back ring on the pages see the same
    entries, including the ones straddling a page boundary."""
    area = bytearray(4 * 4096)
    front = FrontRing.init(SharedRing(area, BLKIF_SRING_ENTRY_SIZE))
    mv = memoryview(area)
    paged = PagedSharedRing([mv[i * 4096:(i + 1) * 4096] for i in range(4)], BLKIF_SRING_ENTRY_SIZE)
    assert paged.nr_ents == front.nr_ents == 128
    back = BackRing.init(paged)
    sent = [bytes([i]) * 112 for i in range(128)]
    for r in sent:
        front.put_request(r)
    front.push_requests()
    assert back.take_requests() == sent
    for i in range(128):
        back.put_response(response(i, 0, Rsp.BLKIF_RSP_OKAY))
    back.push_responses()
    got = front.take_responses()
    assert [int.from_bytes(g[:8], "little") for g in got] == list(range(128))
    assert all(g[16:] == bytes(96) for g in got)  # the rest of the slot is zeroed
    paged.close()
