"""xl.cfg ``disk``/``vif`` entries and their XenStore directories: pure tests
(xl-disk-configuration(5), xl-network-configuration(5),
docs/misc/vbd-interface.txt, tools/libs/light/libxl_device.c)."""

from __future__ import annotations

import json
import os
import re

import pytest

from toolstack import devices, domconfig, xl_format
from toolstack import xenstore_layout as layout
from toolstack.xlcfg import ConfigError, ConfigErrors, parse
from tests.toolstack.test_toolstack_pure import _tree

pytestmark = pytest.mark.timeout(10)


def disk(spec: str, warnings: list[str] | None = None) -> devices.DiskSpec:
    return devices.parse_disk(spec, "g.cfg", 5, (warnings if warnings is not None
                                                 else []).append)


@pytest.mark.parametrize("vdev,number", [
    ("xvda", 51712), ("xvdb", 51728), ("xvda1", 51713), ("xvdp15", 51967),
    ("xvdq", (1 << 28) | (16 << 8)), ("xvdaa", (1 << 28) | (26 << 8)),
    ("xvda16", (1 << 28) | 16), ("hda", 768), ("hdb", 832), ("hdc", 5632),
    ("hdd1", 5697), ("sda", 2048), ("sdb2", 2066), ("d0p0", 51712), ("d2p1", 51745),
    ("51712", 51712), ("768", 768)])
def test_vdev_numbers_follow_vbd_interface_txt(vdev, number):
    assert devices.vdev_number(vdev) == number


@pytest.mark.parametrize("vdev", ["", "xvd", "hde", "hda64", "sdq", "sda16", "xvda256",
                                  "xvda01", "vda", "0", "xvdA", "99999999999"])
def test_bad_vdevs(vdev):
    assert devices.vdev_number(vdev) is None


def test_key_value_disk_form():
    d = disk("format=raw, vdev=xvda, access=rw, target=/img/a,b.img")
    assert (d.vdev, d.target, d.format, d.readwrite, d.devid) == (
        "xvda", "/img/a,b.img", "raw", True, 51712)  # target= takes the rest, commas too
    assert disk("vdev=xvdb,access=ro,target=/x").readwrite is False
    cd = disk("vdev=hdc:cdrom,access=r,target=")
    assert cd.is_cdrom and cd.target == "" and cd.format == "empty"
    assert disk("devtype=cdrom,vdev=hdc,target=/i.iso").is_cdrom


def test_positional_forms_and_the_deprecated_prefix_warning():
    warnings: list[str] = []
    d = disk("file:/srv/g.img,xvda,w", warnings)
    assert (d.target, d.vdev, d.readwrite, d.format) == ("/srv/g.img", "xvda", True, "raw")
    assert len(warnings) == 1 and "`file:'" in warnings[0] and warnings[0].startswith("g.cfg:5:")
    warnings.clear()
    d = disk("phy:/dev/vg/g,hda,r", warnings)
    assert (d.target, d.devid, d.readwrite) == ("/dev/vg/g", 768, False)
    assert "`phy:'" in warnings[0]
    warnings.clear()
    d = disk("file:rel/g.img,xvdb,w", warnings)  # libxlu: any path after the prefix
    assert (d.target, d.vdev) == ("rel/g.img", "xvdb") and "`file:'" in warnings[0]
    warnings.clear()
    d = disk("/srv/g.qcow2,qcow2,xvdc,rw", warnings)
    assert (d.format, d.vdev) == ("qcow2", "xvdc") and warnings == []
    d = disk("/srv/g.img,,xvdd,ro")  # an empty positional is skipped
    assert (d.vdev, d.readwrite) == ("xvdd", False)
    assert disk("/srv/g.img,xvde,w").vdev == "xvde"  # a vdev where the format would be


@pytest.mark.parametrize("spec,reason", [
    ("target=/i", "no vdev specified"),
    ("vdev=xvda", "no target specified (only an empty cdrom may have none)"),
    ("vdev=xvda,access=x,target=/i", "unknown value for access: x"),
    ("vdev=zz,target=/i", "invalid virtual disk identifier `zz'"),
    ("format=vmdk,vdev=xvda,target=/i", "unknown value for format: vmdk"),
    ("frob=1,vdev=xvda,target=/i", "unknown keyword `frob'"),
    ("/i,raw,xvda,w,extra", "too many positional parameters"),
])
def test_bad_disks_give_one_line_naming_file_and_line(spec, reason):
    with pytest.raises(ConfigError) as e:
        disk(spec)
    text = str(e.value)
    assert "\n" not in text
    assert text == (f"g.cfg:5: config parsing error in disk specification: "
                    f"{reason} in `{spec}'")


