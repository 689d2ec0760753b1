"""Pure tests of the port-table core (hypervisord.evtchn_ports): states and errnos."""

from __future__ import annotations

import pytest

from hypervisord import evtchn_ports as core
from hypervisord.errors import HypercallError
from hypervisord.evtchn_ports import ECS, PortTable
from hypervisord.public.errno import XenErrno as E
from hypervisord.public.event_channel import EvtchnStat
from hypervisord.public.xen import NR_VIRQS, Virq

pytestmark = pytest.mark.timeout(30)


def errno_of(fn, *args, **kw) -> E:
    with pytest.raises(HypercallError) as exc:
        fn(*args, **kw)
    return exc.value.errno


@pytest.fixture
def tables():
    t = {0: PortTable(0, 4095), 1: PortTable(1, 8), 2: PortTable(2, 8)}
    return t


def test_port_zero_reserved_and_lowest_free_first():
    t = PortTable(1, 8)
    ports = [core.alloc_unbound(t, 0, None).port for _ in range(8)]
    assert ports == list(range(1, 9))
    assert t.state(0) == ECS.ECS_RESERVED
    assert errno_of(core.alloc_unbound, t, 0, None) == E.XEN_ENOSPC  # max + 1
    core.close(t, 5, lambda d: None)
    core.close(t, 3, lambda d: None)
    assert core.alloc_unbound(t, 0, None).port == 3  # lowest free again
    assert core.alloc_unbound(t, 0, None).port == 5
    assert len(t) == 8


def test_churn_keeps_numbers_dense():
    t = PortTable(1, 64)
    for _ in range(1000):
        chans = [core.alloc_unbound(t, 0, None) for _ in range(10)]
        for c in chans:
            core.close(t, c.port, lambda d: None)
    assert len(t) == 0
    assert core.alloc_unbound(t, 0, None).port == 1


def test_bind_interdomain_only_to_a_port_offered_to_the_caller(tables):
    t0, t1, t2 = tables[0], tables[1], tables[2]
    offered_to_2 = core.alloc_unbound(t1, 2, None)
    offered_to_0 = core.alloc_unbound(t1, 0, None)
    # d2 may bind the first, not the second; d0 neither the first
    assert errno_of(core.bind_interdomain, t2, t1, offered_to_0.port, "c2") == E.XEN_EINVAL
    assert errno_of(core.bind_interdomain, t0, t1, offered_to_2.port, "c0") == E.XEN_EINVAL
    assert errno_of(core.bind_interdomain, t2, t1, 8, "c2") == E.XEN_EINVAL  # free port
    assert errno_of(core.bind_interdomain, t2, t1, 9, "c2") == E.XEN_EINVAL  # out of range
    assert len(t2) == 0 and len(t0) == 0  # refusals leave no port behind
    lchan = core.bind_interdomain(t2, t1, offered_to_2.port, "c2")
    assert (lchan.state, lchan.remote_domid, lchan.remote_port) == \
        (ECS.ECS_INTERDOMAIN, 1, offered_to_2.port)
    assert (offered_to_2.state, offered_to_2.remote_domid, offered_to_2.remote_port) == \
        (ECS.ECS_INTERDOMAIN, 2, lchan.port)
    # already bound: nobody binds it again
    assert errno_of(core.bind_interdomain, t2, t1, offered_to_2.port, "c2") == E.XEN_EINVAL


def test_close_puts_the_peer_back_to_unbound(tables):
    t1, t2 = tables[1], tables[2]
    r = core.alloc_unbound(t1, 2, None)
    lchan = core.bind_interdomain(t2, t1, r.port, "c2")
    peer = core.close(t2, lchan.port, tables.get)
    assert peer == (1, r)
    assert r.state == ECS.ECS_UNBOUND and r.remote_domid == 2  # as Xen: remote = closer
    assert core.status(t1, r.port) == {"status": EvtchnStat.EVTCHNSTAT_unbound, "vcpu": 0,
                                       "u": {"unbound": {"dom": 2}}}
    assert core.status(t2, lchan.port)["status"] == EvtchnStat.EVTCHNSTAT_closed
    # the same domain can bind it again (a restarted frontend)
    again = core.bind_interdomain(t2, t1, r.port, "c2")
    assert again.port == lchan.port
    assert errno_of(core.close, t2, 0, tables.get) == E.XEN_EINVAL  # reserved
    assert errno_of(core.close, t2, 7, tables.get) == E.XEN_EINVAL  # free
    assert errno_of(core.close, t2, 9, tables.get) == E.XEN_EINVAL  # out of range


