"""``HYPERVISOR_multicall``: a batch of hypercalls in one trap (``xen/common/multicall.c``).

``struct multicall_entry { xen_ulong_t op, result; xen_ulong_t args[6]; }``
(``xen/include/public/xen.h``). Each entry is read once, dispatched through
the vCPU's own hypercall table exactly as if the guest had made it (so each
element is authorised on its own, XSA-213), and its result written back to
``result``. A failing element does not stop the batch (Xen's semantics: the
caller checks each ``result``); an unreadable entry or an unwritable
``result`` stops it with ``-EFAULT``. ``iret`` ends the batch (Xen's
``mc_exit``: the guest continues in the frame it returned to), and a
multicall inside a multicall is refused with ``-EINVAL`` in that entry's
result ("Multicall reentry is disallowed"). Only five arguments are used,
as in Xen. Never preempted: one vCPU, bounded by the guest's count.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from hypervisord.public.errno import XenErrno
from hypervisord.public.xen import MULTICALL_ENTRY, Hypercall

if TYPE_CHECKING:
    from .hypercalls import VcpuHypercalls

_RESULT = struct.Struct("<Q")
_RESULT_OFF = 8


def run(hc: VcpuHypercalls, calls: int, nr_calls: int) -> int | None:
    """Returns 0, -EFAULT, or None when an ``iret`` element set the registers."""
    from .hypercalls import GuestFault, copy_from_guest

    if hc.in_multicall:
        return -XenErrno.XEN_EINVAL
    hc.in_multicall = True
    try:
        for i in range(nr_calls):
            entry = calls + i * MULTICALL_ENTRY.size
            try:
                op, _result, *args = MULTICALL_ENTRY.unpack(
                    copy_from_guest(hc.cpu, entry, MULTICALL_ENTRY.size))
            except GuestFault:
                return -XenErrno.XEN_EFAULT
            rc = hc.call(op, args[:5])
            if op == Hypercall.iret:
                if rc is None:  # returned to the guest's frame: the batch is over
                    return None
                result = rc
            else:
                result = rc if rc is not None else hc.cpu.reg("rax")
            try:
                hc.copy_to_guest(entry + _RESULT_OFF, _RESULT.pack(result & (2**64 - 1)))
            except GuestFault:
                return -XenErrno.XEN_EFAULT
        return 0
    finally:
        hc.in_multicall = False
