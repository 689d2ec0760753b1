"""Per-domain event-channel port tables: the pure core of ``EVTCHNOP_*``.

Follows ``xen/include/public/event_channel.h`` for the ops and Xen's
``xen/common/event_channel.c`` for the rules this module keeps: the
channel states (``ECS_*``, from ``xen/include/xen/sched.h``), which state
changes each op makes, and which errno each refusal gets. No sockets, no
shared memory, no clock: the shell (:mod:`hypervisord.evtchn`) sets the
pending bits and delivers notifications for the channels these functions
return.

Worked example (dom0 offers a channel to d5, d5 binds, d5 dies)::

    alloc_unbound(t0, remote_domid=5)        t0[7] = UNBOUND(remote 5)
    bind_interdomain(t5, 5, t0, 7)           t5[1] = INTERDOMAIN(0, 7)
                                             t0[7] = INTERDOMAIN(5, 1)
    close(t5, 1, tables)                     t5[1] = FREE
                                             t0[7] = UNBOUND(remote 5)  <- returned,
                                             so the shell notifies dom0 on port 7

Port numbers: 0 is reserved (``ECS_RESERVED``, never handed out, as Xen's
``evtchn_init``); ports ``1 .. max_port`` are allocatable, lowest free
first. A port above ``max_port`` is invalid (every op: ``-EINVAL``); a
valid port with no channel is ``ECS_FREE``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from hypervisord.errors import E, fail
from hypervisord.public.event_channel import EvtchnStat
from hypervisord.public.xen import NR_VIRQS, VIRQ_PER_VCPU, Virq


class ECS(IntEnum):
    """Xen's internal channel states (``xen/include/xen/sched.h``)."""

    ECS_FREE = 0  # channel is available for use
    ECS_RESERVED = 1  # channel is reserved (port 0)
    ECS_UNBOUND = 2  # waiting for an interdomain connection
    ECS_INTERDOMAIN = 3  # connected to a remote domain
    ECS_PIRQ = 4  # bound to a physical IRQ line (unused here)
    ECS_VIRQ = 5  # bound to a virtual IRQ line
    ECS_IPI = 6  # bound to a virtual IPI line


#: what EVTCHNOP_status reports for each state (evtchn_status in event_channel.c)
STATUS_OF = {
    ECS.ECS_FREE: EvtchnStat.EVTCHNSTAT_closed,
    ECS.ECS_RESERVED: EvtchnStat.EVTCHNSTAT_closed,
    ECS.ECS_UNBOUND: EvtchnStat.EVTCHNSTAT_unbound,
    ECS.ECS_INTERDOMAIN: EvtchnStat.EVTCHNSTAT_interdomain,
    ECS.ECS_PIRQ: EvtchnStat.EVTCHNSTAT_pirq,
    ECS.ECS_VIRQ: EvtchnStat.EVTCHNSTAT_virq,
    ECS.ECS_IPI: EvtchnStat.EVTCHNSTAT_ipi,
}

#: the state changes a channel may make; allocation is the edge out of ECS_FREE
TRANSITIONS: dict[ECS, frozenset[ECS]] = {
    ECS.ECS_FREE: frozenset({ECS.ECS_UNBOUND, ECS.ECS_INTERDOMAIN, ECS.ECS_VIRQ, ECS.ECS_IPI}),
    ECS.ECS_RESERVED: frozenset(),
    ECS.ECS_UNBOUND: frozenset({ECS.ECS_INTERDOMAIN, ECS.ECS_FREE}),  # bound; closed
    ECS.ECS_INTERDOMAIN: frozenset({ECS.ECS_UNBOUND, ECS.ECS_FREE}),  # peer closed; closed
    ECS.ECS_PIRQ: frozenset({ECS.ECS_FREE}),
    ECS.ECS_VIRQ: frozenset({ECS.ECS_FREE}),
    ECS.ECS_IPI: frozenset({ECS.ECS_FREE}),
}

VIRQ_VCPU, VIRQ_DOMAIN, VIRQ_GLOBAL = "vcpu", "domain", "global"


def virq_type(virq: int) -> str:
    """Xen's ``get_virq_type`` for x86: per-vCPU, per-domain (ARGO) or global."""
    if virq in VIRQ_PER_VCPU:
        return VIRQ_VCPU
    if virq == Virq.VIRQ_ARGO:
        return VIRQ_DOMAIN
    return VIRQ_GLOBAL


