"""The frontend half of the xenbus handshake (``frontends/xenbus/device.py``)
in a real program guest, against backendd running the test-only driver for
``vbd``: InitWait seen, the ring keys published with Initialised in one
transaction, Connected both ends, then Closing/Closed; a backend that never
answers is a timeout that names the states."""

from __future__ import annotations

import pytest

from tests.toolstack.stack import stack, start_backendd, write_guest  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(60)

GUEST = """
import sys
import trio
from frontends.xenbus.device import FrontendDevice, FrontendError, find_devices
from libxen.xenbus import XenbusState as S

async def main(domain):
    (devid,) = await find_devices(domain, "vbd")
    dev = await FrontendDevice.open(domain, "vbd", devid)
    mode = domain.args[0] if domain.args else "connect"
    try:
        await dev.wait_backend(S.XenbusStateInitWait, timeout=float(domain.args[1]) if mode == "slow" else 10)
    except FrontendError as e:
        print("FRONTEND-ERROR", e.errno, e, file=sys.stderr, flush=True)
        return
    assert await dev.read_backend("feature-vtest") == "1"
    gnttab = await domain.open_gnttab()
    gfn = domain.alloc_gfns(1)
    ref = gnttab.grant_access(dev.backend_id, gfn)
    port = await domain.evtchn.bind_unbound_port(dev.backend_id)
    await dev.switch(S.XenbusStateInitialised, {"ring-ref": str(ref), "event-channel": str(port)})
    await dev.wait_backend(S.XenbusStateConnected)
    await dev.switch(S.XenbusStateConnected)
    print("CONNECTED", await dev.read_backend("vtest-ring"), f"{ref}:{port}", file=sys.stderr, flush=True)
    await dev.close()
    print("CLOSED", int(await dev.wait_backend(S.XenbusStateClosed)), file=sys.stderr, flush=True)
"""

VTEST_VBD = ("--device-type", "vbd=tests.backendd.vtest:VTest")


def _cfg(tmp_path, args=""):
    image = tmp_path / "disk.img"
    image.write_bytes(b"")
    return write_guest(tmp_path, "fe", GUEST,
                       f"disk = [ 'format=raw, vdev=xvda, access=rw, target={image}' ]\n"
                       f'cmdline = "{args}"\n')


def test_frontend_handshake_connects_and_closes(stack, start_backendd, tmp_path):
    start_backendd(*VTEST_VBD)
    stack.xl_ok("create", str(_cfg(tmp_path)))
    log = stack.wait(lambda: "CLOSED" in stack.guest_log("fe") and stack.guest_log("fe"),
                     "the guest to close its device")
    line = next(x for x in log.splitlines() if x.startswith("CONNECTED"))
    _, published, ours = line.split()
    assert published == ours  # the backend read exactly what the frontend wrote
    assert "CLOSED 6" in log


def test_backend_that_never_answers_is_a_named_timeout(stack, tmp_path):
    # No backendd at all: the backend stays Initialising. xl create would
    # wait for InitWait (libxl's LIBXL_INIT_TIMEOUT) and fail, so the test
    # writes the device itself, as a toolstack that does not wait would.
    from toolstack import devices, xenstore_layout, xsbatch

    image = tmp_path / "disk.img"
    image.write_bytes(b"")
    cfg = write_guest(tmp_path, "fe", GUEST, 'cmdline = "slow 0.5"\n')
    stack.xl_ok("create", "-p", str(cfg))
    domid = stack.domid_of("fe")
    disk = devices.parse_disk(f"vdev=xvda, target={image}", "test", None, print)
    xsbatch.apply_ops(stack.ts.xs, xenstore_layout.vbd_ops(domid, disk))
    stack.xl_ok("unpause", "fe")
    log = stack.wait(lambda: "FRONTEND-ERROR" in stack.guest_log("fe") and stack.guest_log("fe"),
                     "the guest to give up")
    line = next(x for x in log.splitlines() if x.startswith("FRONTEND-ERROR"))
    assert line.startswith("FRONTEND-ERROR 110 vbd/51712: backend /local/domain/0/backend/vbd/")
    assert "still Initialising after 0.5 s, expected InitWait" in line


FLAPPER = """
import random
import sys
from frontends.xenbus.device import find_devices

async def main(domain):
    xs = await domain.open_xenbus()
    (devid,) = await find_devices(domain, "vbd")
    node = f"/local/domain/{domain.domid}/device/vbd/{devid}/state"
    rnd = random.Random(7)
    values = [str(v) for v in range(9)] + ["", "99", "-1", "4x", "x" * 64]
    for i in range(10_000):
        await xs.write(node, rnd.choice(values))
    print("FLAPPED", file=sys.stderr, flush=True)
    import trio
    await trio.sleep_forever()
"""


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.timeout(120)
def test_state_flapping_ten_thousand_times_costs_the_flapper_alone(stack, start_backendd, tmp_path):
    """A guest that writes its frontend ``state`` 10,000 times (every state
    value, garbage too): backendd follows or refuses each, stays up with
    bounded memory, and another guest's device connects and closes as usual."""
    be = start_backendd(*VTEST_VBD)
    flap = tmp_path / "flap"
    flap.mkdir()
    image = flap / "disk.img"
    image.write_bytes(b"")
    stack.xl_ok("create", str(write_guest(
        flap, "flap", FLAPPER, f"disk = [ 'format=raw, vdev=xvda, access=rw, target={image}' ]\n")))
    rss0 = _rss_kib(be.proc.pid)
    stack.wait(lambda: "FLAPPED" in stack.guest_log("flap"), "the flapping to end", timeout=90)
    assert be.alive
    assert "Traceback" not in be.log() and " failed" not in be.log(), be.log()[-3000:]
    # The flapper's device is still served or was closed, never lost track of:
    # its backend state is a valid XenbusState.
    flap_id = stack.domid_of("flap")
    assert stack.read(f"/local/domain/0/backend/vbd/{flap_id}/51712/state") in {
        str(v) for v in range(1, 7)}
    stack.xl_ok("create", str(_cfg(tmp_path)))
    log = stack.wait(lambda: "CLOSED" in stack.guest_log("fe") and stack.guest_log("fe"),
                     "the other guest to connect and close its device", timeout=30)
    assert "CLOSED 6" in log
    rss1 = _rss_kib(be.proc.pid)
    print(f"backendd RSS {rss0} -> {rss1} KiB over 10,000 state writes")
    assert rss1 - rss0 < 16 * 1024, (rss0, rss1)
