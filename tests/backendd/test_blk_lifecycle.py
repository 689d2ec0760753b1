"""blkback's life cycle with real guests: a read-only disk, an image that
is not there, flush durability across SIGKILL of backendd and of the
guest, and a guest killed (or destroyed) mid-I/O: its device closes, every
grant of it is unmapped from backendd, the other guest's I/O goes on."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.backendd.blkguest import disk_cfg, results, wait_result
from tests.backendd.test_blk_e2e import _image, blk_stats
from tests.toolstack.stack import stack, start_backendd  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(90)

READONLY = """
async def main(domain):
    async with BlockDevice.open(domain) as disk:
        out = {"readonly": disk.readonly, "data": (await disk.read(0, 5)).decode()}
        for name, call in (("write", lambda: disk.write(0, b"nope")),
                           ("flush", disk.flush), ("discard", lambda: disk.discard(0, 4096))):
            try:
                await call()
                out[name] = "accepted"
            except BlockError as e:
                out[name] = [e.errno, str(e)]
        report(**out)
    await trio.sleep_forever()
"""


def test_read_only_disk_reads_and_refuses_writes(stack, start_backendd, tmp_path):
    be = start_backendd()
    image = _image(tmp_path)
    with open(image, "r+b") as f:
        f.write(b"hello")
    os.chmod(image, 0o444)
    stack.xl_ok("create", str(disk_cfg(tmp_path, "ro", READONLY, image, mode="ro")))
    r = wait_result(stack, "ro", "readonly")
    assert r["readonly"] is True and r["data"] == "hello"
    for name in ("write", "flush", "discard"):
        err, msg = r[name]
        assert err == 30, (name, r[name])  # EROFS, from the backend's BLKIF_RSP_ERROR
        assert "refused, the disk is read-only" in msg
    domid = stack.domid_of("ro")
    assert stack.read(f"/local/domain/0/backend/vbd/{domid}/51712/info") == "4"  # VDISK_READONLY
    assert image.read_bytes()[:5] == b"hello"
    assert be.alive


MISSING = """
from frontends.xenbus.device import FrontendError
async def main(domain):
    try:
        async with BlockDevice.open(domain) as disk:
            report(outcome="opened")
    except FrontendError as e:
        report(outcome="refused", errno=e.errno, message=str(e))
    await trio.sleep_forever()
"""


def test_missing_image_closes_the_device_naming_the_path(stack, start_backendd, tmp_path):
    be = start_backendd()
    missing = tmp_path / "no-such.img"
    # As libxl: the backend closes the device before InitWait, so xl create
    # fails at once with the backend's reason and destroys the domain.
    t0 = time.monotonic()
    r = stack.xl("create", str(disk_cfg(tmp_path, "miss", MISSING, missing)))
    assert r.rc != 0 and time.monotonic() - t0 < 8, r
    lines = r.err.splitlines()
    assert lines[-2].startswith("libxl: error: device vbd/1/51712 (/local/domain/0/backend/vbd/1/"
                                "51712): backendd closed it before InitWait"), r.err
    assert lines[-2].endswith(f": 2 cannot open image {missing} read-write: "
                              "No such file or directory"), r.err
    assert lines[-1] == "libxl: error: Domain 1:unable to add disk devices", r.err
    assert stack.domids() == [0]
    assert stack.read("/local/domain/0/backend/vbd/1") is None
    assert be.alive


DURABLE = """
async def main(domain):
    async with BlockDevice.open(domain) as disk:
        await disk.write_sectors(0, b"A" * 65536)
        await disk.flush()
        report(flushed=True)
        i = 0
        while True:                       # more, unflushed I/O when the kill comes
            await disk.write_sectors(1024 + (i % 64) * 8, bytes([i % 256]) * 4096)
            i += 1
"""


def test_flushed_writes_survive_sigkill_of_backendd_and_guest(stack, start_backendd, tmp_path):
    be = start_backendd()
    image = _image(tmp_path)
    stack.xl_ok("create", str(disk_cfg(tmp_path, "dur", DURABLE, image)))
    wait_result(stack, "dur", "flushed")
    time.sleep(0.2)  # mid-I/O
    (pid,) = stack.launcher_guests().values()
    be.proc.send_signal(signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)
    be.proc.wait(5)
    assert image.read_bytes()[:65536] == b"A" * 65536


LOOPER = """
async def main(domain):
    async with BlockDevice.open(domain) as disk:
        i = 0
        while True:
            data = bytes([i % 251]) * 8192
            await disk.write_sectors(64 + (i % 32) * 16, data)
            assert await disk.read_sectors(64 + (i % 32) * 16, 16) == data
            i += 1
            if i % 50 == 0:
                report(done=i)
