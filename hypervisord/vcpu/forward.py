"""Hypercalls on global state, forwarded to hypervisord.

Event channels, grants and memory ownership live in hypervisord (the
architecture's "global state stays in hypervisord"); a vCPU decodes the
guest's argument struct from guest memory (copy once, then it is ours),
makes the same hypercall on the domain's connection (the caller's domid is
the connection's, never the payload's), and writes the OUT fields back.

``event_channel_op`` (``xen/include/public/event_channel.h``): alloc_unbound,
bind_interdomain, bind_virq, bind_ipi, send, close, unmask, status,
bind_vcpu, reset. What an op makes pending for this domain
(bind_interdomain's new port, a send to itself) hypervisord writes on the
event stream, which is applied before the op returns (an unmask of a
pending port hypervisord re-raises itself, while we wait); the vCPU then
delivers the upcall (:mod:`.events`). A successful bind_virq of
a per-vCPU VIRQ, a close and a reset are also told to the vCPU's
:class:`~.events.VcpuEvents`, which raises ``VIRQ_TIMER`` locally; so are
the vCPU a bind_ipi or bind_vcpu names (an SMP domain's router sends each
report to the vCPU concerned, :mod:`.smp`).
Next (helper "pvmm", its own module): ``grant_table_op``, ``memory_op``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from hypervisord.public.errno import XenErrno
from hypervisord.public.event_channel import (EVTCHN_ALLOC_UNBOUND, EVTCHN_BIND_INTERDOMAIN,
                                              EVTCHN_BIND_IPI, EVTCHN_BIND_VCPU,
                                              EVTCHN_BIND_VIRQ, EVTCHN_CLOSE, EVTCHN_RESET,
                                              EVTCHN_SEND, EVTCHN_STATUS,
                                              EVTCHN_STATUS_INTERDOMAIN, EVTCHN_STATUS_U_OFF,
                                              EVTCHN_UNMASK, EvtchnOp, EvtchnStat)
from hypervisord.public.xen import Hypercall
from libxen.sync import XenError

CopyIn = Callable[[int, int], bytes]
CopyOut = Callable[[int, bytes], None]


class Forwarder:
    """The forwarded hypercalls of one vCPU over ``xc`` (a SyncXenCall)."""

    def __init__(self, xc, copy_in: CopyIn, copy_out: CopyOut, events=None) -> None:
        self.xc, self.copy_in, self.copy_out = xc, copy_in, copy_out
        self.events = events  # the vCPU's VcpuEvents (told of VIRQ bindings), or None

    def table(self) -> dict[int, Callable[[int, list[int]], int]]:
        return {Hypercall.event_channel_op: self.event_channel_op}

    def _call(self, hypercall: int, subop: int, **args) -> tuple[int, dict]:
        try:
            return self.xc.call(hypercall, subop, **args)
        except XenError as e:
            return -e.errno, {}

    def event_channel_op(self, _nr: int, args: list[int]) -> int:
        cmd, arg = args[0] & 0xFFFF_FFFF, args[1]
        op = _EVTCHN_OPS.get(cmd)
        if op is None:
            return -XenErrno.XEN_ENOSYS
        rc = op(self, arg)
        if self.events is not None and hasattr(self.events, "apply_notifications"):
            # what the op made pending for us (a send to ourselves, bind_interdomain's
            # new port) is on the stream already: pending on return, as in Xen
            self.events.apply_notifications()
        return rc

    # -- the sub-ops: copy in once, call hypervisord, copy the OUT fields back ---------
    def _port_op(self, cmd: int, layout, arg: int) -> tuple[int, int]:
        (port,) = layout.unpack(self.copy_in(arg, layout.size))
        return self._call(Hypercall.event_channel_op, cmd, port=port)[0], port

    def send(self, arg: int) -> int:
        return self._port_op(EvtchnOp.EVTCHNOP_send, EVTCHN_SEND, arg)[0]

    def unmask(self, arg: int) -> int:
        return self._port_op(EvtchnOp.EVTCHNOP_unmask, EVTCHN_UNMASK, arg)[0]

    def close(self, arg: int) -> int:
        rc, port = self._port_op(EvtchnOp.EVTCHNOP_close, EVTCHN_CLOSE, arg)
        if rc == 0 and self.events is not None:
            self.events.closed_port(port)
        return rc

    def alloc_unbound(self, arg: int) -> int:
        dom, remote, _ = EVTCHN_ALLOC_UNBOUND.unpack(self.copy_in(arg, EVTCHN_ALLOC_UNBOUND.size))
        rc, result = self._call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_alloc_unbound,
                                dom=dom, remote_dom=remote)
        if rc < 0:
            return rc
        self.copy_out(arg, EVTCHN_ALLOC_UNBOUND.pack(dom, remote, int(result["port"])))
        return 0

    def bind_interdomain(self, arg: int) -> int:
        remote_dom, remote_port, _ = EVTCHN_BIND_INTERDOMAIN.unpack(
            self.copy_in(arg, EVTCHN_BIND_INTERDOMAIN.size))
        rc, result = self._call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_bind_interdomain,
                                remote_dom=remote_dom, remote_port=remote_port)
        if rc < 0:
            return rc
        self.copy_out(arg, EVTCHN_BIND_INTERDOMAIN.pack(remote_dom, remote_port,
                                                        int(result["local_port"])))
        return 0

    def bind_virq(self, arg: int) -> int:
        virq, vcpu, _ = EVTCHN_BIND_VIRQ.unpack(self.copy_in(arg, EVTCHN_BIND_VIRQ.size))
        rc, result = self._call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_bind_virq,
                                virq=virq, vcpu=vcpu)
        if rc < 0:
            return rc
        port = int(result["port"])
        self.copy_out(arg, EVTCHN_BIND_VIRQ.pack(virq, vcpu, port))
        if self.events is not None:
            self.events.bound_virq(virq, vcpu, port)
        return 0

    def bind_ipi(self, arg: int) -> int:
        vcpu, _ = EVTCHN_BIND_IPI.unpack(self.copy_in(arg, EVTCHN_BIND_IPI.size))
        rc, result = self._call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_bind_ipi,
                                vcpu=vcpu)
        if rc < 0:
            return rc
        self.copy_out(arg, EVTCHN_BIND_IPI.pack(vcpu, int(result["port"])))
        if self.events is not None:
            self.events.port_vcpu(int(result["port"]), vcpu)
        return 0

    def bind_vcpu(self, arg: int) -> int:
        port, vcpu = EVTCHN_BIND_VCPU.unpack(self.copy_in(arg, EVTCHN_BIND_VCPU.size))
        rc = self._call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_bind_vcpu,
                        port=port, vcpu=vcpu)[0]
        if rc == 0 and self.events is not None:
            self.events.port_vcpu(port, vcpu)
        return rc

    def status(self, arg: int) -> int:
        dom, port, _status, _vcpu, _u = EVTCHN_STATUS.unpack(
            self.copy_in(arg, EVTCHN_STATUS.size))
        rc, r = self._call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_status,
                           dom=dom, port=port)
        if rc < 0:
            return rc
        st, vcpu, u = int(r["status"]), int(r["vcpu"]), r.get("u") or {}
        out = bytearray(EVTCHN_STATUS.pack(dom, port, st, vcpu, b""))
        if st == EvtchnStat.EVTCHNSTAT_unbound:
            struct.pack_into("<H", out, EVTCHN_STATUS_U_OFF, int(u["unbound"]["dom"]))
        elif st == EvtchnStat.EVTCHNSTAT_interdomain:
            out[:] = EVTCHN_STATUS_INTERDOMAIN.pack(dom, port, st, vcpu,
                                                    int(u["interdomain"]["dom"]),
                                                    int(u["interdomain"]["port"]))
        elif st == EvtchnStat.EVTCHNSTAT_virq:
            struct.pack_into("<I", out, EVTCHN_STATUS_U_OFF, int(u["virq"]))
        self.copy_out(arg, bytes(out))
        return 0

    def reset(self, arg: int) -> int:
        (dom,) = EVTCHN_RESET.unpack(self.copy_in(arg, EVTCHN_RESET.size))
        rc = self._call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_reset, dom=dom)[0]
        if rc == 0 and self.events is not None:
            self.events.closed_port(None)
        return rc


_EVTCHN_OPS: dict[int, Callable[[Forwarder, int], int]] = {
    EvtchnOp.EVTCHNOP_alloc_unbound: Forwarder.alloc_unbound,
    EvtchnOp.EVTCHNOP_bind_interdomain: Forwarder.bind_interdomain,
    EvtchnOp.EVTCHNOP_bind_virq: Forwarder.bind_virq,
    EvtchnOp.EVTCHNOP_bind_ipi: Forwarder.bind_ipi,
    EvtchnOp.EVTCHNOP_send: Forwarder.send,
    EvtchnOp.EVTCHNOP_close: Forwarder.close,
    EvtchnOp.EVTCHNOP_unmask: Forwarder.unmask,
    EvtchnOp.EVTCHNOP_status: Forwarder.status,
    EvtchnOp.EVTCHNOP_bind_vcpu: Forwarder.bind_vcpu,
    EvtchnOp.EVTCHNOP_reset: Forwarder.reset,
}
