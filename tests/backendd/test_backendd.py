"""backendd as a process: devices found in XenStore are driven through the
XenbusState handshake, each as its own task, while the test plays the
toolstack (writing both directories in one transaction, as libxl does) and
the frontend (moving its ``state`` node)."""

from __future__ import annotations

import time

import pytest

from libxen.xenstore.errors import XsError
from tests.framework.daemons import Backendd
from tests.backendd.conftest import VTEST

BE = "/local/domain/0/backend/vtest/5/0"
FE = "/local/domain/5/device/vtest/0"
COUNTS = "/tool/vtest/5/0"


def add_device(xs, be: str = BE, fe: str = FE, domid: int = 5, fe_state: int = 1,
               fe_keys: dict[str, str] | None = None) -> None:
    def tx(t: int) -> None:
        for k, v in {"frontend": fe, "frontend-id": str(domid), "online": "1", "state": "1"}.items():
            xs.write(f"{be}/{k}", v, t)
        for k, v in {"backend": be, "backend-id": "0", "state": str(fe_state), **(fe_keys or {})}.items():
            xs.write(f"{fe}/{k}", v, t)
    xs.run_transaction(tx)


def read(xs, path: str) -> str | None:
    try:
        return xs.read(path).decode()
    except XsError as e:
        if e.name == "ENOENT":
            return None
        raise


