"""Test hook: hypervisord with one extra hypercall family whose handlers are buggy.

Run as ``python -m tests.hypervisord.buggy_hypervisord --rundir DIR``; it is
the real daemon (``hypervisord.main.main``) with :data:`HANDLERS` added to
its family list before it starts, so production code carries no test flag.
The handlers raise what a hypervisor bug raises (a ``KeyError`` from a
table lookup, a ``ZeroDivisionError``), never a :class:`HypercallError`.
"""

from __future__ import annotations

import sys

from hypervisord import main as hv_main
from hypervisord.hypercall import Handler
from hypervisord.public.xen import Hypercall

#: subops of xen_version that Xen does not define (XENVER_* stop far below)
BUGGY_KEYERROR = 0x7E57
BUGGY_ZERODIV = 0x7E58


def _keyerror(hv, caller, args):
    return {}["no such internal table entry"]


def _zerodiv(hv, caller, args):
    return len(hv.domains) // 0


HANDLERS = {
    (Hypercall.xen_version, BUGGY_KEYERROR): Handler(_keyerror),
    (Hypercall.xen_version, BUGGY_ZERODIV): Handler(_zerodiv),
}

if __name__ == "__main__":
    hv_main.FAMILIES.append(sys.modules[__name__])
    sys.exit(hv_main.main())
