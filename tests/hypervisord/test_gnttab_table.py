"""The pure grant-table core: Xen's statuses, pins, and GTF_reading/GTF_writing
kept exactly equal to "a mapping of that kind exists" (hypothesis)."""

from __future__ import annotations

import mmap
import os

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hypervisord import gnttab_table as core
from hypervisord.gnttab_table import GntError, GrantTable, Maptrack, SharedFrames
from hypervisord.public.grant_table import (
    GNTMAP_device_map,
    GNTMAP_host_map,
    GNTMAP_readonly,
    GRANT_ENTRY_V1,
    GTF_accept_transfer,
    GTF_permit_access,
    GTF_readonly,
    GTF_reading,
    GTF_sub_page,
    GTF_writing,
    GntSt,
)
from hypervisord.public.xen import PAGE_SIZE

pytestmark = pytest.mark.timeout(60)
HOST, DEV, RO = GNTMAP_host_map, GNTMAP_device_map, GNTMAP_readonly
GRANTER = 5


class Table:
    """A granter's grant frames in anonymous shared memory, plus its table."""

    def __init__(self, nr_frames: int = 4, p2m: dict | None = None) -> None:
        self.mm = mmap.mmap(-1, nr_frames * PAGE_SIZE)
        self.p2m = p2m if p2m is not None else {gfn: 1000 + gfn for gfn in range(64)}
        self.table = GrantTable(GRANTER, SharedFrames(self.mm, nr_frames), self.p2m, nr_frames)

    def grant(self, ref: int, domid: int, gfn: int, flags: int = GTF_permit_access) -> None:
        GRANT_ENTRY_V1.pack_into(self.mm, ref * 8, flags, domid, gfn)

    def flags(self, ref: int) -> int:
        return GRANT_ENTRY_V1.unpack_from(self.mm, ref * 8)[0]

    def end_access(self, ref: int) -> bool:
        """The granter's cmpxchg(flags -> 0) unless GTF_reading/GTF_writing."""
        flags = self.table.frames.load_combo(ref) & 0xFFFF
        if flags & (GTF_reading | GTF_writing):
            return False
        self.table.frames.store_flags(ref, 0)
        return True

    def close(self) -> None:
        self.table.close()
        self.mm.close()


@pytest.fixture
def t():
    tab = Table()
    yield tab
    tab.close()


def status(fn, *args) -> int:
    try:
        fn(*args)
    except GntError as e:
        return e.status
    return GntSt.GNTST_okay


def test_map_sets_bits_and_unmap_clears_them(t):
    t.grant(9, 0, 7)
    mt = Maptrack(0, 100)
    m, act = core.map_grant_ref(mt, t.table, 9, HOST | RO)
    assert (act.gfn, act.mfn) == (7, 1007)
    assert t.flags(9) == GTF_permit_access | GTF_reading
    m2, _ = core.map_grant_ref(mt, t.table, 9, HOST)
    assert t.flags(9) == GTF_permit_access | GTF_reading | GTF_writing
    assert m.handle != m2.handle
    core.unmap_grant_ref(mt, m2.handle)
    assert t.flags(9) == GTF_permit_access | GTF_reading  # the read-only map remains
    assert not t.end_access(9)
    core.unmap_grant_ref(mt, m.handle)
    assert t.flags(9) == GTF_permit_access and t.table.active == {}
    assert t.end_access(9)


@pytest.mark.parametrize("entry, flags, expected", [
    ((0, 7, GTF_permit_access), HOST, GntSt.GNTST_okay),
    ((3, 7, GTF_permit_access), HOST, GntSt.GNTST_general_error),  # granted to d3, not d0
    ((0, 7, 0), HOST, GntSt.GNTST_general_error),  # GTF_invalid
    ((0, 7, GTF_accept_transfer), HOST, GntSt.GNTST_general_error),
    ((0, 7, GTF_permit_access | GTF_sub_page), HOST, GntSt.GNTST_general_error),
    ((0, 7, GTF_permit_access | GTF_readonly), HOST, GntSt.GNTST_general_error),  # RW of RO
    ((0, 7, GTF_permit_access | GTF_readonly), HOST | RO, GntSt.GNTST_okay),
    ((0, 999, GTF_permit_access), HOST, GntSt.GNTST_bad_page),  # gfn not populated
    ((0, 7, GTF_permit_access), RO, GntSt.GNTST_bad_gntref),  # neither host nor device
])
def test_map_validation_statuses(t, entry, flags, expected):
    domid, gfn, gflags = entry
    t.grant(3, domid, gfn, gflags)
    mt = Maptrack(0, 100)
    assert status(core.map_grant_ref, mt, t.table, 3, flags) == expected
    if expected != GntSt.GNTST_okay:  # a refusal leaves the entry and the state as found
        assert t.flags(3) == gflags and t.table.active == {} and mt.entries == {}


