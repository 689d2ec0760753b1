"""Event channels against the real hypervisord, with domUs as real processes.

The test process is dom0 (the toolstack and a dom0 daemon: it attaches
and receives on its own event-channel stream); each domU is a child
process (:mod:`tests.hypervisord.evtchn_agent`) holding only the
descriptors ``connect_domain`` gave it.
"""

from __future__ import annotations

import random
from contextlib import asynccontextmanager

import pytest
import trio

from libxen import ctrl
from libxen.core import XenCall, XenError
from libxen.evtchn import XenEvtchn
from hypervisord.public.errno import XenErrno as E
from hypervisord.public.event_channel import EvtchnOp as Op, EvtchnStat as S
from hypervisord.public.xen import DOMID_SELF, Virq
from tests.hypervisord.evtchn_guest import Guest

pytestmark = pytest.mark.timeout(60)
EINVAL = -int(E.XEN_EINVAL)


@asynccontextmanager
async def dom0(hypervisord):
    async with XenCall.open(hypervisord.privcmd) as xc, XenEvtchn.attach(xc) as xe:
        yield xc, xe


@asynccontextmanager
async def guests(xc, n: int):
    started: list[Guest] = []
    try:
        for _ in range(n):
            started.append(await Guest.start(xc))
        yield started
    finally:
        for g in started:
            await g.aclose()


async def channel(a: Guest, b: Guest) -> tuple[int, int]:
    rc, r = await a.call(Op.EVTCHNOP_alloc_unbound, dom=DOMID_SELF, remote_dom=b.domid)
    assert rc == 0
    rc, r2 = await b.call(Op.EVTCHNOP_bind_interdomain, remote_dom=a.domid,
                          remote_port=r["port"])
    assert rc == 0
    return r["port"], r2["local_port"]


async def fired(xe: XenEvtchn, port: int, timeout: float = 5) -> bool:
    with trio.move_on_after(timeout):
        await xe.wait_port(port)
        return True
    return False


async def test_two_domus_send_status_close(hypervisord):
    async with dom0(hypervisord) as (xc, xe), guests(xc, 2) as (a, b):
        pa, pb = await channel(a, b)
        await a.cmd("listen")
        await b.cmd("listen")
        assert (await b.cmd("wait_port", port=pb))["fired"]  # bind sets it pending (Xen)
        assert await b.call(Op.EVTCHNOP_send, port=pb) == (0, {})
        assert (await a.cmd("wait_port", port=pa))["fired"]
        st = await xe.status(pa, dom=a.domid)
        assert (st.status, st.dom, st.port) == (S.EVTCHNSTAT_interdomain, b.domid, pb)
        assert await a.call(Op.EVTCHNOP_close, port=pa) == (0, {})
        assert (await b.cmd("wait_port", port=pb))["fired"]  # the peer is told ...
        rc, r = await b.call(Op.EVTCHNOP_status, dom=DOMID_SELF, port=pb)
        assert r == {"status": S.EVTCHNSTAT_unbound, "vcpu": 0, "u": {"unbound": {"dom": a.domid}}}
        assert (await a.call(Op.EVTCHNOP_send, port=pa))[0] == EINVAL  # ... closed here


async def test_dom0_and_domu_both_ways(hypervisord):
    async with dom0(hypervisord) as (xc, xe), guests(xc, 1) as (a,):
        p0 = await xe.bind_unbound_port(a.domid)
        rc, r = await a.call(Op.EVTCHNOP_bind_interdomain, remote_dom=0, remote_port=p0)
        pa = r["local_port"]
        await a.cmd("listen")
        await a.call(Op.EVTCHNOP_send, port=pa)
        assert await fired(xe, p0)
        await a.cmd("wait_port", port=pa, timeout=1)  # consume the bind's event
        for _ in range(3):
            await xe.notify(p0)
            assert (await a.cmd("wait_port", port=pa))["fired"]
        await xe.unbind(p0)
        rc, r = await a.call(Op.EVTCHNOP_status, dom=DOMID_SELF, port=pa)
        assert r["status"] == S.EVTCHNSTAT_unbound and r["u"]["unbound"]["dom"] == 0


