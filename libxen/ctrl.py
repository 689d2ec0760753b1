"""Domain and host control (libxenctrl's ``xc_domain_*``/``xc_physinfo``).

Thin, typed wrappers over the domctl/sysctl/memory/sched hypercalls; they
work with either :class:`~libxen.core.XenCall` (awaited) or
:class:`~libxen.core.SyncXenCall` (the ``*_sync`` helper).
"""

from __future__ import annotations

from dataclasses import dataclass

from hypervisord.public.domctl import (
    XEN_DOMINF_blocked,
    XEN_DOMINF_dying,
    XEN_DOMINF_paused,
    XEN_DOMINF_running,
    XEN_DOMINF_shutdown,
    DomctlCmd as D,
    dominf_shutdown_code,
)
from hypervisord.public.memory import XenMemOp as M
from hypervisord.public.pvxen import HYPERVISOR_pvxen_op, PvxenOp
from hypervisord.public.sched import SchedOp
from hypervisord.public.sysctl import SysctlCmd as S
from hypervisord.public.version import XenVerOp
from hypervisord.public.xen import DOMID_SELF, Hypercall as H


@dataclass(frozen=True, slots=True)
class DomainInfo:
    domid: int
    flags: int
    tot_pages: int
    max_pages: int
    cpu_time: int
    vcpus: int
    handle: bytes
    pid: int = 0  # pvxen: the domain's process, whose threads are its vCPUs (0: none)

    @classmethod
    def from_result(cls, r: dict) -> "DomainInfo":
        return cls(r["domain"], r["flags"], r["tot_pages"], r["max_pages"], r["cpu_time"],
                   r["nr_online_vcpus"], r["handle"], int(r.get("pid", 0)))

    @property
    def dying(self) -> bool:
        return bool(self.flags & XEN_DOMINF_dying)

    @property
    def shutdown(self) -> bool:
        return bool(self.flags & XEN_DOMINF_shutdown)

    @property
    def shutdown_reason(self) -> int | None:
        return dominf_shutdown_code(self.flags) if self.shutdown else None

    def state_letters(self) -> str:
        """``xl list``'s six columns: r b p s <reason> d."""
        f = self.flags
        reason = "-"
        if self.shutdown:
            code = dominf_shutdown_code(f)
            reason = "-rscwS"[code] if code < 6 else "?"
        return "".join((
            "r" if f & XEN_DOMINF_running else "-",
            "b" if f & XEN_DOMINF_blocked else "-",
            "p" if f & XEN_DOMINF_paused else "-",
            "s" if f & XEN_DOMINF_shutdown else "-",
            reason if self.shutdown else "-",
            "d" if f & XEN_DOMINF_dying else "-",
        ))


# Each op: (hypercall, subop, argument builder). The same table serves both
# the async and the sync client.

def domain_create(xc, *, domid: int = 0, handle: bytes = b"", max_vcpus: int = 1):
    return xc.call(H.domctl, D.XEN_DOMCTL_createdomain, domain=domid, handle=handle,
                   max_vcpus=max_vcpus)


def domain_destroy(xc, domid: int):
    return xc.call(H.domctl, D.XEN_DOMCTL_destroydomain, domain=domid)


def domain_pause(xc, domid: int):
    return xc.call(H.domctl, D.XEN_DOMCTL_pausedomain, domain=domid)


def domain_unpause(xc, domid: int):
    return xc.call(H.domctl, D.XEN_DOMCTL_unpausedomain, domain=domid)


def domain_getinfo(xc, domid: int):
    return xc.call(H.domctl, D.XEN_DOMCTL_getdomaininfo, domain=domid)


def domain_max_mem(xc, domid: int, max_kb: int):
    return xc.call(H.domctl, D.XEN_DOMCTL_max_mem, domain=domid, max_memkb=max_kb)


def domain_max_vcpus(xc, domid: int, n: int):
    return xc.call(H.domctl, D.XEN_DOMCTL_max_vcpus, domain=domid, max=n)


def domain_setvcpuaffinity(xc, domid: int, vcpu: int, cpus: list[int]):
    return xc.call(H.domctl, D.XEN_DOMCTL_setvcpuaffinity, domain=domid, vcpu=vcpu,
                   cpumap_hard=cpus)


def domain_getinfolist(xc, first: int = 0, count: int = 4096):
    return xc.call(H.sysctl, S.XEN_SYSCTL_getdomaininfolist, first_domain=first,
                   max_domains=count)


def physinfo(xc):
    return xc.call(H.sysctl, S.XEN_SYSCTL_physinfo)


def readconsole(xc, clear: bool = False):
    return xc.call(H.sysctl, S.XEN_SYSCTL_readconsole, clear=clear)


def populate_physmap(xc, gfns: list[int], domid: int = DOMID_SELF):
    return xc.call(H.memory_op, M.XENMEM_populate_physmap, domid=domid, extent_start=gfns,
                   extent_order=0)


def decrease_reservation(xc, gfns: list[int], domid: int = DOMID_SELF):
    return xc.call(H.memory_op, M.XENMEM_decrease_reservation, domid=domid, extent_start=gfns,
                   extent_order=0)


def current_reservation(xc, domid: int = DOMID_SELF):
    return xc.call(H.memory_op, M.XENMEM_current_reservation, domid=domid)


def shutdown(xc, reason: int):
    return xc.call(H.sched_op, SchedOp.SCHEDOP_shutdown, reason=reason)


def remote_shutdown(xc, domid: int, reason: int):
    return xc.call(H.sched_op, SchedOp.SCHEDOP_remote_shutdown, domain_id=domid, reason=reason)


def xen_version(xc):
    return xc.call(H.xen_version, XenVerOp.XENVER_version)


def attach(xc):
    """Get this process's event-channel stream and its own memory file."""
    return xc.call(HYPERVISOR_pvxen_op, PvxenOp.attach)


def evtchn_vcpu_bits(xc):
    """A PV vCPU process: its domain's event bits are its own to set (pvxen.py)."""
    return xc.call(HYPERVISOR_pvxen_op, PvxenOp.evtchn_vcpu_bits)


def own_max_vcpus(xc) -> int:
    """The caller's own domain's max_vcpus (pvxen op; a PV guest process sizes its vCPUs)."""
    return int(xc.call(HYPERVISOR_pvxen_op, PvxenOp.max_vcpus)[1]["max_vcpus"])


def connect_domain(xc, domid: int):
    """dom0: the descriptors a domain's process is started with."""
    return xc.call(HYPERVISOR_pvxen_op, PvxenOp.connect_domain, domid=domid)


def map_foreign(xc, domid: int, gfns: list[int] | None = None):
    """dom0: the domain's memory fd; with ``gfns``, which of them are populated."""
    if gfns is None:
        return xc.call(HYPERVISOR_pvxen_op, PvxenOp.map_foreign, domid=domid)
    return xc.call(HYPERVISOR_pvxen_op, PvxenOp.map_foreign, domid=domid, gfns=gfns)
