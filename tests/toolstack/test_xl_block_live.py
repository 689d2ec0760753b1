"""``xl block-attach/-list/-detach`` against real hypervisord, xenstored and
backendd (the vtest driver serving ``vbd``), with the test as the frontend.
Formats and messages are those of ``tools/xl/xl_block.c``."""

from __future__ import annotations

import json
import time

import pytest

from tests.toolstack.devstack import (FrontendPlayer, backendd, start_backendd, connect_frontend,  # noqa: F401
                                      devstack, stack, start_guest, state, xs_socket)
from toolstack import device_ops

pytestmark = pytest.mark.timeout(60)
XVDB = 51728  # 202 << 8 | 1 << 4


def _paths(domid, devid=XVDB):
    return (f"/local/domain/{domid}/device/vbd/{devid}",
            f"/local/domain/0/backend/vbd/{domid}/{devid}", f"/libxl/{domid}/device/vbd/{devid}")


def _columns(line: str) -> list[str]:
    """Xen's fixed columns: %-5s %-3s %-6s %-5s %-6s %-8s %-30s."""
    widths = [5, 3, 6, 5, 6, 8]
    cols, pos = [], 0
    for w in widths:
        cols.append(line[pos:pos + w])
        assert line[pos + w] == " ", (line, pos + w)
        pos += w + 1
    cols.append(line[pos:])
    return cols


def test_block_attach_list_detach_round_trip(devstack, tmp_path):
    img = tmp_path / "b.img"
    img.write_bytes(b"\0" * 4096)
    domid = start_guest(devstack, tmp_path)
    fe, be, lx = _paths(domid)
    devstack.xl_ok("block-attach", "g", f"format=raw, vdev=xvdb, access=ro, target={img}")
    assert state(devstack, be) == "2"  # InitWait: xl returned after the backend got there
    assert devstack.read(f"{be}/params") == str(img) and devstack.read(f"{be}/mode") == "r"
    assert [p.decode() for p in devstack.ts.xs.get_perms(fe)] == [f"n{domid}", "r0"]
    assert [p.decode() for p in devstack.ts.xs.get_perms(be)] == ["n0", f"r{domid}"]
    assert devstack.read(f"{lx}/frontend") == fe and devstack.read(f"{lx}/backend") == be

    r = devstack.xl_ok("block-list", "g")
    header, row, *rest = r.out.split("\n")
    assert header == "Vdev  BE  handle state evt-ch ring-ref BE-path                       "
    assert _columns(header) == ["Vdev ", "BE ", "handle", "state", "evt-ch", "ring-ref",
                                "BE-path                       "]
    # The frontend has not written its ring yet: -1 as libxl reads a missing node.
    assert _columns(row) == ["51728", "0  ", f"{domid:<6d}", "1    ", "-1    ", "-1      ",
                             f"{be:<30s}"]
    assert rest == [""]

    connect_frontend(devstack, fe, {"ring-ref": "9", "event-channel": "28"}, be)
    row = devstack.xl_ok("block-list", str(domid)).out.split("\n")[1]
    assert _columns(row) == ["51728", "0  ", f"{domid:<6d}", "3    ", "28    ", "9       ",
                             f"{be:<30s}"]

    with FrontendPlayer(xs_socket(devstack), [(fe, be)]):
        t0 = time.monotonic()
        devstack.xl_ok("block-detach", "g", "xvdb")
        assert time.monotonic() - t0 < 5
    for path in (fe, be, lx):
        assert devstack.read(path) is None, path
    assert devstack.read(f"/tool/vtest/{domid}/{XVDB}/disconnects") == "1"
    assert devstack.xl_ok("block-list", "g").out.count("\n") == 1


def test_block_list_several_domains_and_a_bad_one(devstack, tmp_path):
    img = tmp_path / "c.img"
    img.write_bytes(b"")
    domid = start_guest(devstack, tmp_path, "one")
    devstack.xl_ok("block-attach", "one", str(img), "", "xvdc", "w")  # positional components
    r = devstack.xl_ok("block-list", "one", "nosuch", "one")
    lines = r.out.splitlines()
    assert len(lines) == 3 and lines[1] == lines[2]
    assert lines[1].startswith(f"51744 0   {domid:<6d} ")
    assert r.err == "nosuch is an invalid domain identifier\n"


def test_block_attach_to_a_missing_domain(devstack, tmp_path):
    r = devstack.xl("block-attach", "nosuch", f"target={tmp_path}/x.img,vdev=xvdb")
    assert (r.rc, r.err) == (1, "nosuch is an invalid domain identifier\n")
    r = devstack.xl("block-attach", "g")
    assert r.rc == 2 and "'xl block-attach' requires at least 2 arguments." in r.err


