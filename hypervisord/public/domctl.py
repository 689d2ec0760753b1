"""Domain management for the control domain: mirrors
``xen/include/public/domctl.h`` (Xen commit c447b730, 4.23-unstable;
``XEN_DOMCTL_INTERFACE_VERSION`` 0x18, last bumped for Xen 4.22).

``HYPERVISOR_domctl(struct xen_domctl *)``: a 16-byte header (cmd,
interface_version, domain) and a 128-byte union of per-command structs.
Only a privileged (control) domain may issue domctls; the stable op
(get_domain_state) requires interface_version == 0, every other op exactly
XEN_DOMCTL_INTERFACE_VERSION.
"""

from __future__ import annotations

import struct
from enum import IntEnum

XEN_DOMCTL_INTERFACE_VERSION = 0x00000018


class DomctlCmd(IntEnum):
    """``XEN_DOMCTL_*`` command numbers (gaps are removed/obsolete ops)."""

    XEN_DOMCTL_createdomain = 1
    XEN_DOMCTL_destroydomain = 2
    XEN_DOMCTL_pausedomain = 3
    XEN_DOMCTL_unpausedomain = 4
    XEN_DOMCTL_getdomaininfo = 5
    # 6 getmemlist removed; 7/8 getpageframeinfo{,2} obsolete (use 61)
    XEN_DOMCTL_setvcpuaffinity = 9
    XEN_DOMCTL_shadow_op = 10
    XEN_DOMCTL_max_mem = 11
    XEN_DOMCTL_setvcpucontext = 12
    XEN_DOMCTL_getvcpucontext = 13
    XEN_DOMCTL_getvcpuinfo = 14
    XEN_DOMCTL_max_vcpus = 15
    XEN_DOMCTL_scheduler_op = 16
    XEN_DOMCTL_setdomainhandle = 17
    XEN_DOMCTL_setdebugging = 18
    XEN_DOMCTL_irq_permission = 19
    XEN_DOMCTL_iomem_permission = 20
    XEN_DOMCTL_ioport_permission = 21
    XEN_DOMCTL_hypercall_init = 22
    # 23 is XEN_DOMCTL_soft_reset_cont inside Xen only
    XEN_DOMCTL_settimeoffset = 24
    XEN_DOMCTL_getvcpuaffinity = 25
    XEN_DOMCTL_real_mode_area = 26  # obsolete, PPC only
    XEN_DOMCTL_resumedomain = 27
    XEN_DOMCTL_sendtrigger = 28
    XEN_DOMCTL_subscribe = 29
    XEN_DOMCTL_gethvmcontext = 33
    XEN_DOMCTL_sethvmcontext = 34
    XEN_DOMCTL_set_address_size = 35
    XEN_DOMCTL_get_address_size = 36
    XEN_DOMCTL_assign_device = 37
    XEN_DOMCTL_bind_pt_irq = 38
    XEN_DOMCTL_memory_mapping = 39
    XEN_DOMCTL_ioport_mapping = 40
    XEN_DOMCTL_set_ext_vcpucontext = 42
    XEN_DOMCTL_get_ext_vcpucontext = 43
    XEN_DOMCTL_set_opt_feature = 44  # obsolete, IA64 only
    XEN_DOMCTL_test_assign_device = 45
    XEN_DOMCTL_set_target = 46
    XEN_DOMCTL_deassign_device = 47
    XEN_DOMCTL_unbind_pt_irq = 48
    XEN_DOMCTL_get_device_group = 50
    XEN_DOMCTL_debug_op = 54
    XEN_DOMCTL_gethvmcontext_partial = 55
    XEN_DOMCTL_vm_event_op = 56
    XEN_DOMCTL_mem_sharing_op = 57
    XEN_DOMCTL_gettscinfo = 59
    XEN_DOMCTL_settscinfo = 60
    XEN_DOMCTL_getpageframeinfo3 = 61
    XEN_DOMCTL_setvcpuextstate = 62
    XEN_DOMCTL_getvcpuextstate = 63
    XEN_DOMCTL_set_access_required = 64
    XEN_DOMCTL_audit_p2m = 65
    XEN_DOMCTL_set_virq_handler = 66
    XEN_DOMCTL_set_broken_page_p2m = 67
    XEN_DOMCTL_setnodeaffinity = 68
    XEN_DOMCTL_getnodeaffinity = 69
    XEN_DOMCTL_cacheflush = 71
    XEN_DOMCTL_get_vcpu_msrs = 72
    XEN_DOMCTL_set_vcpu_msrs = 73
    XEN_DOMCTL_setvnumainfo = 74
    XEN_DOMCTL_psr_cmt_op = 75
    XEN_DOMCTL_monitor_op = 77
    XEN_DOMCTL_psr_alloc = 78
    XEN_DOMCTL_soft_reset = 79
    XEN_DOMCTL_vuart_op = 81
    XEN_DOMCTL_get_cpu_policy = 82
    XEN_DOMCTL_set_cpu_policy = 83
    XEN_DOMCTL_vmtrace_op = 84
    XEN_DOMCTL_get_paging_mempool_size = 85
    XEN_DOMCTL_set_paging_mempool_size = 86
    XEN_DOMCTL_dt_overlay = 87
    XEN_DOMCTL_gsi_permission = 88
    XEN_DOMCTL_set_llc_colors = 89
    XEN_DOMCTL_get_domain_state = 90  # stable interface (version 0)
    XEN_DOMCTL_gdbsx_guestmemio = 1000
    XEN_DOMCTL_gdbsx_pausevcpu = 1001
    XEN_DOMCTL_gdbsx_unpausevcpu = 1002
    XEN_DOMCTL_gdbsx_domstatus = 1003


