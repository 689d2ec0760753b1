"""Core hypervisor ABI: mirrors ``xen/include/public/xen.h`` for x86-64
(Xen commit c447b730, 4.23-unstable).

Owns the hypercall numbers, VIRQs, reserved domids, the MMU/MMUEXT and
multicall structs, and the two pages every PV guest is born with:

* ``struct shared_info`` (one Xen-owned frame per domain): event-channel
  pending/mask bitmaps, one ``vcpu_info`` per legacy vCPU, wallclock;
* ``struct start_info`` (a guest frame the domain builder fills; %rsi points
  at it on entry): where the guest finds its memory, store and console.

``SHUTDOWN_*`` reasons live in ``sched.h``; they are re-exported here.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from .arch_x86 import (
    ARCH_SHARED_INFO,
    ARCH_VCPU_INFO,
    BITS_PER_XEN_ULONG,
    XEN_LEGACY_MAX_VCPUS,
)
from .sched import SHUTDOWN_MAX as SHUTDOWN_MAX  # re-export: xen.h users expect it
from .sched import ShutdownReason as ShutdownReason

XEN_PAGE_SHIFT = 12  # hypercall and ring interfaces always use 4 KiB pages
XEN_PAGE_SIZE = 1 << XEN_PAGE_SHIFT
PAGE_SHIFT = XEN_PAGE_SHIFT
PAGE_SIZE = XEN_PAGE_SIZE
assert PAGE_SIZE == 4096


class Hypercall(IntEnum):
    """``__HYPERVISOR_*``: the number in %rax (64-bit PV: ``syscall``).

    Members drop the ``__HYPERVISOR_`` prefix because a class body would
    name-mangle a leading double underscore; each line names the macro.
    """

    set_trap_table = 0  # __HYPERVISOR_set_trap_table
    mmu_update = 1  # __HYPERVISOR_mmu_update
    set_gdt = 2  # __HYPERVISOR_set_gdt
    stack_switch = 3  # __HYPERVISOR_stack_switch
    set_callbacks = 4  # __HYPERVISOR_set_callbacks
    fpu_taskswitch = 5  # __HYPERVISOR_fpu_taskswitch
    sched_op_compat = 6  # __HYPERVISOR_sched_op_compat (compat since 0x00030101)
    platform_op = 7  # __HYPERVISOR_platform_op
    set_debugreg = 8  # __HYPERVISOR_set_debugreg
    get_debugreg = 9  # __HYPERVISOR_get_debugreg
    update_descriptor = 10  # __HYPERVISOR_update_descriptor
    # 11 is unused
    memory_op = 12  # __HYPERVISOR_memory_op
    multicall = 13  # __HYPERVISOR_multicall
    update_va_mapping = 14  # __HYPERVISOR_update_va_mapping
    set_timer_op = 15  # __HYPERVISOR_set_timer_op
    event_channel_op_compat = 16  # __HYPERVISOR_event_channel_op_compat
    xen_version = 17  # __HYPERVISOR_xen_version
    console_io = 18  # __HYPERVISOR_console_io
    physdev_op_compat = 19  # __HYPERVISOR_physdev_op_compat
    grant_table_op = 20  # __HYPERVISOR_grant_table_op
    vm_assist = 21  # __HYPERVISOR_vm_assist
    update_va_mapping_otherdomain = 22  # __HYPERVISOR_update_va_mapping_otherdomain
    iret = 23  # __HYPERVISOR_iret (x86 only; never returns)
    vcpu_op = 24  # __HYPERVISOR_vcpu_op
    set_segment_base = 25  # __HYPERVISOR_set_segment_base (x86-64 only)
    mmuext_op = 26  # __HYPERVISOR_mmuext_op
    xsm_op = 27  # __HYPERVISOR_xsm_op
    nmi_op = 28  # __HYPERVISOR_nmi_op
    sched_op = 29  # __HYPERVISOR_sched_op
    callback_op = 30  # __HYPERVISOR_callback_op
    xenoprof_op = 31  # __HYPERVISOR_xenoprof_op (dropped in Xen 4.22)
    event_channel_op = 32  # __HYPERVISOR_event_channel_op
    physdev_op = 33  # __HYPERVISOR_physdev_op
    hvm_op = 34  # __HYPERVISOR_hvm_op
    sysctl = 35  # __HYPERVISOR_sysctl
    domctl = 36  # __HYPERVISOR_domctl
    kexec_op = 37  # __HYPERVISOR_kexec_op
    tmem_op = 38  # __HYPERVISOR_tmem_op
    argo_op = 39  # __HYPERVISOR_argo_op
    xenpmu_op = 40  # __HYPERVISOR_xenpmu_op
    dm_op = 41  # __HYPERVISOR_dm_op
    hypfs_op = 42  # __HYPERVISOR_hypfs_op
    arch_0 = 48  # __HYPERVISOR_arch_0 .. arch_7: architecture-specific
    arch_1 = 49
    arch_2 = 50
    arch_3 = 51
    arch_4 = 52
    arch_5 = 53
    arch_6 = 54
    arch_7 = 55


# A hypercall page has one 32-byte stub per number (128 slots in one page).
HYPERCALL_STUB_SIZE = 32
NR_HYPERCALL_STUBS = XEN_PAGE_SIZE // HYPERCALL_STUB_SIZE


class Virq(IntEnum):
    """``VIRQ_*``. V = per-vCPU, G = global, D = per-domain."""

    VIRQ_TIMER = 0  # V. Timebase update, and/or requested timeout.
    VIRQ_DEBUG = 1  # V. Request guest to dump debug info.
    VIRQ_CONSOLE = 2  # G. Bytes received on emergency console.
    VIRQ_DOM_EXC = 3  # G. Exceptional event for some domain.
    VIRQ_TBUF = 4  # G. Trace buffer has records available.
    VIRQ_DEBUGGER = 6  # G. A domain has paused for debugging.
    VIRQ_XENOPROF = 7  # V. XenOprofile interrupt: new sample available.
    VIRQ_CON_RING = 8  # G. Bytes received on console.
    VIRQ_PCPU_STATE = 9  # G. PCPU state changed.
    VIRQ_MEM_EVENT = 10  # G. A memory event has occurred.
    VIRQ_ARGO = 11  # D. Argo interdomain message notification.
    VIRQ_ENOMEM = 12  # G. Low on heap memory.
    VIRQ_XENPMU = 13  # V. PMC interrupt.
    VIRQ_ARCH_0 = 16
    VIRQ_ARCH_1 = 17
    VIRQ_ARCH_2 = 18
    VIRQ_ARCH_3 = 19
    VIRQ_ARCH_4 = 20
    VIRQ_ARCH_5 = 21
    VIRQ_ARCH_6 = 22
    VIRQ_ARCH_7 = 23


NR_VIRQS = 24
#: VIRQs that bind per vCPU (at most one port per vCPU); the rest are bound
#: on vCPU 0 (event_channel.h, EVTCHNOP_bind_virq notes).
VIRQ_PER_VCPU = frozenset({Virq.VIRQ_TIMER, Virq.VIRQ_DEBUG, Virq.VIRQ_XENOPROF, Virq.VIRQ_XENPMU})

# ---------------------------------------------------------------------------
# Domain ids (domid_t is uint16_t). Values >= DOMID_FIRST_RESERVED are never
# real domains.
# ---------------------------------------------------------------------------
DOMID_FIRST_RESERVED = 0x7FF0
DOMID_SELF = 0x7FF0  # the caller, wherever a domid is an argument
DOMID_IO = 0x7FF1  # owner of I/O pages (mmu_update foreign-domain arg)
DOMID_XEN = 0x7FF2  # Xen's own pages (privileged foreigndom only)
DOMID_COW = 0x7FF3  # owner of sharable pages
DOMID_INVALID = 0x7FF4  # pages with unknown owner; "no domain"
DOMID_ANY = 0x7FF5  # no specific id requested: pick one, or a wildcard
DOMID_IDLE = 0x7FFF
DOMID_MASK = 0x7FFF
DOMID_T = struct.Struct("<H")

# ---------------------------------------------------------------------------
# mmu_update / mmuext_op / update_va_mapping / vm_assist / console_io
# ---------------------------------------------------------------------------


class MmuUpdateCmd(IntEnum):
    """Low 2 bits of ``mmu_update.ptr`` select the command."""

    MMU_NORMAL_PT_UPDATE = 0  # checked '*ptr = val'; ptr is a machine address
    MMU_MACHPHYS_UPDATE = 1  # ptr = MA of frame whose M2P entry becomes val
    MMU_PT_UPDATE_PRESERVE_AD = 2  # atomically *ptr = val | (*ptr & (A|D))
    MMU_PT_UPDATE_NO_TRANSLATE = 3  # as NORMAL, val never translated


MMU_UPDATE = struct.Struct("<QQ")  # ptr, val
assert MMU_UPDATE.size == 16


class MmuextCmd(IntEnum):
    MMUEXT_PIN_L1_TABLE = 0
    MMUEXT_PIN_L2_TABLE = 1
    MMUEXT_PIN_L3_TABLE = 2
    MMUEXT_PIN_L4_TABLE = 3
    MMUEXT_UNPIN_TABLE = 4
    MMUEXT_NEW_BASEPTR = 5
    MMUEXT_TLB_FLUSH_LOCAL = 6
    MMUEXT_INVLPG_LOCAL = 7
    MMUEXT_TLB_FLUSH_MULTI = 8
    MMUEXT_INVLPG_MULTI = 9
    MMUEXT_TLB_FLUSH_ALL = 10
    MMUEXT_INVLPG_ALL = 11
    MMUEXT_FLUSH_CACHE = 12
    MMUEXT_SET_LDT = 13
    # 14 is unused
    MMUEXT_NEW_USER_BASEPTR = 15
    MMUEXT_CLEAR_PAGE = 16
    MMUEXT_COPY_PAGE = 17
    MMUEXT_FLUSH_CACHE_GLOBAL = 18
    MMUEXT_MARK_SUPER = 19
    MMUEXT_UNMARK_SUPER = 20


#: struct mmuext_op { unsigned int cmd; union arg1 (mfn | linear_addr);
#: union arg2 (nr_ents | vcpumask handle | src_mfn); }
MMUEXT_OP = struct.Struct("<I4xQQ")
assert MMUEXT_OP.size == 24

UVMF_NONE = 0 << 0  # no flushing at all
UVMF_TLB_FLUSH = 1 << 0  # flush entire TLB(s)
UVMF_INVLPG = 2 << 0  # flush only one entry
UVMF_FLUSHTYPE_MASK = 3 << 0
UVMF_MULTI = 0 << 2  # flush subset of TLBs (vcpumask pointer in upper bits)
UVMF_LOCAL = 0 << 2  # flush local TLB
UVMF_ALL = 1 << 2  # flush all TLBs

CONSOLEIO_write = 0
CONSOLEIO_read = 1

VMASST_CMD_enable = 0
VMASST_CMD_disable = 1
VMASST_TYPE_4gb_segments = 0
VMASST_TYPE_4gb_segments_notify = 1
VMASST_TYPE_writable_pagetables = 2
VMASST_TYPE_pae_extended_cr3 = 3
VMASST_TYPE_architectural_iopl = 4
VMASST_TYPE_runstate_update_flag = 5
VMASST_TYPE_m2p_strict = 32

#: struct multicall_entry { xen_ulong_t op, result; xen_ulong_t args[6]; }
#: Xen itself honours only 5 arguments. ``result`` is written by Xen.
MULTICALL_ENTRY = struct.Struct("<QQ6Q")
assert MULTICALL_ENTRY.size == 64

# ---------------------------------------------------------------------------
# struct vcpu_time_info (32 bytes). Writer: Xen, seqlock-style: version is
# incremented (odd) before and (even) after an update; readers retry while
# odd or changed.  system time (ns) =
#   system_time + ((((tsc - tsc_timestamp) << tsc_shift) * tsc_to_system_mul) >> 32)
# (a negative tsc_shift means shift right).
# ---------------------------------------------------------------------------
VCPU_TIME_INFO = struct.Struct("<I4xQQIbB2x")
VCPU_TIME_INFO_FIELDS = (
    "version", "tsc_timestamp", "system_time", "tsc_to_system_mul", "tsc_shift", "flags",
)  # fmt: skip
assert VCPU_TIME_INFO.size == 32
XEN_PVCLOCK_TSC_STABLE_BIT = 1 << 0
XEN_PVCLOCK_GUEST_STOPPED = 1 << 1

# ---------------------------------------------------------------------------
# struct vcpu_info (64 bytes on x86).
#   evtchn_upcall_pending: Xen sets it; the guest clears it *before* scanning.
#   evtchn_upcall_mask:    guest-written; Xen reads it before an upcall.
#   evtchn_pending_sel:    Xen sets bit (port // 64); guest clears (xchg).
#   arch.cr2:              Xen, on a bounced page fault.
#   time:                  Xen.
# ---------------------------------------------------------------------------
VCPU_INFO_EVTCHN_UPCALL_PENDING_OFF = 0
VCPU_INFO_EVTCHN_UPCALL_MASK_OFF = 1
VCPU_INFO_EVTCHN_PENDING_SEL_OFF = 8
VCPU_INFO_ARCH_OFF = 16
VCPU_INFO_TIME_OFF = 32
VCPU_INFO_SIZE = 64
VCPU_INFO = struct.Struct("<BB6xQ" + ARCH_VCPU_INFO.format[1:] + VCPU_TIME_INFO.format[1:])
VCPU_INFO_FIELDS = (
    "evtchn_upcall_pending", "evtchn_upcall_mask", "evtchn_pending_sel", "cr2",
) + tuple("time." + f for f in VCPU_TIME_INFO_FIELDS)  # fmt: skip
assert VCPU_INFO.size == VCPU_INFO_SIZE
assert VCPU_INFO_ARCH_OFF + ARCH_VCPU_INFO.size == VCPU_INFO_TIME_OFF

# ---------------------------------------------------------------------------
# struct shared_info (3136 bytes in a 4 KiB frame).
#   evtchn_pending[64]: Xen sets bits, the guest clears them.
#   evtchn_mask[64]:    guest-written; read-only to Xen. A port that becomes
#                       pending while masked loses its edge (no upcall).
#   wc_*:               Xen (wallclock, same versioning as vcpu_time_info).
#   arch:               see arch_x86.ARCH_SHARED_INFO.
# Each bitmap is 64 unsigned longs = 4096 bits (the 2-level ABI's ports).
# On little-endian x86 bit ``p`` of an unsigned-long array is bit ``p % 8``
# of byte ``p // 8``, which evtchn_bit_location() relies on.
# ---------------------------------------------------------------------------
EVTCHN_BITMAP_WORDS = BITS_PER_XEN_ULONG  # sizeof(xen_ulong_t) * 8
SHARED_INFO_VCPU_INFO_OFF = 0
SHARED_INFO_EVTCHN_PENDING_OFF = XEN_LEGACY_MAX_VCPUS * VCPU_INFO_SIZE
SHARED_INFO_EVTCHN_MASK_OFF = SHARED_INFO_EVTCHN_PENDING_OFF + EVTCHN_BITMAP_WORDS * 8
SHARED_INFO_WC_VERSION_OFF = SHARED_INFO_EVTCHN_MASK_OFF + EVTCHN_BITMAP_WORDS * 8
SHARED_INFO_WC_SEC_OFF = SHARED_INFO_WC_VERSION_OFF + 4
SHARED_INFO_WC_NSEC_OFF = SHARED_INFO_WC_VERSION_OFF + 8
SHARED_INFO_WC_SEC_HI_OFF = SHARED_INFO_WC_VERSION_OFF + 12  # not on i386
SHARED_INFO_ARCH_OFF = SHARED_INFO_WC_VERSION_OFF + 16
SHARED_INFO_SIZE = SHARED_INFO_ARCH_OFF + ARCH_SHARED_INFO.size
assert SHARED_INFO_EVTCHN_PENDING_OFF == 2048
assert SHARED_INFO_EVTCHN_MASK_OFF == 2560
assert SHARED_INFO_WC_VERSION_OFF == 3072
assert SHARED_INFO_ARCH_OFF == 3088
assert SHARED_INFO_SIZE == 3136 <= XEN_PAGE_SIZE

#: wc_version, wc_sec, wc_nsec, wc_sec_hi at SHARED_INFO_WC_VERSION_OFF.
SHARED_INFO_WALLCLOCK = struct.Struct("<IIII")


def vcpu_info_offset(vcpu_id: int) -> int:
    """Offset of ``shared_info.vcpu_info[vcpu_id]`` (legacy vCPUs only)."""
    if not 0 <= vcpu_id < XEN_LEGACY_MAX_VCPUS:
        raise ValueError(f"vcpu {vcpu_id} has no vcpu_info slot in shared_info")
    return SHARED_INFO_VCPU_INFO_OFF + vcpu_id * VCPU_INFO_SIZE


def evtchn_bit_location(port: int) -> tuple[int, int]:
    """(byte offset within a bitmap, bit within that byte) of ``port``."""
    if not 0 <= port < EVTCHN_BITMAP_WORDS * BITS_PER_XEN_ULONG:
        raise ValueError(f"port {port} outside the 2-level bitmap")
    return port >> 3, port & 7


def evtchn_pending_sel_bit(port: int) -> int:
    """Bit of ``vcpu_info.evtchn_pending_sel`` covering ``port``'s word."""
    return port // BITS_PER_XEN_ULONG


