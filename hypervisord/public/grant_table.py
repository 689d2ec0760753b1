"""Grant tables: mirrors ``xen/include/public/grant_table.h``
(Xen commit c447b730, 4.23-unstable).

``HYPERVISOR_grant_table_op(cmd, args, count)``: ``args`` is an array of
``count`` per-command structs. A grant table is an array of entries in
frames of the *granting* domain; field writers are tagged as in the header:
[GST] written by the guest and read by Xen, [XEN] written by Xen.

Introducing an entry (guest side): write ``domid``, write ``frame``, write
barrier, then write ``flags`` (with the type) last. Revoking an unused
GTF_permit_access entry: cmpxchg ``flags`` to 0 only while neither
GTF_reading nor GTF_writing is set.
"""

from __future__ import annotations

import struct
from enum import IntEnum

GRANT_REF_T = struct.Struct("<I")  # grant_ref_t: index into a grant table
GRANT_HANDLE_T = struct.Struct("<I")  # grant_handle_t: tracks one mapping


class GnttabOp(IntEnum):
    """``enum grant_table_op``."""

    GNTTABOP_map_grant_ref = 0
    GNTTABOP_unmap_grant_ref = 1
    GNTTABOP_setup_table = 2
    GNTTABOP_dump_table = 3
    GNTTABOP_transfer = 4
    GNTTABOP_copy = 5
    GNTTABOP_query_size = 6
    GNTTABOP_unmap_and_replace = 7
    GNTTABOP_set_version = 8
    GNTTABOP_get_status_frames = 9
    GNTTABOP_get_version = 10
    GNTTABOP_swap_grant_ref = 11
    GNTTABOP_cache_flush = 12


# ---------------------------------------------------------------------------
# struct grant_entry_v1 (8 bytes):
#   flags  uint16  [XEN,GST]  GTF_* type and flags
#   domid  uint16  [GST]      the domain being granted foreign privileges
#   frame  uint32  [GST]      GFN to access / transfer into;
#                  [XEN]      MFN after GTF_transfer_completed
# ---------------------------------------------------------------------------
GRANT_ENTRY_V1 = struct.Struct("<HHI")
assert GRANT_ENTRY_V1.size == 8
GRANT_ENTRY_V1_FLAGS_OFF = 0
GRANT_ENTRY_V1_DOMID_OFF = 2
GRANT_ENTRY_V1_FRAME_OFF = 4
GNTTAB_V1_ENTRIES_PER_FRAME = 4096 // GRANT_ENTRY_V1.size

# The first entries survive version changes and may be pre-filled by tools.
GNTTAB_NR_RESERVED_ENTRIES = 8
GNTTAB_RESERVED_CONSOLE = 0
GNTTAB_RESERVED_XENSTORE = 1

# Grant entry types (flags & GTF_type_mask).
GTF_invalid = 0 << 0  # grants no privileges
GTF_permit_access = 1 << 0  # allow domid to map/access frame
GTF_accept_transfer = 2 << 0  # allow domid to transfer a frame to us
GTF_transitive = 3 << 0  # allow domid to use trans_grant in trans_domid (v2)
GTF_type_mask = 3 << 0

# Subflags for GTF_permit_access and GTF_transitive.
_GTF_readonly = 2
GTF_readonly = 1 << _GTF_readonly  # [GST] read-only mappings/accesses only
_GTF_reading = 3
GTF_reading = 1 << _GTF_reading  # [XEN] mapped/accessed for reading now
_GTF_writing = 4
GTF_writing = 1 << _GTF_writing  # [XEN] mapped/accessed for writing now
# Further subflags for GTF_permit_access only.
_GTF_PWT = 5
GTF_PWT = 1 << _GTF_PWT  # [GST] x86 cache attribute for mappings
_GTF_PCD = 6
GTF_PCD = 1 << _GTF_PCD  # [GST]
_GTF_PAT = 7
GTF_PAT = 1 << _GTF_PAT  # [GST]
_GTF_sub_page = 8
GTF_sub_page = 1 << _GTF_sub_page  # [GST] copy-only access to a subrange
# Subflags for GTF_accept_transfer (same bit positions, other meaning).
_GTF_transfer_committed = 2
GTF_transfer_committed = 1 << _GTF_transfer_committed  # [XEN]
_GTF_transfer_completed = 3
GTF_transfer_completed = 1 << _GTF_transfer_completed  # [XEN] frame written

