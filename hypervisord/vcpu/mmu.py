"""Page-table hypercalls with Xen's invariants (``xen/arch/x86/mm.c``).

A 64-bit PV guest's tables are its own frames, mapped read-only to it; it
changes them only by hypercall, and the hypervisor checks each new entry
(``get_page_from_l1e``): the frame must be the domain's own (or its
shared_info), and **a frame in use as a page table is never mapped
writable**. So far: level-1 entries, through ``update_va_mapping`` and
``mmu_update`` (``MMU_NORMAL_PT_UPDATE``/``MMU_PT_UPDATE_PRESERVE_AD``);
higher levels, pinning and ``mmuext_op`` come next (issue 8).

Which frames are page tables: those reachable as tables from the current
CR3 (Xen counts types per page; one address space per vCPU here, and no
``MMUEXT_NEW_BASEPTR`` yet, so the walk from CR3 is exactly that set).
"""

from __future__ import annotations

import struct

from hypervisord.public.errno import XenErrno
from hypervisord.public.xen import MMU_UPDATE, PAGE_SIZE, MmuUpdateCmd

from . import paging
from .memory import SHARED_INFO_MFN


class MmuError(Exception):
    def __init__(self, errno: int, why: str) -> None:
        super().__init__(why)
        self.errno = errno


def table_frames(read_pte, cr3: int) -> dict[int, int]:
    """frame -> level (4..1) of every table reachable from ``cr3``."""
    found = {cr3 >> paging.PAGE_SHIFT: 4}
    todo = [(cr3 >> paging.PAGE_SHIFT, 4)]
    while todo:
        frame, level = todo.pop()
        if level == 1:
            continue
        for i in range(paging.PTES_PER_TABLE):
            if level == 4 and not paging.is_guest_l4_slot(i):
                continue  # Xen's slots (the vCPU's GDT mapping, gdt.py): not the guest's
            pte = read_pte(frame * PAGE_SIZE + 8 * i)
            if not pte & paging._PAGE_PRESENT or (level in (3, 2) and pte & paging._PAGE_PSE):
                continue
            child = paging.pte_frame(pte)
            if child not in found:
                found[child] = level - 1
                todo.append((child, level - 1))
    return found


def check_l1e(val: int, nr_pages: int, tables: dict[int, int]) -> None:
    """``get_page_from_l1e``: may this entry go into an L1 of this domain?"""
    if not val & paging._PAGE_PRESENT:
        return
    frame = paging.pte_frame(val)
    if frame == SHARED_INFO_MFN:
        return
    if frame >= nr_pages:
        raise MmuError(XenErrno.XEN_EINVAL, f"frame {frame:#x} is not the domain's")
    if val & paging._PAGE_RW and frame in tables:
        raise MmuError(XenErrno.XEN_EINVAL, f"frame {frame:#x} is a page table: never writable")


class Mmu:
    """The page-table operations of one vCPU."""

    def __init__(self, cpu) -> None:
        self.cpu = cpu

    def _tables(self) -> dict[int, int]:
        return table_frames(self.cpu.mem.read_u64, self.cpu.cr3)

    def _l1_slot(self, va: int) -> int:
        """Guest-physical address of the L1 entry mapping ``va`` (guest_map_l1e)."""
        if not paging.is_canonical(va):
            raise MmuError(XenErrno.XEN_EINVAL, f"va {va:#x} is not canonical")
        table = self.cpu.cr3 & paging.PADDR_MASK
        for level in (4, 3, 2):
            pte = self.cpu.mem.read_u64(table + 8 * paging.table_index(va, level))
            if not pte & paging._PAGE_PRESENT or (level in (3, 2) and pte & paging._PAGE_PSE):
                raise MmuError(XenErrno.XEN_EINVAL, f"no L1 table maps {va:#x}")
            table = pte & paging.PADDR_MASK
        return table + 8 * paging.table_index(va, 1)

    def update_va_mapping(self, va: int, val: int, flags: int) -> int:
        try:
            slot = self._l1_slot(va)
            check_l1e(val, self.cpu.mem.nr_pages, self._tables())
        except MmuError as e:
            return -e.errno
        self.cpu.mem.write_u64(slot, val)
        self.cpu.flush_tlb()  # whatever UVMF_* asked: a full flush is always enough
        return 0

    def mmu_update(self, reqs: int, count: int, done_ptr: int, foreigndom: int,
                   copy_from_guest, copy_to_guest) -> int:
        if foreigndom not in (0, 0x7FF0):  # only DOMID_SELF (or 0 meaning self)
            return -XenErrno.XEN_EPERM
        tables = self._tables()
        done, rc = 0, 0
        for i in range(min(count, 1 << 16)):
            ptr, val = MMU_UPDATE.unpack(copy_from_guest(reqs + i * MMU_UPDATE.size,
                                                         MMU_UPDATE.size))
            cmd = ptr & 3
            if cmd not in (MmuUpdateCmd.MMU_NORMAL_PT_UPDATE,
                           MmuUpdateCmd.MMU_PT_UPDATE_PRESERVE_AD):
                rc = -XenErrno.XEN_ENOSYS
                break
            gpa = ptr & ~7 & ((1 << 52) - 1)
            level = tables.get(gpa >> paging.PAGE_SHIFT)
            try:
                if level is None:
                    raise MmuError(XenErrno.XEN_EINVAL, "not a page-table frame")
                if level != 1:
                    raise MmuError(XenErrno.XEN_ENOSYS, f"L{level} updates not yet")
                check_l1e(val, self.cpu.mem.nr_pages, tables)
            except MmuError as e:
                rc = -e.errno
                break
            if cmd == MmuUpdateCmd.MMU_PT_UPDATE_PRESERVE_AD:
                old = self.cpu.mem.read_u64(gpa)
                val |= old & (paging._PAGE_ACCESSED | paging._PAGE_DIRTY)
            self.cpu.mem.write_u64(gpa, val)
            done += 1
        if done:
            self.cpu.flush_tlb()
        if done_ptr:
            copy_to_guest(done_ptr, struct.pack("<I", done))
        return rc