def test_bounds_follow_the_table_size(t):
    mt = Maptrack(0, 100)
    t.grant(600, 0, 7)
    assert status(core.map_grant_ref, mt, t.table, 600, HOST) == GntSt.GNTST_bad_gntref
    assert status(core.map_grant_ref, mt, t.table, 1 << 31, HOST) == GntSt.GNTST_bad_gntref
    assert status(t.table.grow, 5) == GntSt.GNTST_general_error
    t.table.grow(2)
    assert t.table.nr_entries == 1024
    assert status(core.map_grant_ref, mt, t.table, 600, HOST) == GntSt.GNTST_okay
    assert status(core.map_grant_ref, mt, None, 600, HOST) == GntSt.GNTST_bad_domain


def test_pinned_for_another_domain_and_overflow(t):
    t.grant(1, 0, 7)
    a, b = Maptrack(0, 1000), Maptrack(4, 1000)
    core.map_grant_ref(a, t.table, 1, HOST | RO)
    assert status(core.map_grant_ref, b, t.table, 1, HOST | RO) == GntSt.GNTST_general_error
    for _ in range(127):
        core.map_grant_ref(a, t.table, 1, HOST | RO)
    # 128 host-read pins: Xen's GNTPIN_incr2oflow_mask refuses the 129th
    assert status(core.map_grant_ref, a, t.table, 1, HOST | RO) == GntSt.GNTST_general_error
    assert status(core.map_grant_ref, a, t.table, 1, DEV | RO) == GntSt.GNTST_okay
    assert t.table.active[1].pin == 128 * core.GNTPIN_hstr_inc + core.GNTPIN_devr_inc


def test_unmap_twice_and_unknown_handles(t):
    t.grant(1, 0, 7)
    mt = Maptrack(0, 100)
    m, _ = core.map_grant_ref(mt, t.table, 1, HOST)
    core.unmap_grant_ref(mt, m.handle)
    assert status(core.unmap_grant_ref, mt, m.handle) == GntSt.GNTST_bad_handle
    assert status(core.unmap_grant_ref, mt, 12345) == GntSt.GNTST_bad_handle
    assert t.flags(1) == GTF_permit_access


def test_xsa224_host_and_device_writable_partial_unmaps(t):
    t.grant(2, 0, 7)
    mt = Maptrack(0, 100)
    m, act = core.map_grant_ref(mt, t.table, 2, HOST | DEV)
    assert act.pin == core.GNTPIN_hstw_inc + core.GNTPIN_devw_inc
    core.unmap_grant_ref(mt, m.handle, HOST)
    assert act.pin == core.GNTPIN_devw_inc and t.flags(2) & GTF_writing
    core.unmap_grant_ref(mt, m.handle, HOST)  # the host part is gone: nothing to drop
    assert act.pin == core.GNTPIN_devw_inc
    core.unmap_grant_ref(mt, m.handle, DEV)
    assert t.table.active == {} and t.flags(2) == GTF_permit_access
    assert status(core.unmap_grant_ref, mt, m.handle) == GntSt.GNTST_bad_handle


def test_xsa234_readonly_unmap_drops_no_write_pin(t):
    t.grant(2, 0, 7)
    mt = Maptrack(0, 100)
    ro, _ = core.map_grant_ref(mt, t.table, 2, HOST | RO)
    rw, act = core.map_grant_ref(mt, t.table, 2, HOST)
    core.unmap_grant_ref(mt, ro.handle)
    assert act.pin == core.GNTPIN_hstw_inc
    assert t.flags(2) == GTF_permit_access | GTF_reading | GTF_writing
    core.unmap_grant_ref(mt, rw.handle)
    assert t.flags(2) == GTF_permit_access


def test_frame_is_read_once_at_first_pin(t):
    t.grant(4, 0, 7)
    mt = Maptrack(0, 100)
    core.map_grant_ref(mt, t.table, 4, HOST | RO)
    t.grant(4, 0, 8, GTF_permit_access | GTF_reading)  # a hostile rewrite of the frame
    _, act = core.map_grant_ref(mt, t.table, 4, HOST | RO)
    assert act.gfn == 7


def test_no_new_pins_on_a_released_frame(t):
    t.grant(4, 0, 7)
    mt = Maptrack(0, 100)
    m, _ = core.map_grant_ref(mt, t.table, 4, HOST | RO)
    del t.p2m[7]  # the granter ballooned the frame out while it was mapped
    assert status(core.map_grant_ref, mt, t.table, 4, HOST | RO) == GntSt.GNTST_bad_page
    assert status(core.acquire_for_copy, t.table, 4, 0, True) == GntSt.GNTST_bad_page
    core.unmap_grant_ref(mt, m.handle)
    assert t.flags(4) == GTF_permit_access and t.table.active == {}