# ---------------------------------------------------------------------------
# Version 2 entries (16 bytes, a union sharing the v1 flags/domid prefix).
# ---------------------------------------------------------------------------
GRANT_ENTRY_HEADER = struct.Struct("<HH")  # flags, domid
GRANT_ENTRY_V2_FULL_PAGE = struct.Struct("<HH4xQ")  # hdr, frame
GRANT_ENTRY_V2_SUB_PAGE = struct.Struct("<HHHHQ")  # hdr, page_off, length, frame
GRANT_ENTRY_V2_TRANSITIVE = struct.Struct("<HHH2xI4x")  # hdr, trans_domid, gref
GRANT_ENTRY_V2_SIZE = 16
assert GRANT_ENTRY_V2_FULL_PAGE.size == GRANT_ENTRY_V2_SUB_PAGE.size == GRANT_ENTRY_V2_SIZE
assert GRANT_ENTRY_V2_TRANSITIVE.size == GRANT_ENTRY_V2_SIZE
GRANT_STATUS_T = struct.Struct("<H")  # v2 status frames hold uint16 entries

# ---------------------------------------------------------------------------
# Op structs.
# ---------------------------------------------------------------------------
#: IN host_addr, flags (GNTMAP_*), ref, dom; OUT status (GNTST_*), handle,
#: dev_bus_addr.
GNTTAB_MAP_GRANT_REF = struct.Struct("<QIIHhIQ")
assert GNTTAB_MAP_GRANT_REF.size == 32

#: IN host_addr, dev_bus_addr, handle; OUT status. Zero addresses are ignored.
GNTTAB_UNMAP_GRANT_REF = struct.Struct("<QQIh2x")
assert GNTTAB_UNMAP_GRANT_REF.size == 24

#: IN dom, nr_frames; OUT status; IN frame_list (handle to xen_pfn_t[]).
GNTTAB_SETUP_TABLE = struct.Struct("<H2xIh6xQ")
assert GNTTAB_SETUP_TABLE.size == 24

GNTTAB_DUMP_TABLE = struct.Struct("<Hh")  # IN dom; OUT status
assert GNTTAB_DUMP_TABLE.size == 4

#: IN mfn, domid, ref; OUT status. PV only.
GNTTAB_TRANSFER = struct.Struct("<QH2xIh6x")
assert GNTTAB_TRANSFER.size == 24

_GNTCOPY_source_gref = 0
GNTCOPY_source_gref = 1 << _GNTCOPY_source_gref  # source.u is a gref
_GNTCOPY_dest_gref = 1
GNTCOPY_dest_gref = 1 << _GNTCOPY_dest_gref  # dest.u is a gref

#: struct gnttab_copy_ptr: union u {grant_ref_t ref; xen_pfn_t gmfn}, domid,
#: offset. With the GNTCOPY_*_gref flag clear, ``u`` is a gmfn.
GNTTAB_COPY_PTR = struct.Struct("<QHH4x")
assert GNTTAB_COPY_PTR.size == 16
#: IN source (u, domid, offset), dest (u, domid, offset), len, flags;
#: OUT status. offset + len must stay within one page.
GNTTAB_COPY = struct.Struct("<QHH4xQHH4xHHh2x")
assert GNTTAB_COPY.size == 40

#: IN dom; OUT nr_frames, max_nr_frames, status.
GNTTAB_QUERY_SIZE = struct.Struct("<H2xIIh2x")
assert GNTTAB_QUERY_SIZE.size == 16

#: IN host_addr, new_addr, handle; OUT status.
GNTTAB_UNMAP_AND_REPLACE = struct.Struct("<QQIh2x")
assert GNTTAB_UNMAP_AND_REPLACE.size == 24

GNTTAB_SET_VERSION = struct.Struct("<I")  # IN/OUT version (1 or 2)
#: IN nr_frames, dom; OUT status; IN frame_list (handle to uint64_t[]).
GNTTAB_GET_STATUS_FRAMES = struct.Struct("<IHhQ")
GNTTAB_GET_VERSION = struct.Struct("<HHI")  # IN dom, pad; OUT version
GNTTAB_SWAP_GRANT_REF = struct.Struct("<IIh2x")  # IN ref_a, ref_b; OUT status
#: union a {dev_bus_addr; ref}, offset, length, op (GNTTAB_CACHE_*).
GNTTAB_CACHE_FLUSH = struct.Struct("<QHHI")
assert GNTTAB_SET_VERSION.size == 4
assert GNTTAB_GET_STATUS_FRAMES.size == 16
assert GNTTAB_GET_VERSION.size == 8
assert GNTTAB_SWAP_GRANT_REF.size == 12
assert GNTTAB_CACHE_FLUSH.size == 16
GNTTAB_CACHE_CLEAN = 1 << 0
GNTTAB_CACHE_INVAL = 1 << 1
GNTTAB_CACHE_SOURCE_GREF = 1 << 31