def test_vif_entries_and_random_mac():
    n = devices.parse_vif("mac=00:16:3E:01:02:03, bridge=xenbr1, ip=10.0.0.2", 0, "g", 1)
    assert (n.mac, n.bridge, n.ip, n.devid, n.script, n.type) == (
        "00:16:3e:01:02:03", "xenbr1", "10.0.0.2", 0, "vif-bridge", "vif")
    dflt = devices.parse_vif("", 3, "g", 1, rand=lambda k: b"\xff\x01\x02")
    assert dflt.mac == "00:16:3e:7f:01:02" and dflt.bridge == "xenbr0" and dflt.devid == 3
    macs = {devices.parse_vif("bridge=xenbr0", 0, "g", 1).mac for _ in range(20)}
    assert len(macs) > 1 and all(re.fullmatch(r"00:16:3e:[0-7][0-9a-f](:[0-9a-f]{2}){2}", m)
                                 for m in macs)


@pytest.mark.parametrize("spec,reason", [
    ("mac=00:16:3e:01:02", "invalid mac address"), ("mac=01:16:3e:01:02:03", "multicast"),
    ("ip=10.0.0.300", "invalid ip address"), ("bridge=a b", "invalid bridge name"),
    ("colour=red", "unrecognized argument `colour=red'"), ("xenbr0", "unrecognized")])
def test_bad_vifs(spec, reason):
    with pytest.raises(ConfigError) as e:
        devices.parse_vif(spec, 0, "g.cfg", 9)
    assert str(e.value).startswith("g.cfg:9: vif: ") and reason in str(e.value)
    assert "\n" not in str(e.value)


GUEST = "name = 'g'\nkernel = '{k}'\n"


@pytest.fixture
def kernel(tmp_path):
    k = tmp_path / "k.py"
    k.write_text("async def main(domain):\n    pass\n")
    return k


def test_domain_config_carries_devices_with_the_entry_lines(kernel, tmp_path):
    text = (GUEST.format(k=kernel) + "disk = [ 'vdev=xvda, target=/a.img',\n"
            "         'file:/b.img,xvdb,r' ]\nvif = [ 'mac=00:16:3e:00:00:01', "
            "'bridge=xenbr0' ]\n")
    warnings: list[str] = []
    dc = domconfig.domain_config(parse(text, str(tmp_path / "g.cfg")), warn=warnings.append)
    assert [d.devid for d in dc.disks] == [51712, 51728]
    assert [n.devid for n in dc.nics] == [0, 1] and dc.nics[0].mac == "00:16:3e:00:00:01"
    assert warnings and warnings[0].startswith(f"{tmp_path / 'g.cfg'}:4: warning")
    assert "disk" not in dc.extra and "vif" not in dc.extra
    again = domconfig.DomainConfig.from_dict(json.loads(json.dumps(dc.to_dict())))
    assert again == dc
    shown = xl_format.config_json(dc)
    assert shown["disks"][1]["pdev_path"] == "/b.img" and shown["disks"][1]["readwrite"] == 0
    assert shown["nics"][0]["mac"] == "00:16:3e:00:00:01"
    assert shown["nics"][1]["bridge"] == "xenbr0" and shown["nics"][1]["nictype"] == "vif"


def test_relative_disk_targets_become_absolute_like_the_kernel(kernel, tmp_path):
    """Relative to the current directory when the image is there, else to the
    config file's directory (backendd does not share the user's directory)."""
    cwd = tmp_path / "cwd"
    (cwd / "images").mkdir(parents=True)
    (cwd / "images" / "here.img").write_bytes(b"")
    text = (GUEST.format(k=kernel) + "disk = [ 'vdev=xvda, target=images/here.img',\n"
            "         'vdev=xvdb, target=images/there.img', 'vdev=xvdc, target=/abs.img' ]\n")
    dc = domconfig.domain_config(parse(text, str(tmp_path / "cfgs" / "g.cfg")), cwd=str(cwd))
    assert [d.target for d in dc.disks] == [str(cwd / "images" / "here.img"),
                                           str(tmp_path / "cfgs" / "images" / "there.img"),
                                           "/abs.img"]


def test_domain_config_device_errors_name_the_line(kernel, tmp_path):
    src = str(tmp_path / "g.cfg")
    text = (GUEST.format(k=kernel) + "disk = [ 'vdev=xvda, target=/a.img',\n"
            "  'vdev=51712, target=/b.img' ]\n" + "vif = [ 'mac=00:16:3e:00:00:01',\n"
            " 'mac=00:16:3e:00:00:01' ]\n")
    with pytest.raises(ConfigErrors) as e:
        domconfig.domain_config(parse(text, src), warn=lambda _: None)
    lines = str(e.value).splitlines()
    assert lines[0].startswith(f"{src}:4: disk: vdev 51712 is the same device")
    assert lines[1].startswith(f"{src}:6: vif: mac 00:16:3e:00:00:01 given twice")
    with pytest.raises(ConfigErrors) as e:
        domconfig.domain_config(parse(GUEST.format(k=kernel) + "disk = 'x'\n", src))
    assert str(e.value) == f"{src}:3: disk: expected a list of strings"


