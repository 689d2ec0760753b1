"""Page-table hypercalls of one vCPU with Xen's invariants (``xen/arch/x86/mm.c``).

A 64-bit PV guest's page tables are its own frames, mapped read-only to it;
it changes them only by hypercall, and every new entry is validated by
:mod:`.pagetype` (types and type counts, as Xen's ``get_page_type``): an
entry names only the domain's own frames (an L1 entry also shared_info and
the grant-table frames, which Xen shares with the guest), a frame in use as
a page table is never mapped writable, and no fast path skips the checks.

Served here:

* ``update_va_mapping`` (``do_update_va_mapping``): the L1 entry of a VA in
  the current address space;
* ``mmu_update`` (``do_mmu_update``): ``MMU_NORMAL_PT_UPDATE``,
  ``MMU_PT_UPDATE_PRESERVE_AD``, ``MMU_PT_UPDATE_NO_TRANSLATE`` at every
  level (a frame that is no page table is simply written, as Xen does for a
  ``PGT_writable_page``), and ``MMU_MACHPHYS_UPDATE``;
* ``mmuext_op`` (``do_mmuext_op``): pin/unpin, NEW_BASEPTR,
  NEW_USER_BASEPTR, the TLB flushes, SET_LDT, CLEAR_PAGE, COPY_PAGE.

pvxen specifics: a PV guest's machine frame is its own frame number, so
the M2P starts as the identity; ``MMU_MACHPHYS_UPDATE`` validates the frame
and records the new entry in :attr:`Mmu.m2p` (nothing maps the M2P at
``RO_MPT_VIRT_START``: of the L4 slots 256..271 only the vCPU's GDT slot,
:mod:`.gdt`, is filled, in every validated L4). One vCPU: every
"flush on these vCPUs" is a flush of Unicorn's TLB, which is always
enough (~1 us); with several vCPUs (:mod:`.smp`) each vCPU has its own
:class:`Mmu` (base pointers, LDT) over the domain's shared page types, and
a flush reaches every vCPU (:meth:`Mmu._flush`). Foreign page owners
(``foreigndom``) need privilege, which no guest on a vCPU has: ``-EPERM``
(naming itself by domid: Xen's ``-ESRCH``).

For save/restore: the type counts are derived state (recomputed by
validating from the pins and base pointers); what a snapshot must carry is
:attr:`Mmu.types` ``.pinned``, :attr:`Mmu.base`, :attr:`Mmu.user_base`,
:attr:`Mmu.released`, :attr:`Mmu.grant_frames`, :attr:`Mmu.m2p` and
:attr:`Mmu.ldt`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from hypervisord.public.errno import XenErrno
from hypervisord.public.xen import (DOMID_SELF, MMU_UPDATE, MMUEXT_OP, PAGE_SIZE, UVMF_ALL,
                                    UVMF_FLUSHTYPE_MASK, UVMF_LOCAL, MmuextCmd, MmuUpdateCmd)
from . import gdt, paging
from .memory import SHARED_INFO_MFN
from .pagetype import PGT_l4_page_table, PGT_writable_page, MmuError, PageTypes

__all__ = ["Mmu", "MmuError"]

MMU_UPDATE_PREEMPTED = 1 << 31  # xen.h: count flag of a continuation
MAX_LDT_ENTS = 8192
#: copy_from_guest; a bad pointer raises MmuError(EFAULT) (Xen's -EFAULT for that element)
CopyIn = Callable[[int, int], bytes]
CopyOut = Callable[[int, bytes], None]


class Mmu:
    """The page-table state of one PV domain as its (single) vCPU sees it."""

    def __init__(self, cpu, domid: int = 0) -> None:
        self.cpu = cpu
        self.domid = domid
        self.nr_pages = cpu.mem.nr_pages
        #: frames given back with XENMEM_decrease_reservation (no longer the domain's)
        self.released: set[int] = set()
        #: pvxen machine frames of the grant table, once GNTTABOP_setup_table made them
        self.grant_frames: set[int] = set()
        #: M2P entries that differ from the identity (MMU_MACHPHYS_UPDATE)
        self.m2p: dict[int, int] = {}
        self.ldt: tuple[int, int] = (0, 0)  # (linear base, entries): MMUEXT_SET_LDT
        self.types = PageTypes(cpu.mem, self.owns, self.shared_with_guest, _xen_l4e)
        # The builder's tables: the L4 pinned (xc_dom_boot pins it) and held as
        # the vCPU's base pointer, which validates the whole bootstrap tree.
        self.base = cpu.cr3 >> paging.PAGE_SHIFT
        self.types.pin(self.base, PGT_l4_page_table)
        self.types.get_type(self.base, PGT_l4_page_table)
        self.user_base = 0
        #: every vCPU's Mmu of the domain (:meth:`for_vcpu`): a flush reaches them all
        self.peers: list[Mmu] = [self]

    @classmethod
    def for_vcpu(cls, cpu, first: Mmu) -> Mmu:
        """Another vCPU's view: per-vCPU base pointers and LDT (Xen's ``struct
        vcpu``), the domain's page types, M2P, released and grant frames shared
        with ``first`` (Xen's ``struct domain``). Its base pointers are set by
        VCPUOP_initialise (:mod:`.smp`); callers hold the domain's lock."""
        m = cls.__new__(cls)
        m.cpu, m.domid, m.nr_pages = cpu, first.domid, first.nr_pages
        m.released, m.grant_frames, m.m2p = first.released, first.grant_frames, first.m2p
        m.types, m.peers = first.types, first.peers
        m.ldt, m.base, m.user_base = (0, 0), 0, 0
        m.peers.append(m)
        return m

    # -- ownership -------------------------------------------------------------------------

    def owns(self, frame: int) -> bool:
        return 0 <= frame < self.nr_pages and frame not in self.released

    def shared_with_guest(self, frame: int) -> bool:
        return frame == SHARED_INFO_MFN or frame in self.grant_frames

    def _flush(self) -> None:
        """Our TLB now; every other vCPU's before its next slice (its running
        slice is cut short: a window of at most that slice, see :mod:`.smp`)."""
        self.cpu.flush_tlb()
        for m in self.peers:
            if m is not self:
                m.cpu.tlb_stale = True
                m.cpu.request_stop()  # between instructions: stopreq.py

    # -- update_va_mapping -----------------------------------------------------------------

    def _l1_slot(self, va: int) -> tuple[int, int]:
        """(L1 frame, index) of the entry mapping ``va`` in the current tables."""
        if not paging.is_canonical(va):
            raise MmuError(XenErrno.XEN_EINVAL, f"va {va:#x} is not canonical")
        table = self.base << paging.PAGE_SHIFT
        for level in (4, 3, 2):
            pte = self.cpu.mem.read_u64(table + 8 * paging.table_index(va, level))
            if not pte & paging._PAGE_PRESENT:
                raise MmuError(XenErrno.XEN_EINVAL, f"no L1 table maps {va:#x}")
            table = pte & paging.PADDR_MASK
        return table >> paging.PAGE_SHIFT, paging.table_index(va, 1)

    def update_va_mapping(self, va: int, val: int, flags: int,
                          copy_in: CopyIn | None = None) -> int:
        try:
            frame, index = self._l1_slot(va)
            self.types.mod_entry(frame, index, val)
        except MmuError as e:
            return -e.errno
        self._flush()  # whatever UVMF_* asked: a full flush is always enough
        bmap_ptr = flags & ~UVMF_FLUSHTYPE_MASK
        if flags & UVMF_FLUSHTYPE_MASK and bmap_ptr not in (UVMF_LOCAL, UVMF_ALL) and copy_in:
            # UVMF_MULTI: the vCPU mask is read after the update (an unreadable one
            # is -EFAULT, the entry stays written: __do_update_va_mapping)
            try:
                copy_in(bmap_ptr, 8)
            except MmuError as e:
                return -e.errno
        return 0

    # -- mmu_update --------------------------------------------------------------------------

    def _foreign(self, foreigndom: int) -> int:
        """0, or Xen's errno for a ``foreigndom`` other than DOMID_SELF (get_pg_owner)."""
        if foreigndom == DOMID_SELF:
            return 0
        if foreigndom == self.domid:
            return XenErrno.XEN_ESRCH  # "Cannot specify itself as foreign domain"
        return XenErrno.XEN_EPERM  # XSM_TARGET: only the control domain

    def mmu_update(self, reqs: int, count: int, done_ptr: int, foreigndom: int,
                   copy_in: CopyIn, copy_out: CopyOut) -> int:
        err = self._foreign(foreigndom & 0xFFFF)
        pt_dom = foreigndom >> 16  # 1 + the page tables' owner ("PFD"), 0: the caller
        if not err and pt_dom and pt_dom - 1 != self.domid:
            err = XenErrno.XEN_ESRCH if pt_dom - 1 >= DOMID_SELF else XenErrno.XEN_EPERM
        if err:
            return -err
        done = 0
        if count & MMU_UPDATE_PREEMPTED:  # a continuation: the count so far is in *pdone
            count &= ~MMU_UPDATE_PREEMPTED
            if done_ptr:
                done = struct.unpack("<I", copy_in(done_ptr, 4))[0]
        rc, i = 0, 0
        try:
            for i in range(count):
                ptr, val = MMU_UPDATE.unpack(copy_in(reqs + i * MMU_UPDATE.size,
                                                     MMU_UPDATE.size))
                self._one_update(ptr, val)
            else:
                i = count
        except MmuError as e:
            rc = -e.errno
        finally:
            if i:
                self._flush()
        if done_ptr:
            copy_out(done_ptr, struct.pack("<I", (done + i) & 0xFFFF_FFFF))
        return rc

    def _one_update(self, ptr: int, val: int) -> None:
        cmd = ptr & 7
        if cmd == MmuUpdateCmd.MMU_MACHPHYS_UPDATE:
            mfn = ptr >> paging.PAGE_SHIFT
            if not self.owns(mfn):
                raise MmuError(XenErrno.XEN_EINVAL, f"M2P: frame {mfn:#x} is not the domain's")
            if val == mfn:
                self.m2p.pop(mfn, None)
            else:
                self.m2p[mfn] = val
            return
        if cmd not in (MmuUpdateCmd.MMU_NORMAL_PT_UPDATE, MmuUpdateCmd.MMU_PT_UPDATE_PRESERVE_AD,
                       MmuUpdateCmd.MMU_PT_UPDATE_NO_TRANSLATE):
            raise MmuError(XenErrno.XEN_ENOSYS, f"mmu_update command {cmd}")
        gpa = ptr - cmd
        frame = gpa >> paging.PAGE_SHIFT
        if not self.owns(frame):
            raise MmuError(XenErrno.XEN_EINVAL, f"frame {frame:#x} is not the domain's")
        if self.types.type_of(frame) in (0, PGT_writable_page):
            # not a page table: an ordinary (checked-writable) write, as Xen's
            # PGT_writable_page case
            self.cpu.mem.write_u64(gpa, val)
            self.cpu.code_changed(gpa, 8)
            return
        self.types.mod_entry(frame, (gpa & (PAGE_SIZE - 1)) >> 3, val,
                             preserve_ad=cmd == MmuUpdateCmd.MMU_PT_UPDATE_PRESERVE_AD)

    # -- mmuext_op ---------------------------------------------------------------------------

    def mmuext_op(self, uops: int, count: int, done_ptr: int, foreigndom: int,
                  copy_in: CopyIn, copy_out: CopyOut) -> int:
        err = self._foreign(foreigndom & 0xFFFF)
        if err:
            return -err
        done = 0
        if count & MMU_UPDATE_PREEMPTED:
            count &= ~MMU_UPDATE_PREEMPTED
            if done_ptr:
                done = struct.unpack("<I", copy_in(done_ptr, 4))[0]
        rc, i = 0, 0
        for i in range(count):
            try:
                cmd, arg1, arg2 = MMUEXT_OP.unpack(copy_in(uops + i * MMUEXT_OP.size,
                                                           MMUEXT_OP.size))
                rc = self._one_ext(cmd, arg1, arg2, copy_in)
            except MmuError as e:
                rc = -e.errno
            if rc:
                break
        else:
            i = count
        if done_ptr:
            copy_out(done_ptr, struct.pack("<I", (done + i) & 0xFFFF_FFFF))
        return rc

    def _one_ext(self, cmd: int, arg1: int, arg2: int, copy_in: CopyIn) -> int:
        C = MmuextCmd
        if C.MMUEXT_PIN_L1_TABLE <= cmd <= C.MMUEXT_PIN_L4_TABLE:
            self.types.pin(arg1, cmd - C.MMUEXT_PIN_L1_TABLE + 1)
        elif cmd == C.MMUEXT_UNPIN_TABLE:
            self.types.unpin(arg1)
        elif cmd == C.MMUEXT_NEW_BASEPTR:
            self.new_baseptr(arg1)
        elif cmd == C.MMUEXT_NEW_USER_BASEPTR:
            self.new_user_baseptr(arg1)
        elif cmd in (C.MMUEXT_TLB_FLUSH_LOCAL, C.MMUEXT_INVLPG_LOCAL, C.MMUEXT_TLB_FLUSH_ALL,
                     C.MMUEXT_INVLPG_ALL):
            self._flush()
        elif cmd in (C.MMUEXT_TLB_FLUSH_MULTI, C.MMUEXT_INVLPG_MULTI):
            try:
                copy_in(arg2, 8)  # the vcpumask: unreadable is -EINVAL (vcpumask_to_pcpumask)
            except MmuError:
                return -XenErrno.XEN_EINVAL
            self._flush()
        elif cmd in (C.MMUEXT_FLUSH_CACHE, C.MMUEXT_FLUSH_CACHE_GLOBAL):
            return -XenErrno.XEN_EACCES  # cache_flush_permitted: never a domU
        elif cmd == C.MMUEXT_SET_LDT:
            return self.set_ldt(arg1, arg2 & 0xFFFF_FFFF)
        elif cmd == C.MMUEXT_CLEAR_PAGE:
            self._write_page(arg1, bytes(PAGE_SIZE))
        elif cmd == C.MMUEXT_COPY_PAGE:
            if not self.owns(arg2):
                raise MmuError(XenErrno.XEN_EINVAL, f"copy from frame {arg2:#x}: not ours")
            self._write_page(arg1, self.cpu.mem.read(arg2 * PAGE_SIZE, PAGE_SIZE))
        elif cmd in (C.MMUEXT_MARK_SUPER, C.MMUEXT_UNMARK_SUPER):
            return -XenErrno.XEN_EOPNOTSUPP
        else:
            return -XenErrno.XEN_ENOSYS
        return 0

    def new_baseptr(self, frame: int) -> None:
        """``new_guest_cr3``: the new L4 is validated (typed) before it is used."""
        if frame != self.base:
            self.types.get_type(frame, PGT_l4_page_table)
            old, self.base = self.base, frame
            self.cpu.load_cr3(frame << paging.PAGE_SHIFT)
            self.types.put_type(old)
        self._flush()

    def new_user_baseptr(self, frame: int) -> None:
        """The L4 of guest user mode (0: none); pvtraps switches to it on return to user."""
        if frame == self.user_base:
            return
        if frame:
            self.types.get_type(frame, PGT_l4_page_table)
        old, self.user_base = self.user_base, frame
        self.cpu.user_cr3 = frame << paging.PAGE_SHIFT
        if old:
            self.types.put_type(old)

    def set_ldt(self, base: int, ents: int) -> int:
        """Recorded only: pvxen's vCPU loads no LDT descriptors (Linux sets none)."""
        if ents > MAX_LDT_ENTS or (ents and (base & (PAGE_SIZE - 1)
                                             or not _guest_addr(base))):
            return -XenErrno.XEN_EINVAL
        self.ldt = (base if ents else 0, ents)
        return 0

    def _write_page(self, frame: int, data: bytes) -> None:
        """CLEAR_PAGE/COPY_PAGE destination: an own frame that can be writable."""
        self.types.get_type(frame, PGT_writable_page)
        try:
            self.cpu.mem.write(frame * PAGE_SIZE, data)
            self.cpu.code_changed(frame * PAGE_SIZE, PAGE_SIZE)
        finally:
            self.types.put_type(frame)

    # -- for the memory forwarders ------------------------------------------------------------

    def in_use_as_table(self, frame: int) -> bool:
        """The frame holds a page-table type: it must keep its contents."""
        t = self.types.type_of(frame)
        return t not in (0, PGT_writable_page)


def _xen_l4e(slot: int) -> int:
    """Xen's entry in L4 slot ``slot``: the vCPU's GDT mapping (:mod:`.gdt`), else none."""
    return gdt.l4_entry() if slot == gdt.GDT_L4_SLOT else 0


def _guest_addr(va: int) -> bool:
    """``__addr_ok``: canonical and outside Xen's range (L4 slots 256..271)."""
    return paging.is_canonical(va) and paging.is_guest_l4_slot(paging.table_index(va, 4))
