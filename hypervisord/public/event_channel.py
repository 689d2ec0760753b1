"""Event channels: mirrors ``xen/include/public/event_channel.h``
(Xen commit c447b730, 4.23-unstable).

``HYPERVISOR_event_channel_op(cmd, arg)`` with ``cmd`` an ``EVTCHNOP_*`` and
``arg`` the matching ``struct evtchn_*``; every struct below is IN/OUT as
noted. Ports are ``evtchn_port_t`` (uint32). The 2-level ABI keeps pending
and mask bits in ``shared_info`` (see ``xen.py``).
"""

from __future__ import annotations

import struct
from enum import IntEnum


class EvtchnOp(IntEnum):
    """``enum event_channel_op``."""

    EVTCHNOP_bind_interdomain = 0
    EVTCHNOP_bind_virq = 1
    EVTCHNOP_bind_pirq = 2
    EVTCHNOP_close = 3
    EVTCHNOP_send = 4
    EVTCHNOP_status = 5
    EVTCHNOP_alloc_unbound = 6
    EVTCHNOP_bind_ipi = 7
    EVTCHNOP_bind_vcpu = 8
    EVTCHNOP_unmask = 9
    EVTCHNOP_reset = 10
    EVTCHNOP_init_control = 11
    EVTCHNOP_expand_array = 12
    EVTCHNOP_set_priority = 13
    # 14 (EVTCHNOP_reset_cont) is internal to Xen.


class EvtchnStat(IntEnum):
    """``EVTCHNSTAT_*``: ``evtchn_status.status``."""

    EVTCHNSTAT_closed = 0  # channel is not in use
    EVTCHNSTAT_unbound = 1  # waiting for an interdomain connection
    EVTCHNSTAT_interdomain = 2  # connected to a remote domain
    EVTCHNSTAT_pirq = 3  # bound to a physical IRQ line
    EVTCHNSTAT_virq = 4  # bound to a virtual IRQ line
    EVTCHNSTAT_ipi = 5  # bound to a virtual IPI line


EVTCHN_PORT_T = struct.Struct("<I")

#: IN dom, remote_dom; OUT port. Unprivileged callers: dom == DOMID_SELF.
#: remote_dom may be DOMID_SELF (loopback).
EVTCHN_ALLOC_UNBOUND = struct.Struct("<HHI")
assert EVTCHN_ALLOC_UNBOUND.size == 8

#: IN remote_dom, remote_port; OUT local_port. The remote port must be
#: unbound and accept the caller; the new local port is always set pending.
EVTCHN_BIND_INTERDOMAIN = struct.Struct("<H2xII")
assert EVTCHN_BIND_INTERDOMAIN.size == 12

#: IN virq, vcpu; OUT port. Global/per-domain VIRQs bind on vCPU 0.
EVTCHN_BIND_VIRQ = struct.Struct("<III")
assert EVTCHN_BIND_VIRQ.size == 12

#: IN pirq, flags (BIND_PIRQ__*); OUT port. Privileged only.
EVTCHN_BIND_PIRQ = struct.Struct("<III")
assert EVTCHN_BIND_PIRQ.size == 12
BIND_PIRQ__WILL_SHARE = 1

#: IN vcpu; OUT port. The binding cannot change later.
EVTCHN_BIND_IPI = struct.Struct("<II")
assert EVTCHN_BIND_IPI.size == 8

#: IN port. An interdomain peer goes back to EVTCHNSTAT_unbound.
EVTCHN_CLOSE = struct.Struct("<I")
#: IN port: notify the remote end of the channel whose local end is port.
EVTCHN_SEND = struct.Struct("<I")
#: IN port: clear the mask bit and deliver an upcall if pending.
EVTCHN_UNMASK = struct.Struct("<I")
assert EVTCHN_CLOSE.size == EVTCHN_SEND.size == EVTCHN_UNMASK.size == 4

#: struct evtchn_status, generic view: IN dom, port; OUT status, vcpu and an
#: 8-byte union ``u`` left raw. The per-status views below decode ``u``.
EVTCHN_STATUS = struct.Struct("<H2xIII8s")
EVTCHN_STATUS_UNBOUND = struct.Struct("<H2xIIIH6x")  # ... u.unbound.dom
EVTCHN_STATUS_INTERDOMAIN = struct.Struct("<H2xIIIH2xI")  # ... u.interdomain.{dom,port}
EVTCHN_STATUS_PIRQ = struct.Struct("<H2xIIII4x")  # ... u.pirq
EVTCHN_STATUS_VIRQ = struct.Struct("<H2xIIII4x")  # ... u.virq
EVTCHN_STATUS_U_OFF = 16
assert EVTCHN_STATUS.size == 24
assert EVTCHN_STATUS_UNBOUND.size == EVTCHN_STATUS_INTERDOMAIN.size == 24
assert EVTCHN_STATUS_PIRQ.size == EVTCHN_STATUS_VIRQ.size == 24