# ---------------------------------------------------------------------------
# struct start_info (x86-64, 1168 bytes). Written once by the domain builder
# (re-filled on resume); read by the guest. Addresses marked VA are guest
# virtual; *_mfn fields are machine frame numbers.
# ---------------------------------------------------------------------------
XEN_START_INFO_MAGIC = b"xen-3.0-x86_64"  # "xen-<version>-<platform>"
MAX_GUEST_CMDLINE = 1024
START_INFO = struct.Struct(
    "<32s"  # magic
    "QQ"  # nr_pages, shared_info (machine *address*)
    "I4x"  # flags (SIF_*)
    "Q"  # store_mfn
    "I4x"  # store_evtchn
    "QI4x"  # console.domU.mfn, console.domU.evtchn
    "QQQQQ"  # pt_base (VA), nr_pt_frames, mfn_list (VA), mod_start, mod_len
    "1024s"  # cmd_line[MAX_GUEST_CMDLINE]
    "QQ"  # first_p2m_pfn, nr_p2m_frames
)
START_INFO_FIELDS = (
    "magic", "nr_pages", "shared_info", "flags", "store_mfn", "store_evtchn",
    "console_mfn", "console_evtchn", "pt_base", "nr_pt_frames", "mfn_list",
    "mod_start", "mod_len", "cmd_line", "first_p2m_pfn", "nr_p2m_frames",
)  # fmt: skip
assert START_INFO.size == 1168
START_INFO_OFFSETS = {
    "magic": 0, "nr_pages": 32, "shared_info": 40, "flags": 48, "store_mfn": 56,
    "store_evtchn": 64, "console": 72, "pt_base": 88, "nr_pt_frames": 96,
    "mfn_list": 104, "mod_start": 112, "mod_len": 120, "cmd_line": 128,
    "first_p2m_pfn": 1152, "nr_p2m_frames": 1160,
}  # fmt: skip
#: The dom0 view of the console union: info_off, info_size of console_info.
START_INFO_DOM0_CONSOLE = struct.Struct("<II")

SIF_PRIVILEGED = 1 << 0  # is the domain privileged?
SIF_INITDOMAIN = 1 << 1  # is this the initial control domain?
SIF_MULTIBOOT_MOD = 1 << 2  # is mod_start a multiboot module?
SIF_MOD_START_PFN = 1 << 3  # is mod_start a PFN?
SIF_VIRT_P2M_4TOOLS = 1 << 4  # do tools understand a virtually mapped P2M?
SIF_PM_MASK = 0xFF << 8  # reserved for xen-pm options

XEN_DOMAIN_HANDLE_LEN = 16  # xen_domain_handle_t: uint8_t[16] (a UUID)
