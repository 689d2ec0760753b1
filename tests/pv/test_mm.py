"""Page-table, memory and batch hypercalls of a PV guest on its vCPU, in-process.

Our test kernels (tests/pv/kernels/mm_*.S) check every result themselves
against Xen's (xen/arch/x86/mm.c, xen/common/multicall.c,
xen/arch/x86/physdev.c) and print "ok" or the failing step; the tests here
also look at the vCPU's state afterwards.
"""

from __future__ import annotations

from hypervisord.public.sched import ShutdownReason
from hypervisord.vcpu import pagetype
from tests.pv.test_vcpu import Guest


def test_refused_updates_get_xens_errnos(tmp_path) -> None:
    g = Guest("mm_refuse", tmp_path)
    reason = g.run()
    assert b"".join(g.console) == b"mm_refuse ok\n"
    assert reason == ShutdownReason.SHUTDOWN_poweroff
    tbl = (g.symbols["tbl"] - g.image.notes.virt_base) >> 12
    mmu = g.hc.mmu
    assert mmu.m2p == {tbl: 5}  # the accepted MACHPHYS_UPDATE, and only it
    assert mmu.types.type_of(tbl) == pagetype.PGT_writable_page  # never became a table
    assert mmu.types.pinned == {g.image.pt_pfns.start}  # only the builder's L4
    assert g.hc.physdev.iopl == 1
    assert mmu.ldt == (0, 0)


def test_a_new_address_space_is_validated_pinned_and_entered(tmp_path) -> None:
    g = Guest("mm_newas", tmp_path)
    reason = g.run()
    assert b"".join(g.console) == b"mm_newas ok\n"
    assert reason == ShutdownReason.SHUTDOWN_poweroff
    vb = g.image.notes.virt_base
    frames = [(g.symbols[s] - vb) >> 12 for s in ("new_l4", "new_l3", "new_l2", "new_l1")]
    mmu = g.hc.mmu
    # back on the builder's L4, ours unpinned: nothing of it is typed any more
    assert mmu.base == g.image.pt_pfns.start == g.cpu.cr3 >> 12
    assert mmu.user_base == 0 and g.cpu.user_cr3 == 0
    assert [mmu.types.type_of(f) for f in frames[:3]] == [0, 0, 0]
    assert mmu.types.type_of(frames[3]) == pagetype.PGT_writable_page
    marker = (g.symbols["marker"] - vb) >> 12
    # only the builder's writable mapping of it is left: the new L1's two went with it
    assert mmu.types.type_of(marker) == pagetype.PGT_writable_page
    assert mmu.types.count_of(marker) == 1


def test_an_iret_inside_a_multicall_ends_the_batch(tmp_path) -> None:
    """XSA-213: after the privilege-changing iret nothing else of the batch runs."""
    g = Guest("mc_iret", tmp_path)
    reason = g.run()
    assert b"".join(g.console) == b"mc_iret ok\n"
    assert reason == ShutdownReason.SHUTDOWN_poweroff
    assert not g.hc.in_multicall