def test_loopback_channel(tables):
    t1 = tables[1]
    r = core.alloc_unbound(t1, 1, None)
    lchan = core.bind_interdomain(t1, t1, r.port, "c1")
    assert lchan.port != r.port
    assert core.close(t1, r.port, tables.get) == (1, lchan)
    assert lchan.state == ECS.ECS_UNBOUND


def test_bind_virq_rules():
    t0, t1 = PortTable(0, 4095), PortTable(1, 8)
    dom_exc = Virq.VIRQ_DOM_EXC
    assert errno_of(core.bind_virq, t1, dom_exc, 0, 1, False, "c") == E.XEN_EBUSY  # global
    assert errno_of(core.bind_virq, t1, NR_VIRQS, 0, 1, False, "c") == E.XEN_EINVAL
    assert errno_of(core.bind_virq, t1, 2**32 - 1, 0, 1, False, "c") == E.XEN_EINVAL
    assert errno_of(core.bind_virq, t1, Virq.VIRQ_TIMER, 1, 1, False, "c") == E.XEN_ENOENT
    assert errno_of(core.bind_virq, t0, dom_exc, 1, 1, True, "c") == E.XEN_EINVAL  # vCPU 0
    timer = core.bind_virq(t1, Virq.VIRQ_TIMER, 0, 1, False, "c")
    assert core.status(t1, timer.port) == {"status": EvtchnStat.EVTCHNSTAT_virq, "vcpu": 0,
                                          "u": {"virq": Virq.VIRQ_TIMER}}
    assert errno_of(core.bind_virq, t1, Virq.VIRQ_TIMER, 0, 1, False, "c") == E.XEN_EEXIST
    argo = core.bind_virq(t1, Virq.VIRQ_ARGO, 0, 1, False, "c")  # per-domain: anyone
    exc = core.bind_virq(t0, dom_exc, 0, 1, True, "c")
    assert t0.virqs == {(dom_exc, 0): exc.port}
    core.close(t0, exc.port, lambda d: None)
    assert t0.virqs == {}
    assert core.bind_virq(t0, dom_exc, 0, 1, True, "c").port == exc.port
    assert argo.port == 2


def test_dying_table_allocates_nothing():
    t = PortTable(3, 8)
    t.dying = True
    assert errno_of(core.alloc_unbound, t, 0, None) == E.XEN_EINVAL
    assert errno_of(core.bind_ipi, t, 0, 1, None) == E.XEN_EINVAL


def test_status_of_every_state(tables):
    t1 = tables[1]
    ipi = core.bind_ipi(t1, 0, 1, "c")
    assert core.status(t1, ipi.port)["status"] == EvtchnStat.EVTCHNSTAT_ipi
    assert core.status(t1, 0)["status"] == EvtchnStat.EVTCHNSTAT_closed
    assert errno_of(core.status, t1, 9) == E.XEN_EINVAL
    assert errno_of(core.bind_ipi, t1, 1, 1, "c") == E.XEN_ENOENT


def test_state_machine_refuses_illegal_edges():
    t = PortTable(1, 8)
    virq = core.bind_virq(t, Virq.VIRQ_TIMER, 0, 1, False, "c")
    with pytest.raises(AssertionError):
        virq.transition(ECS.ECS_UNBOUND)
    assert virq.state == ECS.ECS_VIRQ
    unbound = core.alloc_unbound(t, 2, None)
    with pytest.raises(AssertionError):
        unbound.transition(ECS.ECS_VIRQ)
    for state, edges in core.TRANSITIONS.items():
        assert state == ECS.ECS_RESERVED or ECS.ECS_FREE in edges or state == ECS.ECS_FREE
