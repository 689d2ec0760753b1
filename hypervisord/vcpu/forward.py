"""Hypercalls on global state, forwarded to hypervisord.

Event channels, grants and memory ownership live in hypervisord (the
architecture's "global state stays in hypervisord"); a vCPU decodes the
guest's argument struct from guest memory (copy once, then it is ours),
makes the same hypercall on the domain's connection (the caller's domid is
the connection's, never the payload's), and writes the OUT fields back.

So far ``event_channel_op``: ``EVTCHNOP_send``, ``EVTCHNOP_alloc_unbound``,
``EVTCHNOP_close`` (``xen/include/public/event_channel.h``). Next:
``grant_table_op``, ``memory_op``, the rest of ``event_channel_op``.
"""

from __future__ import annotations

from collections.abc import Callable

from hypervisord.public.errno import XenErrno
from hypervisord.public.event_channel import (EVTCHN_ALLOC_UNBOUND, EVTCHN_CLOSE,
                                              EVTCHN_SEND, EvtchnOp)
from hypervisord.public.xen import Hypercall
from libxen.sync import XenError

CopyIn = Callable[[int, int], bytes]
CopyOut = Callable[[int, bytes], None]


class Forwarder:
    """The forwarded hypercalls of one vCPU over ``xc`` (a SyncXenCall)."""

    def __init__(self, xc, copy_in: CopyIn, copy_out: CopyOut) -> None:
        self.xc, self.copy_in, self.copy_out = xc, copy_in, copy_out

    def table(self) -> dict[int, Callable[[int, list[int]], int]]:
        return {Hypercall.event_channel_op: self.event_channel_op}

    def _call(self, hypercall: int, subop: int, **args) -> tuple[int, dict]:
        try:
            return self.xc.call(hypercall, subop, **args)
        except XenError as e:
            return -e.errno, {}

    def event_channel_op(self, _nr: int, args: list[int]) -> int:
        cmd, arg = args[0] & 0xFFFF_FFFF, args[1]
        ev = Hypercall.event_channel_op
        if cmd == EvtchnOp.EVTCHNOP_send:
            (port,) = EVTCHN_SEND.unpack(self.copy_in(arg, EVTCHN_SEND.size))
            return self._call(ev, cmd, port=port)[0]
        if cmd == EvtchnOp.EVTCHNOP_close:
            (port,) = EVTCHN_CLOSE.unpack(self.copy_in(arg, EVTCHN_CLOSE.size))
            return self._call(ev, cmd, port=port)[0]
        if cmd == EvtchnOp.EVTCHNOP_alloc_unbound:
            dom, remote, _ = EVTCHN_ALLOC_UNBOUND.unpack(
                self.copy_in(arg, EVTCHN_ALLOC_UNBOUND.size))
            rc, result = self._call(ev, cmd, dom=dom, remote_dom=remote)
            if rc < 0:
                return rc
            self.copy_out(arg, EVTCHN_ALLOC_UNBOUND.pack(dom, remote, int(result["port"])))
            return 0
        return -XenErrno.XEN_ENOSYS
