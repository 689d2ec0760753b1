"""x86-64 4-level paging as a 64-bit PV guest's tables use it (pure).

What the vCPU layer needs of the guest's own page tables without the CPU:
the PTE bits (Intel SDM vol. 3 §4.5, Xen ``xen/arch/x86/include/asm/x86_64/page.h``),
the table indexes of a virtual address, and a software walk for
``copy_from_guest``/``copy_to_guest``: Unicorn's ``mem_read`` takes
guest-physical addresses only (pv-guest-abi.md §1), so the hypervisor walks
the tables itself, as Xen's ``guest_walk_tables`` does.

"Machine" frames of a pvxen PV guest are its own frame numbers: the memory
file holds guest frame ``gfn`` at :func:`hypervisord.public.memfile.gfn_offset`,
and the vCPU maps it at guest-physical ``gfn << 12`` (see :mod:`.memory`).
"""

from __future__ import annotations

from collections.abc import Callable

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PTES_PER_TABLE = 512

_PAGE_PRESENT = 1 << 0
_PAGE_RW = 1 << 1
_PAGE_USER = 1 << 2
_PAGE_PWT = 1 << 3
_PAGE_PCD = 1 << 4
_PAGE_ACCESSED = 1 << 5
_PAGE_DIRTY = 1 << 6
_PAGE_PSE = 1 << 7
_PAGE_GLOBAL = 1 << 8
_PAGE_NX = 1 << 63
PADDR_MASK = ((1 << 52) - 1) & ~(PAGE_SIZE - 1)  # bits 12..51 of a PTE

#: #PF error code bits (SDM vol. 3 §4.7)
PFEC_PRESENT = 1 << 0
PFEC_WRITE = 1 << 1
PFEC_USER = 1 << 2
PFEC_INSN_FETCH = 1 << 4

#: the first virtual address of the upper canonical half
CANONICAL_HIGH = 0xFFFF800000000000


class PageFault(Exception):
    """A software walk failed: ``va`` and the #PF error code it would raise."""

    def __init__(self, va: int, error_code: int) -> None:
        super().__init__(f"#PF at {va:#x} (error code {error_code:#x})")
        self.va = va
        self.error_code = error_code


#: L4 slots 256..271 map Xen's hole (HYPERVISOR_VIRT_START..END): Xen's own
#: entries, in every L4, never the guest's (``is_guest_l4_slot``)
XEN_L4_SLOTS = range(256, 272)


def is_guest_l4_slot(index: int) -> bool:
    return index not in XEN_L4_SLOTS


def is_canonical(va: int) -> bool:
    return (va >> 47) in (0, 0x1FFFF)


def table_index(va: int, level: int) -> int:
    """Index of ``va`` in its level-``level`` table (4 = L4 .. 1 = L1)."""
    return (va >> (PAGE_SHIFT + 9 * (level - 1))) & (PTES_PER_TABLE - 1)


def pte_frame(pte: int) -> int:
    return (pte & PADDR_MASK) >> PAGE_SHIFT


def make_pte(frame: int, flags: int) -> int:
    return (frame << PAGE_SHIFT) | flags


ReadPte = Callable[[int], int]  # guest-physical address of a PTE -> its value


def walk(read_pte: ReadPte, cr3: int, va: int, *, write: bool = False,
         user: bool = True) -> int:
    """Guest-physical address of ``va`` under the tables at ``cr3``.

    ``user``: the access is made with user rights (a PV kernel runs in
    ring 3, so its own accesses are user accesses). Raises
    :class:`PageFault` as the CPU would. 2 MiB/1 GiB pages are honoured.
    """
    if not is_canonical(va):
        raise PageFault(va, 0)  # non-canonical: #GP on hardware; no frame at all
    table = cr3 & PADDR_MASK
    code = (PFEC_WRITE if write else 0) | (PFEC_USER if user else 0)
    for level in (4, 3, 2, 1):
        pte = read_pte(table + 8 * table_index(va, level))
        if not pte & _PAGE_PRESENT:
            raise PageFault(va, code)
        if (write and not pte & _PAGE_RW) or (user and not pte & _PAGE_USER):
            raise PageFault(va, code | PFEC_PRESENT)
        if level in (3, 2) and pte & _PAGE_PSE:
            span = 1 << (PAGE_SHIFT + 9 * (level - 1))
            return (pte & PADDR_MASK & ~(span - 1)) | (va & (span - 1))
        table = pte & PADDR_MASK
    return table | (va & (PAGE_SIZE - 1))
