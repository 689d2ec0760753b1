"""Exceptions, software interrupts and user-mode syscalls bounced to the guest
kernel; ``HYPERVISOR_iret``; the kernel/user mode switch of a 64-bit PV vCPU.

**Two modes, one ring.** A 64-bit PV kernel and its applications both run
in ring 3; Xen tells them apart by its own flag (``TF_kernel_mode``,
:attr:`VCpu.kernel_mode`) and gives each its own L4: the kernel's (CR3 in
kernel mode) and the user one set by ``MMUEXT_NEW_USER_BASEPTR``
(:attr:`VCpu.user_cr3`). :func:`toggle_guest_mode` switches the two and
swaps the GS bases, as ``toggle_guest_mode`` + ``swapgs`` in
``xen/arch/x86/pv/domain.c``.

**The bounce frame** (``xen/arch/x86/x86_64/entry.S``, ``create_bounce_frame``).
From user mode Xen first switches to kernel mode and the kernel stack of
``stack_switch`` (``kernel_sp``); in kernel mode it uses the current rsp
and clears the RPL of the saved CS ("kernel context" for the guest). The
stack is aligned down to 16 bytes and must not reach into the hypervisor's
hole, then gets, from the lowest address::

    rcx, r11, [error code], rip, cs | saved_upcall_mask << 32, rflags, rsp, ss

with the frame's ``rflags.IF`` = ``!saved_upcall_mask`` (the guest's
virtual IF) and IOPL cleared. TBF_INTERRUPT (trap_info flag ``TI_SET_IF``,
``CALLBACKF_mask_events`` on the syscall callback) sets
``vcpu_info.evtchn_upcall_mask``. A fault while writing the frame, or no
handler at all, crashes the domain (``domain_crash``).

Worked example: user code at rip U with rsp S reads an unmapped address A.
Xen: kernel mode, CR3 = kernel L4, ``vcpu_info.arch.cr2 = A``, error code
with PFEC_user set, new rsp = (kernel_sp & ~15) - 64, frame [rcx, r11, 4 or
6, U, 0xe033, rflags|IF, S, 0xe02b], rip = the #PF handler. The handler's
``HYPERVISOR_iret`` with that frame (cs RPL 3) goes back to user mode.

**What raises what** (``xen/arch/x86/traps.c``, ``pv/traps.c``):
exceptions go to their trap_table vector (#PF's error code gets PFEC_user
from the guest mode, not the CPU's ring); ``int3`` is #BP whatever its DPL;
``int N`` is delivered to vector N only when the entry's DPL permits
(``permit_softint``: DPL >= 1 from the kernel, 3 from user mode), else it
is #GP with error code ``N << 3 | 2`` at the instruction; ``syscall`` from
user mode goes to the CALLBACKTYPE_syscall callback with rcx/r11 set as the
instruction sets them (no callback: #UD at the syscall, as ``lstar_enter``);
``ud2; .ascii "xen"; cpuid`` is emulated (:mod:`.cpuid`).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from unicorn import x86_const as X

from hypervisord.public import arch_x86
from hypervisord.public.callback import CALLBACKF_mask_events, CallbackType
from hypervisord.public.xen import PAGE_SIZE

from . import cpuid
from .cpu import Exit, ExitKind, VCpu

if TYPE_CHECKING:
    from .hypercalls import VcpuHypercalls

#: vectors whose exception pushes an error code (SDM vol. 3 table 6-1; X86_EXC_HAVE_EC)
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})
TRAP_BP, TRAP_OF, TRAP_UD, TRAP_GP, TRAP_PF = 3, 4, 6, 13, 14
PFEC_USER = 1 << 2
X86_XEC_IDT = 1 << 1  # #GP error code: the fault names an IDT vector
IRET_CONTEXT = arch_x86.IRET_CONTEXT  # rax, r11, rcx, flags, rip, cs, rflags, rsp, ss
X86_EFLAGS_TF, X86_EFLAGS_IF, X86_EFLAGS_DF = 1 << 8, 1 << 9, 1 << 10
X86_EFLAGS_IOPL, X86_EFLAGS_NT, X86_EFLAGS_RF = 3 << 12, 1 << 14, 1 << 16
X86_EFLAGS_VM, X86_EFLAGS_AC, X86_EFLAGS_MBS = 1 << 17, 1 << 18, 1 << 1
X86_EFLAGS_ALL = 0x3F7FD5  # CF PF AF ZF SF TF IF DF OF IOPL NT RF VM AC VIF VIP ID
#: cleared on a bounce, as a trap does (IA32 vol. 3; create_bounce_frame)
_BOUNCE_CLEARS = X86_EFLAGS_AC | X86_EFLAGS_VM | X86_EFLAGS_RF | X86_EFLAGS_NT | X86_EFLAGS_TF
#: create_bounce_frame's check: a frame top strictly inside this range crashes
_BAD_SP = (arch_x86.HYPERVISOR_VIRT_START, arch_x86.HYPERVISOR_VIRT_END + 8 * 8)
#: offsets in struct vcpu_info (xen/include/public/xen.h)
VCPU_INFO_UPCALL_MASK, VCPU_INFO_CR2 = 1, 16


class BadFrame(Exception):
    """The guest's stack cannot take (or give) a frame: the domain crashes."""


