"""``EVTCHNOP_*`` (event_channel_op): hypercall handlers, delivery, teardown.

Follows ``xen/include/public/event_channel.h``; the rules (states,
errnos) live in the pure core :mod:`hypervisord.evtchn_ports`, the bit
protocol of the 2-level ABI in :mod:`libxen.shinfo`. This module is
the shell between them and the rest of hypervisord:

* **Delivery.** Making a port pending sets its bit in the owning domain's
  ``shared_info`` (atomically: the domain's process clears bits
  concurrently) and, only when the bit went 0 -> 1 on an unmasked port,
  asks the server to write the port number on the event-channel stream
  of the process that bound the port (``hv.notify``). Many sends before
  the receiver clears the bit therefore cost one notification, as in Xen.
  ``EVTCHNOP_unmask`` of a port that became pending while masked delivers
  it then (``evtchn_2l_unmask``).
* **PV vCPU processes set their own bits.** A PV kernel clears and tests
  its bits with ``lock btr``/``xchg``/``lock cmpxchg``, which Unicorn (QEMU
  TCG without ``CF_PARALLEL``: unicorn's ``curr_cflags()`` is 0) emulates as
  a plain load, modify and store (``do_nonatomic_op_*`` in
  ``qemu/tcg/tcg-op.c``): a bit set here between that load and store is
  overwritten, and the port never comes again (tests/pv/test_event_race.py
  lost one event in ~3000 sends, and at once when the kernel rewrites the
  word often). So a vCPU process asks for ``pvxen_op.evtchn_vcpu_bits``
  before its guest runs, and from then on hypervisord writes none of that
  domain's pending/selector/upcall-pending bits while guest code can run:
  :func:`set_pending` only reads the pending bit (already set: coalesced,
  nothing to do) and writes ``port | vcpu << 16`` on the process's stream;
  the vCPU applies Xen's 2-level set_pending (``xen/common/event_2l.c``)
  between slices, when Unicorn is stopped (``hypervisord/vcpu/events.py``).
  The bits hypervisord still writes for such a domain are written only
  while its vCPU cannot run: ``EVTCHNOP_unmask`` and ``EVTCHNOP_close`` (its
  own hypercalls: the one vCPU waits for the answer), ``EVTCHNOP_reset``
  (its own, or of a paused domain), teardown (no guest left). Program
  guests (``frontends/``, libxen.evtchn) use host atomics and keep the
  direct path, and so do SMP PV domains (several vCPUs run guest code at
  once: no point between slices is free of guest code; see events.py).
* **Who is notified.** Each channel records the connection that bound it:
  several dom0 processes share domain 0 and each hears only its own ports.
  A port allocated *for* a domU by dom0 (the toolstack's store and console
  ports) belongs to that domU's single process, found at delivery time.
* **Teardown.** A closing connection closes the ports it bound; a
  destroyed domain closes all of its ports. Either way an interdomain peer
  goes back to ``ECS_UNBOUND`` (``remote_domid`` = the closer, as Xen's
  ``evtchn_close``) and, unlike Xen, is also made pending, so a peer
  process notices at once and can look at ``EVTCHNOP_status``.
* **VIRQs.** ``install`` sets ``hv.raise_virq``; domain shutdown and
  destruction raise ``VIRQ_DOM_EXC`` on dom0's bound port.

Port limits: a domU has ports ``1 .. hv.config.max_ports`` (capped by the
2-level ABI's 4096 bits); dom0 gets the whole ABI, as Xen leaves the
hardware domain's ``max_evtchn_port`` unlimited.
"""

from __future__ import annotations

import socket

from typing import Any

from hypervisord import evtchn_ports as core
from hypervisord.errors import E, fail
from hypervisord.evtchn_ports import ECS, Channel, PortTable
from hypervisord.hypercall import Handler, u
from hypervisord.public.event_channel import EvtchnOp as Op
from hypervisord.public.pvxen import EVTCHN_NOTIFY_VCPU_SHIFT
from hypervisord.public.xen import DOMID_SELF, Hypercall
from libxen.shinfo import NR_PORTS_2L, SharedInfoBits

EVTCHN_OP = Hypercall.event_channel_op


class DomainEvtchn:
    """A domain's event-channel state: its port table and its shared_info bits."""

    __slots__ = ("ports", "bits")

    def __init__(self, ports: PortTable, bits: SharedInfoBits) -> None:
        self.ports = ports
        self.bits = bits


# -- delivery -------------------------------------------------------------------

def set_pending(hv, dom, chan: Channel) -> None:
    """``evtchn_port_set_pending`` plus the notification to the owning process.

    To a process that owns its bits (a PV vCPU process, module doc): no
    write, only the entry, and none when the port is pending already (a
    read: as Xen's test_and_set finding the bit set, the guest's next
    clear takes this send too).
    """
    conn = _process(dom, chan)
    if conn is not None and getattr(conn, "vcpu_bits", False):
        if not dom.evtchn.bits.is_pending(chan.port):
            hv.notify(conn, chan.port | chan.vcpu << EVTCHN_NOTIFY_VCPU_SHIFT)
        return
    if dom.evtchn.bits.set_pending(chan.port, chan.vcpu):
        _deliver(hv, dom, chan)


