"""``HYPERVISOR_physdev_op`` as far as a PV domU kernel needs it (``xen/arch/x86/physdev.c``).

A domU owns no physical devices, IRQs or I/O ports; what an unprivileged PV
kernel does call early is served as Xen serves it:

* ``PHYSDEVOP_set_iopl`` (Linux's ``xen_start_kernel`` sets IOPL 1): any
  PV vCPU may; ``iopl > 3`` is ``-EINVAL``. Recorded; with no I/O ports
  granted to the domain it lets nothing through.
* ``PHYSDEVOP_set_iobitmap``: recorded; ``nr_ports > 65536`` is ``-EINVAL``.

Every other sub-op is ``-ENOSYS`` (pirq, MSI, PCI management: hardware
domains only); Linux falls back where it probes them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from hypervisord.public.errno import XenErrno

PHYSDEVOP_set_iopl = 6  # xen/include/public/physdev.h
PHYSDEVOP_set_iobitmap = 7
PHYSDEV_SET_IOPL = struct.Struct("<I")  # struct physdev_set_iopl { uint32_t iopl; }
#: struct physdev_set_iobitmap { XEN_GUEST_HANDLE(uint8) bitmap; uint32_t nr_ports; }
PHYSDEV_SET_IOBITMAP = struct.Struct("<QI4x")
assert PHYSDEV_SET_IOBITMAP.size == 16


@dataclass(slots=True)
class PhysdevState:
    iopl: int = 0
    iobmp: int = 0
    iobmp_nr: int = 0


def physdev_op(state: PhysdevState, cmd: int, arg: int,
               copy_in: Callable[[int, int], bytes]) -> int:
    """A bad ``arg`` raises the caller's GuestFault (``-EFAULT``), as Xen's copy_from_guest."""
    if cmd == PHYSDEVOP_set_iopl:
        (iopl,) = PHYSDEV_SET_IOPL.unpack(copy_in(arg, PHYSDEV_SET_IOPL.size))
        if iopl > 3:
            return -XenErrno.XEN_EINVAL
        state.iopl = iopl
        return 0
    if cmd == PHYSDEVOP_set_iobitmap:
        bitmap, nr_ports = PHYSDEV_SET_IOBITMAP.unpack(copy_in(arg, PHYSDEV_SET_IOBITMAP.size))
        if nr_ports > 65536:
            return -XenErrno.XEN_EINVAL
        state.iobmp, state.iobmp_nr = bitmap, nr_ports
        return 0
    return -XenErrno.XEN_ENOSYS