#: IN port, vcpu. IPI and per-vCPU VIRQ channels refuse re-binding.
EVTCHN_BIND_VCPU = struct.Struct("<II")
assert EVTCHN_BIND_VCPU.size == 8

#: IN dom (DOMID_SELF, or another domain if privileged): close all ports.
EVTCHN_RESET = struct.Struct("<H")
assert EVTCHN_RESET.size == 2

#: FIFO ABI. IN control_gfn, offset, vcpu; OUT link_bits.
EVTCHN_INIT_CONTROL = struct.Struct("<QIIB7x")
assert EVTCHN_INIT_CONTROL.size == 24
EVTCHN_EXPAND_ARRAY = struct.Struct("<Q")  # IN array_gfn
EVTCHN_SET_PRIORITY = struct.Struct("<II")  # IN port, priority
assert EVTCHN_EXPAND_ARRAY.size == EVTCHN_SET_PRIORITY.size == 8

#: struct evtchn_op (the pre-3.2.2 compat hypercall): cmd + the union of
#: the op structs above (largest: evtchn_status, 24 bytes).
EVTCHN_OP = struct.Struct("<I24s")
assert EVTCHN_OP.size == 28

EVTCHNOP_STRUCT: dict[EvtchnOp, struct.Struct] = {
    EvtchnOp.EVTCHNOP_bind_interdomain: EVTCHN_BIND_INTERDOMAIN,
    EvtchnOp.EVTCHNOP_bind_virq: EVTCHN_BIND_VIRQ,
    EvtchnOp.EVTCHNOP_bind_pirq: EVTCHN_BIND_PIRQ,
    EvtchnOp.EVTCHNOP_close: EVTCHN_CLOSE,
    EvtchnOp.EVTCHNOP_send: EVTCHN_SEND,
    EvtchnOp.EVTCHNOP_status: EVTCHN_STATUS,
    EvtchnOp.EVTCHNOP_alloc_unbound: EVTCHN_ALLOC_UNBOUND,
    EvtchnOp.EVTCHNOP_bind_ipi: EVTCHN_BIND_IPI,
    EvtchnOp.EVTCHNOP_bind_vcpu: EVTCHN_BIND_VCPU,
    EvtchnOp.EVTCHNOP_unmask: EVTCHN_UNMASK,
    EvtchnOp.EVTCHNOP_reset: EVTCHN_RESET,
    EvtchnOp.EVTCHNOP_init_control: EVTCHN_INIT_CONTROL,
    EvtchnOp.EVTCHNOP_expand_array: EVTCHN_EXPAND_ARRAY,
    EvtchnOp.EVTCHNOP_set_priority: EVTCHN_SET_PRIORITY,
}

# ---------------------------------------------------------------------------
# 2-level ABI: sizeof(xen_ulong_t) * sizeof(xen_ulong_t) * 64 ports.
# (Xen's implementation, not this header, reserves port 0: never allocated.)
# ---------------------------------------------------------------------------
EVTCHN_2L_NR_CHANNELS = 8 * 8 * 64
assert EVTCHN_2L_NR_CHANNELS == 4096

# ---------------------------------------------------------------------------
# FIFO ABI (event words in guest pages).
# ---------------------------------------------------------------------------
EVTCHN_FIFO_PRIORITY_MAX = 0  # highest
EVTCHN_FIFO_PRIORITY_DEFAULT = 7
EVTCHN_FIFO_PRIORITY_MIN = 15  # lowest
EVTCHN_FIFO_MAX_QUEUES = EVTCHN_FIFO_PRIORITY_MIN + 1
EVTCHN_FIFO_PENDING = 31  # bit numbers in an event_word_t (uint32)
EVTCHN_FIFO_MASKED = 30
EVTCHN_FIFO_LINKED = 29
EVTCHN_FIFO_BUSY = 28
EVTCHN_FIFO_LINK_BITS = 17
EVTCHN_FIFO_LINK_MASK = (1 << EVTCHN_FIFO_LINK_BITS) - 1
EVTCHN_FIFO_NR_CHANNELS = 1 << EVTCHN_FIFO_LINK_BITS

#: struct evtchn_fifo_control_block: ready, _rsvd, head[16].
EVTCHN_FIFO_CONTROL_BLOCK = struct.Struct("<II16I")
assert EVTCHN_FIFO_CONTROL_BLOCK.size == 72
