"""Feature bits: mirrors ``xen/include/public/features.h``
(Xen commit c447b730, 4.23-unstable).

``XENVER_get_features`` returns them 32 at a time (submap_idx selects the
word); kernels also list the ones they require in their
``XEN_ELFNOTE_FEATURES`` note ("!name" = required).
"""

from __future__ import annotations

from enum import IntEnum


class XenFeat(IntEnum):
    """``XENFEAT_*``: bit numbers, not masks."""

    XENFEAT_writable_page_tables = 0  # guest may write its page tables directly
    XENFEAT_writable_descriptor_tables = 1
    XENFEAT_auto_translated_physmap = 2  # Xen does pseudo-phys <-> machine
    XENFEAT_supervisor_mode_kernel = 3  # guest kernel runs in ring 0
    XENFEAT_pae_pgdir_above_4gb = 4
    XENFEAT_mmu_pt_update_preserve_ad = 5  # MMU_PT_UPDATE_PRESERVE_AD works
    XENFEAT_highmem_assist = 6  # MMUEXT_{CLEAR,COPY}_PAGE work
    XENFEAT_gnttab_map_avail_bits = 7  # GNTMAP_guest_avail bits honoured
    XENFEAT_hvm_callback_vector = 8
    XENFEAT_hvm_safe_pvclock = 9
    XENFEAT_hvm_pirqs = 10
    XENFEAT_dom0 = 11  # operation as dom0 is supported
    # 12 (XENFEAT_grant_map_identity) is deprecated and commented out.
    XENFEAT_memory_op_vnode_supported = 13
    XENFEAT_ARM_SMCCC_supported = 14
    XENFEAT_linux_rsdp_unrestricted = 15
    XENFEAT_not_direct_mapped = 16
    XENFEAT_direct_mapped = 17
    XENFEAT_runstate_phys_area = 18
    XENFEAT_vcpu_time_phys_area = 19
    XENFEAT_dm_msix_all_writes = 20


XENFEAT_NR_SUBMAPS = 1


def xenfeat_submap(features: set[XenFeat] | frozenset[XenFeat], submap_idx: int) -> int:
    """The 32-bit word XENVER_get_features returns for ``submap_idx``."""
    word = 0
    for f in features:
        if f // 32 == submap_idx:
            word |= 1 << (f % 32)
    return word