#: Ops whose interface_version must be 0 rather than the current version.
XEN_DOMCTL_STABLE_OPS = frozenset({DomctlCmd.XEN_DOMCTL_get_domain_state})

#: struct xen_domctl header: cmd, interface_version, domain (IN/OUT for
#: createdomain and get_domain_state), _pad[3]; the union ``u`` follows.
XEN_DOMCTL_HDR = struct.Struct("<IIH6x")
assert XEN_DOMCTL_HDR.size == 16
XEN_DOMCTL_PAYLOAD_SIZE = 128  # the union's size (its pad[128] member)
XEN_DOMCTL_SIZE = XEN_DOMCTL_HDR.size + XEN_DOMCTL_PAYLOAD_SIZE
assert XEN_DOMCTL_SIZE == 144

#: struct xenctl_bitmap: bitmap (handle to uint8_t[]), nr_bits.
XENCTL_BITMAP = struct.Struct("<QI4x")
assert XENCTL_BITMAP.size == 16

# ---------------------------------------------------------------------------
# XEN_DOMCTL_createdomain. domain 0 or >= DOMID_FIRST_RESERVED on input
# means "allocate one"; the id is returned in xen_domctl.domain.
# ---------------------------------------------------------------------------
XEN_DOMCTL_CDF_hvm = 1 << 0
XEN_DOMCTL_CDF_hap = 1 << 1
XEN_DOMCTL_CDF_s3_integrity = 1 << 2
XEN_DOMCTL_CDF_oos_off = 1 << 3
XEN_DOMCTL_CDF_xs_domain = 1 << 4
XEN_DOMCTL_CDF_iommu = 1 << 5
XEN_DOMCTL_CDF_nested_virt = 1 << 6
XEN_DOMCTL_CDF_vpmu = 1 << 7
XEN_DOMCTL_CDF_trap_unmapped_accesses = 1 << 8
XEN_DOMCTL_CDF_MAX = XEN_DOMCTL_CDF_trap_unmapped_accesses
XEN_DOMCTL_IOMMU_no_sharept = 1 << 0
XEN_DOMCTL_IOMMU_MAX = XEN_DOMCTL_IOMMU_no_sharept
XEN_DOMCTL_GRANT_version_mask = 0xF


def XEN_DOMCTL_GRANT_version(v: int) -> int:  # noqa: N802 - Xen's macro name
    return v & XEN_DOMCTL_GRANT_version_mask


XEN_DOMCTL_ALTP2M_mixed = 1
XEN_DOMCTL_ALTP2M_external = 2
XEN_DOMCTL_ALTP2M_limited = 3
XEN_DOMCTL_ALTP2M_mode_mask = 0x3

#: ssidref, handle[16], flags (CDF), iommu_opts, max_vcpus, max_evtchn_port,
#: max_grant_frames, max_maptrack_frames (< 0: Xen's default), grant_opts,
#: altp2m.opts, altp2m.nr, vmtrace_size, cpupool_id,
#: arch.emulation_flags, arch.misc_flags.
XEN_DOMCTL_CREATEDOMAIN = struct.Struct("<I16sIIIIiiIHHIIII")
assert XEN_DOMCTL_CREATEDOMAIN.size == 68

