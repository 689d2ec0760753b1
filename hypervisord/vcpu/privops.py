"""``domctl``, ``sysctl`` and ``platform_op`` from a PV guest's vCPU.

These are the toolstack's hypercalls (Xen ``xen/common/domctl.c``
``do_domctl``, ``xen/common/sysctl.c`` ``do_sysctl``,
``xen/arch/x86/platform_hypercall.c`` ``do_platform_op``). Each copies the
whole struct in (``-EFAULT`` if any of it is unreadable), checks its
``interface_version`` (``-EACCES``; a stable domctl, only
``XEN_DOMCTL_get_domain_state``, wants 0) and then asks XSM, whose default
policy lets only the control domain (the hardware domain for
``platform_op``) through: ``-EPERM`` for anyone else, a domctl on a domain
that does not exist included (``do_domctl``: ``-ESRCH`` only for the control
domain).

A pvxen PV guest is never privileged: the control domain, dom0, is the
host's own toolstack (``toolstack/``), which reaches hypervisord directly.
So after Xen's checks every call answers ``-EPERM`` here, on the vCPU,
without a round trip; the privileged paths live in hypervisord for dom0.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from hypervisord.public.domctl import XEN_DOMCTL_INTERFACE_VERSION
from hypervisord.public.errno import XenErrno
from hypervisord.public.sysctl import XEN_SYSCTL_INTERFACE_VERSION

#: ``xen/include/public/platform.h``
XENPF_INTERFACE_VERSION = 0x03000001
XEN_DOMCTL_get_domain_state = 90  # the one stable domctl (interface_version 0)
#: sizeof the structs: header, then a union padded to 128 bytes
DOMCTL_SIZE = 16 + 128   # cmd, interface_version, domain, _pad[3]
SYSCTL_SIZE = 8 + 128    # cmd, interface_version
PLATFORM_OP_SIZE = 8 + 128
_HEAD = struct.Struct("<II")

CopyIn = Callable[[int, int], bytes]


def _op(copy_in: CopyIn, va: int, size: int, version: Callable[[int], int]) -> int:
    op = copy_in(va, size)  # GuestFault -> -EFAULT (the dispatcher)
    cmd, interface_version = _HEAD.unpack_from(op)
    if interface_version != version(cmd):
        return -XenErrno.XEN_EACCES
    return -XenErrno.XEN_EPERM  # XSM: a domU is not the control domain


def domctl(copy_in: CopyIn, va: int) -> int:
    return _op(copy_in, va, DOMCTL_SIZE, lambda cmd: 0 if cmd == XEN_DOMCTL_get_domain_state
               else XEN_DOMCTL_INTERFACE_VERSION)


def sysctl(copy_in: CopyIn, va: int) -> int:
    return _op(copy_in, va, SYSCTL_SIZE, lambda _cmd: XEN_SYSCTL_INTERFACE_VERSION)


def platform_op(copy_in: CopyIn, va: int) -> int:
    return _op(copy_in, va, PLATFORM_OP_SIZE, lambda _cmd: XENPF_INTERFACE_VERSION)
