"""Numbers and small helpers, checked against the values in Xen's headers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypervisord.public import domctl, errno, event_channel, features, grant_table, memory
from hypervisord.public import sched, sysctl, vcpu, version, xen
from hypervisord.public.domctl import DomctlCmd, ShadowOp
from hypervisord.public.event_channel import EvtchnOp, EvtchnStat
from hypervisord.public.grant_table import GnttabOp, GntSt
from hypervisord.public.io import blkif, netif, protocols
from hypervisord.public.io.xenbus import XenbusState, parse_xenbus_state
from hypervisord.public.xen import Hypercall, Virq

S = XenbusState


def test_hypercall_numbers():
    assert (Hypercall.memory_op, Hypercall.multicall, Hypercall.xen_version) == (12, 13, 17)
    assert (Hypercall.grant_table_op, Hypercall.iret, Hypercall.vcpu_op) == (20, 23, 24)
    assert (Hypercall.mmuext_op, Hypercall.sched_op, Hypercall.event_channel_op) == (26, 29, 32)
    assert (Hypercall.sysctl, Hypercall.domctl, Hypercall.hypfs_op) == (35, 36, 42)
    assert 11 not in {int(h) for h in Hypercall}
    assert max(Hypercall) < xen.NR_HYPERCALL_STUBS == 128


def test_domids_and_virqs():
    assert (xen.DOMID_FIRST_RESERVED, xen.DOMID_SELF, xen.DOMID_IO, xen.DOMID_XEN) == (
        0x7FF0, 0x7FF0, 0x7FF1, 0x7FF2)  # fmt: skip
    assert (xen.DOMID_INVALID, xen.DOMID_IDLE) == (0x7FF4, 0x7FFF)
    assert (Virq.VIRQ_TIMER, Virq.VIRQ_CONSOLE, Virq.VIRQ_DOM_EXC, Virq.VIRQ_ENOMEM) == (0, 2, 3, 12)
    assert 5 not in {int(v) for v in Virq} and max(Virq) < xen.NR_VIRQS == 24
    assert Virq.VIRQ_TIMER in xen.VIRQ_PER_VCPU and Virq.VIRQ_DOM_EXC not in xen.VIRQ_PER_VCPU


def test_shutdown_reasons_and_schedops():
    assert [r.name for r in xen.ShutdownReason] == [
        "SHUTDOWN_poweroff", "SHUTDOWN_reboot", "SHUTDOWN_suspend",
        "SHUTDOWN_crash", "SHUTDOWN_watchdog", "SHUTDOWN_soft_reset",
    ]  # fmt: skip
    assert list(xen.ShutdownReason) == list(range(6)) and xen.SHUTDOWN_MAX == 5
    assert [int(o) for o in sched.SchedOp] == list(range(8))
    assert sched.SchedOp.SCHEDOP_remote_shutdown == 4 and sched.SchedOp.SCHEDOP_pin_override == 7
    assert set(sched.SCHEDOP_STRUCT) == set(sched.SchedOp)


def test_event_channel_numbers():
    assert EvtchnOp.EVTCHNOP_bind_interdomain == 0 and EvtchnOp.EVTCHNOP_send == 4
    assert EvtchnOp.EVTCHNOP_alloc_unbound == 6 and EvtchnOp.EVTCHNOP_reset == 10
    assert [int(s) for s in EvtchnStat] == list(range(6))
    assert set(event_channel.EVTCHNOP_STRUCT) == set(EvtchnOp)


def test_grant_numbers_and_messages():
    assert GnttabOp.GNTTABOP_map_grant_ref == 0 and GnttabOp.GNTTABOP_copy == 5
    assert GnttabOp.GNTTABOP_query_size == 6 and GnttabOp.GNTTABOP_cache_flush == 12
    assert [int(s) for s in GntSt] == list(range(0, -14, -1))
    assert grant_table.GNTTABOP_error_msgs[-GntSt.GNTST_permission_denied] == "permission denied"
    assert grant_table.gnttabop_error(GntSt.GNTST_no_space) == "out of space"
    assert grant_table.gnttabop_error(GntSt.GNTST_okay) == "okay"
    for bad in (1, -14, -(2**15)):
        assert "unknown" in grant_table.gnttabop_error(bad)
    assert set(grant_table.GNTTABOP_STRUCT) == set(GnttabOp)


def test_gtf_and_gntmap_bits():
    g = grant_table
    assert (g.GTF_permit_access, g.GTF_accept_transfer, g.GTF_transitive, g.GTF_type_mask) == (1, 2, 3, 3)
    assert (g.GTF_readonly, g.GTF_reading, g.GTF_writing) == (1 << 2, 1 << 3, 1 << 4)
    assert (g.GTF_PWT, g.GTF_PCD, g.GTF_PAT, g.GTF_sub_page) == (1 << 5, 1 << 6, 1 << 7, 1 << 8)
    assert (g.GTF_transfer_committed, g.GTF_transfer_completed) == (g.GTF_readonly, g.GTF_reading)
    assert (g.GNTMAP_device_map, g.GNTMAP_host_map, g.GNTMAP_readonly) == (1, 2, 4)
    assert (g.GNTMAP_application_map, g.GNTMAP_contains_pte) == (8, 16)
    assert g.GNTMAP_guest_avail_mask == 0xFFFF0000
    assert (g.GNTCOPY_source_gref, g.GNTCOPY_dest_gref) == (1, 2)
    assert (g.GNTTAB_NR_RESERVED_ENTRIES, g.GNTTAB_RESERVED_CONSOLE, g.GNTTAB_RESERVED_XENSTORE) == (8, 0, 1)
    assert g.GNTTAB_V1_ENTRIES_PER_FRAME == 512


def test_memory_ops():
    m = memory.XenMemOp
    assert (m.XENMEM_increase_reservation, m.XENMEM_decrease_reservation) == (0, 1)
    assert (m.XENMEM_maximum_ram_page, m.XENMEM_current_reservation, m.XENMEM_maximum_reservation) == (2, 3, 4)
    assert (m.XENMEM_populate_physmap, m.XENMEM_add_to_physmap, m.XENMEM_exchange) == (6, 7, 11)
    assert (m.XENMEM_machphys_mapping, m.XENMEM_acquire_resource) == (12, 28)
    assert 8 not in {int(x) for x in m}
    flags = memory.XENMEMF_address_bits(32) | memory.XENMEMF_node(3)
    assert memory.XENMEMF_get_address_bits(flags) == 32 and memory.XENMEMF_get_node(flags) == 3


def test_domctl_and_sysctl_numbers():
    assert domctl.XEN_DOMCTL_INTERFACE_VERSION == 0x18 and sysctl.XEN_SYSCTL_INTERFACE_VERSION == 0x16
    d = DomctlCmd
    assert (d.XEN_DOMCTL_createdomain, d.XEN_DOMCTL_getdomaininfo, d.XEN_DOMCTL_shadow_op) == (1, 5, 10)
    assert (d.XEN_DOMCTL_max_mem, d.XEN_DOMCTL_getvcpucontext, d.XEN_DOMCTL_max_vcpus) == (11, 13, 15)
    assert (d.XEN_DOMCTL_settimeoffset, d.XEN_DOMCTL_gethvmcontext, d.XEN_DOMCTL_set_target) == (24, 33, 46)
    assert (d.XEN_DOMCTL_getpageframeinfo3, d.XEN_DOMCTL_get_domain_state) == (61, 90)
    assert (ShadowOp.XEN_DOMCTL_SHADOW_OP_CLEAN, ShadowOp.XEN_DOMCTL_SHADOW_OP_PEEK) == (11, 12)
    assert ShadowOp.XEN_DOMCTL_SHADOW_OP_ENABLE == 32 and domctl.XEN_DOMCTL_SHADOW_ENABLE_LOG_DIRTY == 4
    assert (domctl.XEN_DOMINF_dying, domctl.XEN_DOMINF_shutdown, domctl.XEN_DOMINF_running) == (1, 4, 32)
    assert sysctl.SysctlCmd.XEN_SYSCTL_physinfo == 3
    assert sysctl.SysctlCmd.XEN_SYSCTL_getdomaininfolist == 6


@given(flags=st.integers(0, 2**32 - 1), code=st.sampled_from(list(xen.ShutdownReason)))
def test_dominf_shutdown_code_roundtrip(flags: int, code: int):
    packed = domctl.dominf_flags_with_shutdown_code(flags, code)
    assert domctl.dominf_shutdown_code(packed) == code
    assert packed & 0xFFFF == flags & 0xFFFF  # state bits untouched


def test_version_vcpu_features():
    assert [int(o) for o in version.XenVerOp] == list(range(15))
    assert version.xen_version_word(4, 23) == 0x40017
    assert [int(o) for o in vcpu.VcpuOp] == list(range(16))
    f = features.XenFeat
    assert features.xenfeat_submap({f.XENFEAT_writable_page_tables, f.XENFEAT_dom0}, 0) == 0x801
    assert features.xenfeat_submap({f.XENFEAT_dom0}, 1) == 0
    assert version.XenFeat is features.XenFeat
    assert errno.XenErrno.XEN_EINVAL == 22 and errno.XEN_EWOULDBLOCK == errno.XenErrno.XEN_EAGAIN


@given(port=st.integers(0, event_channel.EVTCHN_2L_NR_CHANNELS - 1))
def test_evtchn_bit_location_is_little_endian_bitmap(port: int):
    byte, bit = xen.evtchn_bit_location(port)
    word = port // 64
    as_ulongs = bytearray(64 * 8)
    as_ulongs[word * 8 : word * 8 + 8] = (1 << (port % 64)).to_bytes(8, "little")
    assert as_ulongs[byte] == 1 << bit
    assert xen.evtchn_pending_sel_bit(port) == word


def test_evtchn_bit_location_rejects_out_of_range():
    with pytest.raises(ValueError):
        xen.evtchn_bit_location(4096)


def test_blkif_netif_protocols():
    assert [int(o) for o in blkif.BlkifOp] == list(range(7))
    assert (blkif.BlkifRsp.BLKIF_RSP_OKAY, blkif.BlkifRsp.BLKIF_RSP_ERROR) == (0, -1)
    assert blkif.BLKIF_MAX_SEGMENTS_PER_REQUEST == 11 and blkif.BLKIF_SECTORS_PER_PAGE == 8
    raw = blkif.BLKIF_REQUEST.pack(0, 2, 0, 1, 0, 8, 0, 7, 9, 1, 3, *([0] * 27))
    assert blkif.blkif_request_segments(raw, 2) == [(8, 0, 7), (9, 1, 3)]
    with pytest.raises(ValueError):
        blkif.blkif_request_segments(raw, 12)
    assert netif.NetifRsp.NETIF_RSP_NULL == 1 and netif.XEN_NETIF_NR_SLOTS_MIN == 18
    assert protocols.XEN_IO_PROTO_ABI_NATIVE == "x86_64-abi"


@pytest.mark.parametrize("junk", ["", "x", "9", "-1", "4\x00", "004", b"\xff", "1 2"])
def test_parse_xenbus_state_refuses_junk(junk):
    with pytest.raises(ValueError):
        parse_xenbus_state(junk)


def test_parse_xenbus_state():
    assert parse_xenbus_state(b"4") is S.XenbusStateConnected
    assert parse_xenbus_state("6\n") is S.XenbusStateClosed
