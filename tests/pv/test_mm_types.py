"""Page types and type counts (hypervisord/vcpu/pagetype.py), pure: no CPU, no daemons.

The rules are Xen's (xen/arch/x86/mm.c): a table is typed only by validating
every entry, a typed table is never writable-mapped, counts drop to 0 and the
table is devalidated, its references put back.
"""

from __future__ import annotations

import struct

import pytest

from hypervisord.public.errno import XenErrno
from hypervisord.vcpu import pagetype as pt
from hypervisord.vcpu.pagetype import MmuError, PageTypes

P, RW, U, PSE, PCD = 1, 2, 4, 0x80, 0x10
NR = 64
SHARED = 1000  # a frame outside RAM that may be mapped (as shared_info)


class Mem:
    def __init__(self) -> None:
        self.b = bytearray(NR * 4096)

    def read(self, gpa: int, n: int) -> bytes:
        return bytes(self.b[gpa:gpa + n])

    def read_u64(self, gpa: int) -> int:
        return struct.unpack_from("<Q", self.b, gpa)[0]

    def write_u64(self, gpa: int, v: int) -> None:
        struct.pack_into("<Q", self.b, gpa, v)

    def set(self, frame: int, index: int, pte: int) -> None:
        self.write_u64(frame * 4096 + 8 * index, pte)


def pte(frame: int, flags: int) -> int:
    return frame << 12 | flags


@pytest.fixture
def world():
    """L4 10 -> L3 11 -> L2 12 -> L1 13; L1 maps 20 RW, 13 (itself) RO, shared RW."""
    m = Mem()
    m.set(10, 511, pte(11, P | RW | U))
    m.set(11, 510, pte(12, P | RW | U))
    m.set(12, 0, pte(13, P | RW | U))
    m.set(13, 0, pte(20, P | RW | U))
    m.set(13, 1, pte(13, P | U))
    m.set(13, 2, pte(SHARED, P | RW))
    types = PageTypes(m, lambda f: 0 <= f < NR, lambda f: f == SHARED)
    return m, types


def errno_of(fn, *args, **kw) -> int:
    with pytest.raises(MmuError) as e:
        fn(*args, **kw)
    return e.value.errno


def test_validating_an_l4_types_the_whole_tree(world) -> None:
    m, t = world
    t.pin(10, 4)
    assert [t.type_of(f) for f in (10, 11, 12, 13, 20)] == [4, 3, 2, 1, pt.PGT_writable_page]
    assert t.count_of(10) == 1 and t.count_of(20) == 1
    assert t.type_of(SHARED) == pt.PGT_none  # shared frames never take a type
    # adjust_guest_l1e: a 64-bit PV guest's present entries get _PAGE_USER
    assert m.read_u64(13 * 4096 + 16) & U


def test_a_typed_table_is_never_writable(world) -> None:
    m, t = world
    t.pin(10, 4)
    assert errno_of(t.mod_entry, 13, 3, pte(12, P | RW)) == XenErrno.XEN_EINVAL
    assert m.read_u64(13 * 4096 + 24) == 0  # nothing written
    assert errno_of(t.get_type, 12, pt.PGT_writable_page) == XenErrno.XEN_EINVAL
    t.mod_entry(13, 3, pte(12, P))  # read-only is fine
    assert t.type_of(12) == 2
    # XSA-182: flipping only the RW bit of an existing read-only entry is no
    # fast path, it is validated like any new entry
    assert errno_of(t.mod_entry, 13, 1, pte(13, P | RW | U)) == XenErrno.XEN_EINVAL
    assert m.read_u64(13 * 4096 + 8) == pte(13, P | U)


def test_a_writable_mapped_frame_cannot_become_a_table(world) -> None:
    m, t = world
    t.pin(10, 4)
    assert errno_of(t.pin, 20, 1) == XenErrno.XEN_EINVAL  # 20 is mapped writable by 13
    t.mod_entry(13, 0, 0)  # unmap it
    assert t.type_of(20) == pt.PGT_none
    t.pin(20, 1)
    assert t.type_of(20) == 1


def test_failed_validation_leaves_no_reference_behind(world) -> None:
    m, t = world
    m.set(13, 5, pte(NR + 5, P))  # not our frame, after entries 0..2 took references
    assert errno_of(t.pin, 10, 4) == XenErrno.XEN_EINVAL
    assert not t.count and not t.type and not t.pinned


def test_unpin_devalidates_down_the_tree(world) -> None:
    m, t = world
    t.pin(10, 4)
    t.pin(12, 2)  # a second reference on the L2
    t.unpin(10)
    assert t.type_of(10) == 0 and t.type_of(11) == 0
    assert t.type_of(12) == 2 and t.type_of(13) == 1 and t.type_of(20) == pt.PGT_writable_page
    t.unpin(12)
    assert not t.count and not t.type
    assert errno_of(t.unpin, 12) == XenErrno.XEN_EINVAL  # not pinned
    assert errno_of(t.unpin, NR + 1) == XenErrno.XEN_EINVAL  # not ours


def test_pinning_twice_or_as_the_wrong_level(world) -> None:
    m, t = world
    t.pin(10, 4)
    assert errno_of(t.pin, 10, 4) == XenErrno.XEN_EINVAL
    assert t.count_of(10) == 1
    assert errno_of(t.pin, 11, 2) == XenErrno.XEN_EINVAL  # it is an L3
    assert errno_of(t.pin, 20, 1) == XenErrno.XEN_EINVAL  # writable-mapped


@pytest.mark.parametrize("flags", [PSE, PCD, 0x100])
def test_superpages_cache_bits_and_global_above_l1_are_refused(world, flags) -> None:
    m, t = world
    t.pin(10, 4)
    assert errno_of(t.mod_entry, 12, 1, pte(30, P | flags)) == XenErrno.XEN_EINVAL
    assert m.read_u64(12 * 4096 + 8) == 0


