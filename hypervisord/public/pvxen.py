"""pvxen's own hypercall extension: what Xen does with kernel devices.

Xen's dom0 reaches the hypervisor through kernel drivers (privcmd,
/dev/xen/evtchn, gntdev); pvxen processes have no such kernel, so these
ops hand over the file descriptors those drivers stand for. The number is
outside Xen's hypercall range on purpose, so no Xen op can collide.
"""

from __future__ import annotations

from enum import IntEnum

HYPERVISOR_pvxen_op = 0x7000


class PvxenOp(IntEnum):
    #: OUT: fds ``evtchn`` (notification stream: u32 LE port numbers) and
    #: ``memory`` (the caller's own domain memory file); domid, max_gfns.
    attach = 0
    #: dom0 only. IN: domid. OUT: fds ``hypercall`` (a connection already
    #: bound to that domain), ``evtchn``, ``memory`` for the domain's process.
    connect_domain = 1
    #: dom0 only (privcmd foreign map). IN: domid. OUT: fd ``memory`` of the
    #: domain, and ``p2m``: the gfns it has populated.
    map_foreign = 2
    #: The calling process reads doorbells from its event stream
    #: (EVTCHN_NOTIFY_DOORBELL entries); channels between two such processes
    #: get one at EVTCHNOP_bind_interdomain.
    evtchn_doorbells = 3
    #: OUT: ``max_vcpus`` of the caller's own domain (XEN_DOMCTL_max_vcpus):
    #: a PV guest process runs that many vCPUs at most (hypervisord/vcpu/smp.py).
    max_vcpus = 4
    #: domU only: the calling process (a PV vCPU process) writes its
    #: domain's pending, selector and upcall-pending bits itself, between
    #: its vCPU's slices; from now on hypervisord only writes a port's entry
    #: (``port | vcpu << EVTCHN_NOTIFY_VCPU_SHIFT``) on the event stream for
    #: the process to apply (``hypervisord/evtchn.py``, ``set_pending``).
    evtchn_vcpu_bits = 5


#: Layout of a notification on the event-channel stream: a u32 LE port.
EVTCHN_NOTIFY_SIZE = 4
#: A stream entry ``port | EVTCHN_NOTIFY_DOORBELL`` carries (SCM_RIGHTS) the
#: process's end of the doorbell of interdomain channel ``port``: a
#: SOCK_SEQPACKET pair between the two ends' processes, made by hypervisord
#: at EVTCHNOP_bind_interdomain, so a send on a bound channel need not go
#: through hypervisord (a byte on the doorbell), and a doorbell can reach
#: nothing but the one peer port it was made for.
EVTCHN_NOTIFY_DOORBELL = 0x80000000
#: On an ``evtchn_vcpu_bits`` stream an entry also names the vCPU the port is
#: bound to (``EVTCHNOP_bind_vcpu``), whose ``vcpu_info`` gets the selector bit.
EVTCHN_NOTIFY_VCPU_SHIFT = 16
EVTCHN_NOTIFY_PORT_MASK = 0xFFFF
