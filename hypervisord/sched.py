"""``SCHEDOP_*`` (sched_op): yield, block, shutdown, remote shutdown.

A domain's vCPUs are its process: blocking is the process sleeping, so
yield and block need nothing from us; shutdown records the reason, which
``getdomaininfo`` reports and ``xl list`` shows, and tells dom0.
"""

from __future__ import annotations

from hypervisord.errors import E, fail
from hypervisord.hypercall import Handler, u
from hypervisord.public.sched import SHUTDOWN_MAX, SchedOp as S
from hypervisord.public.xen import Hypercall

SCHED_OP = Hypercall.sched_op


def _reason(args) -> int:
    reason = u(args, "reason", 32)
    if reason > SHUTDOWN_MAX:
        raise fail(E.XEN_EINVAL, f"unknown shutdown reason {reason}")
    return reason


def do_yield(hv, caller, args):
    return 0


def shutdown(hv, caller, args):
    hv.shutdown(hv.domain(caller.domid), _reason(args))


def shutdown_code(hv, caller, args):
    dom = hv.domain(caller.domid)
    dom.shutdown_code_latched = _reason(args)


def remote_shutdown(hv, caller, args):
    dom = hv.domain(u(args, "domain_id", 16))
    hv.shutdown(dom, _reason(args))


HANDLERS = {
    (SCHED_OP, S.SCHEDOP_yield): Handler(do_yield),
    (SCHED_OP, S.SCHEDOP_block): Handler(do_yield),
    (SCHED_OP, S.SCHEDOP_shutdown): Handler(shutdown),
    (SCHED_OP, S.SCHEDOP_remote_shutdown): Handler(remote_shutdown, privileged=True),
}