# ---------------------------------------------------------------------------
# XEN_DOMCTL_getdomaininfo (also the element of sysctl getdomaininfolist).
# ---------------------------------------------------------------------------
_XEN_DOMINF_dying = 0
XEN_DOMINF_dying = 1 << _XEN_DOMINF_dying  # scheduled to die
_XEN_DOMINF_hvm_guest = 1
XEN_DOMINF_hvm_guest = 1 << _XEN_DOMINF_hvm_guest
_XEN_DOMINF_shutdown = 2
XEN_DOMINF_shutdown = 1 << _XEN_DOMINF_shutdown  # the guest OS has shut down
_XEN_DOMINF_paused = 3
XEN_DOMINF_paused = 1 << _XEN_DOMINF_paused  # paused by control software
_XEN_DOMINF_blocked = 4
XEN_DOMINF_blocked = 1 << _XEN_DOMINF_blocked  # blocked pending an event
_XEN_DOMINF_running = 5
XEN_DOMINF_running = 1 << _XEN_DOMINF_running
_XEN_DOMINF_debugged = 6
XEN_DOMINF_debugged = 1 << _XEN_DOMINF_debugged
_XEN_DOMINF_xs_domain = 7
XEN_DOMINF_xs_domain = 1 << _XEN_DOMINF_xs_domain
_XEN_DOMINF_hap = 8
XEN_DOMINF_hap = 1 << _XEN_DOMINF_hap
XEN_DOMINF_shutdownmask = 255  # the guest's SHUTDOWN_* code ...
XEN_DOMINF_shutdownshift = 16  # ... lives in flags bits 16-23


def dominf_shutdown_code(flags: int) -> int:
    return (flags >> XEN_DOMINF_shutdownshift) & XEN_DOMINF_shutdownmask


def dominf_flags_with_shutdown_code(flags: int, code: int) -> int:
    mask = XEN_DOMINF_shutdownmask << XEN_DOMINF_shutdownshift
    return (flags & ~mask) | ((code & XEN_DOMINF_shutdownmask) << XEN_DOMINF_shutdownshift)


XEN_INVALID_MAX_VCPU_ID = 0xFFFFFFFF  # the domain has no vCPUs

#: domain, (pad1), flags, tot_pages, max_pages, outstanding_pages, shr_pages,
#: paged_pages, shared_info_frame (GMFN), cpu_time (ns), nr_online_vcpus,
#: max_vcpu_id, ssidref, handle[16], cpupool, gpaddr_bits, (pad2[7]),
#: arch_config.emulation_flags, arch_config.misc_flags. All OUT.
XEN_DOMCTL_GETDOMAININFO = struct.Struct("<H2xI7QIII16sIB7xII")
XEN_DOMCTL_GETDOMAININFO_FIELDS = (
    "domain", "flags", "tot_pages", "max_pages", "outstanding_pages",
    "shr_pages", "paged_pages", "shared_info_frame", "cpu_time",
    "nr_online_vcpus", "max_vcpu_id", "ssidref", "handle", "cpupool",
    "gpaddr_bits", "emulation_flags", "misc_flags",
)  # fmt: skip
assert XEN_DOMCTL_GETDOMAININFO.size == 112

# ---------------------------------------------------------------------------
# XEN_DOMCTL_getpageframeinfo3: num (IN), array (IN pfns / OUT types).
# ---------------------------------------------------------------------------
XEN_DOMCTL_GETPAGEFRAMEINFO3 = struct.Struct("<QQ")
XEN_DOMCTL_PFINFO_LTAB_SHIFT = 28
XEN_DOMCTL_PFINFO_NOTAB = 0x0 << 28
XEN_DOMCTL_PFINFO_L1TAB = 0x1 << 28
XEN_DOMCTL_PFINFO_L2TAB = 0x2 << 28
XEN_DOMCTL_PFINFO_L3TAB = 0x3 << 28
XEN_DOMCTL_PFINFO_L4TAB = 0x4 << 28
XEN_DOMCTL_PFINFO_LTABTYPE_MASK = 0x7 << 28
XEN_DOMCTL_PFINFO_LPINTAB = 0x1 << 31
XEN_DOMCTL_PFINFO_XTAB = 0xF << 28  # invalid page
XEN_DOMCTL_PFINFO_XALLOC = 0xE << 28  # allocate-only page
XEN_DOMCTL_PFINFO_BROKEN = 0xD << 28  # broken page
XEN_DOMCTL_PFINFO_LTAB_MASK = 0xF << 28

# ---------------------------------------------------------------------------
# XEN_DOMCTL_shadow_op: shadow paging and log-dirty (live migration).
# ---------------------------------------------------------------------------


