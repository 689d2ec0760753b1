"""Block device I/O: mirrors ``xen/include/public/io/blkif.h``
(Xen commit c447b730, 4.23-unstable).

Requests travel front -> back and responses back -> front on one
``blkif_sring`` (a ring of 112-byte entries, the size of the largest
request). Every entry's bytes are written by the producing end; the back
end must copy a request once (``BackRing.take_requests``) and validate the
copy: operation, nr_segments (1..11 for READ/WRITE), each segment's
``first_sect <= last_sect <= 7`` and gref, and the sector range.

All sector quantities (``sector_number``, ``first_sect``, ``last_sect``,
the ``sectors`` xenstore node) are in 512-byte units whatever the
``sector-size`` node says.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from .ring import const_ring_size


class BlkifOp(IntEnum):
    """``BLKIF_OP_*``: ``blkif_request.operation``."""

    BLKIF_OP_READ = 0
    BLKIF_OP_WRITE = 1
    BLKIF_OP_WRITE_BARRIER = 2  # only if the back end sets feature-barrier
    BLKIF_OP_FLUSH_DISKCACHE = 3  # only with feature-flush-cache
    BLKIF_OP_RESERVED_1 = 4  # reserved (SLES device-specific packets)
    BLKIF_OP_DISCARD = 5  # only with feature-discard
    BLKIF_OP_INDIRECT = 6  # only with feature-max-indirect-segments


class BlkifRsp(IntEnum):
    """``BLKIF_RSP_*``: ``blkif_response.status``."""

    BLKIF_RSP_EOPNOTSUPP = -2  # operation not supported (barrier writes)
    BLKIF_RSP_ERROR = -1  # failed for some unspecified reason (-EIO)
    BLKIF_RSP_OKAY = 0


BLKIF_MAX_SEGMENTS_PER_REQUEST = 11
BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST = 8
BLKIF_SECTOR_SIZE = 512  # unit of every sector field on the ring
BLKIF_SECTORS_PER_PAGE = 4096 // BLKIF_SECTOR_SIZE  # so last_sect <= 7
BLKIF_DISCARD_SECURE = 1 << 0  # blkif_request_discard.flag

#: struct blkif_request_segment: gref, first_sect, last_sect (inclusive).
BLKIF_REQUEST_SEGMENT = struct.Struct("<IBB2x")
assert BLKIF_REQUEST_SEGMENT.size == 8
#: Segments an indirect page holds.
BLKIF_SEGS_PER_INDIRECT_FRAME = 4096 // BLKIF_REQUEST_SEGMENT.size
assert BLKIF_SEGS_PER_INDIRECT_FRAME == 512

#: The common prefix: operation, nr_segments, handle (blkif_vdev_t), id
#: (echoed in the response), sector_number.
BLKIF_REQUEST_HDR = struct.Struct("<BBH4xQQ")
assert BLKIF_REQUEST_HDR.size == 24
BLKIF_REQUEST_SEG_OFF = BLKIF_REQUEST_HDR.size

#: struct blkif_request: the header then seg[11].
BLKIF_REQUEST = struct.Struct(
    BLKIF_REQUEST_HDR.format + BLKIF_REQUEST_SEGMENT.format[1:] * BLKIF_MAX_SEGMENTS_PER_REQUEST
)
assert BLKIF_REQUEST.size == 112

#: struct blkif_request_discard: operation, flag, handle, id,
#: sector_number, nr_sectors.
BLKIF_REQUEST_DISCARD = struct.Struct("<BBH4xQQQ")
assert BLKIF_REQUEST_DISCARD.size == 32

#: struct blkif_request_indirect: operation (INDIRECT), indirect_op
#: (READ/WRITE), nr_segments (uint16!), id, sector_number, handle,
#: indirect_grefs[8].
BLKIF_REQUEST_INDIRECT = struct.Struct("<BBH4xQQH2x8I4x")
assert BLKIF_REQUEST_INDIRECT.size == 64

#: struct blkif_response: id, operation, status (BLKIF_RSP_*). The padding
#: bytes must be written as zeros (XSA-216: never leak backend memory).
BLKIF_RESPONSE = struct.Struct("<QBxh4x")
assert BLKIF_RESPONSE.size == 16

#: union blkif_sring_entry: the largest member.
BLKIF_SRING_ENTRY_SIZE = max(
    BLKIF_REQUEST.size, BLKIF_REQUEST_DISCARD.size, BLKIF_REQUEST_INDIRECT.size, BLKIF_RESPONSE.size
)
BLKIF_RING_SIZE = const_ring_size(4096, BLKIF_SRING_ENTRY_SIZE)
assert BLKIF_RING_SIZE == 32


def blkif_ring_size(ring_page_order: int) -> int:
    """Entries in a ring of ``2**ring_page_order`` pages (multi-page rings)."""
    return const_ring_size(4096 << ring_page_order, BLKIF_SRING_ENTRY_SIZE)


def blkif_request_segments(raw: bytes, nr_segments: int) -> list[tuple[int, int, int]]:
    """(gref, first_sect, last_sect) of a *copied* request's segments."""
    if not 0 <= nr_segments <= BLKIF_MAX_SEGMENTS_PER_REQUEST:
        raise ValueError(f"nr_segments {nr_segments} outside 0..{BLKIF_MAX_SEGMENTS_PER_REQUEST}")
    end = BLKIF_REQUEST_SEG_OFF + nr_segments * BLKIF_REQUEST_SEGMENT.size
    return list(BLKIF_REQUEST_SEGMENT.iter_unpack(raw[BLKIF_REQUEST_SEG_OFF:end]))


# "info" xenstore node bits.
VDISK_CDROM = 0x1
VDISK_REMOVABLE = 0x2
VDISK_READONLY = 0x4