def _process(dom, chan: Channel) -> Any:
    conn = chan.owner
    if conn is None:
        conn = dom.conns[0] if dom.conns else None
    return conn


def _deliver(hv, dom, chan: Channel) -> None:
    conn = _process(dom, chan)
    if conn is not None:
        entry = chan.port
        if getattr(conn, "vcpu_bits", False):
            entry |= chan.vcpu << EVTCHN_NOTIFY_VCPU_SHIFT
        hv.notify(conn, entry)


def raise_virq(hv, dom, virq: int, vcpu: int = 0) -> None:
    """``send_guest_{global,vcpu}_virq``: a no-op when nobody bound the VIRQ."""
    ev = dom.evtchn
    if ev is None:
        return
    port = ev.ports.virqs.get((virq, vcpu))
    if port is not None:
        set_pending(hv, dom, ev.ports.chans[port])


def close_port(hv, dom, port: int) -> None:
    """Close one port; an interdomain peer sees ``ECS_UNBOUND`` and is notified."""
    ev = dom.evtchn
    peer = core.close(ev.ports, port, lambda domid: _table(hv, domid))
    ev.bits.reset_port(port)
    if peer is not None:
        peer_domid, peer_chan = peer
        peer_dom = hv.domains.get(peer_domid)
        if peer_dom is not None and peer_dom.evtchn is not None:
            set_pending(hv, peer_dom, peer_chan)


def _table(hv, domid: int) -> PortTable | None:
    d = hv.domains.get(domid)
    return d.evtchn.ports if d is not None and d.evtchn is not None else None


# -- argument helpers -------------------------------------------------------------

def _self(hv, caller):
    return hv.domain(caller.domid)


def _target(hv, caller, args: dict, name: str):
    """A ``dom`` argument: DOMID_SELF or the caller's own; others if privileged."""
    domid = u(args, name, 16, DOMID_SELF)
    if domid == DOMID_SELF or domid == caller.domid:
        return _self(hv, caller)
    if not caller.privileged:
        raise fail(E.XEN_EPERM, f"d{caller.domid} may not act on d{domid}'s ports")
    return hv.domain(domid)


def _owner(caller, dom) -> Any:
    # A process binding in its own domain owns the port; a port made for
    # another domain belongs to that domain's process (looked up later).
    return caller.conn if dom.domid == caller.domid else None


# -- handlers ---------------------------------------------------------------------

def alloc_unbound(hv, caller, args):
    dom = _target(hv, caller, args, "dom")
    remote = u(args, "remote_dom", 16)
    if remote == DOMID_SELF:
        remote = caller.domid
    chan = core.alloc_unbound(dom.evtchn.ports, remote, _owner(caller, dom))
    return {"port": chan.port}


def bind_interdomain(hv, caller, args):
    ld = _self(hv, caller)
    rdomid = u(args, "remote_dom", 16)
    rd = ld if rdomid == DOMID_SELF else hv.domain(rdomid)
    rport = u(args, "remote_port", 32)
    lchan = core.bind_interdomain(ld.evtchn.ports, rd.evtchn.ports, rport, caller.conn)
    # "We may have lost notifications on the remote unbound port": Xen
    # conservatively makes the new local port pending.
    set_pending(hv, ld, lchan)
    _doorbell(caller.conn, lchan.port, _process_of(rd, rd.evtchn.ports.chans.get(rport)),
              rport)
    return {"local_port": lchan.port}


def _process_of(dom, chan: Channel | None) -> Any:
    if chan is None:
        return None
    return chan.owner if chan.owner is not None else (dom.conns[0] if dom.conns else None)


def _doorbell(local: Any, lport: int, remote: Any, rport: int) -> None:
    """A direct notification path between the channel's two processes.

    Each end goes to its process over its event stream (both must have
    asked for doorbells). Sends on the channel then need no hypercall;
    masking, closing and status still go through hypervisord. If either
    end cannot be handed over, the other end sees its doorbell close and
    both keep using EVTCHNOP_send, which is always correct.
    """
    if not (getattr(local, "doorbells", False) and getattr(remote, "doorbells", False)):
        return
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:  # each process keeps its own copy; ours go now
        if remote.push_doorbell(rport, b.fileno()):
            local.push_doorbell(lport, a.fileno())


def bind_virq(hv, caller, args):
    dom = _self(hv, caller)
    chan = core.bind_virq(dom.evtchn.ports, u(args, "virq", 32), u(args, "vcpu", 32, 0),
                          dom.max_vcpus, global_handler=dom.domid == 0, owner=caller.conn)
    return {"port": chan.port}


def bind_ipi(hv, caller, args):
    dom = _self(hv, caller)
    chan = core.bind_ipi(dom.evtchn.ports, u(args, "vcpu", 32, 0), dom.max_vcpus, caller.conn)
    return {"port": chan.port}


