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


class FakeHypervisord:
    """The domain's hypercall connection, answering as hypervisord does (recorded)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, dict]] = []

    def call(self, hypercall: int, subop: int, **args):
        from hypervisord.public.xen import Hypercall

        self.calls.append((hypercall, subop, args))
        if hypercall == Hypercall.grant_table_op:
            return 0, {"status": 0, "frame_list": [1 + i for i in range(args["nr_frames"])]}
        return len(args.get("extent_start", [])), {}


def _forwarded(tmp_path):
    from hypervisord.vcpu.forward_mm import MemoryForwarder
    from hypervisord.vcpu.hypercalls import GuestFault, copy_from_guest

    g = Guest("ptupdate", tmp_path)
    xc = FakeHypervisord()
    fwd = MemoryForwarder(xc, g.hc.mmu, lambda va, n: copy_from_guest(g.cpu, va, n),
                          g.hc.copy_to_guest, GuestFault)
    g.hc.forward.update(fwd.table())
    return g, xc


def test_setup_table_names_the_grant_frames_the_guest_may_map(tmp_path) -> None:
    import struct

    from hypervisord.public.grant_table import GNTTAB_SETUP_TABLE, GntSt
    from hypervisord.vcpu.memory import GNTTAB_MFN

    g, xc = _forwarded(tmp_path)
    spare = g.image.notes.virt_base + 0xF0000
    assert g.hc.mmu.update_va_mapping(spare, (GNTTAB_MFN << 12) | 7, 0) == -22  # not yet
    va = g.image.boot.rsp - 256  # the boot stack: writable guest memory
    g.hc.copy_to_guest(va, GNTTAB_SETUP_TABLE.pack(0x7FF0, 2, 0, va + 64))
    assert g.hc.call(20, [2, va, 1, 0, 0]) == 0
    dom, nr, status, _ = GNTTAB_SETUP_TABLE.unpack(g.hc._mm_copy_in(va, 24))
    assert (nr, status) == (2, GntSt.GNTST_okay)
    assert struct.unpack("<2Q", g.hc._mm_copy_in(va + 64, 16)) == (GNTTAB_MFN, GNTTAB_MFN + 1)
    assert g.hc.mmu.update_va_mapping(spare, (GNTTAB_MFN << 12) | 7, 0) == 0  # shared RW
    assert g.hc.mmu.update_va_mapping(spare, ((GNTTAB_MFN + 2) << 12) | 7, 0) == -22
    # an unwritable frame_list: GNTST_bad_virt_addr in the op's status, rc 0
    g.hc.copy_to_guest(va, GNTTAB_SETUP_TABLE.pack(0x7FF0, 1, 0, 0x1000))
    assert g.hc.call(20, [2, va, 1, 0, 0]) == 0
    assert GNTTAB_SETUP_TABLE.unpack(g.hc._mm_copy_in(va, 24))[2] == GntSt.GNTST_bad_virt_addr
    # a bad uop pointer: -EFAULT
    assert g.hc.call(20, [2, 0x1000, 1, 0, 0]) == -14


def test_a_page_table_frame_is_not_given_back(tmp_path) -> None:
    import struct

    from hypervisord.public.memory import XEN_MEMORY_RESERVATION

    g, xc = _forwarded(tmp_path)
    va = g.image.boot.rsp - 256
    l4 = g.image.pt_pfns.start
    data = (g.symbols["target"] - g.image.notes.virt_base) >> 12
    g.hc.copy_to_guest(va + 64, struct.pack("<3Q", data, l4, data + 1))
    g.hc.copy_to_guest(va, XEN_MEMORY_RESERVATION.pack(va + 64, 3, 0, 0, 0x7FF0))
    assert g.hc.call(12, [1, va, 0, 0, 0]) == 1  # XENMEM_decrease_reservation: stops at l4
    assert xc.calls[-1][2]["extent_start"] == [data]
    assert g.hc.mmu.released == {data}
    assert g.hc.mmu.update_va_mapping(g.image.notes.virt_base + 0xF0000,
                                      (data << 12) | 5, 0) == -22  # no longer ours
    g.hc.copy_to_guest(va, XEN_MEMORY_RESERVATION.pack(va + 64, 1, 0, 0, 0x7FF0))
    assert g.hc.call(12, [6, va, 0, 0, 0]) == 1  # XENMEM_populate_physmap
    assert g.hc.mmu.released == set()


def test_toolstack_hypercalls_get_xens_checks_then_eperm(tmp_path) -> None:
    """domctl/sysctl/platform_op from a domU: -EFAULT, -EACCES, then XSM's -EPERM."""
    g = Guest("privops", tmp_path)
    reason = g.run()
    assert b"".join(g.console) == b"privops ok\n"
    assert reason == ShutdownReason.SHUTDOWN_poweroff
