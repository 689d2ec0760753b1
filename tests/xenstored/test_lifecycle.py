"""A guest killed mid-traffic is cleaned up and harms nobody.

The guest (a forked domain process) has an event channel to dom0 that it
keeps busy, a page granted to dom0 which dom0 maps, and its xenstore ring.
SIGKILL of the process must leave: dom0's port seeing the channel closed,
dom0's grant mapping revoked, the domain's memory back in the free pool,
``@releaseDomain`` fired to a dom0 watcher, and the domain's nodes gone.
"""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest
import trio

from libxen import ctrl
from libxen.core import SyncXenCall, XenCall
from libxen.evtchn import XenEvtchn
from libxen.gnttab import GrantMapper
from hypervisord.public.event_channel import EvtchnStat
from hypervisord.public.grant_table import GntSt
from tests.xenstored.test_domain_ring import start_domain
from libxen.xenstore.aio import XsClient
from libxen.xenstore.sync import XsSyncClient

SHARED_GFN = 3
GREF = 8


def _guest(fds: dict, port: int, dom0_port_r: int, ready_w: int) -> None:
    """Grant a page to dom0, bind to dom0's port, then ping it forever."""
    from libxen.gnttab import GrantTable

    async def main() -> None:
        async with XenCall.from_fd(fds["hypercall"]) as xc, \
                XenEvtchn.open(xc, fds["evtchn"], memory_fd=fds["memory"]) as xe:
            table = await GrantTable.open(xc, fds["memory"])
            table.grant_access_ref(GREF, 0, SHARED_GFN)
            dom0_port = int(os.read(dom0_port_r, 32))
            local = await xe.bind_interdomain(0, dom0_port)
            os.write(ready_w, b"%d" % local)
            while True:  # mid-traffic: keep dom0's port busy until killed
                await xe.notify(local)
                await trio.sleep(0.001)

    trio.run(main)


@pytest.mark.timeout(60)
def test_sigkill_mid_traffic_cleans_up(hypervisord, xenstored):
    xc_sync = SyncXenCall(hypervisord.privcmd)
    xs_sync = XsSyncClient.open(str(xenstored.socket))
    free_before = ctrl.physinfo(xc_sync)[1]["free_pages"]
    domid, port, fds = start_domain(xc_sync, xs_sync)
    # The domain's process is forked before this process runs trio.
    port_r, port_w = os.pipe()
    ready_r, ready_w = os.pipe()
    child = multiprocessing.get_context("fork").Process(
        target=_guest, args=(fds, port, port_r, ready_w))
    child.start()
    for fd in (*fds.values(), port_r, ready_w):
        os.close(fd)
    trio.run(_dom0_side, hypervisord, xenstored, xc_sync, domid, child, port_w, ready_r)
    assert ctrl.physinfo(xc_sync)[1]["free_pages"] == free_before
    xc_sync.close()
    xs_sync.close()


async def _dom0_side(hypervisord, xenstored, xc_sync, domid, child, port_w, ready_r) -> None:
    async with XenCall.open(hypervisord.privcmd) as xc, XenEvtchn.attach(xc) as xe, \
            await XsClient.open(str(xenstored.socket)) as xs:
        async with xs.watch("@releaseDomain") as releases:
            await releases.__anext__()  # the initial event
            dom0_port = await xe.bind_unbound_port(domid)
            os.write(port_w, b"%d" % dom0_port)
            assert await trio.to_thread.run_sync(os.read, ready_r, 32), "guest failed"

            mapping = await GrantMapper(xc).map(domid, GREF)
            mapping.view[:5] = b"hello"
            await xe.wait_port(dom0_port)  # traffic is flowing
            status = await xe.status(dom0_port)
            assert status.status == EvtchnStat.EVTCHNSTAT_interdomain

            os.kill(child.pid, signal.SIGKILL)
            await trio.to_thread.run_sync(child.join, 10)

            with trio.fail_after(10):
                path, _ = await releases.__anext__()
            assert path == "@releaseDomain"

            # The channel: dom0's end is back to unbound (peers see the close).
            with trio.fail_after(5):
                while (await xe.status(dom0_port)).status == EvtchnStat.EVTCHNSTAT_interdomain:
                    await trio.sleep(0.02)
            assert (await xe.status(dom0_port)).status == EvtchnStat.EVTCHNSTAT_unbound
            # The grant: the mapping was revoked, a new one is refused.
            assert await GrantMapper(xc).unmap_handle(mapping.handle) == GntSt.GNTST_okay
            mapping.view.release()
            mapping._mm.close()
            with pytest.raises(Exception):
                await GrantMapper(xc).map(domid, GREF)
            # The domain and its nodes are gone.
            with pytest.raises(OSError):
                await ctrl.domain_getinfo(xc, domid)
            with trio.fail_after(10):
                while await xs.is_domain_introduced(domid):
                    await trio.sleep(0.05)
            with pytest.raises(Exception):
                await xs.read(f"/local/domain/{domid}/data")
