"""Page types and type counts of a PV domain's frames (pure).

Follows Xen's ``xen/arch/x86/mm.c`` (``get_page_type``/``put_page_type``,
``get_page_from_l1e`` .. ``get_page_from_l4e``, ``promote_l*_table``,
``free_l*_table``, ``mod_l*_entry``). Every frame of the domain has at most
one *type* at a time, held by a *type count*:

* ``PGT_writable`` -- one count per present, writable L1 entry mapping it;
* ``PGT_l1 .. PGT_l4`` -- one count per entry of a validated higher table
  naming it, one per pin, one per vCPU base pointer (CR3, user CR3).

A frame gets a page-table type only by *validation* of all its entries
(each one taking its own reference), and only while its type count is 0,
so **no frame is ever at once a page table and writable-mapped**
(XSA-148/182: there is no fast path; every new entry is validated in
full). When a table's count falls to 0 it is devalidated: the references
its entries hold are put back (recursively), and it is an ordinary frame
again, writable or not.

Worked example (the builder's L4 at frame 10 -> L3 11 -> L2 12 -> L1 13,
L1 13 mapping data frame 20 writable and frame 13 itself read-only)::

    get_type(10, L4)        10 typed L4 (validating) -> entry -> get_type(11, L3)
                              -> get_type(12, L2) -> get_type(13, L1)
                                 -> entry 20 RW: get_type(20, WRITABLE) count 1
                                 -> entry 13 RO: no type reference
    pin(10)                 count(10) = 2 (CR3 + pin)
    update L1 13 entry: map 13 RW  -> get_type(13, WRITABLE): 13 is L1 with
                                      count 1 -> EINVAL, nothing written
    unpin(10); drop CR3     count(10) = 0 -> devalidate 10 -> 11 -> 12 -> 13
                            -> put_type(20): frame 20 untyped again

Frames are named by their pvxen "machine" number (the guest's own frame
number, see :mod:`.memory`). Not modelled (refused as Xen refuses a
mistyped entry, ``-EINVAL``): linear (recursive) page tables, superpages
(``_PAGE_PSE`` at L2/L3 is in Xen's disallow mask for PV), cache
attributes (PWT/PCD/PAT need ``cache_flush_permitted``, never a domU's).

One :class:`PageTypes` per domain: with several vCPUs (:mod:`.smp`) every
vCPU's :class:`~.mmu.Mmu` shares it, and its callers hold the domain's lock
(where Xen takes the page's lock or the domain's), so no count is ever
updated by two threads at once.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol

from hypervisord.public.errno import XenErrno

from . import paging

PGT_none = 0
PGT_l1_page_table, PGT_l2_page_table, PGT_l3_page_table, PGT_l4_page_table = 1, 2, 3, 4
PGT_writable_page = 7
TABLE_TYPES = (PGT_l1_page_table, PGT_l2_page_table, PGT_l3_page_table, PGT_l4_page_table)

#: PV 64-bit L4 slots 256..271 are Xen's (``ROOT_PAGETABLE_{FIRST,LAST}_XEN_SLOT``,
#: ``xen/arch/x86/include/asm/config.h``): never the guest's to fill
XEN_L4_SLOTS = paging.XEN_L4_SLOTS

_AVAIL = 0xE00  # _PAGE_AVAIL: PTE bits 9..11
_AVAIL_HIGH = 0x7FF << 52  # _PAGE_AVAIL_HIGH: PTE bits 52..62
#: PTE bits outside the frame number that ``base_disallow_mask`` allows
#: (``arch_init_memory``): P, RW, US, A, D, AVAIL, AVAIL_HIGH, NX
_BASE_ALLOWED = (paging._PAGE_PRESENT | paging._PAGE_RW | paging._PAGE_USER
                 | paging._PAGE_ACCESSED | paging._PAGE_DIRTY | _AVAIL | _AVAIL_HIGH
                 | paging._PAGE_NX)
#: L1_DISALLOW_MASK also lets _PAGE_GLOBAL through
ALLOWED_FLAGS = {1: _BASE_ALLOWED | paging._PAGE_GLOBAL, 2: _BASE_ALLOWED, 3: _BASE_ALLOWED,
                 4: _BASE_ALLOWED}
_FLAG_BITS = ~paging.PADDR_MASK & ((1 << 64) - 1)
_TABLE = struct.Struct(f"<{paging.PTES_PER_TABLE}Q")


class MmuError(Exception):
    """A refused page-table operation: ``errno`` is Xen's (positive)."""

    def __init__(self, errno: int, why: str) -> None:
        super().__init__(why)
        self.errno = errno