def wait_for(what, want, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while (got := what()) != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {want!r}, still {got!r}")
        time.sleep(0.02)
    return got


def be_state(xs, be: str = BE):
    return lambda: read(xs, f"{be}/state")


def connect(xs, backendd) -> None:
    """Bring the vtest device to Connected as blkfront would."""
    add_device(xs)
    wait_for(be_state(xs), "2")
    xs.write(f"{FE}/ring-ref", "9")
    xs.write(f"{FE}/event-channel", "28")
    xs.write(f"{FE}/state", "3")
    wait_for(be_state(xs), "4")


@pytest.mark.timeout(60)
def test_ready_with_no_devices(backendd):
    assert backendd.alive and backendd.status() == []
    assert "backendd is ready" in backendd.log()


@pytest.mark.timeout(60)
def test_handshake_teardown_and_reconnect(backendd, xs):
    add_device(xs)
    wait_for(be_state(xs), "2")  # InitWait, with the driver's features
    assert read(xs, f"{BE}/feature-vtest") == "1"
    assert backendd.status() == [["vtest", "5", "0", "InitWait"]]
    xs.write(f"{FE}/ring-ref", "9")
    xs.write(f"{FE}/event-channel", "28")
    xs.write(f"{FE}/state", "3")  # Initialised
    wait_for(be_state(xs), "4")
    assert read(xs, f"{BE}/vtest-ring") == "9:28"
    xs.write(f"{FE}/state", "4")
    xs.write(f"{FE}/state", "5")  # the frontend closes
    wait_for(be_state(xs), "5")
    xs.write(f"{FE}/state", "6")
    wait_for(be_state(xs), "6")
    assert read(xs, f"{COUNTS}/disconnects") == "1"
    assert backendd.status() == [["vtest", "5", "0", "Closed"]]  # online: kept for a reconnect
    xs.write(f"{FE}/state", "1")  # the frontend comes back (blkfront after a resume)
    wait_for(be_state(xs), "2")
    assert read(xs, f"{COUNTS}/probes") == "2"
    # Detach: the toolstack sets online=0 and Closing; the frontend closes.
    xs.write(f"{BE}/online", "0")
    xs.write(f"{FE}/state", "6")
    wait_for(backendd.status, [])
    assert read(xs, f"{BE}/state") == "6"


@pytest.mark.timeout(60)
def test_frontend_that_skips_states_is_connected(backendd, xs):
    # The frontend is already Connected with its keys when backendd first
    # looks: watch events coalesced, or a netfront-like Initialising->Connected.
    add_device(xs, fe_state=4, fe_keys={"ring-ref": "7", "event-channel": "3"})
    wait_for(be_state(xs), "4")
    assert read(xs, f"{BE}/vtest-ring") == "7:3"


@pytest.mark.timeout(60)
def test_removing_the_backend_directory_tears_the_device_down(backendd, xs):
    connect(xs, backendd)
    xs.rm("/local/domain/0/backend/vtest/5")
    wait_for(backendd.status, [])
    assert read(xs, f"{COUNTS}/disconnects") == "1"
    assert read(xs, f"{BE}/state") is None  # not resurrected by the teardown


@pytest.mark.timeout(60)
def test_bad_frontend_keys_close_that_device_only(backendd, xs):
    other_be, other_fe = "/local/domain/0/backend/vtest/6/0", "/local/domain/6/device/vtest/0"
    add_device(xs, be=other_be, fe=other_fe, domid=6, fe_state=3,
               fe_keys={"ring-ref": "12", "event-channel": "1"})
    add_device(xs, fe_state=3, fe_keys={"ring-ref": "0x9", "event-channel": "28"})
    wait_for(be_state(xs), "5")  # Closing, as xenbus_dev_fatal leaves it
    err = read(xs, "/local/domain/0/error/backend/vtest/5/0/error")
    assert err is not None and err.startswith("22 ") and "ring-ref" in err
    wait_for(be_state(xs, other_be), "4")  # the other guest's device is unaffected
    assert backendd.alive


@pytest.mark.timeout(60)
def test_device_of_a_type_without_driver_is_left_alone(backendd, xs):
    # vbd and vif have their drivers now; console is the type still without one here.
    add_device(xs, be="/local/domain/0/backend/console/5/0", fe="/local/domain/5/device/console/0")
    wait_for(lambda: "no console driver yet" in backendd.log(), True)
    assert read(xs, "/local/domain/0/backend/console/5/0/state") == "1"
    assert backendd.status() == []


@pytest.mark.timeout(60)
def test_sigterm_closes_devices_and_a_restart_picks_them_up(backendd, xs):
    connect(xs, backendd)
    assert backendd.stop() == 0
    assert read(xs, f"{BE}/state") == "6"  # closed on the way out
    assert read(xs, f"{COUNTS}/disconnects") == "1"
    xs.rm(COUNTS)
    backendd.start()
    wait_for(backendd.status, [["vtest", "5", "0", "Closed"]])
    assert read(xs, f"{COUNTS}/probes") is None  # a closed device waits for its frontend
    xs.write(f"{FE}/state", "6")  # the frontend follows the backend's close ...
    xs.write(f"{FE}/state", "1")  # ... and reconnects
    wait_for(be_state(xs), "2")
    xs.write(f"{FE}/state", "3")
    wait_for(be_state(xs), "4")
    assert read(xs, f"{COUNTS}/connects") == "1"  # by the new process


@pytest.mark.timeout(60)
def test_a_killed_backendd_resumes_connected_devices(backendd, xs):
    connect(xs, backendd)
    backendd.kill()  # no chance to close anything
    assert read(xs, f"{BE}/state") == "4"
    xs.rm(COUNTS)
    backendd.start()
    wait_for(backendd.status, [["vtest", "5", "0", "Connected"]])
    assert read(xs, f"{BE}/state") == "4"  # resumed, not renegotiated
    wait_for(lambda: read(xs, f"{COUNTS}/connects"), "1")  # re-mapped by the new process
    xs.write(f"{FE}/state", "5")
    wait_for(be_state(xs), "5")


@pytest.mark.timeout(60)
def test_devices_are_picked_up_after_xenstored_restarts(xenstored, tmp_path, xs):
    b = Backendd(tmp_path, VTEST).start()
    try:
        connect(xs, b)
        xenstored.stop()
        xenstored.start()
        from libxen.xenstore.sync import XsSyncClient
        xs2 = XsSyncClient.open(str(xenstored.socket))
        try:
            wait_for(lambda: b.status(), [["vtest", "5", "0", "Connected"]])
            xs2.write(f"{FE}/state", "5")
            wait_for(be_state(xs2), "5")
        finally:
            xs2.close()
    finally:
        b.kill()