def test_unstable_entry_gives_up_after_five_tries(t):
    class Racing(SharedFrames):
        def cmpxchg_combo(self, ref, old, new):
            self.tries = getattr(self, "tries", 0) + 1
            return old ^ 0x20  # the guest flipped GTF_PWT every time

    frames = Racing(t.mm, 4)
    try:
        table = GrantTable(GRANTER, frames, t.p2m, 4)
        t.grant(1, 0, 7)
        st_ = status(core.map_grant_ref, Maptrack(0, 10), table, 1, HOST)
        assert st_ == GntSt.GNTST_general_error
        assert frames.tries == core.SET_STATUS_RETRIES
    finally:
        frames.close()


def test_maptrack_limit(t):
    t.grant(1, 0, 7)
    mt = Maptrack(0, 3)
    for _ in range(3):
        core.map_grant_ref(mt, t.table, 1, HOST | RO)
    assert status(core.map_grant_ref, mt, t.table, 1, HOST | RO) == GntSt.GNTST_no_space


def test_probed_refs_cost_no_lasting_views(t):
    t.table.grow(4)
    mt = Maptrack(0, 100)
    kept = []
    for ref in range(0, 2048, 2):
        t.grant(ref + 1, 0, 7)
        if ref % 64 == 0:  # some are really mapped: their views stay
            kept.append(core.map_grant_ref(mt, t.table, ref + 1, HOST | RO)[0])
        assert status(core.map_grant_ref, mt, t.table, ref, HOST) == GntSt.GNTST_general_error
    frames = t.table.frames
    assert frames.cached <= frames.max_cached + len(kept)
    assert all(m.ref in frames._views for m in kept)
    for m in kept:
        core.unmap_grant_ref(mt, m.handle)
    assert all(t.flags(m.ref) == GTF_permit_access for m in kept)


def test_copy_pins_are_transient_and_allow_sub_page(t):
    t.grant(1, 0, 7, GTF_permit_access | GTF_sub_page)
    act = core.acquire_for_copy(t.table, 1, 0, readonly=False)
    assert t.flags(1) & (GTF_reading | GTF_writing) == GTF_reading | GTF_writing
    assert act.pin == core.GNTPIN_hstw_inc
    core.release_for_copy(t.table, 1, readonly=False)
    assert t.flags(1) == GTF_permit_access | GTF_sub_page and t.table.active == {}


def test_revoke_and_release(t):
    t.grant(1, 0, 7)
    t.grant(2, 0, 8)
    a, b = Maptrack(0, 10), Maptrack(0, 10)
    ma, _ = core.map_grant_ref(a, t.table, 1, HOST)
    core.map_grant_ref(b, t.table, 2, HOST | RO)
    assert core.release_maptrack(b) == 1 and t.flags(2) == GTF_permit_access
    assert t.table.revoke_all() == 1
    assert t.table.active == {} and t.flags(1) == GTF_permit_access and ma.revoked
    core.unmap_grant_ref(a, ma.handle)  # one final unmap of a revoked mapping is fine
    assert status(core.unmap_grant_ref, a, ma.handle) == GntSt.GNTST_bad_handle


def test_flag_updates_are_atomic_across_processes():
    """The granter flips a flag bit while hypervisord sets and clears GTF_reading:
    with real atomic operations no update is lost (a plain read-modify-write
    from two processes would lose some)."""
    tab = Table()
    tab.grant(1, 0, 7)
    n = 20000
    pid = os.fork()
    if pid == 0:  # the granting guest: toggle GTF_PWT (bit 5) with its own CAS loop
        try:
            frames = SharedFrames(tab.mm, 4)
            for _ in range(2 * n):
                while True:
                    old = frames.load_combo(1)
                    if frames.cmpxchg_combo(1, old, old ^ 0x20) == old:
                        break
        finally:
            os._exit(0)
    done = unstable = 0
    while done < n:
        try:
            tab.table._set_status(1, None, True, True, 0)
        except GntError as e:  # Xen's answer to a guest racing it 5 times in a row
            assert "unstable" in e.reason
            unstable += 1
            continue
        tab.table._reduce_status(1, 0, True)
        done += 1
    _, code = os.waitpid(pid, 0)
    assert code == 0 and unstable < n
    assert tab.flags(1) == GTF_permit_access  # both toggled an even number of times
    tab.close()


# -- flag exactness under random sequences --------------------------------------------

REFS = range(8, 14)
MAP_FLAGS = [HOST, HOST | RO, DEV, DEV | RO, HOST | DEV, HOST | DEV | RO]