class TableMemory(Protocol):
    """Guest-physical access to the domain's frames (:class:`.memory.GuestMemory`)."""

    def read(self, gpa: int, length: int) -> bytes: ...
    def read_u64(self, gpa: int) -> int: ...
    def write_u64(self, gpa: int, value: int) -> None: ...


def adjust(pte: int) -> int:
    """``adjust_guest_l*e`` (``xen/arch/x86/pv/mm.h``) for a 64-bit PV guest.

    Its kernel runs in ring 3 like its user space, so Xen sets _PAGE_USER in
    every present entry; kernel and user are kept apart by their separate
    L4s (``MMUEXT_NEW_USER_BASEPTR``).
    """
    return pte | paging._PAGE_USER if pte & paging._PAGE_PRESENT else pte


class PageTypes:
    """The type, type count and pin state of every frame of one domain.

    ``owns(frame)``: the frame is the domain's own RAM. ``foreign_ok``: the
    frames that are not RAM but may be mapped by an L1 entry (shared_info,
    the grant-table frames: Xen shares them with the guest writable); they
    never take a type.
    """

    def __init__(self, mem: TableMemory, owns: Callable[[int], bool],
                 foreign_ok: Callable[[int], bool],
                 xen_l4e: Callable[[int], int] = lambda _slot: 0) -> None:
        self.mem, self.owns, self.foreign_ok = mem, owns, foreign_ok
        #: what Xen's L4 slot ``i`` holds in every validated L4 (init_xen_l4_slots)
        self.xen_l4e = xen_l4e
        self.type: dict[int, int] = {}  # frame -> PGT_*; present with count 0 = validating
        self.count: dict[int, int] = {}  # frame -> type count (> 0)
        self.pinned: set[int] = set()

    # -- queries ----------------------------------------------------------------------------

    def type_of(self, frame: int) -> int:
        return self.type.get(frame, PGT_none) if frame in self.count else PGT_none

    def count_of(self, frame: int) -> int:
        return self.count.get(frame, 0)

    # -- get/put_page_type ---------------------------------------------------------------------

    def get_type(self, frame: int, t: int) -> None:
        """Take one reference of type ``t`` on ``frame`` (validating it if a table)."""
        if not self.owns(frame):
            raise MmuError(XenErrno.XEN_EINVAL, f"frame {frame:#x} is not the domain's")
        cur = self.type.get(frame)
        if cur is None:
            self.type[frame] = t
            if t in TABLE_TYPES:
                try:
                    self._promote(frame, t)
                except BaseException:
                    del self.type[frame]
                    raise
            self.count[frame] = 1
            return
        if cur != t or frame not in self.count:
            what = "being validated" if frame not in self.count else _name(cur)
            raise MmuError(XenErrno.XEN_EINVAL,
                           f"frame {frame:#x} is {what}, not usable as {_name(t)}")
        self.count[frame] += 1

    def put_type(self, frame: int) -> None:
        n = self.count[frame] - 1
        if n:
            self.count[frame] = n
            return
        del self.count[frame]
        t = self.type.pop(frame)
        if t in TABLE_TYPES:
            self._demote(frame, t)

    # -- pin / unpin (MMUEXT_PIN_L*_TABLE, MMUEXT_UNPIN_TABLE) ---------------------------------

    def pin(self, frame: int, level: int) -> None:
        self.get_type(frame, level)
        if frame in self.pinned:
            self.put_type(frame)
            raise MmuError(XenErrno.XEN_EINVAL, f"frame {frame:#x} already pinned")
        self.pinned.add(frame)

    def unpin(self, frame: int) -> None:
        if not self.owns(frame):
            raise MmuError(XenErrno.XEN_EINVAL, f"frame {frame:#x} is not the domain's")
        if frame not in self.pinned:
            raise MmuError(XenErrno.XEN_EINVAL, f"frame {frame:#x} is not pinned")
        self.pinned.discard(frame)
        self.put_type(frame)

    # -- entries (get_page_from_l*e / put_page_from_l*e) ---------------------------------------

    def get_entry(self, level: int, pte: int) -> None:
        """The reference a present entry of a level-``level`` table holds."""
        bad = pte & _FLAG_BITS & ~ALLOWED_FLAGS[level]
        if bad:
            raise MmuError(XenErrno.XEN_EINVAL, f"bad L{level} flags {bad:#x}")
        frame = paging.pte_frame(pte)
        if level == 1:
            if self.foreign_ok(frame):
                return
            if not self.owns(frame):
                raise MmuError(XenErrno.XEN_EINVAL, f"frame {frame:#x} is not the domain's")
            if pte & paging._PAGE_RW:
                self.get_type(frame, PGT_writable_page)
            return
        self.get_type(frame, level - 1)

    def put_entry(self, level: int, pte: int) -> None:
        frame = paging.pte_frame(pte)
        if level == 1:
            if pte & paging._PAGE_RW and not self.foreign_ok(frame):
                self.put_type(frame)
            return
        self.put_type(frame)

    def mod_entry(self, frame: int, index: int, new: int, *, preserve_ad: bool = False) -> int:
        """``mod_l*_entry``: validate ``new`` for slot ``index`` of table ``frame``, write it.

        The frame must be a validated table (count > 0). The new entry's
        reference is taken before the old one's is dropped, so re-writing an
        entry never devalidates what it points at. Returns the value written.
        """
        level = self.type_of(frame)
        if level not in TABLE_TYPES:
            raise MmuError(XenErrno.XEN_EINVAL, f"frame {frame:#x} is not a page table")
        if level == 4 and index in XEN_L4_SLOTS:
            raise MmuError(XenErrno.XEN_EINVAL, f"L4 slot {index} is Xen's")
        gpa = frame * paging.PAGE_SIZE + 8 * index
        old = self.mem.read_u64(gpa)
        new = adjust(new)
        if preserve_ad:
            new |= old & (paging._PAGE_ACCESSED | paging._PAGE_DIRTY)
        if new & paging._PAGE_PRESENT:
            self.get_entry(level, new)
        self.mem.write_u64(gpa, new)
        if old & paging._PAGE_PRESENT:
            self.put_entry(level, old)
        return new

    # -- validation ------------------------------------------------------------------------------

    def _entries(self, frame: int) -> tuple[int, ...]:
        return _TABLE.unpack(self.mem.read(frame * paging.PAGE_SIZE, paging.PAGE_SIZE))

    def _promote(self, frame: int, level: int) -> None:
        """``promote_l*_table``: take every present entry's reference, or none."""
        base = frame * paging.PAGE_SIZE
        done: list[int] = []
        try:
            for i, pte in enumerate(self._entries(frame)):
                if level == 4 and i in XEN_L4_SLOTS:
                    # Xen writes its own slots (init_xen_l4_slots), whatever the
                    # guest left there while the frame was an ordinary page
                    xen = self.xen_l4e(i)
                    if pte & ~paging._PAGE_ACCESSED != xen:
                        self.mem.write_u64(base + 8 * i, xen)
                    continue
                if not pte & paging._PAGE_PRESENT:
                    continue
                fixed = adjust(pte)
                self.get_entry(level, fixed)
                done.append(fixed)
                if fixed != pte:
                    self.mem.write_u64(base + 8 * i, fixed)
        except MmuError:
            for pte in reversed(done):
                self.put_entry(level, pte)
            raise

    def _demote(self, frame: int, level: int) -> None:
        """``free_l*_table``: drop what the entries hold."""
        for i, pte in enumerate(self._entries(frame)):
            if pte & paging._PAGE_PRESENT and not (level == 4 and i in XEN_L4_SLOTS):
                self.put_entry(level, pte)


def _name(t: int) -> str:
    return {PGT_writable_page: "writable-mapped"}.get(t, f"an L{t} page table")
