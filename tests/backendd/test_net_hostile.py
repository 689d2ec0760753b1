"""Hostile netfronts against a real backendd: bad tx packets get
NETIF_RSP_ERROR, protocol breaches disable that vif only
(``xenvif_fatal_tx_err``), bogus ring keys close the device, and a guest
that stops reading rx costs constant memory."""

from __future__ import annotations

import pytest

from tests.backendd.netguests import DEAF, FLOOD, FRAMES, HOSTILE
from tests.backendd.test_net_live import MAC_A, MAC_B, _bridge_name, _guest
from tests.toolstack.stack import stack, start_backendd, write_guest  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def sw(stack, start_backendd, monkeypatch):
    monkeypatch.setenv("PVXEN_NET_SWITCH", "1")
    return stack, start_backendd(), _bridge_name()


def _hostile(stack, tmp_path, br, mode):
    d = tmp_path / mode
    d.mkdir()
    stack.xl_ok("create", str(write_guest(d, mode, HOSTILE,
                f"vif = [ 'mac={MAC_A},bridge={br}' ]\ncmdline = \"{mode}\"\n", memory=8)))
    log = stack.wait(lambda: "STATUS" in stack.guest_log(mode) and stack.guest_log(mode),
                     f"the {mode} guest's statuses", timeout=20)
    line = next(x for x in log.splitlines() if x.startswith("STATUS"))
    return line.split()[1:]


@pytest.mark.parametrize("mode,expected", [
    ("zero", ["7:-1"]),                                   # zero-length packet: NETIF_RSP_ERROR
    ("count18", [f"{k}:0" for k in range(18)]),           # XEN_NETIF_NR_SLOTS_MIN slots: accepted
    ("count19", [f"{k}:-1" for k in range(19)]),          # one more: dropped with errors
])
def test_bad_tx_packets_get_errors(sw, tmp_path, mode, expected):
    stack, be, br = sw
    assert sorted(_hostile(stack, tmp_path, br, mode)) == sorted(expected)
    assert be.alive and "Traceback" not in be.log()


@pytest.mark.parametrize("mode,why", [
    ("count21", "packet of more than 20 slots"),
    ("crosspage", "tx slot crosses its page: offset 4000 size 200"),
    ("reqprod", "front end published req_prod="),
])
def test_protocol_breach_disables_that_vif_only(sw, tmp_path, mode, why):
    stack, be, br = sw
    assert _hostile(stack, tmp_path, br, mode) == []  # no response at all: disabled
    stack.wait(lambda: "fatal error, vif disabled" in be.log(), "the vif to be disabled")
    assert why in be.log()
    assert "Traceback" not in be.log()
    # another pair of guests on the same backendd still talk
    stack.xl_ok("create", str(_guest(tmp_path, "echo", MAC_B, br, "echo")))
    stack.wait(lambda: "UP" in stack.guest_log("echo"), "the echo guest", timeout=20)
    stack.xl_ok("create", str(_guest(tmp_path, "pinger", "00:16:3e:00:00:0d", br,
                                     f"ping 5 1500 {MAC_B}")))
    log = stack.wait(lambda: "PINGED" in stack.guest_log("pinger") and stack.guest_log("pinger"),
                     "the pings", timeout=30)
    assert "PINGED 5 5" in log


BOGUS = r'''
import sys
from frontends.xenbus.device import FrontendDevice, FrontendError
from libxen.xenbus import XenbusState as S

async def main(domain):
    dev = await FrontendDevice.open(domain, "vif", 0)
    await dev.wait_backend(S.XenbusStateInitWait)
    keys = dict(kv.split("=") for kv in domain.args)
    await dev.switch(S.XenbusStateInitialised, keys)
    try:
        await dev.wait_backend(S.XenbusStateConnected, timeout=5)
        print("RESULT connected", file=sys.stderr, flush=True)
    except FrontendError as e:
        print("RESULT", e.errno, e, file=sys.stderr, flush=True)
'''


@pytest.mark.parametrize("keys,why", [
    ("tx-ring-ref=77 rx-ring-ref=78 event-channel=3 request-rx-copy=1", "mapping tx-ring-ref 77"),
    ("tx-ring-ref=x rx-ring-ref=8 event-channel=3 request-rx-copy=1", "tx-ring-ref: bad value 'x'"),
    ("tx-ring-ref=8 rx-ring-ref=9 event-channel=99999 request-rx-copy=1", "event-channel: bad value"),
    ("tx-ring-ref=8 rx-ring-ref=9 event-channel=3 request-rx-copy=0", "request-rx-copy is not 1"),
])
def test_bogus_ring_keys_close_the_device(sw, tmp_path, keys, why):
    stack, be, br = sw
    stack.xl_ok("create", str(write_guest(tmp_path, "bogus", BOGUS,
                f"vif = [ 'mac={MAC_A},bridge={br}' ]\ncmdline = \"{keys}\"\n")))
    log = stack.wait(lambda: "RESULT" in stack.guest_log("bogus") and stack.guest_log("bogus"),
                     "the guest's result", timeout=20)
    assert "RESULT 6 vif/0: backend" in log and "is Closing, expected Connected" in log, log
    assert why in be.log(), be.log()[-2000:]
    assert be.alive and "Traceback" not in be.log()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_guest_that_stops_reading_costs_constant_memory(sw, tmp_path):
    """A deaf guest's vif queue stays bounded while another floods it."""
    stack, be, br = sw
    d = tmp_path / "deaf"
    d.mkdir()
    stack.xl_ok("create", str(write_guest(d, "deaf", DEAF, f"vif = [ 'mac={MAC_B},bridge={br}' ]\n",
                                          memory=8)))
    stack.wait(lambda: "UP" in stack.guest_log("deaf"), "the deaf guest", timeout=20)
    f = tmp_path / "flood"
    f.mkdir()
    stack.xl_ok("create", str(write_guest(f, "flood", FLOOD, f"vif = [ 'mac={MAC_A},bridge={br}' ]\n"
                                          'cmdline = "600 8000"\n', memory=8)))
    stack.wait(lambda: "FLOODED" in stack.guest_log("flood"), "the first flood", timeout=40)
    rss1 = _rss_kib(be.proc.pid)
    stack.xl_ok("destroy", "flood")
    stack.xl_ok("create", str(write_guest(f, "flood", FLOOD, f"vif = [ 'mac={MAC_A},bridge={br}' ]\n"
                                          'cmdline = "3000 8000"\n', memory=8)))
    stack.wait(lambda: "FLOODED" in stack.guest_log("flood") and
               stack.guest_log("flood").count("FLOODED") >= 1, "the second flood", timeout=60)
    rss2 = _rss_kib(be.proc.pid)
    # 3000 more 8000-byte frames (24 MB) went to the deaf guest: the queue
    # holds at most RX_QUEUE_MAX (256) of them plus the 256 its ring took
    assert rss2 - rss1 < 8 * 1024, (rss1, rss2)
    assert be.alive and "Traceback" not in be.log()
