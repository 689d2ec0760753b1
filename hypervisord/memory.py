"""``XENMEM_*`` (memory_op): reservations, the physmap, accounting.

A domain names itself with ``DOMID_SELF``; naming another domain needs
privilege (the toolstack builds and balloons guests), as in Xen. Ops over
extent lists return how many extents were done, so a partial success is
visible to the caller exactly as in Xen.
"""

from __future__ import annotations

from hypervisord.errors import E, fail
from hypervisord.hypercall import Handler, int_list, u
from hypervisord.public.memory import XenMemOp as M
from hypervisord.public.xen import DOMID_SELF, Hypercall

MEMORY_OP = Hypercall.memory_op
MAX_EXTENTS = 1 << 18  # per call; larger requests are the caller's to split


def target(hv, caller, args):
    """The domain an op is about: the caller itself, or any if privileged."""
    domid = u(args, "domid", 16, DOMID_SELF)
    if domid in (DOMID_SELF, caller.domid):
        return hv.domain(caller.domid)
    if not caller.privileged:
        raise fail(E.XEN_EPERM, f"d{caller.domid} may not touch d{domid}'s memory")
    return hv.domain(domid)


def _extents(args) -> list[int]:
    order = u(args, "extent_order", 32, 0)
    if order > 9:
        raise fail(E.XEN_EINVAL, "extent_order above 2 MiB")
    starts = int_list(args, "extent_start", MAX_EXTENTS)
    if order == 0:
        return starts
    if len(starts) << order > MAX_EXTENTS:
        raise fail(E.XEN_EINVAL, "too many pages in one call")
    return [s + i for s in starts for i in range(1 << order)]


def populate_physmap(hv, caller, args):
    dom = target(hv, caller, args)
    order = u(args, "extent_order", 32, 0)
    done = hv.populate(dom, _extents(args))
    return done >> order


def decrease_reservation(hv, caller, args):
    dom = target(hv, caller, args)
    order = u(args, "extent_order", 32, 0)
    done = hv.decrease(dom, _extents(args))
    return done >> order


def current_reservation(hv, caller, args):
    return target(hv, caller, args).mem.tot_pages


def maximum_reservation(hv, caller, args):
    return target(hv, caller, args).max_pages


def maximum_gpfn(hv, caller, args):
    return max(target(hv, caller, args).mem.p2m, default=0)


def maximum_ram_page(hv, caller, args):
    return hv.mem.max_mfn


HANDLERS = {
    (MEMORY_OP, M.XENMEM_populate_physmap): Handler(populate_physmap),
    (MEMORY_OP, M.XENMEM_decrease_reservation): Handler(decrease_reservation),
    (MEMORY_OP, M.XENMEM_current_reservation): Handler(current_reservation),
    (MEMORY_OP, M.XENMEM_maximum_reservation): Handler(maximum_reservation),
    (MEMORY_OP, M.XENMEM_maximum_gpfn): Handler(maximum_gpfn),
    (MEMORY_OP, M.XENMEM_maximum_ram_page): Handler(maximum_ram_page),
}
