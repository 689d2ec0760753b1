"""``xl top``'s network and block counters, from backendd's ``stats``
socket, while real program guests do I/O through netback and blkback."""

from __future__ import annotations

import pytest

from tests.backendd.blkguest import disk_cfg, wait_result
from tests.backendd.netguests import FRAMES
from tests.toolstack.stack import stack, start_backendd, write_guest  # noqa: F401 (fixtures)
from toolstack.xl_top import read_backend_stats

pytestmark = pytest.mark.timeout(90)
MAC_A, MAC_B = "00:16:3e:00:00:1a", "00:16:3e:00:00:1b"
COLUMNS = ["NAME", "STATE", "CPU(sec)", "CPU(%)", "MEM(k)", "MEM(%)", "MAXMEM(k)", "MAXMEM(%)",
           "VCPUS", "NETS", "NETTX(k)", "NETRX(k)", "VBDS", "VBD_OO", "VBD_RD", "VBD_WR",
           "VBD_RSECT", "VBD_WSECT", "SSID"]

DISK = """
async def main(domain):
    async with BlockDevice.open(domain) as disk:
        for i in range(10):
            await disk.write_sectors(100 + i * 8, bytes([i]) * 4096)   # 10 writes, 80 sectors
        report(wrote=True)
        await trio.sleep(2)
        for i in range(5):
            await disk.read_sectors(100 + i * 8, 8)                     # 5 reads, 40 sectors
        report(read=True)
        await trio.sleep_forever()
"""


def top_row(stack, name: str) -> dict[str, str]:
    out = stack.xl_ok("top", "-b", "-i", "1").out.splitlines()
    assert out[0].split() == COLUMNS
    row = next(r.split() for r in out[1:] if r.split()[0] == name)
    return dict(zip(COLUMNS, row))


def test_vbd_counters_rise_with_the_guests_io(stack, start_backendd, tmp_path):
    start_backendd()
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(1 << 20)
    stack.xl_ok("create", str(disk_cfg(tmp_path, "disk", DISK, image)))
    wait_result(stack, "disk", "wrote")
    first = top_row(stack, "disk")
    assert first["VBDS"] == "1" and first["NETS"] == "0" and first["VBD_OO"] == "0"
    assert int(first["VBD_WR"]) >= 10 and int(first["VBD_WSECT"]) >= 80, first
    wait_result(stack, "disk", "read")
    second = top_row(stack, "disk")
    assert int(second["VBD_RD"]) >= int(first["VBD_RD"]) + 5, (first, second)
    assert int(second["VBD_RSECT"]) >= int(first["VBD_RSECT"]) + 40, (first, second)
    assert second["VBD_WR"] == first["VBD_WR"]
    domid = stack.domid_of("disk")
    counters = read_backend_stats(stack.rundir)[("vbd", domid, 51712)]
    assert counters["wr_sect"] == int(second["VBD_WSECT"])


def test_vif_counters_rise_with_the_guests_traffic(stack, start_backendd, tmp_path, monkeypatch):
    monkeypatch.setenv("PVXEN_NET_SWITCH", "1")  # the in-process switch: no root needed
    start_backendd()
    br = "pvxtop0"

    def guest(name, mac, args):
        d = tmp_path / name
        d.mkdir()
        return write_guest(d, name, FRAMES, f"vif = [ 'mac={mac},bridge={br}' ]\n"
                           f'cmdline = "{args}"\n', memory=8)

    stack.xl_ok("create", str(guest("echo", MAC_B, "echo")))
    stack.wait(lambda: "UP" in stack.guest_log("echo"), "the echo guest's vif", timeout=20)
    before = top_row(stack, "echo")
    assert before["NETS"] == "1" and before["VBDS"] == "0"
    stack.xl_ok("create", str(guest("pinger", MAC_A, f"ping 40 1024 {MAC_B}")))
    stack.wait(lambda: "PINGED" in stack.guest_log("pinger"), "the pings", timeout=40)
    assert "PINGED 40 40" in stack.guest_log("pinger")
    pinger, echo = top_row(stack, "pinger"), top_row(stack, "echo")
    # 40 frames of 1 KiB each way: 40 KiB sent and received by each guest
    assert int(pinger["NETTX(k)"]) >= 40 and int(pinger["NETRX(k)"]) >= 40, pinger
    assert int(echo["NETRX(k)"]) >= int(before["NETRX(k)"]) + 40, (before, echo)
    assert int(echo["NETTX(k)"]) >= int(before["NETTX(k)"]) + 40, (before, echo)