def test_xen_l4_slots_are_refused_and_cleared_at_validation(world) -> None:
    m, t = world
    m.set(10, 256, pte(11, P))  # written while the frame was still ordinary
    t.pin(10, 4)
    assert m.read_u64(10 * 4096 + 256 * 8) == 0
    for slot in (256, 271):
        assert errno_of(t.mod_entry, 10, slot, pte(11, P)) == XenErrno.XEN_EINVAL
    t.mod_entry(10, 272, pte(11, P))  # the guest's own again
    assert t.count_of(11) == 2


def test_recursive_tables_are_refused(world) -> None:
    m, t = world
    m.set(10, 0, pte(10, P))  # the L4 naming itself as an L3 (a linear page table)
    assert errno_of(t.pin, 10, 4) == XenErrno.XEN_EINVAL
    m.set(10, 0, 0)
    m.set(12, 1, pte(11, P))  # an L2 naming the L3 above it
    assert errno_of(t.pin, 10, 4) == XenErrno.XEN_EINVAL
    assert not t.count


def test_rewriting_an_entry_keeps_what_it_points_at(world) -> None:
    m, t = world
    t.pin(10, 4)
    t.mod_entry(12, 0, pte(13, P | RW | U))  # same L1 again: no devalidation on the way
    assert t.type_of(13) == 1 and t.count_of(13) == 1
    t.mod_entry(13, 0, pte(20, P | U), preserve_ad=True)  # RW -> RO: the writable ref goes
    assert t.type_of(20) == pt.PGT_none


def test_a_non_table_frame_is_no_target_for_mod_entry(world) -> None:
    m, t = world
    assert errno_of(t.mod_entry, 13, 0, 0) == XenErrno.XEN_EINVAL


def _references(m: Mem, t: PageTypes) -> dict[int, tuple[int, int]]:
    """What the counts must be, recomputed from the tables: frame -> (type, refs)."""
    refs: dict[int, list[int]] = {}
    for frame in list(t.count):
        level = t.type_of(frame)
        if level not in pt.TABLE_TYPES:
            continue
        for i in range(512):
            e = m.read_u64(frame * 4096 + 8 * i)
            if not e & P or (level == 4 and i in pt.XEN_L4_SLOTS):
                continue
            child = e >> 12 & ((1 << 40) - 1)
            if level == 1:
                if e & RW and child != SHARED:
                    r = refs.setdefault(child, [pt.PGT_writable_page, 0])
                    assert r[0] == pt.PGT_writable_page, f"page table {child} mapped writable"
                    r[1] += 1
                continue
            r = refs.setdefault(child, [level - 1, 0])
            assert r[0] == level - 1, f"frame {child} referenced as two types"
            r[1] += 1
    for frame in t.pinned:
        refs.setdefault(frame, [t.type_of(frame), 0])[1] += 1
    return {f: (ty, n) for f, (ty, n) in refs.items()}


def test_random_operations_keep_the_counts_and_the_invariant() -> None:
    """Model check: after any sequence of accepted or refused operations, every
    count equals the references the tables hold, and no page table is mapped
    writable anywhere (the invariant of XSA-148/182)."""
    import random

    rng = random.Random(8)
    m = Mem()
    t = PageTypes(m, lambda f: 0 <= f < 16, lambda f: f == SHARED)
    frames = list(range(16)) + [SHARED, NR + 3]
    seen: set[int] = set()
    for _ in range(2000):
        f = rng.choice(frames[:16])
        op = rng.random()
        try:
            if op < 0.15:
                t.pin(f, rng.randint(1, 4))
            elif op < 0.25:
                t.unpin(f)
            else:
                flags = rng.choice([0, P, P | RW, P | U, P | RW | U, P | PSE])
                new = pte(rng.choice(frames), flags)
                index = rng.choice([0, 1, 2, 256, 511])
                if t.type_of(f) in pt.TABLE_TYPES:
                    t.mod_entry(f, index, new)
                else:  # an ordinary page: the guest writes it as it likes
                    m.set(f, index, new)
        except MmuError as e:
            assert e.errno == XenErrno.XEN_EINVAL
        expected = _references(m, t)
        actual = {f: (t.type_of(f), t.count_of(f)) for f in t.count}
        assert actual == expected
        seen.update(ty for ty, _ in actual.values())
    assert seen == {1, 2, 3, 4, pt.PGT_writable_page}, "the walk never built every level"


def test_xens_own_l4_slots_get_xens_entries(world) -> None:
    """init_xen_l4_slots: whatever the guest left in 256..271, Xen's values go in
    (here the vCPU's GDT slot, see hypervisord/vcpu/gdt.py), and stay Xen's."""
    m, _ = world
    xen = pte(0x3FFFFE0, P | RW)  # a hypervisor-private frame
    t = PageTypes(m, lambda f: 0 <= f < NR, lambda f: f == SHARED,
                  lambda slot: xen if slot == 260 else 0)
    m.set(10, 260, pte(20, P | RW | U))  # the guest's attempt at Xen's slot
    m.set(10, 261, pte(20, P | RW | U))
    t.pin(10, 4)
    assert m.read_u64(10 * 4096 + 260 * 8) == xen
    assert m.read_u64(10 * 4096 + 261 * 8) == 0
    assert t.count_of(20) == 1  # only L1 13's mapping: nothing taken for Xen's slots
    assert errno_of(t.mod_entry, 10, 260, 0) == XenErrno.XEN_EINVAL
    t.unpin(10)  # devalidation leaves Xen's slots alone
    assert m.read_u64(10 * 4096 + 260 * 8) == xen
