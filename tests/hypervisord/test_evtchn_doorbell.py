"""Doorbells: sends on a bound interdomain channel without a hypercall.

hypervisord hands each end's process a SOCK_SEQPACKET end at
bind_interdomain (pvxen.EVTCHN_NOTIFY_DOORBELL on the event stream). The
semantics stay Xen's: rings coalesce, a masked port is left pending and
delivered on unmask, and once a side closes the channel the other falls
back to EVTCHNOP_send (hypervisord), which knows the port is unbound.
"""

from __future__ import annotations

import pytest
import trio

from libxen.core import XenCall
from libxen.evtchn import XenEvtchn
from hypervisord.public.event_channel import EvtchnStat

pytestmark = pytest.mark.timeout(30)


async def _doorbells_for(xe: XenEvtchn, *ports: int) -> None:
    with trio.fail_after(5):
        while not all(p in xe._doorbells for p in ports):
            await trio.sleep(0.005)


async def test_loopback_channel_rings_without_hypercalls(hypervisord):
    async with XenCall.open(hypervisord.privcmd) as xc, XenEvtchn.attach(xc) as xe:
        pa = await xe.bind_unbound_port(0)
        pb = await xe.bind_interdomain(0, pa)
        with trio.fail_after(5):
            await xe.wait_port(pb)  # Xen makes a freshly bound port pending
        await _doorbells_for(xe, pa, pb)

        sent_before = xc._ids  # the request counter: doorbell rings make no request
        first = next(sent_before)
        for _ in range(3):
            await xe.notify(pa)
            with trio.fail_after(5):
                await xe.wait_port(pb)
            await xe.notify(pb)
            with trio.fail_after(5):
                await xe.wait_port(pa)
        assert next(xc._ids) == first + 1  # no hypercall was made for the six sends

        # Many rings before the receiver looks: they coalesce into one event.
        for _ in range(500):
            await xe.notify(pa)
        with trio.fail_after(5):
            await xe.wait_port(pb)
        with trio.move_on_after(0.2) as idle:
            await xe.wait_port(pb)
        assert idle.cancelled_caught

        # Masked: the ring leaves the port pending; unmask delivers it.
        xe.mask(pb)
        await xe.notify(pa)
        with trio.fail_after(5):
            while not xe.bits.is_pending(pb):
                await trio.sleep(0.005)
        await xe.unmask(pb)
        with trio.fail_after(5):
            await xe.wait_port(pb)

        # One side closes: the other's doorbell goes, sends go to hypervisord.
        await xe.unbind(pb)
        with trio.fail_after(5):
            while pa in xe._doorbells:
                await xe.notify(pa)
                await trio.sleep(0.005)
        await xe.notify(pa)  # unbound now: dropped by hypervisord, as in Xen
        assert (await xe.status(pa)).status == EvtchnStat.EVTCHNSTAT_unbound