@dataclass(slots=True, eq=False)
class Channel:
    """One allocated port (``struct evtchn``)."""

    port: int
    state: ECS
    vcpu: int = 0  # notify_vcpu_id
    remote_domid: int = 0  # UNBOUND: who may bind; INTERDOMAIN: the peer
    remote_port: int = 0  # INTERDOMAIN only
    virq: int = 0  # VIRQ only
    #: the process that bound it, which gets its notifications (None: the
    #: domain's own process, looked up at delivery; see hypervisord.evtchn)
    owner: Any = None

    def transition(self, new: ECS) -> None:
        """The one place a channel changes state; an illegal edge is our bug."""
        if new not in TRANSITIONS[self.state]:
            raise AssertionError(f"port {self.port}: {self.state.name} -> {new.name}")
        self.state = new


class PortTable:
    """One domain's ports (``d->evtchn``). Only non-free channels are stored."""

    def __init__(self, domid: int, max_port: int) -> None:
        self.domid = domid
        self.max_port = max_port
        self.chans: dict[int, Channel] = {}
        self.virqs: dict[tuple[int, int], int] = {}  # (virq, vcpu) -> port
        self._freed: list[int] = []  # heap of freed ports below _next
        self._next = 1  # lowest never-used port (0 is ECS_RESERVED)
        self.dying = False

    def __len__(self) -> int:
        return len(self.chans)

    def __iter__(self) -> Iterator[Channel]:
        return iter(list(self.chans.values()))

    # -- lookup ------------------------------------------------------------------
    def valid(self, port: int) -> bool:
        """Xen's ``port_is_valid``: the port exists in the table (maybe free)."""
        return 0 <= port <= self.max_port

    def lookup(self, port: int) -> Channel | None:
        """The channel on a valid port (None if free); ``-EINVAL`` if invalid."""
        if not 0 <= port <= self.max_port:
            raise fail(E.XEN_EINVAL, f"d{self.domid} port {port} out of range")
        return self.chans.get(port)

    def state(self, port: int) -> ECS:
        if port == 0:
            return ECS.ECS_RESERVED
        chan = self.lookup(port)
        return ECS.ECS_FREE if chan is None else chan.state

    # -- allocation ----------------------------------------------------------------
    def alloc(self, state: ECS, **fields: Any) -> Channel:
        """Xen's ``get_free_port``: the lowest free port, or ``-ENOSPC``."""
        if self.dying:
            raise fail(E.XEN_EINVAL, f"d{self.domid} is dying")
        if self._freed:
            port = heapq.heappop(self._freed)
        elif self._next <= self.max_port:
            port = self._next
            self._next += 1
        else:
            raise fail(E.XEN_ENOSPC, f"d{self.domid} has all {self.max_port} ports in use")
        chan = self.chans[port] = Channel(port, ECS.ECS_FREE, **fields)
        chan.transition(state)
        return chan

    def free(self, chan: Channel) -> None:
        """Xen's ``evtchn_free``: the port goes back to ``ECS_FREE``."""
        if self.chans.get(chan.port) is not chan:
            return
        del self.chans[chan.port]
        chan.transition(ECS.ECS_FREE)
        heapq.heappush(self._freed, chan.port)


# -- the ops: each returns what the shell must act on ----------------------------

Tables = Callable[[int], "PortTable | None"]  # domid -> that domain's table


def alloc_unbound(table: PortTable, remote_domid: int, owner: Any) -> Channel:
    return table.alloc(ECS.ECS_UNBOUND, remote_domid=remote_domid, owner=owner)


def bind_interdomain(ltab: PortTable, rtab: PortTable, rport: int, owner: Any) -> Channel:
    """Connect a new local port to ``rtab[rport]``; returns the local channel.

    Only a remote port that is ``ECS_UNBOUND`` *and* offered to this domain
    (``remote_domid`` equal to ours) may be bound; anything else is
    ``-EINVAL``, as Xen. The local port is allocated first (``-ENOSPC``
    takes precedence, as in Xen) and freed again on refusal.
    """
    lchan = ltab.alloc(ECS.ECS_INTERDOMAIN, owner=owner)
    try:
        rchan = rtab.lookup(rport)
        if (rchan is None or rchan.state != ECS.ECS_UNBOUND
                or rchan.remote_domid != ltab.domid):
            raise fail(E.XEN_EINVAL, f"d{rtab.domid} port {rport} is not offered to "
                                     f"d{ltab.domid}")
    except BaseException:
        ltab.free(lchan)
        raise
    lchan.remote_domid, lchan.remote_port = rtab.domid, rport
    rchan.transition(ECS.ECS_INTERDOMAIN)
    rchan.remote_domid, rchan.remote_port = ltab.domid, lchan.port
    return lchan


