"""Segment and descriptor hypercalls of a 64-bit PV vCPU.

Owns ``stack_switch``, ``set_segment_base`` (``xen/arch/x86/pv/misc-hypercalls.c``),
``set_gdt`` and ``update_descriptor`` (``xen/arch/x86/pv/descriptor-tables.c``).
The handlers take the vCPU's :class:`~.hypercalls.VcpuHypercalls` first, as
the methods of its dispatch table do.

* ``stack_switch(ss, sp)``: the kernel stack a trap from user mode lands on
  (:attr:`VCpu.kernel_ss`/``kernel_sp``); the selector's RPL forced to 3
  (``fixup_guest_stack_selector``). Always 0.
* ``set_segment_base(which, base)``: SEGBASE_FS -> FS base; SEGBASE_GS_KERNEL
  -> the live GS base (hypercalls come from kernel mode); SEGBASE_GS_USER ->
  the inactive one, swapped in on the way to user mode
  (:func:`.traps.toggle_guest_mode`); non-canonical bases are -EINVAL.
  SEGBASE_GS_USER_SEL loads a user %gs selector: only the null selector
  here (GS is live for the kernel; the user one waits in the shadow), which
  is what Xen's own error path does (it NULs the selector, never fails).
* ``set_gdt(frames, entries)``: at most FIRST_RESERVED_GDT_ENTRY entries,
  frames the domain's own; each descriptor passes ``check_descriptor``.
* ``update_descriptor(maddr, desc)``: 8-byte aligned, own frame, the
  descriptor checked, then written.

``check_descriptor`` for a 64-bit guest: a not-present descriptor or type 0
is accepted as is; code/data segments are accepted with their DPL forced
to 3 (``__fixup_guest_selector``); everything else (TSS, LDT, interrupt and
trap gates) is refused. Call gates are refused too (Xen rewrites them for
emulation; pvxen has no gate emulation): a documented subset.

The CPU loads descriptors from the vCPU's own copy of the GDT (:mod:`.gdt`):
set_gdt copies the checked entries there, update_descriptor updates both.
``HYPERVISOR_iret`` loads CS/SS from it too (:mod:`.traps`): any present
64-bit DPL-3 code segment and writable data segment (no 32-bit user code,
no LDT: a documented subset).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from unicorn import x86_const as X

from hypervisord.public import arch_x86
from hypervisord.public.errno import XenErrno

from . import gdt, paging

if TYPE_CHECKING:
    from .hypercalls import VcpuHypercalls

MAX_GDT_FRAMES = 16  # do_set_gdt's frames[16]
DESCS_PER_FRAME = paging.PAGE_SIZE // 8
_SEGMENT_TYPE = 0xF << 8  # of the high word
_SEGMENT_S = 1 << 12
_SEGMENT_DPL = 3 << 13
_SEGMENT_P = 1 << 15
_CALL_GATE = 0xC << 8


def check_descriptor(raw: int) -> int | None:
    """The descriptor as Xen would store it, or None when it is refused."""
    a, b = raw & 0xFFFF_FFFF, raw >> 32
    if not b & _SEGMENT_P:
        return raw  # a not-present descriptor always faults: safe
    if b & _SEGMENT_S:  # code or data: any base/limit; DPL fixed up to 3
        return a | ((b | _SEGMENT_DPL) << 32)
    if b & _SEGMENT_TYPE == 0:
        return raw  # type 0: harmless (the upper half of a 16-byte gate)
    return None  # call gates (see module doc) and every other system descriptor


def stack_switch(hc: VcpuHypercalls, ss: int, sp: int, *_: int) -> int:
    cpu = hc.cpu
    cpu.kernel_ss = (ss & 0xFFFF) | 3  # __fixup_guest_selector: kernel RPL is 3
    cpu.kernel_sp = sp
    return 0


def set_segment_base(hc: VcpuHypercalls, which: int, base: int, *_: int) -> int:
    cpu, uc = hc.cpu, hc.cpu.uc
    which &= 0xFFFF_FFFF
    if which in (arch_x86.SEGBASE_FS, arch_x86.SEGBASE_GS_USER, arch_x86.SEGBASE_GS_KERNEL):
        if not paging.is_canonical(base):
            return -XenErrno.XEN_EINVAL
        if which == arch_x86.SEGBASE_FS:
            uc.reg_write(X.UC_X86_REG_FS_BASE, base)
        elif which == arch_x86.SEGBASE_GS_KERNEL:
            uc.reg_write(X.UC_X86_REG_GS_BASE, base)
        else:
            cpu.gs_base_shadow = base
        return 0
    if which == arch_x86.SEGBASE_GS_USER_SEL:
        # only the null selector is loadable (module doc); Xen NULs a bad one
        cpu.gs_base_shadow = 0
        return 0
    return -XenErrno.XEN_EINVAL


def _own_frame(hc: VcpuHypercalls, mfn: int) -> bool:
    return 0 <= mfn < hc.cpu.mem.nr_pages


def set_gdt(hc: VcpuHypercalls, frame_list: int, entries: int, *_: int) -> int:
    from .hypercalls import copy_from_guest

    entries &= 0xFFFF_FFFF
    if entries > arch_x86.FIRST_RESERVED_GDT_ENTRY:
        return -XenErrno.XEN_EINVAL
    nr_frames = -(-entries // DESCS_PER_FRAME)
    frames = struct.unpack(f"<{nr_frames}Q", copy_from_guest(hc.cpu, frame_list, 8 * nr_frames))
    fixed = check_gdt(hc.cpu.mem, frames, entries)
    if fixed is None:
        return -XenErrno.XEN_EINVAL
    load_gdt(hc.cpu, fixed, entries)
    return 0


def check_gdt(mem, frames, entries: int) -> list[tuple[int, list[int]]] | None:
    """``pv_set_gdt``'s checks: (frame, its fixed descriptors) for each of
    ``frames``, or None when the GDT is refused (-EINVAL)."""
    if entries > arch_x86.FIRST_RESERVED_GDT_ENTRY \
            or len(frames) != -(-entries // DESCS_PER_FRAME) \
            or not all(0 <= f < mem.nr_pages for f in frames):
        return None
    fixed = []
    for frame in frames:  # Xen types each frame seg_desc: all its 512 must pass
        page = mem.read(frame * paging.PAGE_SIZE, paging.PAGE_SIZE)  # copied once
        descs = [check_descriptor(d) for d in struct.unpack(f"<{DESCS_PER_FRAME}Q", page)]
        if None in descs:
            return None
        fixed.append((frame, descs))
    return fixed


def load_gdt(cpu, fixed: list[tuple[int, list[int]]], entries: int) -> None:
    """The GDT :func:`check_gdt` accepted, on ``cpu``."""
    for frame, descs in fixed:  # check_descriptor fixes DPLs in place
        cpu.mem.write(frame * paging.PAGE_SIZE, struct.pack(f"<{DESCS_PER_FRAME}Q", *descs))
    cpu.gdt_frames, cpu.gdt_ents = tuple(f for f, _ in fixed), entries
    gdt.load_guest_entries(cpu, [d for _, descs in fixed for d in descs][:entries])


def update_descriptor(hc: VcpuHypercalls, maddr: int, desc: int, *_: int) -> int:
    fixed = check_descriptor(desc)
    if maddr & 7 or fixed is None or not _own_frame(hc, maddr >> paging.PAGE_SHIFT):
        return -XenErrno.XEN_EINVAL
    hc.cpu.mem.write_u64(maddr, fixed)
    cpu = hc.cpu
    frame, index = maddr >> paging.PAGE_SHIFT, (maddr & (paging.PAGE_SIZE - 1)) // 8
    for i, f in enumerate(cpu.gdt_frames):  # in the loaded GDT: the CPU's copy too
        if f == frame and i * DESCS_PER_FRAME + index < cpu.gdt_ents:
            gdt.update_entry(cpu, i * DESCS_PER_FRAME + index, fixed)
    return 0