"""


def _progress(stack, name) -> int:
    return max([r["done"] for r in results(stack, name) if "done" in r], default=0)


def _maps_of(pid: int, domid: int) -> int:
    with open(f"/proc/{pid}/maps") as f:
        return sum(f"pvxen-dom{domid} " in line or line.rstrip().endswith(f"pvxen-dom{domid}")
                   for line in f)


@pytest.mark.parametrize("how", ["sigkill", "destroy"])
def test_guest_gone_mid_io_closes_its_device_only(stack, start_backendd, tmp_path, how):
    be = start_backendd()
    dirs = {}
    for name in ("victim", "other"):
        d = dirs[name] = tmp_path / name
        d.mkdir()
        stack.xl_ok("create", str(disk_cfg(d, name, LOOPER, _image(d))))
    for name in dirs:
        stack.wait(lambda n=name: _progress(stack, n) >= 50, f"{name} doing I/O")
    victim = stack.domid_of("victim")
    assert _maps_of(be.proc.pid, victim) > 0  # its ring and persistent grants
    if how == "sigkill":
        os.kill(stack.launcher_guests()[victim], signal.SIGKILL)
    else:
        stack.xl_ok("destroy", "victim")
    stack.wait(lambda: blk_stats(be.log(), victim), "the victim's device to disconnect")
    stack.wait(lambda: ["vbd", str(victim), "51712"] not in [s[:3] for s in be.status()],
               "the victim's device to go")
    assert _maps_of(be.proc.pid, victim) == 0  # every grant unmapped
    before = _progress(stack, "other")
    stack.wait(lambda: _progress(stack, "other") >= before + 100, "the other guest's I/O")
    assert be.alive and "Traceback" not in be.log()


def test_killed_backendd_restarted_resumes_the_guest_io(stack, start_backendd, tmp_path):
    """backendd SIGKILLed mid-I/O and started again picks the Connected
    device up from the store (ring re-mapped at the responses already
    given, port bound again): the guest's I/O carries on."""
    be = start_backendd()
    stack.xl_ok("create", str(disk_cfg(tmp_path, "loop", LOOPER, _image(tmp_path))))
    stack.wait(lambda: _progress(stack, "loop") >= 50, "the guest doing I/O")
    be.proc.send_signal(signal.SIGKILL)
    be.proc.wait(5)
    before = _progress(stack, "loop")
    be2 = start_backendd()
    stack.wait(lambda: "resumed Connected" in be2.log(), "the device resumed")
    stack.wait(lambda: _progress(stack, "loop") >= before + 100, "the guest's I/O again", timeout=20)
    assert "Traceback" not in be2.log()


WATCHER = """
async def main(domain):
    async with BlockDevice.open(domain) as disk:
        i = 0
        try:
            while True:
                await disk.write_sectors(64 + (i % 32) * 16, b"x" * 8192)
                i += 1
                if i % 50 == 0:
                    report(done=i)
        except BlockError as e:
            report(failed=[e.errno, str(e)])
    await trio.sleep_forever()
"""


def test_backendd_stopped_closes_the_device_and_the_guest_is_told(stack, start_backendd, tmp_path):
    be = start_backendd()
    stack.xl_ok("create", str(disk_cfg(tmp_path, "w", WATCHER, _image(tmp_path))))
    stack.wait(lambda: _progress(stack, "w") >= 50, "the guest doing I/O")
    assert be.stop() == 0  # SIGTERM: every device closed on the way out
    domid = stack.domid_of("w")
    assert stack.read(f"/local/domain/0/backend/vbd/{domid}/51712/state") == "6"
    err, msg = wait_result(stack, "w", "failed")["failed"]
    assert err == 5 and f"backend /local/domain/0/backend/vbd/{domid}/51712 is Clos" in msg, msg
    assert blk_stats(be.log(), domid) is not None  # disconnected: grants unmapped
