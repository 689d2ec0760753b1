"""The hypercall transport and domain control, against a real hypervisord.

The raw client (:mod:`tests.hypervisord.rawcall`) packs envelopes with
``msgpack`` directly, so the daemon is checked against the documented
envelope, not against our own encoder. Numbers are Xen's: ``__HYPERVISOR_*``, ``XEN_DOMCTL_*``, errnos.
"""

from __future__ import annotations

import os

import msgpack
import pytest

from libxen import rpc
from libxen.sync import SyncXenCall, XenError
from tests.hypervisord.rawcall import RawCall

pytestmark = pytest.mark.timeout(60)

# Spelled out on purpose (see module doc).
HYPERVISOR_xen_version = 17
HYPERVISOR_domctl = 36
HYPERVISOR_memory_op = 12
XENVER_version = 0
XEN_DOMCTL_createdomain = 1
XEN_DOMCTL_destroydomain = 2
XEN_DOMCTL_pausedomain = 3
XEN_DOMCTL_getdomaininfo = 5
XEN_DOMCTL_max_mem = 11
XENMEM_populate_physmap = 6
EPERM, ESRCH, E2BIG, EINVAL, EEXIST, ENOSYS = 1, 3, 7, 22, 17, 38


@pytest.fixture
def raw(hypervisord):
    r = RawCall.connect(hypervisord.privcmd)
    yield r
    r.close()


def alive(hypervisord) -> None:
    """hypervisord still answers a fresh connection."""
    r = RawCall.connect(hypervisord.privcmd)
    try:
        rc, _ = r.call(HYPERVISOR_xen_version, XENVER_version)
        assert rc >> 16 == 4
    finally:
        r.close()


def test_reply_echoes_the_request_id(raw):
    for req_id in (0, 1, 0xFFFFFFFF):
        rc, result = raw.call(HYPERVISOR_xen_version, XENVER_version, req_id=req_id)
        assert rc >> 16 == 4 and result == {}


def test_unknown_hypercall_or_subop_is_enosys(raw):
    assert raw.call(99, 0)[0] == -ENOSYS
    assert raw.call(HYPERVISOR_domctl, 9999)[0] == -ENOSYS
    assert raw.call(HYPERVISOR_xen_version, XENVER_version)[0] > 0  # still served


@pytest.mark.parametrize("args", [
    {},                                      # missing
    {"domain": "0"},                         # a string
    {"domain": True},                        # a bool is not an integer here
    {"domain": -1},                          # negative
    {"domain": 1 << 16},                     # beyond domid_t
    {"domain": 1.5},                         # a float
])
def test_bad_arguments_are_einval_with_a_reason(raw, args):
    rc, result = raw.call(HYPERVISOR_domctl, XEN_DOMCTL_pausedomain, **args)
    assert rc == -EINVAL
    assert "domain" in result["error"]
    assert raw.call(HYPERVISOR_xen_version, XENVER_version)[0] > 0


@pytest.mark.parametrize("packet", [
    b"\xc1garbage",                                        # not msgpack
    msgpack.packb(5),                                      # not a list
    msgpack.packb([1, 17, 0]),                             # three fields
    msgpack.packb([1, "17", 0, {}]),                       # hypercall not an int
    msgpack.packb([1, 17, 0, []]),                         # args not a map
    msgpack.packb([1, 17, 0, {1: 2}]),                     # a non-string key
    msgpack.packb([1, 17, 0, {}]) + b"\x00",               # trailing bytes
], ids=["garbage", "int", "short", "str-hypercall", "list-args", "int-key", "trailing"])
def test_malformed_envelope_costs_only_its_connection(hypervisord, raw, packet):
    bystander = RawCall.connect(hypervisord.privcmd)
    try:
        raw.send(packet)
        assert raw.closed()
        assert bystander.call(HYPERVISOR_xen_version, XENVER_version)[0] > 0
    finally:
        bystander.close()
    alive(hypervisord)


def test_descriptors_pushed_into_hypervisord_are_closed(hypervisord, raw):
    fd_dir = f"/proc/{hypervisord.proc.pid}/fd"
    assert raw.call(HYPERVISOR_xen_version, XENVER_version)[0] > 0  # accepted by now
    before = len(os.listdir(fd_dir))
    r, w = os.pipe()
    try:
        for _ in range(50):
            raw.send(msgpack.packb([3, HYPERVISOR_xen_version, XENVER_version, {}]), [r, w] * 4)
            assert raw.recv()[0] == 3
    finally:
        os.close(r)
        os.close(w)
    assert len(os.listdir(fd_dir)) == before