async def test_sends_before_the_receiver_looks_coalesce(hypervisord):
    async with dom0(hypervisord) as (xc, xe), guests(xc, 2) as (a, b):
        pa, pb = await channel(a, b)
        assert (await b.cmd("sends", port=pb, n=1000))["rcs"] == {"0": 1000}
        await a.cmd("listen")  # now a looks: one notification for 1000 sends
        counts = await a.cmd("counts")
        assert counts["received"] == 1 and counts["events"] == {str(pa): 1}
        await b.cmd("sends", port=pb, n=1)  # a cleared the bit: notified again
        counts = await a.cmd("counts")
        assert counts["received"] == 2 and counts["events"] == {str(pa): 2}
        bits = await a.cmd("bits", port=pa)
        assert bits == {"pending": False, "masked": False}


async def test_masked_port_is_delivered_on_unmask(hypervisord):
    async with dom0(hypervisord) as (xc, xe), guests(xc, 2) as (a, b):
        pa, pb = await channel(a, b)
        await a.cmd("listen")
        assert (await a.cmd("mask", port=pa)) == {"was": False}
        await b.cmd("sends", port=pb, n=10)
        counts = await a.cmd("counts")
        assert counts["received"] == 0
        assert (await a.cmd("bits", port=pa)) == {"pending": True, "masked": True}
        assert await a.call(Op.EVTCHNOP_unmask, port=pa) == (0, {})
        counts = await a.cmd("counts")
        assert counts["received"] == 1 and counts["events"] == {str(pa): 1}


async def test_hostile_domu(hypervisord):
    async with dom0(hypervisord) as (xc, xe), guests(xc, 3) as (a, b, c):
        pa, pb = await channel(a, b)
        offered_to_b = (await a.call(Op.EVTCHNOP_alloc_unbound, dom=DOMID_SELF,
                                     remote_dom=b.domid))[1]["port"]
        # c binds ports not offered to it: the bound one and the one for b
        for port in (pa, offered_to_b):
            rc, _ = await c.call(Op.EVTCHNOP_bind_interdomain, remote_dom=a.domid,
                                 remote_port=port)
            assert rc == EINVAL
        # c sends/closes on ports it does not own (b's number means nothing in c)
        assert (await c.call(Op.EVTCHNOP_send, port=pb))[0] == EINVAL
        assert (await c.call(Op.EVTCHNOP_close, port=pb))[0] == EINVAL
        # dom0's table and global VIRQs are out of reach
        assert (await c.call(Op.EVTCHNOP_alloc_unbound, dom=0, remote_dom=c.domid))[0] == \
            -int(E.XEN_EPERM)
        assert (await c.call(Op.EVTCHNOP_bind_virq, virq=Virq.VIRQ_DOM_EXC, vcpu=0))[0] == \
            -int(E.XEN_EBUSY)
        # every op on sampled port numbers: a clean errno, never a crash
        rng = random.Random(3)
        ports = [0, 1023, 1024, 1025, 4095, 4096, 2**31, 2**32 - 1]
        ports += [rng.randrange(2**32) for _ in range(24)]
        for port in ports:
            for op, args in ((Op.EVTCHNOP_send, {"port": port}),
                             (Op.EVTCHNOP_close, {"port": port}),
                             (Op.EVTCHNOP_unmask, {"port": port}),
                             (Op.EVTCHNOP_status, {"dom": DOMID_SELF, "port": port}),
                             (Op.EVTCHNOP_bind_vcpu, {"port": port, "vcpu": 0}),
                             (Op.EVTCHNOP_bind_interdomain,
                              {"remote_dom": a.domid, "remote_port": port})):
                rc, _ = await c.call(op, **args)
                assert rc <= 0
                if port > 1024 or op in (Op.EVTCHNOP_send, Op.EVTCHNOP_close):
                    assert rc == EINVAL, (op, port)
        # nobody else was harmed: a and b still talk
        await a.cmd("listen")
        await b.call(Op.EVTCHNOP_send, port=pb)
        assert (await a.cmd("wait_port", port=pa))["fired"]
        assert (await xe.status(pb, dom=b.domid)).status == S.EVTCHNSTAT_interdomain