def send(hv, caller, args):
    """The hot path: one lookup, one atomic bit, at most one socket write."""
    dom = hv.domain(caller.domid)
    chan = dom.evtchn.ports.lookup(u(args, "port", 32))
    if chan is None:
        raise fail(E.XEN_EINVAL, "port is not bound")
    state = chan.state
    if state is ECS.ECS_INTERDOMAIN:
        rd = hv.domains.get(chan.remote_domid)
        rchan = rd.evtchn.ports.chans.get(chan.remote_port) if rd is not None else None
        if rchan is not None:
            set_pending(hv, rd, rchan)
    elif state is ECS.ECS_IPI:
        set_pending(hv, dom, chan)
    elif state is not ECS.ECS_UNBOUND:  # unbound: silently dropped, as Xen
        raise fail(E.XEN_EINVAL, f"cannot send on a {state.name} port")
    return 0


def close(hv, caller, args):
    close_port(hv, _self(hv, caller), u(args, "port", 32))


def status(hv, caller, args):
    dom = _target(hv, caller, args, "dom")
    return core.status(dom.evtchn.ports, u(args, "port", 32))


def unmask(hv, caller, args):
    dom = _self(hv, caller)
    port = u(args, "port", 32)
    chan = dom.evtchn.ports.lookup(port)
    vcpu = chan.vcpu if chan is not None else 0
    if dom.evtchn.bits.unmask(port, vcpu) and chan is not None:
        _deliver(hv, dom, chan)


def bind_vcpu(hv, caller, args):
    dom = _self(hv, caller)
    vcpu = u(args, "vcpu", 32)
    if vcpu >= dom.max_vcpus:
        raise fail(E.XEN_ENOENT, f"no vCPU {vcpu}")
    chan = dom.evtchn.ports.lookup(u(args, "port", 32))
    if chan is None:
        raise fail(E.XEN_EINVAL, "port is not bound")
    if chan.state is ECS.ECS_VIRQ and core.virq_type(chan.virq) == core.VIRQ_VCPU:
        raise fail(E.XEN_EINVAL, "a per-vCPU VIRQ cannot move")
    if chan.state not in (ECS.ECS_VIRQ, ECS.ECS_UNBOUND, ECS.ECS_INTERDOMAIN):
        raise fail(E.XEN_EINVAL, f"cannot rebind a {chan.state.name} port")
    chan.vcpu = vcpu


def reset(hv, caller, args):
    """Close every port of a domain (itself, or a paused one if privileged)."""
    dom = _target(hv, caller, args, "dom")
    if dom.domid != caller.domid and not dom.paused:
        raise fail(E.XEN_EINVAL, f"d{dom.domid} must be paused to be reset")
    close_all(hv, dom)


def close_all(hv, dom, owner: Any = None) -> None:
    for chan in dom.evtchn.ports:
        if owner is None or chan.owner is owner:
            close_port(hv, dom, chan.port)


HANDLERS = {
    (EVTCHN_OP, Op.EVTCHNOP_alloc_unbound): Handler(alloc_unbound),
    (EVTCHN_OP, Op.EVTCHNOP_bind_interdomain): Handler(bind_interdomain),
    (EVTCHN_OP, Op.EVTCHNOP_bind_virq): Handler(bind_virq),
    (EVTCHN_OP, Op.EVTCHNOP_bind_ipi): Handler(bind_ipi),
    (EVTCHN_OP, Op.EVTCHNOP_send): Handler(send),
    (EVTCHN_OP, Op.EVTCHNOP_close): Handler(close),
    (EVTCHN_OP, Op.EVTCHNOP_status): Handler(status),
    (EVTCHN_OP, Op.EVTCHNOP_unmask): Handler(unmask),
    (EVTCHN_OP, Op.EVTCHNOP_bind_vcpu): Handler(bind_vcpu),
    (EVTCHN_OP, Op.EVTCHNOP_reset): Handler(reset),
}


# -- hooks ----------------------------------------------------------------------------

def domain_created(hv, dom) -> None:
    max_port = NR_PORTS_2L - 1
    if dom.domid != 0:
        max_port = min(hv.config.max_ports, max_port)
    dom.evtchn = DomainEvtchn(PortTable(dom.domid, max_port), SharedInfoBits(dom.shared_info))


def domain_destroyed(hv, dom) -> None:
    ev = dom.evtchn
    if ev is None:
        return
    ev.ports.dying = True  # no new ports from here on (get_free_port: -EINVAL)
    close_all(hv, dom)
    ev.bits.close()  # release the atomic views before the page is unmapped


def conn_closed(hv, conn) -> None:
    dom = conn.domain  # the instance it was made for, not the domid's current holder
    if dom is not None and dom.evtchn is not None and not dom.dying:
        close_all(hv, dom, owner=conn)


def install(hv, server) -> None:
    for dom in list(hv.domains.values()):
        if dom.evtchn is None:
            domain_created(hv, dom)
    hv.on_create.append(lambda dom: domain_created(hv, dom))
    hv.on_destroy.append(lambda dom: domain_destroyed(hv, dom))
    server.conn_closed_hooks.append(lambda conn: conn_closed(hv, conn))
    hv.raise_virq = lambda dom, virq: raise_virq(hv, dom, virq)
