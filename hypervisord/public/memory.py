"""Memory reservation and information: mirrors
``xen/include/public/memory.h`` (Xen commit c447b730, 4.23-unstable).

``HYPERVISOR_memory_op(cmd, arg)``. The reservation ops return the number
of extents done (a short count is a partial success); an extent is
``2**extent_order`` contiguous pages. Unprivileged callers may name only
``DOMID_SELF``.
"""

from __future__ import annotations

import struct
from enum import IntEnum


class XenMemOp(IntEnum):
    """``XENMEM_*`` sub-ops."""

    XENMEM_increase_reservation = 0  # arg xen_memory_reservation; OUT MFNs
    XENMEM_decrease_reservation = 1  # arg xen_memory_reservation; IN GMFNs
    XENMEM_maximum_ram_page = 2  # arg NULL; never fails
    XENMEM_current_reservation = 3  # arg xen_memory_domain; returns pages
    XENMEM_maximum_reservation = 4  # arg xen_memory_domain; returns pages
    XENMEM_machphys_mfn_list = 5  # arg xen_machphys_mfn_list
    XENMEM_populate_physmap = 6  # arg xen_memory_reservation; IN GPFNs
    XENMEM_add_to_physmap = 7  # arg xen_add_to_physmap (translated guests)
    # 8 (XENMEM_translate_gpfn_list) was removed.
    XENMEM_memory_map = 9  # arg xen_memory_map (E820 format)
    XENMEM_machine_memory_map = 10  # arg xen_memory_map
    XENMEM_exchange = 11  # arg xen_memory_exchange (PV only)
    XENMEM_machphys_mapping = 12  # arg xen_machphys_mapping
    XENMEM_set_memory_map = 13  # arg xen_foreign_memory_map
    XENMEM_maximum_gpfn = 14  # arg xen_memory_domain
    XENMEM_remove_from_physmap = 15  # arg xen_remove_from_physmap
    XENMEM_set_pod_target = 16
    XENMEM_get_pod_target = 17
    XENMEM_get_sharing_freed_pages = 18
    XENMEM_get_sharing_shared_pages = 19
    XENMEM_paging_op = 20
    XENMEM_access_op = 21
    XENMEM_sharing_op = 22
    XENMEM_add_to_physmap_batch = 23
    XENMEM_claim_pages = 24
    XENMEM_machphys_compat_mfn_list = 25
    XENMEM_get_vnumainfo = 26
    XENMEM_reserved_device_memory_map = 27
    XENMEM_acquire_resource = 28
    # "Next available subop number is 29"


# XENMEMF_* flags for xen_memory_reservation.mem_flags.
def XENMEMF_address_bits(x: int) -> int:  # noqa: N802 - Xen's macro name
    return x


def XENMEMF_get_address_bits(x: int) -> int:  # noqa: N802
    return x & 0xFF


def XENMEMF_node(x: int) -> int:  # noqa: N802
    return (x + 1) << 8


def XENMEMF_get_node(x: int) -> int:  # noqa: N802
    return ((x >> 8) - 1) & 0xFF


XENMEMF_populate_on_demand = 1 << 16
XENMEMF_exact_node_request = 1 << 17
XENMEMF_vnode = 1 << 18

#: struct xen_memory_reservation:
#:   extent_start  handle to xen_pfn_t[]  (IN GMFNs/GPFNs, OUT MFNs/GMFNs)
#:   nr_extents    xen_ulong_t
#:   extent_order  unsigned int
#:   mem_flags     unsigned int (XENMEMF_*)
#:   domid         domid_t
XEN_MEMORY_RESERVATION = struct.Struct("<QQIIH6x")
XEN_MEMORY_RESERVATION_FIELDS = ("extent_start", "nr_extents", "extent_order", "mem_flags", "domid")
assert XEN_MEMORY_RESERVATION.size == 32

#: struct xen_memory_exchange: in, out (reservations), nr_exchanged (OUT;
#: the caller must zero it).
XEN_MEMORY_EXCHANGE = struct.Struct("<QQIIH6xQQIIH6xQ")
assert XEN_MEMORY_EXCHANGE.size == 72

XEN_MEMORY_DOMAIN = struct.Struct("<H")  # domid
assert XEN_MEMORY_DOMAIN.size == 2

#: max_extents, extent_start (handle), nr_extents (OUT).
XEN_MACHPHYS_MFN_LIST = struct.Struct("<I4xQI4x")
assert XEN_MACHPHYS_MFN_LIST.size == 24

#: v_start, v_end, max_mfn: where the read-only M2P table is mapped.
XEN_MACHPHYS_MAPPING = struct.Struct("<QQQ")
assert XEN_MACHPHYS_MAPPING.size == 24


