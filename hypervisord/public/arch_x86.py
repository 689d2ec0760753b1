"""x86-64 PV architecture ABI: mirrors ``xen/include/public/arch-x86/xen.h``
and ``arch-x86/xen-x86_64.h`` (Xen commit c447b730, 4.23-unstable).

Owns what ``xen.h`` takes from the architecture: ``xen_pfn_t`` and
``xen_ulong_t`` (both ``unsigned long``, 8 bytes), the flat segment
selectors a 64-bit PV kernel runs with, the hypervisor's virtual-address
hole, ``struct arch_vcpu_info``, ``struct arch_shared_info``,
``struct cpu_user_regs``, ``struct trap_info`` and
``struct vcpu_guest_context`` (the payload of ``VCPUOP_initialise`` and
``XEN_DOMCTL_{get,set}vcpucontext``).
"""

from __future__ import annotations

import struct

XEN_LEGACY_MAX_VCPUS = 32  # vcpu_info slots inside shared_info
XEN_ULONG_BYTES = 8  # sizeof(xen_ulong_t) == sizeof(unsigned long) on x86-64
BITS_PER_XEN_ULONG = XEN_ULONG_BYTES * 8

# The first GDT page a PV guest may not use: Xen's own descriptors live there.
FIRST_RESERVED_GDT_PAGE = 14
FIRST_RESERVED_GDT_BYTE = FIRST_RESERVED_GDT_PAGE * 4096
FIRST_RESERVED_GDT_ENTRY = FIRST_RESERVED_GDT_BYTE // 8

# ---------------------------------------------------------------------------
# Flat selectors (xen-x86_64.h). A 64-bit PV kernel runs in ring 3 and uses
# the same selectors as user space; Xen tells the two apart by its own
# "in kernel" flag (VGCF_in_kernel), not by CPL.
# ---------------------------------------------------------------------------
FLAT_RING3_CS32 = 0xE023  # GDT index 260
FLAT_RING3_CS64 = 0xE033  # GDT index 262
FLAT_RING3_DS32 = 0xE02B  # GDT index 261
FLAT_RING3_DS64 = 0x0000  # NULL selector
FLAT_RING3_SS32 = 0xE02B  # GDT index 261
FLAT_RING3_SS64 = 0xE02B  # GDT index 261
FLAT_KERNEL_DS64 = FLAT_RING3_DS64
FLAT_KERNEL_DS32 = FLAT_RING3_DS32
FLAT_KERNEL_DS = FLAT_KERNEL_DS64
FLAT_KERNEL_CS64 = FLAT_RING3_CS64
FLAT_KERNEL_CS32 = FLAT_RING3_CS32
FLAT_KERNEL_CS = FLAT_KERNEL_CS64
FLAT_KERNEL_SS64 = FLAT_RING3_SS64
FLAT_KERNEL_SS32 = FLAT_RING3_SS32
FLAT_KERNEL_SS = FLAT_KERNEL_SS64
FLAT_USER_DS64 = FLAT_RING3_DS64
FLAT_USER_DS32 = FLAT_RING3_DS32
FLAT_USER_DS = FLAT_USER_DS64
FLAT_USER_CS64 = FLAT_RING3_CS64
FLAT_USER_CS32 = FLAT_RING3_CS32
FLAT_USER_CS = FLAT_USER_CS64
FLAT_USER_SS64 = FLAT_RING3_SS64
FLAT_USER_SS32 = FLAT_RING3_SS32
FLAT_USER_SS = FLAT_USER_SS64

# The virtual range Xen reserves in every 64-bit PV address space; the
# read-only machine-to-phys table (M2P) sits at its start.
HYPERVISOR_VIRT_START = 0xFFFF800000000000
HYPERVISOR_VIRT_END = 0xFFFF880000000000
MACH2PHYS_VIRT_START = 0xFFFF800000000000
MACH2PHYS_VIRT_END = 0xFFFF804000000000
MACH2PHYS_NR_ENTRIES = (MACH2PHYS_VIRT_END - MACH2PHYS_VIRT_START) >> 3

# set_segment_base hypercall selectors.
SEGBASE_FS = 0
SEGBASE_GS_USER = 1
SEGBASE_GS_KERNEL = 2
SEGBASE_GS_USER_SEL = 3  # set user %gs specified in base[15:0]


def xen_pfn_to_cr3(pfn: int) -> int:
    return (pfn << 12) & 0xFFFFFFFFFFFFFFFF


def xen_cr3_to_pfn(cr3: int) -> int:
    return cr3 >> 12


# ---------------------------------------------------------------------------
# struct arch_vcpu_info { unsigned long cr2, pad; }: the tail of vcpu_info.
# cr2 is written by Xen when it bounces a page fault to the guest.
# ---------------------------------------------------------------------------
ARCH_VCPU_INFO = struct.Struct("<Q8x")  # cr2 (pad keeps vcpu_info at 64 bytes)
assert ARCH_VCPU_INFO.size == 16

