"""``XENVER_*`` (xen_version): open to every domain, as in Xen."""

from __future__ import annotations

from hypervisord.hypercall import Handler, u
from hypervisord.public.features import XenFeat
from hypervisord.public.version import XEN_CAPABILITIES_X86_64_PV, XenVerOp as V
from hypervisord.public.xen import PAGE_SIZE, Hypercall

XEN_VERSION = Hypercall.xen_version


def version(hv, caller, args):
    major, minor = hv.config.version
    return major << 16 | minor


def extraversion(hv, caller, args):
    return {"extraversion": hv.config.extraversion}


def capabilities(hv, caller, args):
    return {"capabilities": XEN_CAPABILITIES_X86_64_PV}


def changeset(hv, caller, args):
    return {"changeset": "pvxen"}


def compile_info(hv, caller, args):
    return {"compiler": "CPython", "compile_by": "pvxen", "compile_domain": "", "compile_date": ""}


def get_features(hv, caller, args):
    index = u(args, "submap_idx", 32, 0)
    bits = 0
    if index == 0:
        if caller.privileged:
            bits |= 1 << XenFeat.XENFEAT_dom0
    return {"submap_idx": index, "submap": bits}


def pagesize(hv, caller, args):
    return PAGE_SIZE


def guest_handle(hv, caller, args):
    return {"handle": hv.domain(caller.domid).handle}


HANDLERS = {
    (XEN_VERSION, V.XENVER_version): Handler(version),
    (XEN_VERSION, V.XENVER_extraversion): Handler(extraversion),
    (XEN_VERSION, V.XENVER_capabilities): Handler(capabilities),
    (XEN_VERSION, V.XENVER_changeset): Handler(changeset),
    (XEN_VERSION, V.XENVER_compile_info): Handler(compile_info),
    (XEN_VERSION, V.XENVER_get_features): Handler(get_features),
    (XEN_VERSION, V.XENVER_pagesize): Handler(pagesize),
    (XEN_VERSION, V.XENVER_guest_handle): Handler(guest_handle),
}
