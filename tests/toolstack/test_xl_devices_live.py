"""``xl create`` of a guest with a disk and a vif against real hypervisord and
xenstored processes: both device directories with libxl's keys and
permissions (as ``xenstore-ls -p`` shows them), gone after ``xl destroy``;
``xl create -n`` prints them and creates nothing. backendd runs (the vtest
driver for vbd and vif): ``xl create`` waits for each backend's InitWait
(and a vif's hotplug-status), as libxl does."""

from __future__ import annotations

import json

import pytest

from tests.toolstack.devstack import backendd, devstack, start_backendd  # noqa: F401
from tests.toolstack.stack import stack, write_guest  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(60)

SLEEPER = "async def main(domain):\n    import trio\n    await trio.sleep_forever()\n"


def _devices_cfg(tmp_path, name="dev"):
    image = tmp_path / "disk.img"
    image.write_bytes(b"")
    return write_guest(tmp_path, name, SLEEPER,
                       f"disk = [ 'format=raw, vdev=xvda, access=rw, target={image}' ]\n"
                       "vif = [ 'mac=00:16:3e:12:34:56,bridge=xenbr0,ip=10.9.0.2' ]\n"), image


def _perms(stack, path):
    return [p.decode() for p in stack.ts.xs.get_perms(path)]


def _dir(stack, path):
    return {c.decode(): stack.read(f"{path}/{c.decode()}")
            for c in stack.ts.xs.directory(path)}


def test_create_writes_both_device_directories_and_destroy_removes_them(devstack, tmp_path):
    stack = devstack
    cfg, image = _devices_cfg(tmp_path)
    stack.xl_ok("create", "-p", str(cfg))
    domid = stack.domid_of("dev")
    fe, be = f"/local/domain/{domid}/device/vbd/51712", f"/local/domain/0/backend/vbd/{domid}/51712"
    assert _perms(stack, fe) == [f"n{domid}", "r0"]
    assert _perms(stack, f"{fe}/state") == [f"n{domid}", "r0"]
    assert _perms(stack, be) == ["n0", f"r{domid}"]
    assert _perms(stack, f"{be}/params") == ["n0", f"r{domid}"]
    front = _dir(stack, fe)
    assert front == {"backend": be, "backend-id": "0", "state": "1", "virtual-device": "51712",
                     "device-type": "disk", "trusted": "1", "protocol": "x86_64-abi"}
    back = _dir(stack, be)
    assert {k: back[k] for k in ("frontend", "frontend-id", "online", "state", "params",
                                 "type", "mode", "dev", "removable", "bootable")} == {
        "frontend": fe, "frontend-id": str(domid), "online": "1", "state": "2",
        "params": str(image), "type": "phy", "mode": "w", "dev": "xvda", "removable": "0",
        "bootable": "1"}

    vfe, vbe = f"/local/domain/{domid}/device/vif/0", f"/local/domain/0/backend/vif/{domid}/0"
    assert _perms(stack, vfe) == [f"n{domid}", "r0"]
    assert _perms(stack, f"{vfe}/mtu") == ["n0", f"r{domid}"]  # read-only for the guest
    assert _perms(stack, vbe) == ["n0", f"r{domid}"]
    assert _dir(stack, vfe) == {"backend": vbe, "backend-id": "0", "state": "1", "handle": "0",
                                "mac": "00:16:3e:12:34:56", "mtu": "1500", "trusted": "1"}
    vback = _dir(stack, vbe)
    assert {k: vback[k] for k in ("frontend", "frontend-id", "online", "state", "mac",
                                  "bridge", "ip", "handle", "type", "script",
                                  "hotplug-status")} == {
        "frontend": vfe, "frontend-id": str(domid), "online": "1", "state": "2",
        "mac": "00:16:3e:12:34:56", "bridge": "xenbr0", "ip": "10.9.0.2", "handle": "0",
        "type": "vif", "script": "/etc/xen/scripts/vif-bridge", "hotplug-status": "connected"}
    assert stack.read(f"/libxl/{domid}/device/vbd/51712/backend") == be

    stack.xl_ok("destroy", "dev")
    for path in (fe, be, vfe, vbe, f"/local/domain/0/backend/vbd/{domid}",
                 f"/local/domain/0/backend/vif/{domid}", f"/libxl/{domid}"):
        assert stack.read(path) is None, path
    assert stack.read("/local/domain/0/name") == "Domain-0"


def test_dry_run_prints_devices_and_creates_nothing(stack, tmp_path):
    cfg, image = _devices_cfg(tmp_path, "dry")
    before = sorted(stack.domids())
    r = stack.xl_ok("create", "-n", str(cfg))
    shown = json.loads(r.out)
    assert shown["c_info"]["name"] == "dry"
    assert shown["disks"] == [{"backend_domid": 0, "pdev_path": str(image), "vdev": "xvda",
                               "backend": "phy", "format": "raw", "script": "block",
                               "removable": 0, "readwrite": 1, "is_cdrom": 0,
                               "discard_enable": "True", "trusted": "True",
                               "specification": "xen"}]
    assert shown["nics"] == [{"backend_domid": 0, "devid": 0, "mtu": 1500,
                              "mac": "00:16:3e:12:34:56", "bridge": "xenbr0",
                              "script": "vif-bridge", "nictype": "vif", "ip": "10.9.0.2"}]
    assert sorted(stack.domids()) == before
    assert stack.read("/local/domain/0/backend") is None


def test_deprecated_disk_prefix_warns_and_bad_vif_names_file_and_line(stack, tmp_path):
    cfg = write_guest(tmp_path, "old", SLEEPER, f"disk = [ 'file:{tmp_path}/d.img,xvda,w' ]\n")
    r = stack.xl_ok("create", "-n", str(cfg))
    assert f"{cfg}:4: warning: deprecated disk syntax: prefix `file:'" in r.err
    assert json.loads(r.out)["disks"][0]["pdev_path"] == f"{tmp_path}/d.img"
    bad = write_guest(tmp_path, "bad", SLEEPER, "vif = [ 'mac=nope' ]\n")
    r = stack.xl("create", str(bad))
    assert r.rc != 0
    assert f"{bad}:4: vif: invalid mac address `nope' in `mac=nope'" in r.err
    assert sorted(stack.domids()) == [0]
