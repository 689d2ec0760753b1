"""EVTCHNOP_* through the real dispatcher and Hypervisor, in-process (no sockets).

Notifications are recorded instead of written to a stream, so delivery
rules (0 -> 1 only, masks, teardown, VIRQs) are checked exactly.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from hypervisord import evtchn
from hypervisord.hv import HvConfig, Hypervisor
from hypervisord.hypercall import Caller, Dispatcher
from hypervisord.public.errno import XenErrno as E
from hypervisord.public.event_channel import EvtchnOp as Op, EvtchnStat as S
from hypervisord.public.xen import DOMID_SELF, Hypercall, Virq

pytestmark = pytest.mark.timeout(60)


class FakeServer:
    def __init__(self) -> None:
        self.conn_closed_hooks: list = []


class Conn:
    """What evtchn needs of a server connection: its domain instance."""

    def __init__(self, name: str, domain) -> None:
        self.name = name
        self.domain = domain
        self.domid = domain.domid

    def __repr__(self) -> str:
        return self.name


class World:
    def __init__(self, max_ports: int = 16) -> None:
        self.hv = Hypervisor(HvConfig(memory_bytes=64 << 20, max_ports=max_ports))
        self.notes: list[tuple[Conn, int]] = []
        self.hv.notify = lambda conn, port: self.notes.append((conn, port))
        self.server = FakeServer()
        self.disp = Dispatcher(self.hv, [evtchn.HANDLERS])
        evtchn.install(self.hv, self.server)
        self.dom0 = Caller(0, True, Conn("dom0", self.hv.dom0))

    def domu(self) -> Caller:
        dom = self.hv.create_domain(None, None, 16)
        conn = Conn(f"d{dom.domid}", dom)
        dom.conns.append(conn)
        return Caller(dom.domid, False, conn)

    def call(self, caller: Caller, op: Op, **args) -> tuple[int, dict]:
        rc, r = self.disp.call(caller, Hypercall.event_channel_op, op, args)
        return rc, r or {}

    def ok(self, caller: Caller, op: Op, **args) -> dict:
        rc, r = self.call(caller, op, **args)
        assert rc == 0, (op, args, r)
        return r

    def channel(self, a: Caller, b: Caller) -> tuple[int, int]:
        pa = self.ok(a, Op.EVTCHNOP_alloc_unbound, dom=DOMID_SELF, remote_dom=b.domid)["port"]
        pb = self.ok(b, Op.EVTCHNOP_bind_interdomain, remote_dom=a.domid,
                     remote_port=pa)["local_port"]
        return pa, pb

    def clear(self, caller: Caller, port: int) -> bool:
        return self.hv.domain(caller.domid).evtchn.bits.clear_pending(port)


@pytest.fixture
def w():
    return World()


def test_send_notifies_on_0_to_1_only(w):
    a, b = w.domu(), w.domu()
    pa, pb = w.channel(a, b)
    assert w.notes == [(b.conn, pb)]  # bind makes the local port pending (Xen)
    w.notes.clear()
    for _ in range(1000):
        w.ok(b, Op.EVTCHNOP_send, port=pb)
    assert w.notes == [(a.conn, pa)]  # 1000 sends, one notification
    assert w.clear(a, pa)
    w.ok(b, Op.EVTCHNOP_send, port=pb)
    assert w.notes == [(a.conn, pa)] * 2  # after the clear: notified again


def test_masked_port_delivers_on_unmask(w):
    a, b = w.domu(), w.domu()
    pa, pb = w.channel(a, b)
    w.notes.clear()
    bits = w.hv.domain(a.domid).evtchn.bits
    bits.mask(pa)
    w.ok(b, Op.EVTCHNOP_send, port=pb)
    assert w.notes == []
    w.ok(a, Op.EVTCHNOP_unmask, port=pa)
    assert w.notes == [(a.conn, pa)]
    w.ok(a, Op.EVTCHNOP_unmask, port=pa)  # not masked any more: nothing new
    assert w.notes == [(a.conn, pa)]


def test_status_both_sides_and_close(w):
    a, b = w.domu(), w.domu()
    pa, pb = w.channel(a, b)
    assert w.ok(a, Op.EVTCHNOP_status, dom=DOMID_SELF, port=pa) == {
        "status": S.EVTCHNSTAT_interdomain, "vcpu": 0,
        "u": {"interdomain": {"dom": b.domid, "port": pb}}}
    assert w.ok(w.dom0, Op.EVTCHNOP_status, dom=b.domid, port=pb)["u"] == {
        "interdomain": {"dom": a.domid, "port": pa}}
    assert w.clear(a, pa) is False and w.clear(b, pb) is True
    w.notes.clear()
    w.ok(b, Op.EVTCHNOP_close, port=pb)
    assert w.ok(a, Op.EVTCHNOP_status, port=pa) == {
        "status": S.EVTCHNSTAT_unbound, "vcpu": 0, "u": {"unbound": {"dom": b.domid}}}
    assert w.notes == [(a.conn, pa)]  # the peer is told
    assert w.ok(b, Op.EVTCHNOP_status, port=pb)["status"] == S.EVTCHNSTAT_closed
    assert w.call(b, Op.EVTCHNOP_send, port=pb)[0] == -E.XEN_EINVAL
    assert w.ok(a, Op.EVTCHNOP_send, port=pa) is not None  # unbound: dropped, rc 0


def test_hostile_domu(w):
    a, b, c = w.domu(), w.domu(), w.domu()
    pa = w.ok(a, Op.EVTCHNOP_alloc_unbound, dom=DOMID_SELF, remote_dom=b.domid)["port"]
    # c binds a port offered to b; b binds a port that is not unbound
    assert w.call(c, Op.EVTCHNOP_bind_interdomain, remote_dom=a.domid,
                  remote_port=pa)[0] == -E.XEN_EINVAL
    pb = w.ok(b, Op.EVTCHNOP_bind_interdomain, remote_dom=a.domid, remote_port=pa)["local_port"]
    assert w.call(c, Op.EVTCHNOP_bind_interdomain, remote_dom=a.domid,
                  remote_port=pa)[0] == -E.XEN_EINVAL
    # c "sends on b's port": port numbers are per domain, c has none
    assert w.call(c, Op.EVTCHNOP_send, port=pb)[0] == -E.XEN_EINVAL
    # acting on other domains' tables needs privilege
    assert w.call(c, Op.EVTCHNOP_alloc_unbound, dom=a.domid, remote_dom=c.domid)[0] == -E.XEN_EPERM
    assert w.call(c, Op.EVTCHNOP_status, dom=a.domid, port=pa)[0] == -E.XEN_EPERM
    assert w.call(c, Op.EVTCHNOP_reset, dom=a.domid)[0] == -E.XEN_EPERM
    assert w.call(c, Op.EVTCHNOP_bind_interdomain, remote_dom=999, remote_port=1)[0] == \
        -E.XEN_ESRCH
    # a domU binding a global VIRQ is refused; per-domain/per-vCPU ones are fine
    assert w.call(c, Op.EVTCHNOP_bind_virq, virq=Virq.VIRQ_DOM_EXC, vcpu=0)[0] == -E.XEN_EBUSY
    w.ok(c, Op.EVTCHNOP_bind_virq, virq=Virq.VIRQ_TIMER, vcpu=0)
    assert w.call(c, Op.EVTCHNOP_bind_virq, virq=Virq.VIRQ_TIMER, vcpu=0)[0] == -E.XEN_EEXIST
    assert w.call(c, Op.EVTCHNOP_bind_virq, virq=Virq.VIRQ_TIMER, vcpu=1)[0] == -E.XEN_ENOENT
    # garbage arguments are EINVAL, never an exception
    for bad in ("x", None, True, -1, 2**32, 2**64, 1.5, [1]):
        assert w.call(c, Op.EVTCHNOP_send, port=bad)[0] == -E.XEN_EINVAL
    assert w.call(c, Op.EVTCHNOP_send)[0] == -E.XEN_EINVAL


PORT_OPS = [
    (Op.EVTCHNOP_send, lambda p: {"port": p}),
    (Op.EVTCHNOP_close, lambda p: {"port": p}),
    (Op.EVTCHNOP_unmask, lambda p: {"port": p}),
    (Op.EVTCHNOP_status, lambda p: {"dom": DOMID_SELF, "port": p}),
    (Op.EVTCHNOP_bind_vcpu, lambda p: {"port": p, "vcpu": 0}),
    (Op.EVTCHNOP_bind_interdomain, lambda p: {"remote_dom": 0, "remote_port": p}),
    (Op.EVTCHNOP_bind_virq, lambda p: {"virq": p, "vcpu": 0}),
    (Op.EVTCHNOP_bind_ipi, lambda p: {"vcpu": p}),
]


@settings(max_examples=300, deadline=None)
@given(port=st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 16, 17, 1023, 1024,
                                                                    4095, 4096, 2**31, 2**32 - 1])),
       op=st.sampled_from(PORT_OPS))
def test_every_op_on_any_port_is_clean(port, op):
    w = World(max_ports=16)
    a, b = w.domu(), w.domu()
    w.channel(a, b)
    code, make = op
    rc, _ = w.call(a, code, **make(port))
    assert rc <= 0 or code in (Op.EVTCHNOP_bind_virq, Op.EVTCHNOP_bind_ipi)
    if port > 16 and code not in (Op.EVTCHNOP_bind_virq, Op.EVTCHNOP_bind_ipi):
        assert rc == -E.XEN_EINVAL
    # the tables are still consistent and usable
    w.channel(a, b)


def test_port_limit(w):
    a = w.domu()
    ports = [w.ok(w.dom0, Op.EVTCHNOP_alloc_unbound, dom=a.domid, remote_dom=0)["port"]
             for _ in range(16)]
    assert ports == list(range(1, 17))
    assert w.call(w.dom0, Op.EVTCHNOP_alloc_unbound, dom=a.domid, remote_dom=0)[0] == \
        -E.XEN_ENOSPC
    assert w.call(a, Op.EVTCHNOP_bind_ipi, vcpu=0)[0] == -E.XEN_ENOSPC


def test_dom0_processes_hear_only_their_own_ports(w):
    x, y = Caller(0, True, Conn("dom0-x", w.hv.dom0)), Caller(0, True, Conn("dom0-y", w.hv.dom0))
    a = w.domu()
    px, pa1 = w.channel(x, a)
    py, pa2 = w.channel(y, a)
    w.notes.clear()
    w.ok(a, Op.EVTCHNOP_send, port=pa1)
    w.ok(a, Op.EVTCHNOP_send, port=pa2)
    assert w.notes == [(x.conn, px), (y.conn, py)]
    # x goes away: its ports close, the domU's end goes back to unbound
    w.notes.clear()
    for hook in w.server.conn_closed_hooks:
        hook(x.conn)
    assert w.ok(w.dom0, Op.EVTCHNOP_status, dom=a.domid, port=pa1)["status"] == S.EVTCHNSTAT_unbound
    assert w.ok(w.dom0, Op.EVTCHNOP_status, port=px)["status"] == S.EVTCHNSTAT_closed
    assert w.ok(w.dom0, Op.EVTCHNOP_status, port=py)["status"] == S.EVTCHNSTAT_interdomain


def test_port_made_for_a_domu_notifies_its_process(w):
    a = w.domu()
    # the toolstack's way: dom0 allocates the domU's store port, a dom0 daemon binds it
    pa = w.ok(w.dom0, Op.EVTCHNOP_alloc_unbound, dom=a.domid, remote_dom=0)["port"]
    p0 = w.ok(w.dom0, Op.EVTCHNOP_bind_interdomain, remote_dom=a.domid,
              remote_port=pa)["local_port"]
    w.notes.clear()
    w.ok(w.dom0, Op.EVTCHNOP_send, port=p0)
    assert w.notes == [(a.conn, pa)]


def test_destroy_closes_ports_tells_peers_and_raises_dom_exc(w):
    virq = w.ok(w.dom0, Op.EVTCHNOP_bind_virq, virq=Virq.VIRQ_DOM_EXC, vcpu=0)["port"]
    a = w.domu()
    p0, pa = w.channel(w.dom0, a)
    assert w.clear(w.dom0, p0) is False
    w.notes.clear()
    dom = w.hv.domain(a.domid)
    bits = dom.evtchn.bits
    w.hv.destroy(dom)
    assert (w.dom0.conn, p0) in w.notes and (w.dom0.conn, virq) in w.notes
    assert bits.views == 0  # atomic views released before the page went
    assert w.ok(w.dom0, Op.EVTCHNOP_status, port=p0)["u"] == {"unbound": {"dom": a.domid}}
    assert w.call(w.dom0, Op.EVTCHNOP_status, dom=a.domid, port=pa)[0] == -E.XEN_ESRCH


def test_shutdown_raises_dom_exc(w):
    virq = w.ok(w.dom0, Op.EVTCHNOP_bind_virq, virq=Virq.VIRQ_DOM_EXC, vcpu=0)["port"]
    a = w.domu()
    w.notes.clear()
    w.hv.shutdown(w.hv.domain(a.domid), 0)
    assert w.notes == [(w.dom0.conn, virq)]


def test_reset_needs_self_or_a_paused_domain(w):
    a, b = w.domu(), w.domu()
    pa, pb = w.channel(a, b)
    w.hv.unpause(w.hv.domain(a.domid))
    assert w.call(w.dom0, Op.EVTCHNOP_reset, dom=a.domid)[0] == -E.XEN_EINVAL
    w.hv.pause(w.hv.domain(a.domid))
    w.ok(w.dom0, Op.EVTCHNOP_reset, dom=a.domid)
    assert w.ok(b, Op.EVTCHNOP_status, port=pb)["status"] == S.EVTCHNSTAT_unbound
    w.ok(b, Op.EVTCHNOP_reset, dom=DOMID_SELF)
    assert w.ok(b, Op.EVTCHNOP_status, port=pb)["status"] == S.EVTCHNSTAT_closed


def test_hundred_domains_leave_no_ports(w):
    dom0 = w.hv.dom0.evtchn
    for _ in range(100):
        a = w.domu()
        for _ in range(5):
            w.channel(w.dom0, a)
            w.channel(a, a)
        w.ok(a, Op.EVTCHNOP_bind_virq, virq=Virq.VIRQ_TIMER, vcpu=0)
        w.hv.destroy(w.hv.domain(a.domid))
        for chan in dom0.ports:  # dom0's ends came back unbound: close them
            w.ok(w.dom0, Op.EVTCHNOP_close, port=chan.port)
    assert len(dom0.ports) == 0 and list(w.hv.domains) == [0]
    assert w.ok(w.dom0, Op.EVTCHNOP_alloc_unbound, dom=DOMID_SELF, remote_dom=0)["port"] == 1
