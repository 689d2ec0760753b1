"""A guest's devices go with it: ``xl destroy``, a SIGKILLed guest process,
a guest that shuts down, and an ``xl create`` whose backend never gets to
InitWait. Real hypervisord, xenstored, backendd (vtest for vbd and vif)
and the launcher; the test plays the frontends."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.toolstack.devstack import (backendd, start_backendd, connect_frontend, devstack,  # noqa: F401
                                      stack, state, write_guest)
from toolstack import device_ops

pytestmark = pytest.mark.timeout(90)
XVDA = 51712


def _guest_with_devices(devstack, tmp_path, name="g", body=None):
    img = tmp_path / "disk.img"
    img.write_bytes(b"")
    body = body or "async def main(domain):\n    import trio\n    await trio.sleep_forever()\n"
    cfg = write_guest(tmp_path, name, body,
                      f"disk = [ 'format=raw, vdev=xvda, access=rw, target={img}' ]\n"
                      "vif = [ 'mac=00:16:3e:01:02:03' ]\n")
    devstack.xl_ok("create", str(cfg))
    domid = devstack.domid_of(name)
    paths = []
    for kind, devid, keys in (("vbd", XVDA, {"ring-ref": "9", "event-channel": "5"}),
                              ("vif", 0, {"tx-ring-ref": "10", "rx-ring-ref": "11",
                                          "event-channel": "6", "ring-ref": "1"})):
        fe = f"/local/domain/{domid}/device/{kind}/{devid}"
        be = f"/local/domain/0/backend/{kind}/{domid}/{devid}"
        assert state(devstack, be) in ("2", "4")  # xl create waited for InitWait
        connect_frontend(devstack, fe, keys, be)
        paths += [fe, be, f"/libxl/{domid}/device/{kind}/{devid}"]
    return domid, paths


def _gone(devstack, domid, paths):
    return all(devstack.read(p) is None for p in paths) and \
        devstack.read(f"/local/domain/0/backend/vbd/{domid}") is None and \
        devstack.read(f"/local/domain/0/backend/vif/{domid}") is None


def _clean(devstack):
    r = devstack.xl_ok("list")
    return [line.split()[0] for line in r.out.splitlines()[1:]] == ["Domain-0"]


def test_destroy_closes_backends_properly(devstack, tmp_path):
    domid, paths = _guest_with_devices(devstack, tmp_path)
    t0 = time.monotonic()
    r = devstack.xl_ok("destroy", "g")
    assert time.monotonic() - t0 < 3  # backendd closed both at once: no timeout waited
    assert r.err == ""
    assert _gone(devstack, domid, paths) and _clean(devstack)
    for devid in (XVDA, 0):  # the backend disconnected (unmapped) each device
        assert devstack.read(f"/tool/vtest/{domid}/{devid}/disconnects") == "1"
    devstack.wait(lambda: not devstack.backendd.status(), "backendd to drop the devices")


def test_destroy_with_a_backend_stuck_before_closed(devstack, tmp_path, monkeypatch):
    # xl's wait (1 s) shorter than backendd's own bound on a close on the way
    # out (backendd/device.py CLOSE_TIMEOUT, 2 s): with both at 2 s, a loaded
    # host sometimes saw backendd give up and write Closed first (no warning)
    monkeypatch.setenv(device_ops.TIMEOUT_ENV, "1")
    domid, paths = _guest_with_devices(devstack, tmp_path)
    devstack.ts.xs.write("/tool/vtest/stall-disconnect", "60")
    t0 = time.monotonic()
    r = devstack.xl_ok("destroy", "g")
    took = time.monotonic() - t0
    assert 1 <= took < 1 + 4, took
    lines = r.err.splitlines()
    assert sorted(lines) == sorted(
        f"libxl: warning: device {kind}/{domid}/{devid}: backendd did not close it within 1 s "
        "(state 5 (Closing)); its directories are removed anyway"
        for kind, devid in (("vbd", XVDA), ("vif", 0)))
    assert _gone(devstack, domid, paths)
    devstack.wait(lambda: _clean(devstack), "no zombie domain")


def test_sigkilled_guest_has_its_devices_torn_down(devstack, tmp_path):
    domid, paths = _guest_with_devices(devstack, tmp_path)
    pid = devstack.launcher_guests()[domid]
    os.kill(pid, signal.SIGKILL)
    devstack.wait(lambda: _gone(devstack, domid, paths), "the devices to go")
    for devid in (XVDA, 0):
        assert devstack.read(f"/tool/vtest/{domid}/{devid}/disconnects") == "1"
    devstack.wait(lambda: _clean(devstack), "the domain to go")
    devstack.wait(lambda: not devstack.backendd.status(), "backendd to drop the devices")
    assert "did not close" not in devstack.logs()  # the launcher forced nothing


def test_guest_that_shuts_down_has_its_devices_torn_down(devstack, tmp_path):
    body = "async def main(domain):\n    import trio\n    await trio.sleep(3)\n"  # poweroff
    domid, paths = _guest_with_devices(devstack, tmp_path, body=body)
    devstack.wait(lambda: _gone(devstack, domid, paths), "the devices to go")
    devstack.wait(lambda: _clean(devstack), "the domain to go")


def test_create_whose_backend_never_gets_to_initwait(devstack, tmp_path, monkeypatch):
    monkeypatch.setenv(device_ops.TIMEOUT_ENV, "1")
    devstack.ts.xs.write("/tool/vtest/stall-probe", "30")
    img = tmp_path / "disk.img"
    img.write_bytes(b"")
    cfg = write_guest(tmp_path, "late", "async def main(domain):\n    pass\n",
                      f"disk = [ 'vdev=xvda, target={img}' ]\n")
    t0 = time.monotonic()
    r = devstack.xl("create", str(cfg))
    assert time.monotonic() - t0 < 1 + 1 + 4  # InitWait wait, then the teardown's wait
    assert r.rc == 1
    errors = [line for line in r.err.splitlines() if line.startswith("libxl: error:")]
    domid = int(errors[0].split("/")[1])
    be = f"/local/domain/0/backend/vbd/{domid}/{XVDA}"
    assert errors == [
        f"libxl: error: device vbd/{domid}/{XVDA} ({be}): backendd did not bring its state to "
        "state 2 (InitWait) within 1 s: it is in state 1 (Initialising)",
        f"libxl: error: Domain {domid}:unable to add disk devices"]
    assert devstack.read(be) is None and devstack.read(f"/local/domain/{domid}") is None
    assert _clean(devstack)
