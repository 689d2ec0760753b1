"""Running guests across a restart of xenstored, and dom0 across one of hypervisord.

Daemon restarts as a user meets them: real daemons, guests made
with ``xl create``, a daemon killed with SIGKILL and started again.

* xenstored restarts: the new daemon re-attaches every live domain's ring
  from the introductions it kept (``IS_DOMAIN_INTRODUCED`` says T), the
  guest's xenbus client resets the ring and registers its watches again,
  so the demo counter keeps counting, a guest's watch fires again and
  ``xl shutdown -w`` completes.
* ``xl shutdown -w`` on a guest that ignores the request gives up after
  ``-t`` seconds with one line naming the domain.
* hypervisord dies: xenstored keeps serving dom0's socket, then attaches to
  the new hypervisord (a new boot: the store starts again), ``xl list`` and
  ``xl create`` work, and the saved config of a domain that died with the
  old hypervisord is gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hypervisord.public.io.xs_wire import XsdSockmsgType as T
from tests.toolstack.stack import stack, write_guest  # noqa: F401 - the fixture
from libxen.xenstore.sync import XsError, XsSyncClient

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

WATCHER = """
async def main(domain):
    xs = await domain.open_xenbus()
    home = f"/local/domain/{domain.domid}/data"
    async with xs.watch(f"{home}/ping") as events:
        async for _ in events:
            try:
                await xs.write(f"{home}/pong", await xs.read(f"{home}/ping"))
            except OSError:  # no ping yet, or a request lost with the old xenstored
                continue
"""

IGNORER = """
import trio

async def main(domain):
    await domain.open_xenbus()
    with trio.CancelScope(shield=True):  # deaf to the runtime's shutdown too
        await trio.sleep_forever()
