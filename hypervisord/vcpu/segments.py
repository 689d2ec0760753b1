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
  SEGBASE_GS_USER_SEL loads a user %gs selector: only the null selector is
  loadable here (the guest's GDT is not mapped for the CPU, below), which
  Xen's own error path does too (it NULs the selector, never fails).
* ``set_gdt(frames, entries)``: at most FIRST_RESERVED_GDT_ENTRY entries,
  frames the domain's own; each descriptor passes ``check_descriptor``.
* ``update_descriptor(maddr, desc)``: 8-byte aligned, own frame, the
  descriptor checked, then written.

``check_descriptor`` for a 64-bit guest: a not-present descriptor or type 0
is accepted as is; code/data segments are accepted with their DPL forced
to 3 (``__fixup_guest_selector``); everything else (TSS, LDT, interrupt and
trap gates) is refused. Call gates are refused too (Xen rewrites them for
emulation; pvxen has no gate emulation): a documented subset.

Not yet: the CPU does not load selectors from the guest's GDT. Xen maps the
GDT frames into a per-vCPU area of its hole in every guest address space;
pvxen's GDT register points at the hypervisor's private frame, reachable
only by guest-physical address, so guest code keeps to the flat selectors
(and the null one). The accepted GDT is kept (:attr:`VCpu.gdt_frames`,
``gdt_ents``) for save/restore and for when that mapping exists.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from unicorn import x86_const as X

from hypervisord.public import arch_x86
from hypervisord.public.errno import XenErrno

from . import paging

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
    if not all(_own_frame(hc, f) for f in frames):
        return -XenErrno.XEN_EINVAL
    mem = hc.cpu.mem
    fixed = []
    for frame in frames:  # Xen types each frame seg_desc: all its 512 must pass
        page = mem.read(frame * paging.PAGE_SIZE, paging.PAGE_SIZE)  # copied once
        descs = [check_descriptor(d) for d in struct.unpack(f"<{DESCS_PER_FRAME}Q", page)]
        if None in descs:
            return -XenErrno.XEN_EINVAL
        fixed.append((frame, descs))
    for frame, descs in fixed:  # check_descriptor fixes DPLs in place
        mem.write(frame * paging.PAGE_SIZE, struct.pack(f"<{DESCS_PER_FRAME}Q", *descs))
    hc.cpu.gdt_frames, hc.cpu.gdt_ents = tuple(frames), entries
    return 0


def update_descriptor(hc: VcpuHypercalls, maddr: int, desc: int, *_: int) -> int:
    fixed = check_descriptor(desc)
    if maddr & 7 or fixed is None or not _own_frame(hc, maddr >> paging.PAGE_SHIFT):
        return -XenErrno.XEN_EINVAL
    hc.cpu.mem.write_u64(maddr, fixed)
    return 0