class XenMapSpace(IntEnum):
    """``enum phys_map_space``: source of an add_to_physmap."""

    XENMAPSPACE_shared_info = 0
    XENMAPSPACE_grant_table = 1
    XENMAPSPACE_gmfn = 2
    XENMAPSPACE_gmfn_range = 3  # XENMEM_add_to_physmap only
    XENMAPSPACE_gmfn_foreign = 4  # XENMEM_add_to_physmap_batch only
    XENMAPSPACE_dev_mmio = 5  # Arm only


XENMAPIDX_grant_table_status = 0x80000000

#: domid, size (pages, gmfn_range), space, idx, gpfn.
XEN_ADD_TO_PHYSMAP = struct.Struct("<HHIQQ")
assert XEN_ADD_TO_PHYSMAP.size == 24

#: domid, space, size, u.foreign_domid; idxs, gpfns, errs (handles).
XEN_ADD_TO_PHYSMAP_BATCH = struct.Struct("<HHHHQQQ")
assert XEN_ADD_TO_PHYSMAP_BATCH.size == 32

XEN_REMOVE_FROM_PHYSMAP = struct.Struct("<H6xQ")  # domid, gpfn
assert XEN_REMOVE_FROM_PHYSMAP.size == 16

#: nr_entries (IN capacity / OUT count), buffer (handle to E820 entries).
XEN_MEMORY_MAP = struct.Struct("<I4xQ")
assert XEN_MEMORY_MAP.size == 16
XEN_FOREIGN_MEMORY_MAP = struct.Struct("<H6xI4xQ")  # domid, map
assert XEN_FOREIGN_MEMORY_MAP.size == 24

#: target_pages (IN), tot_pages, pod_cache_pages, pod_entries (OUT), domid.
XEN_POD_TARGET = struct.Struct("<QQQQH6x")
assert XEN_POD_TARGET.size == 40

#: domid, type, id, nr_frames, pad, frame, frame_list (handle).
XEN_MEM_ACQUIRE_RESOURCE = struct.Struct("<HHIIIQQ")
assert XEN_MEM_ACQUIRE_RESOURCE.size == 32
XENMEM_resource_ioreq_server = 0
XENMEM_resource_grant_table = 1
XENMEM_resource_vmtrace_buf = 2
XENMEM_resource_grant_table_id_shared = 0
XENMEM_resource_grant_table_id_status = 1

XENMEM_STRUCT: dict[XenMemOp, struct.Struct | None] = {
    XenMemOp.XENMEM_increase_reservation: XEN_MEMORY_RESERVATION,
    XenMemOp.XENMEM_decrease_reservation: XEN_MEMORY_RESERVATION,
    XenMemOp.XENMEM_populate_physmap: XEN_MEMORY_RESERVATION,
    XenMemOp.XENMEM_claim_pages: XEN_MEMORY_RESERVATION,
    XenMemOp.XENMEM_maximum_ram_page: None,
    XenMemOp.XENMEM_current_reservation: XEN_MEMORY_DOMAIN,
    XenMemOp.XENMEM_maximum_reservation: XEN_MEMORY_DOMAIN,
    XenMemOp.XENMEM_maximum_gpfn: XEN_MEMORY_DOMAIN,
    XenMemOp.XENMEM_machphys_mfn_list: XEN_MACHPHYS_MFN_LIST,
    XenMemOp.XENMEM_machphys_compat_mfn_list: XEN_MACHPHYS_MFN_LIST,
    XenMemOp.XENMEM_machphys_mapping: XEN_MACHPHYS_MAPPING,
    XenMemOp.XENMEM_add_to_physmap: XEN_ADD_TO_PHYSMAP,
    XenMemOp.XENMEM_add_to_physmap_batch: XEN_ADD_TO_PHYSMAP_BATCH,
    XenMemOp.XENMEM_remove_from_physmap: XEN_REMOVE_FROM_PHYSMAP,
    XenMemOp.XENMEM_memory_map: XEN_MEMORY_MAP,
    XenMemOp.XENMEM_machine_memory_map: XEN_MEMORY_MAP,
    XenMemOp.XENMEM_set_memory_map: XEN_FOREIGN_MEMORY_MAP,
    XenMemOp.XENMEM_exchange: XEN_MEMORY_EXCHANGE,
    XenMemOp.XENMEM_set_pod_target: XEN_POD_TARGET,
    XenMemOp.XENMEM_get_pod_target: XEN_POD_TARGET,
    XenMemOp.XENMEM_acquire_resource: XEN_MEM_ACQUIRE_RESOURCE,
}
