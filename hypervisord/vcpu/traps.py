"""Exceptions bounced to the guest's trap table, and HYPERVISOR_iret.

A 64-bit PV kernel registers handlers with ``set_trap_table``; Xen delivers
an exception by building a **bounce frame** on the guest kernel stack
(``xen/arch/x86/x86_64/entry.S``, ``create_bounce_frame``; stack aligned
down to 16 bytes first)::

    rsp ->  rcx, r11, [error code], rip, cs, rflags, rsp, ss     (8 bytes each)

and jumping to the handler; for #PF, CR2 goes to ``vcpu_info.arch.cr2``.
The handler pops rcx/r11 (and the error code), pushes a flags word and
jumps to the hypercall page's ``iret`` stub, which pushes rcx, r11, rax:
``HYPERVISOR_iret`` then finds ``struct iret_context`` { rax, r11, rcx,
flags, rip, cs, rflags, rsp, ss } at the guest's rsp
(``xen/arch/x86/pv/iret.c``, ``do_iret``).

So far kernel mode only: a frame whose cs/ss are not the flat kernel
selectors is refused (guest user mode comes next).
"""

from __future__ import annotations

import struct

from hypervisord.public import arch_x86
from hypervisord.public.xen import PAGE_SIZE, vcpu_info_offset

from .cpu import Exit, VCpu
from .memory import SHARED_INFO_MFN

#: vectors whose exception pushes an error code (SDM vol. 3 table 6-1)
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
TRAP_PF = 14
IRET_CONTEXT = struct.Struct("<9Q")  # rax, r11, rcx, flags, rip, cs, rflags, rsp, ss
_Q = struct.Struct("<Q")
X86_EFLAGS_IF, X86_EFLAGS_IOPL, X86_EFLAGS_VM = 1 << 9, 3 << 12, 1 << 17


class BadFrame(Exception):
    """The guest's stack cannot take (or give) a frame: the domain crashes."""


def _write_guest(cpu: VCpu, copy_to_guest, va: int, words: list[int]) -> None:
    for i, w in enumerate(words):  # word by word: a frame may straddle pages
        copy_to_guest(va + 8 * i, _Q.pack(w & 0xFFFF_FFFF_FFFF_FFFF))


def bounce(cpu: VCpu, trap_table: dict, ex: Exit, copy_to_guest) -> bool:
    """Deliver ``ex`` to the guest's handler; False when it registered none."""
    entry = trap_table.get(ex.vector)
    if entry is None:
        return False
    _flags, _cs, handler = entry
    rcx, r11, rip, rflags, rsp = cpu.regs(("rcx", "r11", "rip", "rflags", "rsp"))
    frame = [rcx, r11]
    if ex.vector in ERROR_CODE_VECTORS:
        frame.append(ex.error_code)
    frame += [rip, arch_x86.FLAT_KERNEL_CS64, rflags, rsp, arch_x86.FLAT_KERNEL_SS64]
    new_rsp = (rsp & ~15) - 8 * len(frame)
    _write_guest(cpu, copy_to_guest, new_rsp, frame)
    if ex.vector == TRAP_PF:
        cpu.mem.write_u64(SHARED_INFO_MFN * PAGE_SIZE + vcpu_info_offset(cpu.vcpu_id) + 16,
                          ex.cr2)
    cpu.set_reg("rsp", new_rsp)
    cpu.set_reg("rip", handler)
    return True


def iret(cpu: VCpu, copy_from_guest) -> None:
    """``HYPERVISOR_iret``: restore the context at the guest's rsp (kernel mode)."""
    rsp = cpu.reg("rsp")
    rax, r11, rcx, _flags, rip, cs, rflags, new_rsp, ss = IRET_CONTEXT.unpack(
        copy_from_guest(rsp, IRET_CONTEXT.size))
    # do_iret forces RPL 3 (cs | 3): an event upcall's frame says "kernel context" with RPL 0
    if ((cs | 3) & 0xFFFF) != arch_x86.FLAT_KERNEL_CS64 \
            or ((ss | 3) & 0xFFFF) != arch_x86.FLAT_KERNEL_SS64:
        raise BadFrame(f"iret to cs {cs:#x} ss {ss:#x}: guest user mode is not supported yet")
    # as do_iret: never the guest's IOPL or VM, always IF
    rflags = (rflags & ~(X86_EFLAGS_IOPL | X86_EFLAGS_VM)) | X86_EFLAGS_IF | 0x2
    for name, value in (("rax", rax), ("r11", r11), ("rcx", rcx), ("rip", rip),
                        ("rflags", rflags), ("rsp", new_rsp)):
        cpu.set_reg(name, value)
