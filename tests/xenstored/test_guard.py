"""A bug costs one connection, whatever carries it.

The daemon under test is the real xenstored started through
``tests.xenstored.faulty_xenstored``, which makes one handler raise for a
READ of a trigger path (a test hook outside the daemon's code). Over the
socket the failing client's connection is closed; over a domain's ring the
domain's connection is ignored until the domain is released, as cxenstored
does with a misbehaving domain (``ignore_connection`` in
``tools/xenstored/domain.c``). Everyone else is served on.
"""

from __future__ import annotations

import os
import time

import pytest

from libxen.core import SyncXenCall
from tests.framework.daemons import Xenstored
from tests.xenstored.conftest import ev
from tests.xenstored.faulty_xenstored import TRIGGER
from tests.xenstored.rawclient import XS_READ, RawClient, nul
from tests.xenstored.rawring import HEADER, RawRing, run_ring_guest
from tests.xenstored.test_domain_ring import STORE_GFN
from libxen.xenstore.sync import XsSyncClient

pytestmark = pytest.mark.timeout(60)
XS_WRITE = 11
XS_IS_DOMAIN_INTRODUCED = 17


class FaultyXenstored(Xenstored):
    def __init__(self, workdir, extra=None):
        super().__init__(workdir, extra)
        self.argv[0] = "tests.xenstored.faulty_xenstored"


@pytest.fixture
def faulty_xenstored(tmp_path):
    """Attached to ``hypervisord`` when a test requests that fixture first."""
    from tests.conftest import _daemon

    yield from _daemon(FaultyXenstored, tmp_path)


def test_a_handler_bug_closes_only_that_socket_connection(faulty_xenstored):
    xs = faulty_xenstored
    with RawClient(xs.socket) as watcher, RawClient(xs.socket) as writer, \
            RawClient(xs.socket) as victim:
        watcher.watch("/w", "tok")
        assert ev(watcher) == (b"/w", b"tok")  # the initial event
        victim.write("/before", "1")
        victim.send_msg(XS_READ, nul("/" + TRIGGER.decode()))
        assert victim.is_closed(timeout=5), "the failing connection was not closed"
        log = xs.log()
        assert "ERROR conn" in log and "internal error, connection closed" in log, log
        assert "Traceback" in log and "RuntimeError: test hook" in log, log
        # nobody else noticed: watches, writes, new connections
        writer.write("/w", "after")
        assert ev(watcher) == (b"/w", b"tok")
        assert writer.read("/before") == b"1"
        with RawClient(xs.socket) as fresh:
            assert fresh.alive()
    assert xs.alive


def _guest(fds: dict, port: int, mode: str, result_w: int) -> None:
    """A domain's process speaking raw XenStore on its ring.

    ``bug``: a write (answered), then the READ that makes the handler raise,
    then an honest READ: neither may be answered, the connection is
    ignored. ``honest``: a write and a read, both answered.
    """
    import trio

    from libxen.core import XenCall
    from libxen.evtchn import XenEvtchn

    ring = RawRing(fds["memory"], STORE_GFN)

    async def call(xe, data: bytes, seconds: float) -> bytes:
        ring.put_request(data)
        await xe.notify(port)
        got = b""
        with trio.move_on_after(seconds):
            while len(got) < HEADER.size or len(got) < HEADER.size + HEADER.unpack_from(got)[3]:
                got += ring.take_response()
                await trio.sleep(0.01)
        return got

    async def main() -> None:
        async with XenCall.from_fd(fds["hypercall"]) as xc, \
                XenEvtchn.open(xc, fds["evtchn"], memory_fd=fds["memory"]) as xe:
            results = [await call(xe, HEADER.pack(XS_WRITE, 1, 0, 7) + b"data/x\0", 5.0)]
            if mode == "bug":
                trigger = TRIGGER + b"\0"
                results.append(await call(
                    xe, HEADER.pack(XS_READ, 2, 0, len(trigger)) + trigger, 2.0))
            results.append(await call(xe, HEADER.pack(XS_READ, 3, 0, 7) + b"data/x\0", 1.0))
            os.write(result_w, repr(results).encode())
            await trio.sleep(30)  # stay alive: the test looks at the store meanwhile

    try:
        trio.run(main)
    except BaseException as e:
        os.write(result_w, f"error: {e!r}".encode())
    os._exit(0)


def _run_guest(xc, xs, mode: str):
    return run_ring_guest(xc, xs, _guest, mode)


def _introduced(xs: XsSyncClient, domid: int) -> bool:
    return xs.request(XS_IS_DOMAIN_INTRODUCED, f"{domid}\0".encode()) == b"T\0"


def test_a_handler_bug_on_a_ring_ignores_only_that_domain(hypervisord, faulty_xenstored):
    xc = SyncXenCall(hypervisord.privcmd)
    xs = XsSyncClient.open(str(faulty_xenstored.socket))
    children = []
    try:
        bad, child, results = _run_guest(xc, xs, "bug")
        children.append(child)
        wrote, failed, after = results
        assert wrote == HEADER.pack(XS_WRITE, 1, 0, 3) + b"OK\0"
        assert (failed, after) == (b"", b""), "the domain's connection must be ignored"
        assert faulty_xenstored.alive, "a handler bug on a ring stopped xenstored"
        log = faulty_xenstored.log()
        assert f"ERROR d{bad}-ring: internal error, the domain's connection is ignored" in log
        assert "RuntimeError: test hook" in log, log
        # ignored, not released: the domain is still there (cxenstored keeps it so
        # that @releaseDomain fires when it really goes)
        assert _introduced(xs, bad)
        assert xs.read(f"/local/domain/{bad}/data/x") == b""
        # dom0 and another domain are served on
        xs.write("/local/domain/0/after", b"yes")
        assert xs.read("/local/domain/0/after") == b"yes"
        good, child, results = _run_guest(xc, xs, "honest")
        children.append(child)
        assert results == [HEADER.pack(XS_WRITE, 1, 0, 3) + b"OK\0",
                           HEADER.pack(XS_READ, 3, 0, 0)], results
        assert xs.read(f"/local/domain/{good}/data/x") == b""
    finally:
        for c in children:
            c.kill()
            c.join(10)
    deadline = time.monotonic() + 10
    while _introduced(xs, bad) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _introduced(xs, bad), "the ignored domain was not released when it died"
    assert faulty_xenstored.alive
    xs.close()
    xc.close()