def test_a_packet_near_the_limit_travels_and_a_bigger_one_is_e2big(hypervisord):
    """Requests up to MAX_PACKET get through whatever the host's default
    socket buffer is; a bigger one is refused before it leaves the caller."""
    with SyncXenCall(hypervisord.privcmd) as xc:
        near = rpc.MAX_PACKET - 1024
        rc, _ = xc.call(HYPERVISOR_xen_version, XENVER_version, pad=b"x" * near)
        assert rc >> 16 == 4
        with pytest.raises(XenError) as big:
            xc.call(HYPERVISOR_xen_version, XENVER_version, pad=b"x" * rpc.MAX_PACKET)
        assert big.value.rc == -E2BIG and "packet limit" in str(big.value)
        assert xc.call(HYPERVISOR_xen_version, XENVER_version)[0] >> 16 == 4


def test_an_oversized_raw_packet_is_dropped_with_its_connection(hypervisord, raw):
    packet = msgpack.packb([1, HYPERVISOR_xen_version, XENVER_version,
                            {"pad": b"x" * (rpc.MAX_PACKET + 1)}])
    try:
        raw.send(packet)
    except OSError as e:  # the host's buffer cap is below the packet: nothing sent
        pytest.skip(f"this host cannot send a {len(packet)}-byte packet: {e}")
    assert raw.closed()
    assert "larger than" in hypervisord.log()
    alive(hypervisord)


# -- domain control ----------------------------------------------------------------------
def test_domctl_errors_are_xens(raw):
    rc, res = raw.call(HYPERVISOR_domctl, XEN_DOMCTL_createdomain, domain=0, max_vcpus=1)
    assert rc == 0
    domid = res["domain"]
    assert domid >= 1
    assert raw.call(HYPERVISOR_domctl, XEN_DOMCTL_createdomain, domain=domid)[0] == -EEXIST
    assert raw.call(HYPERVISOR_domctl, XEN_DOMCTL_createdomain,
                    domain=0x7FF0)[0] == -EINVAL  # DOMID_FIRST_RESERVED
    assert raw.call(HYPERVISOR_domctl, XEN_DOMCTL_createdomain, max_vcpus=0)[0] == -EINVAL
    assert raw.call(HYPERVISOR_domctl, XEN_DOMCTL_createdomain, handle=b"short")[0] == -EINVAL
    assert raw.call(HYPERVISOR_domctl, XEN_DOMCTL_destroydomain, domain=0)[0] == -EINVAL
    assert raw.call(HYPERVISOR_domctl, XEN_DOMCTL_pausedomain, domain=0)[0] == -EINVAL
    assert raw.call(HYPERVISOR_domctl, XEN_DOMCTL_max_mem, domain=domid,
                    max_memkb=1 << 40)[0] == -EINVAL
    rc, info = raw.call(HYPERVISOR_domctl, XEN_DOMCTL_getdomaininfo, domain=domid)
    assert rc == 0 and info["domain"] == domid
    assert raw.call(HYPERVISOR_domctl, XEN_DOMCTL_destroydomain, domain=domid)[0] == 0
    for op in (XEN_DOMCTL_destroydomain, XEN_DOMCTL_pausedomain, XEN_DOMCTL_max_mem):
        assert raw.call(HYPERVISOR_domctl, op, domain=domid, max_memkb=1024)[0] == -ESRCH
    # getdomaininfo answers the next domain at or above the one asked for, as Xen does
    rc, _ = raw.call(HYPERVISOR_domctl, XEN_DOMCTL_getdomaininfo, domain=domid)
    assert rc == -ESRCH


def test_populate_physmap_arguments_are_checked(raw):
    rc, res = raw.call(HYPERVISOR_domctl, XEN_DOMCTL_createdomain, max_vcpus=1)
    domid = res["domain"]
    assert raw.call(HYPERVISOR_domctl, XEN_DOMCTL_max_mem, domain=domid, max_memkb=64)[0] == 0
    for bad in ({"extent_start": "0"}, {"extent_start": [0, -1]}, {"extent_start": [True]}, {}):
        rc, res = raw.call(HYPERVISOR_memory_op, XENMEM_populate_physmap, domid=domid, **bad)
        assert rc == -EINVAL and "extent_start" in res["error"], bad
    rc, _ = raw.call(HYPERVISOR_memory_op, XENMEM_populate_physmap, domid=domid,
                     extent_start=list(range(32)))
    assert rc == 16  # 64 KiB = 16 pages: the rest refused, as Xen returns fewer
    assert raw.call(HYPERVISOR_memory_op, XENMEM_populate_physmap, domid=0x7000,
                    extent_start=[0])[0] == -ESRCH