# -- the vCPU's mode ---------------------------------------------------------------------

def toggle_guest_mode(cpu: VCpu) -> None:
    """Kernel <-> user: the other L4 in CR3, the other GS base (swapgs)."""
    uc = cpu.uc
    if cpu.kernel_mode:
        cpu.kernel_cr3 = cpu.cr3
        uc.reg_write(X.UC_X86_REG_CR3, cpu.user_cr3)  # Unicorn flushes its TLB on CR3 writes
    else:
        uc.reg_write(X.UC_X86_REG_CR3, cpu.kernel_cr3)
    gs = uc.reg_read(X.UC_X86_REG_GS_BASE)
    uc.reg_write(X.UC_X86_REG_GS_BASE, cpu.gs_base_shadow)
    cpu.gs_base_shadow = gs
    cpu.kernel_mode = not cpu.kernel_mode


# A vCPU without a vcpu_info yet (vcpu_info_gpa 0: past the legacy 32) has
# Xen's dummy_vcpu_info: events masked, nothing written.

def upcall_mask(cpu: VCpu) -> int:
    if not cpu.vcpu_info_gpa:
        return 1
    return cpu.mem.read(cpu.vcpu_info_gpa + VCPU_INFO_UPCALL_MASK, 1)[0]


def set_upcall_mask(cpu: VCpu, mask: int) -> None:
    if cpu.vcpu_info_gpa:
        cpu.mem.write(cpu.vcpu_info_gpa + VCPU_INFO_UPCALL_MASK, bytes((1 if mask else 0,)))


def set_cr2(cpu: VCpu, cr2: int) -> None:
    """``vcpu_info.arch.cr2``, where a PV guest reads the #PF address."""
    if cpu.vcpu_info_gpa:
        cpu.mem.write_u64(cpu.vcpu_info_gpa + VCPU_INFO_CR2, cr2)


# -- the bounce ------------------------------------------------------------------------------

def create_bounce_frame(cpu: VCpu, copy_to_guest, handler: int, *,
                        error_code: int | None = None, interrupt: bool = False) -> None:
    """Enter the guest kernel at ``handler`` with Xen's frame (see module doc)."""
    if handler == 0:
        raise BadFrame("bounce to a null handler")
    rcx, r11, rip, rflags, rsp = cpu.regs(("rcx", "r11", "rip", "rflags", "rsp"))
    if cpu.kernel_mode:
        sp, cs = rsp, arch_x86.FLAT_KERNEL_CS64 & ~3  # "kernel context" for the guest
    else:
        toggle_guest_mode(cpu)
        sp, cs = cpu.kernel_sp, arch_x86.FLAT_USER_CS64
    sp &= ~15
    if _BAD_SP[0] < sp < _BAD_SP[1]:
        raise BadFrame(f"bounce frame at {sp:#x}, inside Xen's hole")
    saved_mask = upcall_mask(cpu)
    frame_rflags = (rflags & ~(X86_EFLAGS_IF | X86_EFLAGS_IOPL)) \
        | (0 if saved_mask else X86_EFLAGS_IF)
    frame = [rcx, r11] + ([error_code & 0xFFFF_FFFF] if error_code is not None else []) \
        + [rip, cs | saved_mask << 32, frame_rflags, rsp, arch_x86.FLAT_KERNEL_SS64]
    sp -= 8 * len(frame)
    data = struct.pack(f"<{len(frame)}Q", *(w & 0xFFFF_FFFF_FFFF_FFFF for w in frame))
    if (sp & (PAGE_SIZE - 1)) + len(data) <= PAGE_SIZE:
        copy_to_guest(sp, data)  # one page: one walk
    else:
        for i in range(0, len(data), 8):  # word by word across the page boundary
            copy_to_guest(sp + i, data[i:i + 8])
    if interrupt:
        set_upcall_mask(cpu, 1)
    cpu.set_reg("rflags", rflags & ~_BOUNCE_CLEARS)
    cpu.set_reg("rsp", sp)
    cpu.set_reg("rip", handler)


def inject_exception(cpu: VCpu, hc: VcpuHypercalls, vector: int, error_code: int = 0,
                     cr2: int = 0) -> bool:
    """``pv_inject_event`` for a hardware exception; False: no handler (crash)."""
    entry = hc.trap_table.get(vector)
    if entry is None or entry[2] == 0:
        return False
    flags, _cs, address = entry
    if vector == TRAP_PF:
        set_cr2(cpu, cr2)
        error_code = (error_code & ~PFEC_USER) | (0 if cpu.kernel_mode else PFEC_USER)
    has_ec = vector in ERROR_CODE_VECTORS
    create_bounce_frame(cpu, hc.copy_to_guest, address, error_code=error_code if has_ec else None,
                        interrupt=bool(arch_x86.TI_GET_IF(flags)))
    return True