class ShadowOp(IntEnum):
    XEN_DOMCTL_SHADOW_OP_OFF = 0  # disable shadow mode
    XEN_DOMCTL_SHADOW_OP_ENABLE_TEST = 1  # legacy: ENABLE, no mode flags
    XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY = 2  # legacy: ENABLE + LOG_DIRTY
    # 3 (ENABLE_TRANSLATE) is no longer supported
    XEN_DOMCTL_SHADOW_OP_CLEAN = 11  # return the dirty bitmap and clear it
    XEN_DOMCTL_SHADOW_OP_PEEK = 12  # return the dirty bitmap, keep it
    XEN_DOMCTL_SHADOW_OP_GET_ALLOCATION = 30  # broken; use paging_mempool
    XEN_DOMCTL_SHADOW_OP_SET_ALLOCATION = 31
    XEN_DOMCTL_SHADOW_OP_ENABLE = 32  # mode = XEN_DOMCTL_SHADOW_ENABLE_*


XEN_DOMCTL_SHADOW_ENABLE_REFCOUNT = 1 << 1
XEN_DOMCTL_SHADOW_ENABLE_LOG_DIRTY = 1 << 2  # log pages dirtied, for migration
XEN_DOMCTL_SHADOW_ENABLE_TRANSLATE = 1 << 3
XEN_DOMCTL_SHADOW_ENABLE_EXTERNAL = 1 << 4
XEN_DOMCTL_SHADOW_LOGDIRTY_FINAL = 1 << 0  # CLEAN/PEEK: final round

#: op, mode, mb (IN); dirty_bitmap (handle), pages (IN buffer size in pages
#: / OUT actual), stats.fault_count, stats.dirty_count (OUT).
XEN_DOMCTL_SHADOW_OP = struct.Struct("<III4xQQII")
assert XEN_DOMCTL_SHADOW_OP.size == 40

# ---------------------------------------------------------------------------
# Small per-command structs.
# ---------------------------------------------------------------------------
XEN_DOMCTL_MAX_MEM = struct.Struct("<Q")  # max_memkb
XEN_DOMCTL_VCPUCONTEXT = struct.Struct("<I4xQ")  # vcpu, ctxt (handle)
#: vcpu (IN); online, blocked, running, cpu_time (ns), cpu (OUT).
XEN_DOMCTL_GETVCPUINFO = struct.Struct("<IBBBxQI4x")
XEN_DOMCTL_MAX_VCPUS = struct.Struct("<I")  # max; must match createdomain
XEN_DOMCTL_SETDOMAINHANDLE = struct.Struct("<16s")
XEN_DOMCTL_SETDEBUGGING = struct.Struct("<B")
XEN_DOMCTL_HYPERCALL_INIT = struct.Struct("<Q")  # gmfn to fill with stubs
XEN_DOMCTL_SETTIMEOFFSET = struct.Struct("<q")  # time_offset_seconds
XEN_DOMCTL_HVMCONTEXT = struct.Struct("<I4xQ")  # size, buffer (handle)
XEN_DOMCTL_ADDRESS_SIZE = struct.Struct("<I")  # size (bits)
XEN_DOMCTL_SENDTRIGGER = struct.Struct("<I")  # trigger
XEN_DOMCTL_SET_TARGET = struct.Struct("<H")  # target domid
XEN_DOMCTL_SUBSCRIBE = struct.Struct("<I")  # port (suspend notification)
assert XEN_DOMCTL_VCPUCONTEXT.size == XEN_DOMCTL_HVMCONTEXT.size == 16
assert XEN_DOMCTL_GETVCPUINFO.size == 24

XEN_DOMCTL_SENDTRIGGER_NMI = 0
XEN_DOMCTL_SENDTRIGGER_RESET = 1
XEN_DOMCTL_SENDTRIGGER_INIT = 2
XEN_DOMCTL_SENDTRIGGER_POWER = 3
XEN_DOMCTL_SENDTRIGGER_SLEEP = 4

#: vcpu, flags (XEN_VCPUAFFINITY_*), cpumap_hard, cpumap_soft (xenctl_bitmap).
XEN_DOMCTL_VCPUAFFINITY = struct.Struct("<IIQI4xQI4x")
assert XEN_DOMCTL_VCPUAFFINITY.size == 40
XEN_VCPUAFFINITY_HARD = 1 << 0
XEN_VCPUAFFINITY_SOFT = 1 << 1
XEN_VCPUAFFINITY_FORCE = 1 << 2  # undo SCHEDOP_pin_override

XEN_SCHEDULER_CREDIT = 5
XEN_SCHEDULER_CREDIT2 = 6
XEN_SCHEDULER_ARINC653 = 7
XEN_SCHEDULER_RTDS = 8
XEN_SCHEDULER_NULL = 9

