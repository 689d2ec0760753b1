"""pvxen ABI: the layout of a domain's memory file.

Xen names a domain's memory by machine frame numbers; pvxen hands a process
a domain's memory as one file (a memfd made by hypervisord, see
``PvxenOp.attach``/``connect_domain``/``map_foreign`` in :mod:`.pvxen`), and
every client that maps a frame of it needs the same offsets. The file is a
row of page-sized slots::

    slot 0                     shared_info (Xen-owned in Xen; here too)
    slots 1 .. NR_GNT_FRAMES   grant-table frames (v1 entries)
    slot RESERVED_SLOTS + gfn  guest frame ``gfn``

Like everything in :mod:`hypervisord.public`, this imports nothing but the
standard library and the ABI.
"""

from __future__ import annotations

from .xen import PAGE_SIZE

#: v1 grant table: 512 entries per frame, 2048 grant refs per domain.
NR_GNT_FRAMES = 4
SHARED_INFO_SLOT = 0
GNT_FIRST_SLOT = 1
RESERVED_SLOTS = 1 + NR_GNT_FRAMES


def gfn_offset(gfn: int) -> int:
    """Byte offset of guest frame ``gfn`` in its domain's memory file."""
    return (RESERVED_SLOTS + gfn) * PAGE_SIZE


def slot_offset(slot: int) -> int:
    """Byte offset of reserved slot ``slot`` (shared_info, grant frames)."""
    return slot * PAGE_SIZE


def file_size(max_gfns: int) -> int:
    """Size of a memory file holding guest frames ``0 .. max_gfns - 1``."""
    return (RESERVED_SLOTS + max_gfns) * PAGE_SIZE
