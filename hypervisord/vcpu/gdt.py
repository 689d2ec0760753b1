"""The vCPU's GDT, mapped where the CPU can load descriptors from it.

A descriptor load (``mov %ax,%ds``, ``iretq``) reads the GDT at a *linear*
address, through the current page tables. Xen maps each vCPU's GDT frames
into its per-domain area in the hypervisor's hole, which every guest L4
shares (``init_xen_l4_slots``; ``xen/arch/x86/pv/descriptor-tables.c``,
``pv_gdt_ptes``): the guest's own descriptors below
``FIRST_RESERVED_GDT_ENTRY``, Xen's flat ones in page 14
(``FIRST_RESERVED_GDT_PAGE``).

pvxen does the same with hypervisor-private frames (:mod:`.memory`,
reachable only by guest-physical address):

    private frames 0..14     the GDT: guest entries (a validated copy of the
                             set_gdt frames), then Xen's reserved page
    private frames 15..17    an L3, L2 and L1 mapping them at GDT_VIRT_START
                             (supervisor, read-write: the CPU sets the
                             accessed bit; no guest access, as in Xen)

and L4 slot :data:`GDT_L4_SLOT` (Xen's per-domain slot, 260) of every L4 the
vCPU runs on points at that L3 (:func:`ensure_slot`, called for each CR3
the vCPU loads: :meth:`VCpu.load_cr3`). The guest can read that L4 entry
but never write it: L4 slots 256..271 are Xen's (``is_guest_l4_slot``), so
the page-table hypercalls must refuse them.

The copy is authoritative: as in Xen, where the frames are typed
``seg_desc_page`` and the guest cannot write them, a descriptor changes
only through ``update_descriptor`` (:mod:`.segments`), which updates both.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from unicorn import x86_const as X

from hypervisord.public import arch_x86
from hypervisord.public.xen import PAGE_SIZE

from . import paging
from .memory import HV_PRIVATE_MFN

if TYPE_CHECKING:
    from .cpu import VCpu

GDT_L4_SLOT = 260  # Xen's PERDOMAIN slot
GDT_VIRT_START = 0xFFFF_0000_0000_0000 | (GDT_L4_SLOT << 39)
GDT_FRAMES = arch_x86.FIRST_RESERVED_GDT_PAGE + 1  # guest pages, then Xen's page 14
L3_FRAME, L2_FRAME, L1_FRAME = GDT_FRAMES, GDT_FRAMES + 1, GDT_FRAMES + 2
PRIVATE_FRAMES_USED = GDT_FRAMES + 3
GDT_LIMIT = 8 * (arch_x86.FIRST_RESERVED_GDT_ENTRY + 8) - 1  # up to Xen's 8 entries
_P, _RW, _A = 1 << 0, 1 << 1, 1 << 5
_ZERO_PAGE = bytes(PAGE_SIZE)


def private_gpa(frame: int) -> int:
    return (HV_PRIVATE_MFN + frame) * PAGE_SIZE


def l4_entry() -> int:
    """What slot :data:`GDT_L4_SLOT` of every L4 holds."""
    return private_gpa(L3_FRAME) | _P | _RW


def install(cpu: VCpu) -> None:
    """Map the GDT at :data:`GDT_VIRT_START` and point GDTR there (after boot:
    Xen's flat descriptors are already in page 14)."""
    uc = cpu.uc
    for frame in range(arch_x86.FIRST_RESERVED_GDT_PAGE):  # no guest entries yet
        uc.mem_write(private_gpa(frame), _ZERO_PAGE)  # (page 1 held the boot trampoline)
    va = GDT_VIRT_START
    for table, level, target in ((L3_FRAME, 3, L2_FRAME), (L2_FRAME, 2, L1_FRAME)):
        uc.mem_write(private_gpa(table), _ZERO_PAGE)
        uc.mem_write(private_gpa(table) + 8 * paging.table_index(va, level),
                     struct.pack("<Q", private_gpa(target) | _P | _RW))
    l1 = bytearray(PAGE_SIZE)
    for i in range(GDT_FRAMES):
        struct.pack_into("<Q", l1, 8 * (paging.table_index(va, 1) + i),
                         private_gpa(i) | _P | _RW)
    uc.mem_write(private_gpa(L1_FRAME), bytes(l1))
    uc.reg_write(X.UC_X86_REG_GDTR, (0, GDT_VIRT_START, GDT_LIMIT, 0))


def ensure_slot(cpu: VCpu, l4_gpa: int) -> None:
    """Xen's slot in the L4 at ``l4_gpa`` (a guest frame; the guest maps it read-only)."""
    slot = (l4_gpa & paging.PADDR_MASK) + 8 * GDT_L4_SLOT
    if cpu.mem.read_u64(slot) & ~_A != l4_entry():  # the CPU sets the accessed bit
        cpu.mem.write_u64(slot, l4_entry())


def load_guest_entries(cpu: VCpu, descs: list[int]) -> None:
    """The guest's GDT entries (validated, DPLs fixed), the rest not present."""
    raw = struct.pack(f"<{len(descs)}Q", *descs)
    raw += bytes(arch_x86.FIRST_RESERVED_GDT_BYTE - len(raw))
    for frame in range(arch_x86.FIRST_RESERVED_GDT_PAGE):
        cpu.uc.mem_write(private_gpa(frame), raw[frame * PAGE_SIZE:(frame + 1) * PAGE_SIZE])


def update_entry(cpu: VCpu, index: int, desc: int) -> None:
    cpu.uc.mem_write(private_gpa(0) + 8 * index, struct.pack("<Q", desc))


# -- loading a selector by hand (HYPERVISOR_iret, the bounce) --------------------------------
# Measured: Unicorn's reg_write of CS/SS reads the descriptor through GDTR
# but checks nothing and keeps the CPL; so the checks a CPU's iretq makes
# to CPL 3 are made here first.

_D_ACCESSED_WRITABLE = 1 << 41
_D_CODE = 1 << 43
_D_S = 1 << 44
_D_DPL3 = 3 << 45
_D_P = 1 << 47
_D_L = 1 << 53
_D_DB = 1 << 54


def descriptor(cpu: VCpu, sel: int) -> int | None:
    """The descriptor ``sel`` names in the vCPU's GDT; None when none (or an LDT one)."""
    index = sel >> 3
    if sel & 4 or not (index < cpu.gdt_ents or arch_x86.FIRST_RESERVED_GDT_ENTRY <= index
                       < arch_x86.FIRST_RESERVED_GDT_ENTRY + 8):
        return None
    return struct.unpack("<Q", bytes(cpu.uc.mem_read(private_gpa(0) + 8 * index, 8)))[0]


def is_user_code64(cpu: VCpu, sel: int) -> bool:
    """A present 64-bit code segment of DPL 3 (what an iretq to CPL 3 needs here)."""
    if sel == arch_x86.FLAT_USER_CS64:
        return True  # Xen's own, always there
    return sel & 3 == 3 and code64_desc(descriptor(cpu, sel))


def is_user_stack(cpu: VCpu, sel: int) -> bool:
    """A present writable data segment of DPL 3 (SS at CPL 3)."""
    if sel == arch_x86.FLAT_USER_SS64:
        return True
    return sel & 3 == 3 and stack_desc(descriptor(cpu, sel))


def code64_desc(d: int | None) -> bool:
    want = _D_P | _D_S | _D_CODE | _D_DPL3 | _D_L
    return d is not None and d & (want | _D_DB) == want


def stack_desc(d: int | None) -> bool:
    want = _D_P | _D_S | _D_DPL3 | _D_ACCESSED_WRITABLE
    return d is not None and d & (want | _D_CODE) == want


def load_selector(cpu: VCpu, reg: int, sel: int, loaded: int | None = None) -> None:
    """Load CS or SS with ``sel`` (checked by the caller) unless it is loaded
    already (``loaded``: the register's value, when the caller knows it)."""
    if (cpu.seg(reg) if loaded is None else loaded) != sel:
        cpu.uc.reg_write(reg, sel)