def bind_virq(table: PortTable, virq: int, vcpu: int, max_vcpus: int,
              global_handler: bool, owner: Any) -> Channel:
    """Xen's ``evtchn_bind_virq``; ``global_handler``: may this domain take global VIRQs."""
    if not 0 <= virq < NR_VIRQS:
        raise fail(E.XEN_EINVAL, f"no VIRQ {virq}")
    kind = virq_type(virq)
    if kind != VIRQ_VCPU and vcpu != 0:
        raise fail(E.XEN_EINVAL, f"VIRQ {virq} binds on vCPU 0 only")
    if not 0 <= vcpu < max_vcpus:
        raise fail(E.XEN_ENOENT, f"d{table.domid} has no vCPU {vcpu}")
    if kind == VIRQ_GLOBAL and not global_handler:
        raise fail(E.XEN_EBUSY, f"global VIRQ {virq} belongs to another domain")
    if (virq, vcpu) in table.virqs:
        raise fail(E.XEN_EEXIST, f"VIRQ {virq} already bound")
    chan = table.alloc(ECS.ECS_VIRQ, vcpu=vcpu, virq=virq, owner=owner)
    table.virqs[(virq, vcpu)] = chan.port
    return chan


def bind_ipi(table: PortTable, vcpu: int, max_vcpus: int, owner: Any) -> Channel:
    if not 0 <= vcpu < max_vcpus:
        raise fail(E.XEN_ENOENT, f"d{table.domid} has no vCPU {vcpu}")
    return table.alloc(ECS.ECS_IPI, vcpu=vcpu, owner=owner)


def close(table: PortTable, port: int, tables: Tables) -> tuple[int, Channel] | None:
    """Xen's ``evtchn_close``; returns the interdomain peer ``(domid, channel)``,
    now ``ECS_UNBOUND``.

    The peer's ``remote_domid`` becomes this domain, so the same domain can
    bind it again (a backend waits for a restarted frontend).
    """
    chan = table.lookup(port)
    if chan is None or port == 0:
        raise fail(E.XEN_EINVAL, f"d{table.domid} port {port} is not bound")
    peer: tuple[int, Channel] | None = None
    if chan.state == ECS.ECS_VIRQ:
        table.virqs.pop((chan.virq, chan.vcpu), None)
    elif chan.state == ECS.ECS_INTERDOMAIN:
        rtab = tables(chan.remote_domid)
        rchan = rtab.chans.get(chan.remote_port) if rtab is not None else None
        # The peer always matches while tables stay consistent (Xen: BUG_ON).
        if rchan is not None and rchan.state == ECS.ECS_INTERDOMAIN \
                and rchan.remote_domid == table.domid and rchan.remote_port == port:
            rchan.transition(ECS.ECS_UNBOUND)
            rchan.remote_domid, rchan.remote_port = table.domid, 0
            peer = (chan.remote_domid, rchan)
    table.free(chan)
    return peer


def status(table: PortTable, port: int) -> dict[str, Any]:
    """``struct evtchn_status`` OUT fields: status, vcpu and the union ``u``."""
    chan = table.lookup(port)
    if chan is None:
        return {"status": int(EvtchnStat.EVTCHNSTAT_closed), "vcpu": 0, "u": {}}
    st = STATUS_OF[chan.state]
    if chan.state == ECS.ECS_UNBOUND:
        u: dict[str, Any] = {"unbound": {"dom": chan.remote_domid}}
    elif chan.state == ECS.ECS_INTERDOMAIN:
        u = {"interdomain": {"dom": chan.remote_domid, "port": chan.remote_port}}
    elif chan.state == ECS.ECS_VIRQ:
        u = {"virq": chan.virq}
    else:
        u = {}
    return {"status": int(st), "vcpu": chan.vcpu, "u": u}
