"""``XEN_DOMCTL_*`` and ``XEN_SYSCTL_*`` (domain and host control), dom0 only.

Argument maps carry the fields of ``struct xen_domctl_*`` under their C
names. Not implemented ops get ``-ENOSYS`` from the dispatcher.
"""

from __future__ import annotations

from hypervisord.errors import E, fail
from hypervisord.hypercall import Handler, int_list, u
from hypervisord.public.domctl import DomctlCmd as D
from hypervisord.public.sysctl import SysctlCmd as S
from hypervisord.public.xen import DOMID_FIRST_RESERVED, PAGE_SIZE, Hypercall

DOMCTL = Hypercall.domctl
SYSCTL = Hypercall.sysctl


def _dom(hv, args, name: str = "domain"):
    return hv.domain(u(args, name, 16))


def createdomain(hv, caller, args):
    handle = args.get("handle", b"")
    if not isinstance(handle, bytes) or len(handle) not in (0, 16):
        raise fail(E.XEN_EINVAL, "handle must be 16 bytes")
    domid = u(args, "domain", 16, 0)
    max_vcpus = u(args, "max_vcpus", 16, 1)
    if not 1 <= max_vcpus <= 128:
        raise fail(E.XEN_EINVAL, "max_vcpus out of range")
    dom = hv.create_domain(domid or None, handle or None, 0)
    dom.max_vcpus = max_vcpus
    return {"domain": dom.domid}


def destroydomain(hv, caller, args):
    hv.destroy(_dom(hv, args))


def pausedomain(hv, caller, args):
    hv.pause(_dom(hv, args))


def unpausedomain(hv, caller, args):
    hv.unpause(_dom(hv, args))


def domaininfo(dom) -> dict:
    return {
        "domain": dom.domid,
        "flags": dom.info_flags(),
        "tot_pages": dom.mem.tot_pages,
        "max_pages": dom.max_pages,
        "cpu_time": dom.cpu_time(),
        "nr_online_vcpus": dom.max_vcpus,
        "max_vcpu_id": dom.max_vcpus - 1,
        "handle": dom.handle,
        "ssidref": 0,
        "cpupool": 0,
        # pvxen: the domain's process (host pid namespace; 0: none yet), whose
        # threads are its vCPUs (toolstack/vcpus.py); dom0's is hypervisord
        "pid": dom.process() or 0,
    }


def getdomaininfo(hv, caller, args):
    """Xen semantics: the first domain whose id is >= the one asked for."""
    want = u(args, "domain", 16)
    if want in hv.domains:
        return domaininfo(hv.domains[want])
    later = [d for d in hv.domains if d >= want]
    if not later:
        raise fail(E.XEN_ESRCH, f"no domain >= {want}")
    return domaininfo(hv.domains[min(later)])


def max_mem(hv, caller, args):
    dom = _dom(hv, args)
    kb = u(args, "max_memkb", 64)
    if kb * 1024 // PAGE_SIZE > hv.mem.total_frames:
        raise fail(E.XEN_EINVAL, "max_memkb larger than the machine")
    hv.set_max_mem(dom, kb)


def max_vcpus(hv, caller, args):
    dom = _dom(hv, args)
    n = u(args, "max", 32)
    if not 1 <= n <= 128:
        raise fail(E.XEN_EINVAL, "max vcpus out of range")
    dom.max_vcpus = n


def setvcpuaffinity(hv, caller, args):
    dom = _dom(hv, args)
    vcpu = u(args, "vcpu", 32)
    if vcpu >= dom.max_vcpus:
        raise fail(E.XEN_EINVAL, "no such vcpu")
    dom.vcpu_affinity[vcpu] = int_list(args, "cpumap_hard", 4096)


def set_target(hv, caller, args):
    dom = _dom(hv, args)
    target = hv.domain(u(args, "target", 16))
    dom.target = target.domid


def physinfo(hv, caller, args):
    return {
        "threads_per_core": 1,
        "cores_per_socket": 1,
        "nr_cpus": _ncpus(),
        "max_cpu_id": _ncpus() - 1,
        "nr_nodes": 1,
        "cpu_khz": 0,
        "total_pages": hv.mem.total_frames,
        "free_pages": hv.mem.free_frames,
        "scrub_pages": 0,
        "outstanding_pages": 0,
        "max_mfn": hv.mem.max_mfn,
        # pvxen: changes whenever hypervisord starts (a new "host boot"), so
        # dom0 daemons that outlive it can tell their state is stale.
        "boot_id": hv.boot_id,
    }


def _ncpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def getdomaininfolist(hv, caller, args):
    first = u(args, "first_domain", 16, 0)
    count = u(args, "max_domains", 32, DOMID_FIRST_RESERVED)
    doms = sorted(d for d in hv.domains if d >= first)[:count]
    return {"domains": [domaininfo(hv.domains[d]) for d in doms]}


def readconsole(hv, caller, args):
    lines = list(hv.console)
    if args.get("clear"):
        hv.console.clear()
    return {"lines": lines}


HANDLERS = {
    (DOMCTL, D.XEN_DOMCTL_createdomain): Handler(createdomain, privileged=True),
    (DOMCTL, D.XEN_DOMCTL_destroydomain): Handler(destroydomain, privileged=True),
    (DOMCTL, D.XEN_DOMCTL_pausedomain): Handler(pausedomain, privileged=True),
    (DOMCTL, D.XEN_DOMCTL_unpausedomain): Handler(unpausedomain, privileged=True),
    (DOMCTL, D.XEN_DOMCTL_getdomaininfo): Handler(getdomaininfo, privileged=True),
    (DOMCTL, D.XEN_DOMCTL_max_mem): Handler(max_mem, privileged=True),
    (DOMCTL, D.XEN_DOMCTL_max_vcpus): Handler(max_vcpus, privileged=True),
    (DOMCTL, D.XEN_DOMCTL_setvcpuaffinity): Handler(setvcpuaffinity, privileged=True),
    (DOMCTL, D.XEN_DOMCTL_set_target): Handler(set_target, privileged=True),
    (SYSCTL, S.XEN_SYSCTL_physinfo): Handler(physinfo, privileged=True),
    (SYSCTL, S.XEN_SYSCTL_getdomaininfolist): Handler(getdomaininfolist, privileged=True),
    (SYSCTL, S.XEN_SYSCTL_readconsole): Handler(readconsole, privileged=True),
}
