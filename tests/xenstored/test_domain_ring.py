"""A real domain talks to xenstored over its ring, through hypervisord.

dom0 (this test) builds a small domain by hand with hypercalls — memory,
an unbound store port, the XenStore home, XS_INTRODUCE — and starts the
domain's process (a forked child) with the descriptors ``connect_domain``
hands out. The child maps its own store page and uses the same xenstore
client dom0 uses, over the ring: its requests are unprivileged. When the
child exits, hypervisord destroys the domain, raises VIRQ_DOM_EXC, and
xenstored releases it.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import time

import pytest

from libxen import ctrl
from libxen.core import SyncXenCall
from hypervisord.public import memfile
from hypervisord.public.event_channel import EvtchnOp
from hypervisord.public.xen import PAGE_SIZE, Hypercall
from libxen.xenstore.sync import XsSyncClient

NR_PAGES = 16
STORE_GFN = NR_PAGES - 1


def _guest(fds: dict, domid: int, port: int, result_w: int, done_r: int, done_w: int) -> None:
    """The domain's process: xenbus over its ring, then report and exit."""
    os.close(done_w)  # the test's end: EOF on done_r means "you may go"
    import trio

    from libxen.core import XenCall
    from libxen.evtchn import XenEvtchn
    from frontends.xenbus import open_xenbus
    from libxen.xenstore.errors import XsError

    async def main() -> None:
        async with XenCall.from_fd(fds["hypercall"]) as xc, \
                XenEvtchn.open(xc, fds["evtchn"], memory_fd=fds["memory"]) as xe:
            m = mmap.mmap(fds["memory"], PAGE_SIZE, offset=memfile.gfn_offset(STORE_GFN))
            async with open_xenbus(xe, memoryview(m), port) as xs:
                await xs.write("data/hello", b"from the ring")
                value = await xs.read("data/hello")
                try:
                    await xs.read("/local/domain/0/secret")
                    denied = "read dom0's node"
                except XsError as e:
                    denied = e.name
                home = await xs.get_domain_path(domid)
                os.write(result_w, f"{value.decode()}|{denied}|{home}".encode())
                # Closing the hypercall connection is the domain's death: stay
                # alive until the test has looked at the store.
                os.read(done_r, 1)

    try:
        trio.run(main)
    except BaseException as e:  # report anything to the test
        os.write(result_w, f"error: {e!r}".encode())
    os._exit(0)


def _build(xc: SyncXenCall, xs: XsSyncClient) -> tuple[int, int]:
    _, r = ctrl.domain_create(xc)
    domid = r["domain"]
    ctrl.domain_max_mem(xc, domid, NR_PAGES * 4)
    assert ctrl.populate_physmap(xc, list(range(NR_PAGES)), domid)[0] == NR_PAGES
    _, r = xc.call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_alloc_unbound,
                   dom=domid, remote_dom=0)
    port = r["port"]
    home = f"/local/domain/{domid}"
    xs.write(home, b"")
    xs.set_perms(home, ["n0", f"r{domid}"])
    xs.write(f"{home}/data", b"")
    xs.set_perms(f"{home}/data", [f"b{domid}"])
    xs.write("/local/domain/0/secret", b"dom0 only")
    xs.request(8, f"{domid}\0{STORE_GFN}\0{port}\0".encode())  # XS_INTRODUCE
    return domid, port


def start_domain(xc: SyncXenCall, xs: XsSyncClient) -> tuple[int, int, dict]:
    """Build a domain and get its process's descriptors; it is left unpaused."""
    domid, port = _build(xc, xs)
    _, r = ctrl.connect_domain(xc, domid)
    ctrl.domain_unpause(xc, domid)
    return domid, port, r["fds"]


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.timeout(60)
def test_domain_uses_xenstore_over_its_ring(hypervisord, xenstored):
    xc = SyncXenCall(hypervisord.privcmd)
    xs = XsSyncClient.open(str(xenstored.socket))
    domid, port, fds = start_domain(xc, xs)

    result_r, result_w = os.pipe()
    done_r, done_w = os.pipe()
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_guest, args=(fds, domid, port, result_w, done_r, done_w))
    child.start()
    os.close(result_w)
    os.close(done_r)
    for fd in fds.values():
        os.close(fd)
    text = os.read(result_r, 4096).decode()
    assert text == f"from the ring|EACCES|/local/domain/{domid}", text

    # The node the guest wrote is in the store, owned by the guest.
    assert xs.read(f"/local/domain/{domid}/data/hello") == b"from the ring"
    assert xs.get_perms(f"/local/domain/{domid}/data/hello")[0] == f"b{domid}".encode()
    os.close(done_w)  # let the domain's process end
    child.join(20)

    # The child is gone: hypervisord destroyed the domain, xenstored released it
    # and removed the nodes the domain owned (XSA-419).
    def released() -> bool:
        return xs.request(17, f"{domid}\0".encode()) == b"F\0"  # IS_DOMAIN_INTRODUCED

    assert _wait_for(released), "xenstored did not release the dead domain"
    with pytest.raises(Exception):
        xs.read(f"/local/domain/{domid}/data/hello")
    assert xs.read("/local/domain/0/secret") == b"dom0 only"
    xs.close()
    xc.close()