def test_block_detach_of_a_missing_device_or_domain(devstack, tmp_path):
    start_guest(devstack, tmp_path)
    r = devstack.xl("block-detach", "g", "xvdc")
    assert (r.rc, r.err) == (1, "Error: Device xvdc not connected.\n")
    r = devstack.xl("block-detach", "g", "notadisk")
    assert (r.rc, r.err) == (1, "Error: Device notadisk not connected.\n")
    r = devstack.xl("block-detach", "nosuch", "xvdb")
    assert (r.rc, r.err) == (1, "nosuch is an invalid domain identifier (rc=-6)\n")


def test_initwait_timeout_names_device_daemon_and_states(devstack, tmp_path, monkeypatch):
    monkeypatch.setenv(device_ops.TIMEOUT_ENV, "1")
    domid = start_guest(devstack, tmp_path)
    devstack.ts.xs.write("/tool/vtest/stall-probe", "30")
    fe, be, lx = _paths(domid)
    t0 = time.monotonic()
    r = devstack.xl("block-attach", "g", f"vdev=xvdb,target={tmp_path}/x.img")
    assert time.monotonic() - t0 < 5
    assert r.rc == 1
    assert r.err == (f"libxl: error: device vbd/{domid}/{XVDB} ({be}): backendd did not bring "
                     "its state to state 2 (InitWait) within 1 s: it is in state 1 "
                     "(Initialising)\nlibxl_device_disk_add failed.\n")
    for path in (fe, be, lx):
        assert devstack.read(path) is None, path


def test_the_default_timeouts_are_libxls(monkeypatch):
    monkeypatch.delenv(device_ops.TIMEOUT_ENV, raising=False)
    assert (device_ops.LIBXL_INIT_TIMEOUT, device_ops.LIBXL_DESTROY_TIMEOUT,
            device_ops.LIBXL_HOTPLUG_TIMEOUT) == (10, 10, 40)  # libxl_internal.h
    assert device_ops.timeout(device_ops.LIBXL_INIT_TIMEOUT) == 10
    monkeypatch.setenv(device_ops.TIMEOUT_ENV, "99")  # never longer than libxl's
    assert device_ops.timeout(device_ops.LIBXL_DESTROY_TIMEOUT) == 10
    monkeypatch.setenv(device_ops.TIMEOUT_ENV, "soon")
    assert device_ops.timeout(device_ops.LIBXL_INIT_TIMEOUT) == 10
    ref = device_ops.DeviceRef("vbd", 3, XVDB)
    e = device_ops.DeviceTimeout(ref, "state", "in state 1 (Initialising)",
                                 "state 2 (InitWait)", device_ops.timeout(10.0))
    assert str(e) == ("device vbd/3/51728 (/local/domain/0/backend/vbd/3/51728): backendd did "
                      "not bring its state to state 2 (InitWait) within 10 s: it is in state "
                      "1 (Initialising)")


def test_detach_waits_for_closed_then_force_removes(devstack, tmp_path, monkeypatch):
    monkeypatch.setenv(device_ops.TIMEOUT_ENV, "1")
    img = tmp_path / "d.img"
    img.write_bytes(b"")
    domid = start_guest(devstack, tmp_path)
    fe, be, lx = _paths(domid)
    devstack.xl_ok("block-attach", "g", f"vdev=xvdb,target={img}")
    connect_frontend(devstack, fe, {"ring-ref": "9", "event-channel": "28"}, be)
    # No frontend answers Closing: the backend stays Closing.
    r = devstack.xl("block-detach", "g", "51728")
    assert r.rc == 1
    assert r.err == (f"libxl: error: device vbd/{domid}/{XVDB} ({be}): backendd did not bring "
                     "its state to state 6 (Closed) within 1 s: it is in state 5 (Closing)\n"
                     "libxl_device_disk_safe_remove failed.\n")
    assert devstack.read(f"{be}/online") == "0" and devstack.read(lx) is not None
    t0 = time.monotonic()
    devstack.xl_ok("block-detach", "-f", "g", "xvdb")
    assert time.monotonic() - t0 < 1
    for path in (fe, be, lx):
        assert devstack.read(path) is None, path
    devstack.wait(lambda: not devstack.backendd.status(), "backendd to drop the device")


def test_dry_run_prints_the_disk_with_an_absolute_target(devstack, tmp_path, monkeypatch):
    domid = start_guest(devstack, tmp_path)
    monkeypatch.chdir(tmp_path)
    r = devstack.xl_ok("-N", "block-attach", "g", "vdev=xvdb, target=rel.img")
    assert r.out.startswith("disk: {")
    shown = json.loads(r.out.removeprefix("disk: "))
    assert (shown["vdev"], shown["pdev_path"]) == ("xvdb", str(tmp_path / "rel.img"))
    assert devstack.read(_paths(domid)[1]) is None  # nothing written