"""


def _read(sock: Path, path: str) -> str | None:
    try:
        with XsSyncClient.open(str(sock)) as xs:
            return xs.read(path).decode()
    except (XsError, ConnectionError):
        return None


def _introduced(sock: Path, domid: int) -> bytes:
    with XsSyncClient.open(str(sock)) as xs:
        return xs.request(T.XS_IS_DOMAIN_INTRODUCED, f"{domid}\0".encode())


def _count(sock: Path, domid: int) -> int:
    value = _read(sock, f"/local/domain/{domid}/data/counter")
    return int(value) if value and value.isdigit() else 0


def _ping(stack, sock: Path, domid: int, value: str) -> None:
    with XsSyncClient.open(str(sock)) as xs:
        xs.write(f"/local/domain/{domid}/data/ping", value)
    stack.wait(lambda: _read(sock, f"/local/domain/{domid}/data/pong") == value,
               f"the guest's watch to answer ping {value}")


@pytest.mark.timeout(90)
def test_guests_keep_xenstore_across_a_xenstored_restart(stack, xenstored, tmp_path):
    sock = xenstored.socket
    stack.xl_ok("create", str(REPO / "examples" / "counter.cfg"), 'cmdline="interval=0.05"')
    stack.xl_ok("create", str(write_guest(tmp_path, "watcher", WATCHER)))
    counter, watcher = stack.domid_of("counter"), stack.domid_of("watcher")
    stack.wait(lambda: _count(sock, counter) >= 3, "the counter to count")
    _ping(stack, sock, watcher, "before")

    xenstored.kill()  # SIGKILL: no chance to say goodbye to anyone
    xenstored.start()

    for domid in (counter, watcher):
        assert _introduced(sock, domid) == b"T\0", xenstored.log()
    seen = _count(sock, counter)
    stack.wait(lambda: _count(sock, counter) >= seen + 5, "the counter to go on counting",
               timeout=20)
    _ping(stack, sock, watcher, "after")  # the watch was registered again, and fires

    started = time.monotonic()
    r = stack.xl("shutdown", "-w", "-t", "30", "counter")
    assert r.rc == 0, r.err + stack.logs()
    assert time.monotonic() - started < 30
    assert "counter" not in stack.xl_ok("list").out
    assert f"d{counter}: introduced before the restart" in xenstored.log()
    stack.xl_ok("destroy", "watcher")


@pytest.mark.timeout(60)
def test_shutdown_wait_gives_up_after_its_timeout(stack, xenstored, tmp_path):
    stack.xl_ok("create", str(write_guest(tmp_path, "deaf", IGNORER)))
    domid = stack.domid_of("deaf")
    stack.wait(lambda: _read(xenstored.socket,
                             f"/local/domain/{domid}/control/feature-poweroff") == "1",
               "the guest's PV control interface")
    started = time.monotonic()
    r = stack.xl("shutdown", "-w", "-t", "1.5", "deaf")
    elapsed = time.monotonic() - started
    assert r.rc == 1, (r.rc, r.err)
    last = r.err.strip().splitlines()[-1]
    assert last == (f"timed out after 1.5s waiting for domain deaf (id {domid}) to shut "
                    "down and be destroyed"), r.err
    assert 1.5 <= elapsed < 6, elapsed
    assert stack.xl("shutdown", "-w", "-t", "soon", "deaf").rc == 1
    stack.xl_ok("destroy", "deaf")


def _cli(xenstored, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], env=xenstored.client_env,
                          capture_output=True, text=True, timeout=20)


@pytest.mark.timeout(90)
@pytest.mark.skipif(not (BIN / "xenstore-read").exists(), reason="needs the console scripts")
def test_xenstored_serves_dom0_while_hypervisord_is_away(stack, hypervisord, xenstored, tmp_path):
    stack.xl_ok("create", str(write_guest(tmp_path, "first", "async def main(domain):\n"
                                          "    await domain.wait_for_shutdown()\n")))
    stack.xl_ok("create", str(write_guest(tmp_path, "second", "async def main(domain):\n"
                                          "    await domain.wait_for_shutdown()\n")))
    second = stack.domid_of("second")
    userdata = stack.xl_dir / "userdata"
    assert (userdata / f"d.{second}.libxl-json").exists()

    hypervisord.kill()
    time.sleep(0.5)
    assert xenstored.alive, xenstored.log()
    w = _cli(xenstored, "xenstore-write", "/tool/while-away", "still here")
    assert w.returncode == 0, w.stderr
    r = _cli(xenstored, "xenstore-read", "/tool/while-away")
    assert (r.returncode, r.stdout) == (0, "still here\n"), r.stderr
    assert xenstored.log().count("hypervisord went away") == 1, xenstored.log()

    hypervisord.start()
    stack.wait(lambda: xenstored.log().count("attached to hypervisord") == 2,
               "xenstored to attach to the new hypervisord")
    assert "a new boot" in xenstored.log()
    assert _read(xenstored.socket, "/tool/while-away") is None  # the store starts again
    assert xenstored.alive
    listing = stack.xl_ok("list").out
    assert "Domain-0" in listing and "second" not in listing
    stack.xl_ok("create", str(write_guest(tmp_path, "third", "async def main(domain):\n"
                                          "    await domain.wait_for_shutdown()\n")))
    third = stack.domid_of("third")
    assert third != second
    stale = {p.name for p in userdata.iterdir()} - {f"d.{third}.libxl-json"}
    assert not stale, stale
    stack.xl_ok("destroy", "third")


@pytest.mark.timeout(90)
def test_a_request_half_read_by_the_dead_xenstored_does_not_wedge_the_ring(
        stack, hypervisord, xenstored):
    """The dead daemon had consumed 5 bytes of the guest's request: the new
    one must not parse from there (it would see garbage and cut the guest
    off); the ring is reset on a packet boundary and the guest goes on."""
    import mmap
    import struct

    from libxen import ctrl
    from libxen.core import SyncXenCall
    from hypervisord.public import memfile
    from hypervisord.public.io.xs_wire import XS_RING_REQ_CONS_OFF, XS_RING_REQ_PROD_OFF
    from hypervisord.public.xen import PAGE_SIZE

    sock = xenstored.socket
    stack.xl_ok("create", str(REPO / "examples" / "counter.cfg"), 'cmdline="interval=0.05"')
    counter = stack.domid_of("counter")
    stack.wait(lambda: _count(sock, counter) >= 3, "the counter to count")
    gfn = int(_read(sock, f"/local/domain/{counter}/store/ring-ref"))
    u32 = struct.Struct("<I")
    with SyncXenCall(hypervisord.privcmd) as xc:
        _, r = ctrl.map_foreign(xc, counter, [gfn])
        fd = r["fds"]["memory"]
        page = mmap.mmap(fd, PAGE_SIZE, offset=memfile.gfn_offset(gfn))
        os.close(fd)
    try:
        xenstored.kill()
        # the counter's next write waits, unread, on the ring
        stack.wait(lambda: u32.unpack_from(page, XS_RING_REQ_PROD_OFF)[0]
                   - u32.unpack_from(page, XS_RING_REQ_CONS_OFF)[0] >= 16,
                   "a request on the ring")
        cons = u32.unpack_from(page, XS_RING_REQ_CONS_OFF)[0]
        u32.pack_into(page, XS_RING_REQ_CONS_OFF, cons + 5)  # "read" mid-header
    finally:
        page.close()
    xenstored.start()
    seen = _count(sock, counter)
    stack.wait(lambda: _count(sock, counter) >= seen + 5, "the counter to go on counting",
               timeout=20)
    assert "protocol error" not in xenstored.log()
    r = stack.xl("shutdown", "-w", "-t", "30", "counter")
    assert r.rc == 0, r.err + stack.logs()


@pytest.mark.timeout(60)
def test_a_domain_that_died_while_xenstored_was_down_is_released(stack, xenstored):
    import signal

    sock = xenstored.socket
    stack.xl_ok("create", str(REPO / "examples" / "counter.cfg"), 'cmdline="interval=0.05"')
    counter = stack.domid_of("counter")
    stack.wait(lambda: _count(sock, counter) >= 1, "the counter to count")
    pid = stack.launcher_guests()[counter]
    xenstored.kill()
    os.kill(pid, signal.SIGKILL)  # the domain dies with its process
    stack.wait(lambda: counter not in stack.domids(), "the domain to be destroyed")
    xenstored.start()
    assert _introduced(sock, counter) == b"F\0"
    assert f"d{counter}: gone, releasing it" in xenstored.log()
    assert f"d{counter}: introduced before the restart" not in xenstored.log()


@pytest.mark.timeout(60)
def test_xenstored_started_first_attaches_when_hypervisord_comes(xenstored, tmp_path):
    from tests.framework.daemons import Hypervisord

    assert "no hypervisord at" in xenstored.log()
    h = Hypervisord(tmp_path).start()
    try:
        deadline = time.monotonic() + 10
        while "attached to hypervisord" not in xenstored.log():
            assert time.monotonic() < deadline, xenstored.log()
            time.sleep(0.05)
        with XsSyncClient.open(str(xenstored.socket)) as xs:
            xs.write("/tool/x", "y")
        assert _read(xenstored.socket, "/tool/x") == "y" and xenstored.alive
    finally:
        h.kill()