# ---------------------------------------------------------------------------
# struct arch_shared_info: the tail of shared_info (offset 3088). Written by
# the guest (it publishes its P2M here for save/migrate tools); nmi_reason is
# written by Xen.
# ---------------------------------------------------------------------------
ARCH_SHARED_INFO = struct.Struct("<QQQQQQ")
ARCH_SHARED_INFO_FIELDS = (
    "max_pfn",
    "pfn_to_mfn_frame_list_list",
    "nmi_reason",
    "p2m_cr3",
    "p2m_vaddr",
    "p2m_generation",
)
assert ARCH_SHARED_INFO.size == 48

# ---------------------------------------------------------------------------
# struct trap_info: one virtual IDT entry (set_trap_table, vcpu_guest_context).
# flags bits 0-1: DPL; bit 2: clear event-enable (mask upcalls) on entry.
# ---------------------------------------------------------------------------
TRAP_INFO = struct.Struct("<BBH4xQ")  # vector, flags, cs, address
assert TRAP_INFO.size == 16


def TI_GET_DPL(flags: int) -> int:  # noqa: N802 - Xen's macro name
    return flags & 3


def TI_GET_IF(flags: int) -> int:  # noqa: N802 - Xen's macro name
    return flags & 4


# ---------------------------------------------------------------------------
# struct cpu_user_regs (x86-64): 27 fields, 200 bytes. error_code and
# entry_vector are private to Xen. rflags.IF == !saved_upcall_mask.
# ---------------------------------------------------------------------------
_CPU_USER_REGS_FMT = "15QIIQH2xB3xQQH6xH6xH6xH6xH6x"
CPU_USER_REGS = struct.Struct("<" + _CPU_USER_REGS_FMT)
CPU_USER_REGS_FIELDS = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
    "rax", "rcx", "rdx", "rsi", "rdi", "error_code", "entry_vector",
    "rip", "cs", "saved_upcall_mask", "rflags", "rsp", "ss",
    "es", "ds", "fs", "gs",
)  # fmt: skip
assert CPU_USER_REGS.size == 200
assert len(CPU_USER_REGS_FIELDS) == 27

# struct iret_context: what the guest pushes before __HYPERVISOR_iret
# (top of stack first).
IRET_CONTEXT = struct.Struct("<9Q")
IRET_CONTEXT_FIELDS = ("rax", "r11", "rcx", "flags", "rip", "cs", "rflags", "rsp", "ss")
assert IRET_CONTEXT.size == 72
VGCF_in_syscall = 1 << 8  # iret_context.flags: return via sysret path

# ---------------------------------------------------------------------------
# struct vcpu_guest_context (x86-64): 5168 bytes.
# ---------------------------------------------------------------------------
_VGCF_i387_valid = 0
VGCF_i387_valid = 1 << _VGCF_i387_valid
_VGCF_in_kernel = 2
VGCF_in_kernel = 1 << _VGCF_in_kernel
_VGCF_failsafe_disables_events = 3
VGCF_failsafe_disables_events = 1 << _VGCF_failsafe_disables_events
_VGCF_syscall_disables_events = 4
VGCF_syscall_disables_events = 1 << _VGCF_syscall_disables_events
_VGCF_online = 5
VGCF_online = 1 << _VGCF_online

VCPU_GUEST_CONTEXT = struct.Struct(
    "<512sQ"  # fpu_ctxt (FXSAVE image), flags (VGCF_*)
    + _CPU_USER_REGS_FMT  # user_regs
    + "4096s"  # trap_ctxt[256] as raw TRAP_INFO entries
    + "QQ"  # ldt_base, ldt_ents
    + "16QQ"  # gdt_frames[16] (MFNs), gdt_ents
    + "QQ"  # kernel_ss, kernel_sp (the virtual TSS)
    + "8Q8Q"  # ctrlreg[8] (user L4 in ctrlreg[1]), debugreg[8]
    + "QQQ"  # event_callback_eip, failsafe_callback_eip, syscall_callback_eip
    + "Q"  # vm_assist (VMASST_TYPE_* bitmap)
    + "QQQ"  # fs_base, gs_base_kernel, gs_base_user
)
assert VCPU_GUEST_CONTEXT.size == 5168

#: Byte offsets of each member, derived by hand from the header.
VCPU_GUEST_CONTEXT_OFFSETS = {
    "fpu_ctxt": 0,
    "flags": 512,
    "user_regs": 520,
    "trap_ctxt": 720,
    "ldt_base": 4816,
    "ldt_ents": 4824,
    "gdt_frames": 4832,
    "gdt_ents": 4960,
    "kernel_ss": 4968,
    "kernel_sp": 4976,
    "ctrlreg": 4984,
    "debugreg": 5048,
    "event_callback_eip": 5112,
    "failsafe_callback_eip": 5120,
    "syscall_callback_eip": 5128,
    "vm_assist": 5136,
    "fs_base": 5144,
    "gs_base_kernel": 5152,
    "gs_base_user": 5160,
}