GNTTABOP_STRUCT: dict[GnttabOp, struct.Struct] = {
    GnttabOp.GNTTABOP_map_grant_ref: GNTTAB_MAP_GRANT_REF,
    GnttabOp.GNTTABOP_unmap_grant_ref: GNTTAB_UNMAP_GRANT_REF,
    GnttabOp.GNTTABOP_setup_table: GNTTAB_SETUP_TABLE,
    GnttabOp.GNTTABOP_dump_table: GNTTAB_DUMP_TABLE,
    GnttabOp.GNTTABOP_transfer: GNTTAB_TRANSFER,
    GnttabOp.GNTTABOP_copy: GNTTAB_COPY,
    GnttabOp.GNTTABOP_query_size: GNTTAB_QUERY_SIZE,
    GnttabOp.GNTTABOP_unmap_and_replace: GNTTAB_UNMAP_AND_REPLACE,
    GnttabOp.GNTTABOP_set_version: GNTTAB_SET_VERSION,
    GnttabOp.GNTTABOP_get_status_frames: GNTTAB_GET_STATUS_FRAMES,
    GnttabOp.GNTTABOP_get_version: GNTTAB_GET_VERSION,
    GnttabOp.GNTTABOP_swap_grant_ref: GNTTAB_SWAP_GRANT_REF,
    GnttabOp.GNTTABOP_cache_flush: GNTTAB_CACHE_FLUSH,
}

# ---------------------------------------------------------------------------
# gnttab_map_grant_ref.flags
# ---------------------------------------------------------------------------
_GNTMAP_device_map = 0
GNTMAP_device_map = 1 << _GNTMAP_device_map  # for I/O devices
_GNTMAP_host_map = 1
GNTMAP_host_map = 1 << _GNTMAP_host_map  # for host CPUs
_GNTMAP_readonly = 2
GNTMAP_readonly = 1 << _GNTMAP_readonly
_GNTMAP_application_map = 3
GNTMAP_application_map = 1 << _GNTMAP_application_map  # usable by user space
_GNTMAP_contains_pte = 4
GNTMAP_contains_pte = 1 << _GNTMAP_contains_pte  # host_addr is a PTE's MA
_GNTMAP_guest_avail0 = 16
GNTMAP_guest_avail_mask = (0xFFFFFFFF << _GNTMAP_guest_avail0) & 0xFFFFFFFF


class GntSt(IntEnum):
    """``enum grant_status``: per-op ``status``; every error is negative."""

    GNTST_okay = 0  # normal return
    GNTST_general_error = -1  # general undefined error
    GNTST_bad_domain = -2  # unrecognised domain id
    GNTST_bad_gntref = -3  # unrecognised or inappropriate gntref
    GNTST_bad_handle = -4  # unrecognised or inappropriate handle
    GNTST_bad_virt_addr = -5  # inappropriate virtual address to map
    GNTST_bad_dev_addr = -6  # inappropriate device address to unmap
    GNTST_no_device_space = -7  # out of space in I/O MMU
    GNTST_permission_denied = -8  # not enough privilege for operation
    GNTST_bad_page = -9  # specified page was invalid for op
    GNTST_bad_copy_arg = -10  # copy arguments cross page boundary
    GNTST_address_too_big = -11  # transfer page address too large
    GNTST_eagain = -12  # operation not done; try again
    GNTST_no_space = -13  # out of space (handles etc)


#: GNTTABOP_error_msgs, indexed by -status (order matters: C array order).
GNTTABOP_error_msgs: tuple[str, ...] = (
    "okay",
    "undefined error",
    "unrecognised domain id",
    "invalid grant reference",
    "invalid mapping handle",
    "invalid virtual address",
    "invalid device address",
    "no spare translation slot in the I/O MMU",
    "permission denied",
    "bad page",
    "copy arguments cross page boundary",
    "page address size too large",
    "operation not done; try again",
    "out of space",
)
assert len(GNTTABOP_error_msgs) == len(GntSt)


def gnttabop_error(status: int) -> str:
    """The message for a GNTST_* status; unknown codes never index out."""
    if -len(GNTTABOP_error_msgs) < status <= 0:
        return GNTTABOP_error_msgs[-status]
    return f"unknown grant status {status}"