#: state, caps, pad0 (MBZ), unique_id. domain == DOMID_INVALID asks for
#: any domain whose state changed (VIRQ_DOM_EXC subscribers only).
XEN_DOMCTL_GET_DOMAIN_STATE = struct.Struct("<HHIQ")
assert XEN_DOMCTL_GET_DOMAIN_STATE.size == 16
XEN_DOMCTL_GETDOMSTATE_STATE_EXIST = 0x0001
XEN_DOMCTL_GETDOMSTATE_STATE_SHUTDOWN = 0x0002
XEN_DOMCTL_GETDOMSTATE_STATE_DYING = 0x0004
XEN_DOMCTL_GETDOMSTATE_STATE_DEAD = 0x0008
XEN_DOMCTL_GETDOMSTATE_CAP_CONTROL = 0x0001
XEN_DOMCTL_GETDOMSTATE_CAP_HARDWARE = 0x0002
XEN_DOMCTL_GETDOMSTATE_CAP_XENSTORE = 0x0004

#: Payload struct per command (None: the command takes no payload).
DOMCTL_STRUCT: dict[DomctlCmd, struct.Struct | None] = {
    DomctlCmd.XEN_DOMCTL_createdomain: XEN_DOMCTL_CREATEDOMAIN,
    DomctlCmd.XEN_DOMCTL_destroydomain: None,
    DomctlCmd.XEN_DOMCTL_pausedomain: None,
    DomctlCmd.XEN_DOMCTL_unpausedomain: None,
    DomctlCmd.XEN_DOMCTL_resumedomain: None,
    DomctlCmd.XEN_DOMCTL_soft_reset: None,
    DomctlCmd.XEN_DOMCTL_getdomaininfo: XEN_DOMCTL_GETDOMAININFO,
    DomctlCmd.XEN_DOMCTL_setvcpuaffinity: XEN_DOMCTL_VCPUAFFINITY,
    DomctlCmd.XEN_DOMCTL_getvcpuaffinity: XEN_DOMCTL_VCPUAFFINITY,
    DomctlCmd.XEN_DOMCTL_shadow_op: XEN_DOMCTL_SHADOW_OP,
    DomctlCmd.XEN_DOMCTL_max_mem: XEN_DOMCTL_MAX_MEM,
    DomctlCmd.XEN_DOMCTL_setvcpucontext: XEN_DOMCTL_VCPUCONTEXT,
    DomctlCmd.XEN_DOMCTL_getvcpucontext: XEN_DOMCTL_VCPUCONTEXT,
    DomctlCmd.XEN_DOMCTL_getvcpuinfo: XEN_DOMCTL_GETVCPUINFO,
    DomctlCmd.XEN_DOMCTL_max_vcpus: XEN_DOMCTL_MAX_VCPUS,
    DomctlCmd.XEN_DOMCTL_setdomainhandle: XEN_DOMCTL_SETDOMAINHANDLE,
    DomctlCmd.XEN_DOMCTL_setdebugging: XEN_DOMCTL_SETDEBUGGING,
    DomctlCmd.XEN_DOMCTL_hypercall_init: XEN_DOMCTL_HYPERCALL_INIT,
    DomctlCmd.XEN_DOMCTL_settimeoffset: XEN_DOMCTL_SETTIMEOFFSET,
    DomctlCmd.XEN_DOMCTL_gethvmcontext: XEN_DOMCTL_HVMCONTEXT,
    DomctlCmd.XEN_DOMCTL_sethvmcontext: XEN_DOMCTL_HVMCONTEXT,
    DomctlCmd.XEN_DOMCTL_set_address_size: XEN_DOMCTL_ADDRESS_SIZE,
    DomctlCmd.XEN_DOMCTL_get_address_size: XEN_DOMCTL_ADDRESS_SIZE,
    DomctlCmd.XEN_DOMCTL_sendtrigger: XEN_DOMCTL_SENDTRIGGER,
    DomctlCmd.XEN_DOMCTL_set_target: XEN_DOMCTL_SET_TARGET,
    DomctlCmd.XEN_DOMCTL_subscribe: XEN_DOMCTL_SUBSCRIBE,
    DomctlCmd.XEN_DOMCTL_getpageframeinfo3: XEN_DOMCTL_GETPAGEFRAMEINFO3,
    DomctlCmd.XEN_DOMCTL_get_domain_state: XEN_DOMCTL_GET_DOMAIN_STATE,
}
assert all(s is None or s.size <= XEN_DOMCTL_PAYLOAD_SIZE for s in DOMCTL_STRUCT.values())
