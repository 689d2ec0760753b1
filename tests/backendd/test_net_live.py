"""netback and netfront between real program guests (xl create), through
the in-process switch and through a real Linux bridge with TAPs."""

from __future__ import annotations

import os
import secrets
import subprocess

import pytest

from backendd import bridge
from tests.backendd.netguests import FRAMES
from tests.framework.hostres import HOST_NET
from tests.toolstack.stack import stack, start_backendd, write_guest  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(90)
MAC_A, MAC_B = "00:16:3e:00:00:0a", "00:16:3e:00:00:0b"
REAL = os.geteuid() == 0 and os.access("/dev/net/tun", os.R_OK | os.W_OK)
#: the real bridge: TAPs named vif<domid>.<devid>, one test at a time on the host
BRIDGE = pytest.param("bridge", marks=HOST_NET)


def _bridge_name() -> str:
    return "pvxbr" + secrets.token_hex(3)


def _guest(tmp_path, name, mac, br, args, ip="10.77.0.1", extra=""):
    d = tmp_path / name
    d.mkdir()
    return write_guest(d, name, FRAMES, f"vif = [ 'mac={mac},bridge={br},ip={ip}{extra}' ]\n"
                       f'cmdline = "{args}"\n', memory=8)


def _ip_link(name):
    return subprocess.run(["ip", "-o", "link", "show", "dev", name], capture_output=True, text=True)


@pytest.fixture
def net(stack, start_backendd, tmp_path, monkeypatch, request):
    br = _bridge_name()
    if request.param == "switch":
        monkeypatch.setenv("PVXEN_NET_SWITCH", "1")
    elif not REAL:
        pytest.skip("no root or /dev/net/tun: the real bridge cannot be tested here")
    be = start_backendd()
    yield stack, be, br, request.param
    if request.param == "bridge":
        bridge.cleanup(stack.rundir)
        subprocess.run(["ip", "link", "del", "dev", br], capture_output=True)


@pytest.mark.parametrize("net", ["switch", BRIDGE], indirect=True)
@pytest.mark.parametrize("size", [60, 1500, 65535])
def test_two_guests_exchange_frames(net, tmp_path, size):
    stack, be, br, kind = net
    # a real bridge forwards frames up to its ports' MTU: jumbo vifs for 64 KiB
    extra = ",mtu=65521" if size > 1514 else ""
    stack.xl_ok("create", str(_guest(tmp_path, "echo", MAC_B, br, "echo", extra=extra)))
    stack.wait(lambda: "UP" in stack.guest_log("echo"), "the echo guest's vif", timeout=20)
    stack.xl_ok("create", str(_guest(tmp_path, "pinger", MAC_A, br, f"ping 20 {size} {MAC_B}",
                                     extra=extra)))
    log = stack.wait(lambda: "PINGED" in stack.guest_log("pinger") and stack.guest_log("pinger"),
                     "the pings", timeout=40)
    assert "PINGED 20 20" in log, log + be.log()[-3000:]
    d = stack.domid_of("pinger")
    assert stack.read(f"/local/domain/0/backend/vif/{d}/0/pvxen-link") == kind
    assert stack.read(f"/local/domain/0/backend/vif/{d}/0/hotplug-status") == "connected"
    assert stack.read(f"/local/domain/0/backend/vif/{d}/0/state") == "4"
    if kind == "bridge":
        out = _ip_link(f"vif{d}.0").stdout
        assert f"master {br}" in out, out
    assert "Traceback" not in be.log(), be.log()[-3000:]


@pytest.mark.parametrize("net", ["switch", BRIDGE], indirect=True)
def test_spoofed_source_mac_is_dropped(net, tmp_path):
    """A vif sending with another vif's MAC (MAC_B's own) as source: dropped."""
    stack, be, br, kind = net
    stack.xl_ok("create", str(_guest(tmp_path, "echo", MAC_B, br, "echo")))
    stack.wait(lambda: "UP" in stack.guest_log("echo"), "the echo guest's vif", timeout=20)
    stack.xl_ok("create", str(_guest(tmp_path, "spoof", MAC_A, br,
                                     f"ping 3 100 {MAC_B} 00:16:3e:00:00:0c 0.5")))
    log = stack.wait(lambda: "PINGED" in stack.guest_log("spoof") and stack.guest_log("spoof"),
                     "the spoofed pings", timeout=30)
    assert "PINGED 0 3" in log
    assert "with source MAC 00:16:3e:00:00:0c" in be.log()


def _gone(name):
    return _ip_link(name).returncode != 0


@pytest.mark.parametrize("net", [BRIDGE], indirect=True)
@pytest.mark.parametrize("how", ["destroy", "sigkill"])
def test_tap_removed_when_the_guest_goes(net, tmp_path, how):
    stack, be, br, kind = net
    stack.xl_ok("create", str(_guest(tmp_path, "echo", MAC_B, br, "echo")))
    stack.wait(lambda: "UP" in stack.guest_log("echo"), "the echo guest's vif", timeout=20)
    d = stack.domid_of("echo")
    assert f"master {br}" in _ip_link(f"vif{d}.0").stdout
    if how == "destroy":
        stack.xl_ok("destroy", "echo")
    else:
        os.kill(stack.launcher_guests()[d], 9)
    stack.wait(lambda: _gone(f"vif{d}.0"), f"vif{d}.0 to go", timeout=20)
    assert _ip_link(br).returncode == 0  # the bridge stays until cleanup
    assert "Traceback" not in be.log()
    assert bridge.cleanup(stack.rundir) == [br]  # we created it: cleanup removes it
    assert _ip_link(br).returncode != 0


@pytest.mark.parametrize("net", ["switch", BRIDGE], indirect=True)
def test_restarted_backendd_picks_the_vif_up(net, tmp_path, start_backendd):
    stack, be, br, kind = net
    stack.xl_ok("create", str(_guest(tmp_path, "echo", MAC_B, br, "echo")))
    stack.wait(lambda: "UP" in stack.guest_log("echo"), "the echo guest's vif", timeout=20)
    be.kill()
    be2 = start_backendd()
    d = stack.domid_of("echo")
    stack.wait(lambda: "vif%d.0: connected" % d in be2.log(), "the vif picked up again", timeout=20)
    stack.xl_ok("create", str(_guest(tmp_path, "pinger", MAC_A, br, f"ping 10 1500 {MAC_B}")))
    log = stack.wait(lambda: "PINGED" in stack.guest_log("pinger") and stack.guest_log("pinger"),
                     "the pings", timeout=40)
    assert "PINGED 10 10" in log, log + be2.log()[-3000:]


@pytest.mark.parametrize("net", [BRIDGE], indirect=True)
def test_backendd_stopped_removes_its_taps_and_the_bridge_it_made(net, tmp_path):
    """SIGTERM (``make stop``): the vif closes, its TAP goes, and so does the
    bridge backendd created."""
    stack, be, br, kind = net
    stack.xl_ok("create", str(_guest(tmp_path, "echo", MAC_B, br, "echo")))
    stack.wait(lambda: "UP" in stack.guest_log("echo"), "the echo guest's vif", timeout=20)
    d = stack.domid_of("echo")
    assert f"master {br}" in _ip_link(f"vif{d}.0").stdout
    assert be.stop() == 0
    assert _gone(f"vif{d}.0") and _gone(br), be.log()[-2000:]
    assert f"removed {br}" in be.log()