class GrantMachine(RuleBasedStateMachine):
    """Two dom0 mappers, one domU mapper, a granter that revokes and regrants."""

    def __init__(self) -> None:
        super().__init__()
        self.t = Table()
        self.mts = [Maptrack(0, 64), Maptrack(0, 64), Maptrack(3, 64)]
        self.live: dict[tuple[int, int], list] = {}  # (mt, handle) -> [ref, parts, ro]
        self.dead: list[tuple[int, int]] = []
        for ref in REFS:  # even refs read-only; ref 13 granted to d3
            self.entry(ref, GTF_permit_access | (GTF_readonly if ref % 2 == 0 else 0))

    def entry(self, ref: int, flags: int) -> None:
        self.t.grant(ref, 3 if ref == 13 else 0, ref, flags)

    def teardown(self) -> None:
        for mt in self.mts:
            core.release_maptrack(mt)
        assert self.t.table.active == {}
        assert all(not self.t.flags(r) & (GTF_reading | GTF_writing) for r in REFS)
        self.t.close()

    def expect_map(self, i: int, ref: int, flags: int) -> bool:
        gflags = self.t.flags(ref)
        pinned_by = {self.mts[j].domid for (j, _), (r, _, _) in self.live.items() if r == ref}
        if pinned_by:
            if pinned_by != {self.mts[i].domid}:
                return False
            return bool(flags & RO) or not gflags & GTF_readonly
        wanted = 3 if ref == 13 else 0
        return (gflags & 3 == GTF_permit_access and self.mts[i].domid == wanted
                and (bool(flags & RO) or not gflags & GTF_readonly))

    @rule(i=st.integers(0, 2), ref=st.sampled_from(REFS), flags=st.sampled_from(MAP_FLAGS))
    def map(self, i, ref, flags):
        expected = self.expect_map(i, ref, flags)
        try:
            m, _ = core.map_grant_ref(self.mts[i], self.t.table, ref, flags)
        except GntError as e:
            assert not expected, e
            assert e.status == GntSt.GNTST_general_error
            return
        assert expected
        self.live[(i, m.handle)] = [ref, flags & (HOST | DEV), bool(flags & RO)]

    @precondition(lambda self: self.live)
    @rule(data=st.data(), parts=st.sampled_from([HOST | DEV, HOST, DEV]))
    def unmap(self, data, parts):
        key = data.draw(st.sampled_from(sorted(self.live)))
        core.unmap_grant_ref(self.mts[key[0]], key[1], parts)
        self.live[key][1] &= ~parts
        if not self.live[key][1]:
            del self.live[key]
            self.dead.append(key)

    @precondition(lambda self: self.dead)
    @rule(data=st.data())
    def unmap_dead(self, data):
        i, handle = data.draw(st.sampled_from(self.dead))
        if (i, handle) not in self.live:
            assert status(core.unmap_grant_ref, self.mts[i], handle) == GntSt.GNTST_bad_handle

    @rule(i=st.integers(0, 2))
    def connection_closes(self, i):
        core.release_maptrack(self.mts[i])
        for key in [k for k in self.live if k[0] == i]:
            del self.live[key]
            self.dead.append(key)

    @rule(i=st.integers(0, 2), ref=st.sampled_from(REFS), readonly=st.booleans())
    def copy(self, i, ref, readonly):
        flags = HOST | (RO if readonly else 0)
        expected = self.expect_map(i, ref, flags)
        try:
            core.acquire_for_copy(self.t.table, ref, self.mts[i].domid, readonly)
        except GntError:
            assert not expected
            return
        assert expected
        assert self.t.flags(ref) & GTF_reading and (readonly or self.t.flags(ref) & GTF_writing)
        core.release_for_copy(self.t.table, ref, readonly)

    @rule(ref=st.sampled_from(REFS))
    def granter_revokes_and_regrants(self, ref):
        in_use = any(r == ref for r, _, _ in self.live.values())
        assert self.t.end_access(ref) is not in_use
        if not in_use:
            self.entry(ref, GTF_permit_access | (GTF_readonly if ref % 2 == 0 else 0))

    @invariant()
    def bits_and_pins_match_live_mappings(self):
        for ref in REFS:
            maps = [(parts, ro) for r, parts, ro in self.live.values() if r == ref]
            flags = self.t.flags(ref)
            assert bool(flags & GTF_reading) == bool(maps)
            assert bool(flags & GTF_writing) == any(not ro for _, ro in maps)
            pin = 0
            for parts, ro in maps:
                pin += core.pin_incr(parts | (RO if ro else 0))
            act = self.t.table.active.get(ref)
            assert (act.pin if act else 0) == pin


TestGrantMachine = GrantMachine.TestCase
TestGrantMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