async def test_port_limit_is_enospc(hypervisord):
    async with dom0(hypervisord) as (xc, xe):
        _, r = await ctrl.domain_create(xc)
        domid = r["domain"]
        ports = [await xe.bind_unbound_port(0, dom=domid) for _ in range(1024)]
        assert ports == list(range(1, 1025))  # max_ports = 1024; port 0 reserved
        with pytest.raises(XenError) as exc:
            await xe.bind_unbound_port(0, dom=domid)
        assert exc.value.rc == -int(E.XEN_ENOSPC)
        await ctrl.domain_destroy(xc, domid)


async def test_sigkilled_domu_peers_see_closed_ports_and_dom_exc(hypervisord):
    async with dom0(hypervisord) as (xc, xe), guests(xc, 1) as (a,):
        virq = await xe.bind_virq(Virq.VIRQ_DOM_EXC)
        p0 = await xe.bind_unbound_port(a.domid)
        rc, r = await a.call(Op.EVTCHNOP_bind_interdomain, remote_dom=0, remote_port=p0)
        assert rc == 0
        await a.cmd("listen")
        a.kill()
        assert await fired(xe, p0) and await fired(xe, virq)
        st = await xe.status(p0)
        assert (st.status, st.dom) == (S.EVTCHNSTAT_unbound, a.domid)
        with pytest.raises(XenError):
            await ctrl.domain_getinfo(xc, a.domid)
        with pytest.raises(XenError):
            await xe.status(r["local_port"], dom=a.domid)


async def test_dom_exc_on_destroydomain(hypervisord):
    async with dom0(hypervisord) as (xc, xe):
        virq = await xe.bind_virq(Virq.VIRQ_DOM_EXC)
        with pytest.raises(XenError) as exc:
            await xe.bind_virq(Virq.VIRQ_DOM_EXC)  # twice: EEXIST
        assert exc.value.rc == -int(E.XEN_EEXIST)
        _, r = await ctrl.domain_create(xc)
        await ctrl.domain_destroy(xc, r["domain"])
        assert await fired(xe, virq)


async def test_a_dom0_process_going_away_closes_its_ports(hypervisord):
    async with dom0(hypervisord) as (xc, xe), guests(xc, 1) as (a,):
        pa = (await a.call(Op.EVTCHNOP_alloc_unbound, dom=DOMID_SELF, remote_dom=0))[1]["port"]
        async with XenCall.open(hypervisord.privcmd) as xc2, XenEvtchn.attach(xc2) as xe2:
            p2 = await xe2.bind_interdomain(a.domid, pa)
            assert (await xe.status(p2)).status == S.EVTCHNSTAT_interdomain
            await a.cmd("listen")
            await a.call(Op.EVTCHNOP_send, port=pa)
            assert await fired(xe2, p2)  # the process that bound it hears it
        with trio.fail_after(5):
            while (await xe.status(p2)).status != S.EVTCHNSTAT_closed:
                await trio.sleep(0.01)
        assert (await xe.status(pa, dom=a.domid)).status == S.EVTCHNSTAT_unbound


async def test_hundred_domains_leak_no_ports(hypervisord):
    async with dom0(hypervisord) as (xc, xe):
        first = await xe.bind_unbound_port(0)
        await xe.unbind(first)
        for _ in range(100):
            _, r = await ctrl.domain_create(xc)
            domid = r["domain"]
            mine = []
            for _ in range(3):
                pu = await xe.bind_unbound_port(0, dom=domid)
                mine.append(await xe.bind_interdomain(domid, pu))
            await ctrl.domain_destroy(xc, domid)
            for p in mine:
                st = await xe.status(p)
                assert (st.status, st.dom) == (S.EVTCHNSTAT_unbound, domid)
                await xe.unbind(p)
        for p in range(1, 16):
            assert (await xe.status(p)).status == S.EVTCHNSTAT_closed
        assert await xe.bind_unbound_port(0) == first  # lowest free port again