# -- layout ------------------------------------------------------------------------------

def test_vbd_directories_as_libxl_writes_them():
    d = disk("format=raw, vdev=xvda, access=rw, target=/srv/g.img")
    values, perms = _tree(layout.vbd_ops(5, d))
    fe, be = "/local/domain/5/device/vbd/51712", "/local/domain/0/backend/vbd/5/51712"
    assert perms[fe] == ("n5", "r0") and perms[be] == ("n0", "r5")
    front = {k[len(fe) + 1:]: v for k, v in values.items() if k.startswith(fe + "/")}
    assert front == {"backend": be, "backend-id": "0", "state": "1",
                     "virtual-device": "51712", "device-type": "disk", "trusted": "1",
                     "protocol": "x86_64-abi"}
    for key in ("backend-id", "state", "virtual-device", "protocol"):
        assert perms[f"{fe}/{key}"] == ("n5", "r0")  # libxl__xs_writev_perms
    back = {k[len(be) + 1:]: v for k, v in values.items() if k.startswith(be + "/")}
    assert back == {"frontend": fe, "frontend-id": "5", "online": "1", "state": "1",
                    "removable": "0", "bootable": "1", "dev": "xvda", "type": "phy",
                    "mode": "w", "device-type": "disk", "discard-enable": "1",
                    "specification": "xen", "params": "/srv/g.img",
                    "script": "/etc/xen/scripts/block"}
    lp = "/libxl/5/device/vbd/51712"
    assert perms[lp] == ("n0",) and values[f"{lp}/frontend"] == fe
    assert values[f"{lp}/backend"] == be and values[f"{lp}/params"] == "/srv/g.img"
    assert values[f"{be}/mode"] == "w"
    ro = _tree(layout.vbd_ops(5, disk("vdev=hda,access=ro,target=/x")))[0]
    assert ro["/local/domain/0/backend/vbd/5/768/mode"] == "r"


def test_vif_directories_as_libxl_writes_them():
    n = devices.parse_vif("mac=00:16:3e:0a:0b:0c,bridge=xenbr0,ip=10.1.0.2", 0, "g", 1)
    values, perms = _tree(layout.vif_ops(5, n))
    fe, be = "/local/domain/5/device/vif/0", "/local/domain/0/backend/vif/5/0"
    assert perms[fe] == ("n5", "r0") and perms[be] == ("n0", "r5")
    front = {k[len(fe) + 1:]: v for k, v in values.items() if k.startswith(fe + "/")}
    assert front == {"backend": be, "backend-id": "0", "state": "1", "handle": "0",
                     "mac": "00:16:3e:0a:0b:0c", "mtu": "1500", "trusted": "1"}
    assert perms[f"{fe}/mac"] == ("n5", "r0") and perms[f"{fe}/mtu"] == ("n0", "r5")
    back = {k[len(be) + 1:]: v for k, v in values.items() if k.startswith(be + "/")}
    assert back == {"frontend": fe, "frontend-id": "5", "online": "1", "state": "1",
                    "script": "/etc/xen/scripts/vif-bridge", "mac": "00:16:3e:0a:0b:0c",
                    "ip": "10.1.0.2", "bridge": "xenbr0", "handle": "0", "type": "vif",
                    "hotplug-status": ""}


def test_devices_in_the_creation_ops_and_each_dir_cleared_first():
    e = layout.DomainEntries(domid=7, name="g", uuid="11111111-2222-3333-4444-555555555555",
                             memory_kb=4096, maxmem_kb=4096, vcpus=1, maxvcpus=1,
                             store_port=1, store_gfn=2, console_port=3, console_gfn=4)
    d = disk("vdev=xvda,target=/i")
    n = devices.parse_vif("", 0, "g", 1)
    ops = layout.create_ops(e, [d], [n])
    assert ops[:len(layout.create_ops(e))] == layout.create_ops(e)
    paths = [o.path for o in ops]
    for path in ("/local/domain/7/device/vbd/51712", "/local/domain/0/backend/vbd/7/51712",
                 "/local/domain/7/device/vif/0", "/local/domain/0/backend/vif/7/0"):
        rm = ops.index(layout.Op("rm", path))
        assert rm < paths.index(path, rm + 1)  # removed, then made afresh
    gone = [o.path for o in layout.destroy_ops(7, None)]
    assert "/local/domain/0/backend/vbd/7" in gone and "/local/domain/0/backend/vif/7" in gone
    assert os.path.commonpath(gone[:1] + ["/local/domain/7/device/vbd/51712"]) == gone[0]