def software_interrupt(cpu: VCpu, hc: VcpuHypercalls, ex: Exit) -> bool:
    """``int3`` / ``int N`` (RIP is past the instruction)."""
    entry = hc.trap_table.get(ex.vector)
    if ex.vector in (TRAP_BP, TRAP_OF):  # Xen: their DPL is not checked
        permitted = True
    else:
        dpl = arch_x86.TI_GET_DPL(entry[0]) if entry else 0
        permitted = dpl >= (1 if cpu.kernel_mode else 3)  # permit_softint
    if not permitted or entry is None or entry[2] == 0:
        # the IDT gate's DPL 0 made it #GP(vector << 3 | IDT) at the instruction
        cpu.set_reg("rip", ex.rip - ex.insn_len)
        return inject_exception(cpu, hc, TRAP_GP, ex.vector << 3 | X86_XEC_IDT)
    create_bounce_frame(cpu, hc.copy_to_guest, entry[2],
                        interrupt=bool(arch_x86.TI_GET_IF(entry[0])))
    return True


def syscall(cpu: VCpu, hc: VcpuHypercalls, ex: Exit) -> bool:
    """``syscall`` from guest user mode (``lstar_enter`` -> ``switch_to_kernel``)."""
    rip, rflags = cpu.regs(("rip", "rflags"))  # rip: past the syscall (cpu.run_slice)
    cpu.set_reg("rcx", rip)  # what the instruction itself does; Unicorn does not
    cpu.set_reg("r11", rflags)
    address, flags = hc.callbacks.get(CallbackType.CALLBACKTYPE_syscall, (0, 0))
    if address == 0:  # no callback: #UD at the syscall, DF kept
        cpu.set_reg("rip", ex.rip)
        return inject_exception(cpu, hc, TRAP_UD)
    create_bounce_frame(cpu, hc.copy_to_guest, address,
                        interrupt=bool(flags & CALLBACKF_mask_events))
    cpu.set_reg("rflags", cpu.reg("rflags") & ~X86_EFLAGS_DF)  # the PV ABI's SYSCALL_MASK
    return True


def deliver(cpu: VCpu, hc: VcpuHypercalls, ex: Exit) -> bool:
    """Serve a TRAP or SYSCALL exit; False when the guest cannot take it.

    Raises :class:`BadFrame` (or the GuestFault of a frame write) when the
    bounce itself fails: the domain crashes either way.
    """
    if ex.kind is ExitKind.SYSCALL:
        return syscall(cpu, hc, ex)
    if ex.software:
        return software_interrupt(cpu, hc, ex)
    if ex.vector == TRAP_UD and cpuid.emulate_forced_invalid_op(cpu, hc):
        return True
    return inject_exception(cpu, hc, ex.vector, ex.error_code, ex.cr2)


# -- HYPERVISOR_iret -------------------------------------------------------------------------

def iret(cpu: VCpu, copy_from_guest) -> None:
    """``do_iret``: restore the context at the guest's rsp, to kernel or user mode.

    The frame's CS RPL says where to: 3 is user mode (a kernel-context frame
    has RPL 0, see :func:`create_bounce_frame`), which needs a user L4.
    """
    rsp = cpu.reg("rsp")
    rax, r11, rcx, flags, rip, cs, rflags, new_rsp, ss = IRET_CONTEXT.unpack(
        copy_from_guest(rsp, IRET_CONTEXT.size))  # copied once: the guest may race us
    to_user = (cs & 3) == 3
    cs, ss = (cs | 3) & 0xFFFF, (ss | 3) & 0xFFFF  # force guest privilege
    if cs != arch_x86.FLAT_USER_CS64 or ss not in (arch_x86.FLAT_USER_SS64, 3):
        # Unicorn keeps the flat selectors loaded; others would need a descriptor load
        raise BadFrame(f"iret to cs {cs:#x} ss {ss:#x}: only the flat 64-bit selectors")
    if to_user:
        if cpu.user_cr3 == 0:
            raise BadFrame("iret to user mode with no user page tables")
        if cpu.kernel_mode:
            toggle_guest_mode(cpu)
    guest_if = rflags & X86_EFLAGS_IF
    rflags = (rflags & X86_EFLAGS_ALL & ~(X86_EFLAGS_IOPL | X86_EFLAGS_VM)) \
        | X86_EFLAGS_IF | X86_EFLAGS_MBS
    if flags & arch_x86.VGCF_in_syscall:
        rcx, r11 = rip, rflags  # back through sysretq, which loads rcx/r11 so
    for name, value in (("rax", rax), ("r11", r11), ("rcx", rcx), ("rip", rip),
                        ("rflags", rflags), ("rsp", new_rsp)):
        cpu.set_reg(name, value)
    set_upcall_mask(cpu, 0 if guest_if else 1)  # the upcall mask from the frame's IF
