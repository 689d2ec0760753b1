"""``xl network-attach/-list/-detach`` against real hypervisord, xenstored and
backendd (the vtest driver serving ``vif``, writing hotplug-status and
``pvxen-link`` as netback does), with the test as the frontend. Formats and
messages are those of ``tools/xl/xl_nic.c``, plus the trailing Link column."""

from __future__ import annotations

import time

import pytest

from tests.toolstack.devstack import (FrontendPlayer, backendd, start_backendd, connect_frontend,  # noqa: F401
                                      devstack, stack, start_guest, state, xs_socket)
from toolstack import device_ops

pytestmark = pytest.mark.timeout(60)
HEADER = ("Idx BE Mac Addr.         handle state evt-ch   tx-/rx-ring-ref BE-path"
          "                        Link")


def _paths(domid, devid):
    return (f"/local/domain/{domid}/device/vif/{devid}",
            f"/local/domain/0/backend/vif/{domid}/{devid}", f"/libxl/{domid}/device/vif/{devid}")


def _columns(line: str) -> list[str]:
    """Xen's row: "%-3d %-2d " MAC "%6d %5d %6d %5d/%-11d %-30s", then " Link"."""
    assert line[3] == " " and line[6] == " "
    cols = [line[0:3], line[4:6], line[7:24]]
    rest = line[24:]
    cols += [rest[0:6], rest[7:12], rest[13:19], rest[20:25], rest[26:37]]
    assert (rest[6], rest[12], rest[19], rest[25], rest[37]) == (" ", " ", " ", "/", " "), line
    tail = rest[38:]
    be, _, link = tail.rpartition(" ")
    return cols + [be, link]


def test_network_attach_list_detach_round_trip(devstack, tmp_path):
    domid = start_guest(devstack, tmp_path)
    devstack.xl_ok("network-attach", "g", "mac=00:16:3E:aa:bb:cc", "bridge=xenbr0",
                   "ip=10.9.0.5")
    fe, be, lx = _paths(domid, 0)
    assert state(devstack, be) == "2"
    assert devstack.read(f"{be}/hotplug-status") == "connected"
    assert (devstack.read(f"{be}/mac"), devstack.read(f"{be}/bridge"),
            devstack.read(f"{be}/ip")) == ("00:16:3e:aa:bb:cc", "xenbr0", "10.9.0.5")
    assert devstack.read(f"{fe}/mac") == "00:16:3e:aa:bb:cc"
    assert [p.decode() for p in devstack.ts.xs.get_perms(f"{fe}/mtu")] == ["n0", f"r{domid}"]

    devstack.ts.xs.write("/tool/vtest/link", "bridge")
    devstack.xl_ok("network-attach", str(domid))  # the next devid, a random Xen MAC
    mac1 = devstack.read(f"/libxl/{domid}/device/vif/1/mac")
    assert mac1.startswith("00:16:3e:")

    r = devstack.xl_ok("network-list", "g")
    header, row0, row1, end = r.out.split("\n")
    assert header == HEADER and end == ""
    assert _columns(row0) == ["0  ", "0 ", "00:16:3e:aa:bb:cc", "     0", "    1", "    -1",
                              "   -1", "-1         ", be, "switch"]
    assert _columns(row1)[:3] == ["1  ", "0 ", mac1] and _columns(row1)[-1] == "bridge"
    # What Xen's xl prints is a prefix of our row: the Link column is extra.
    xen = "%-3d %-2d %s%6d %5d %6d %5d/%-11d %-30s" % (0, 0, "00:16:3e:aa:bb:cc", 0, 1, -1, -1,
                                                      -1, be)
    assert row0 == f"{xen} switch"

    connect_frontend(devstack, fe, {"tx-ring-ref": "523", "rx-ring-ref": "524",
                                    "event-channel": "11", "ring-ref": "1"}, be)
    row0 = devstack.xl_ok("network-list", "g").out.split("\n")[1]
    assert _columns(row0)[3:8] == ["     0", "    3", "    11", "  523", "524        "]

    fe1, be1, lx1 = _paths(domid, 1)
    with FrontendPlayer(xs_socket(devstack), [(fe, be), (fe1, be1)]):
        devstack.xl_ok("network-detach", "g", "00:16:3e:AA:BB:CC")
        devstack.xl_ok("network-detach", "g", "1")
    for path in (fe, be, lx, fe1, be1, lx1):
        assert devstack.read(path) is None, path
    assert devstack.xl_ok("network-list", "g").out == HEADER + "\n"


def test_network_errors_are_xls(devstack, tmp_path):
    r = devstack.xl("network-attach", "nosuch", "bridge=xenbr0")
    assert (r.rc, r.err) == (1, "nosuch is an invalid domain identifier (rc=-6)\n")
    r = devstack.xl("network-list", "nosuch")
    assert r.rc == 1 and r.err == "nosuch is an invalid domain identifier (rc=-6)\n"
    start_guest(devstack, tmp_path)
    r = devstack.xl("network-detach", "g", "5")
    assert (r.rc, r.err) == (1, "Unknown device 5.\n")
    r = devstack.xl("network-detach", "g", "00:16:3e:00:00:01")
    assert (r.rc, r.err) == (1, "Unknown device 00:16:3e:00:00:01.\n")
    r = devstack.xl("network-attach", "g", "mac=nope")
    assert r.rc == 1 and "vif: invalid mac address `nope' in `mac=nope'" in r.err


def test_network_detach_forces_a_backend_that_does_not_close(devstack, tmp_path, monkeypatch):
    """libxl_device_nic_remove: after the timeout, a forced remove (not an error)."""
    monkeypatch.setenv(device_ops.TIMEOUT_ENV, "1")
    domid = start_guest(devstack, tmp_path)
    devstack.xl_ok("network-attach", "g")
    fe, be, lx = _paths(domid, 0)
    connect_frontend(devstack, fe, {"tx-ring-ref": "8", "rx-ring-ref": "9",
                                    "event-channel": "3", "ring-ref": "1"}, be)
    t0 = time.monotonic()
    r = devstack.xl_ok("network-detach", "g", "0")
    assert 1 <= time.monotonic() - t0 < 5
    assert r.err == (f"libxl: warning: device vif/{domid}/0: backendd did not close it within 1 s"
                     " (state 5 (Closing)): initiating forced remove\n")
    for path in (fe, be, lx):
        assert devstack.read(path) is None, path
