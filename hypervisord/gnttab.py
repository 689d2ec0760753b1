"""``GNTTABOP_*`` (grant_table_op): hypercall handlers, delivery, copy, teardown.

Follows ``xen/include/public/grant_table.h`` (v1 only, as Xen's
``gnttab=max-ver:1``); the rules live in the pure core
:mod:`hypervisord.gnttab_table`. This module parses the argument maps,
hands pages to mappers, performs copies, and cleans up.

Argument maps (fields under their C names; a batch is a list, as Xen's
``count`` structs; the hypercall returns 0 and each op its ``status``)::

    setup_table   {dom, nr_frames}   -> {status, frame_list}
    query_size    {dom}              -> {status, nr_frames, max_nr_frames}
    map_grant_ref {ops: [{dom, ref, flags, host_addr}]}
                  -> {ops: [{status, handle, memory, offset, dev_bus_addr} | {status, reason}]}
    unmap_grant_ref {ops: [{handle, flags}]} -> {ops: [{status}]}
    copy          {ops: [{source: {u, domid, offset}, dest: {...}, len, flags}]}
                  -> {ops: [{status}]}
    set_version {version}, get_version {dom} -> {version}

**Frame numbers.** A domain's grant frames are slots 1..4 of its memory
file (:mod:`hypervisord.machmem`). ``setup_table`` answers with pseudo
frame numbers that are those slots' page indices: the granting process
mmaps frame ``f`` of its own memory file at offset ``f * PAGE_SIZE``.

**Delivering a mapped page.** A privileged mapper (a dom0 process: a
backend, xenstored) gets, per granting domain in the batch, a descriptor
of the granter's memory file (named ``memory`` in the op's result, sent
with the reply) and the ``offset`` of the granted frame in it; it mmaps
one page there. ``host_addr`` is ignored; ``GNTMAP_host_map``,
``GNTMAP_device_map`` and ``GNTMAP_readonly`` are honoured for pin
accounting; ``dev_bus_addr`` is the frame's machine address when
``GNTMAP_device_map`` is asked for, as in Xen.

**Limitation: no grant maps into unprivileged domains.** A Linux
descriptor cannot be narrowed to one page of a file, and handing a domU
the granter's whole memory file would expose frames it was not granted.
So a domU's map is validated and pinned exactly as a dom0 one (every
refusal gets its GNTST_* status), and then, if valid, undone and refused
with ``GNTST_general_error`` and a ``reason`` saying so; the domU uses
``GNTTABOP_copy`` instead. A domU mapping its *own* grant is served (its
own file). This keeps the isolation rule: a domU process holds no
descriptor or mapping of another domain's memory.

**Copy.** hypervisord copies itself, with ``pread``/``pwrite`` on the two
memory files. Order and statuses are ``gnttab_copy_one``'s: both domains,
then the source, then the destination, then offset+len within the page
(``GNTST_bad_copy_arg``). A grant side takes a host read (source) or write
(destination) pin for the copy, so GTF_reading/GTF_writing are set around
it exactly as Xen does. A frame (gmfn) side may name only the caller's own
memory (``DOMID_SELF`` or its domid) unless the caller is privileged
(Xen refuses other domains even for dom0; dom0 here can map them anyway).

**Teardown.** A closing connection releases the mappings it held. A
destroyed domain releases the mappings it held and has the mappings *of its
grants* revoked: their pins are dropped (accounting returns to zero) and
the mappers' handles stay valid for one final unmap (``GNTST_okay``).
Mapper processes keep their own mmaps of a memory file that then no longer
backs accounted memory: the pages live until they munmap.
"""

from __future__ import annotations

import atexit
import logging
import mmap
import os
import weakref
from dataclasses import dataclass
from typing import Any

from libxen import rpc
from hypervisord import gnttab_table as core
from hypervisord.errors import E, fail
from hypervisord.gnttab_table import GntError, GnttabLimits, Maptrack
from hypervisord.hypercall import Handler, u
from hypervisord.public.memfile import GNT_FIRST_SLOT, NR_GNT_FRAMES
from hypervisord.public.grant_table import (
    GNTCOPY_dest_gref,
    GNTCOPY_source_gref,
    GNTMAP_device_map,
    GNTMAP_host_map,
    GnttabOp as Op,
    GntSt,
)
from hypervisord.public.xen import DOMID_SELF, PAGE_SIZE, Hypercall

log = logging.getLogger("hypervisord")
GRANT_TABLE_OP = Hypercall.grant_table_op
MAX_OPS = 1024  # per call; Xen preempts long batches, we bound them
_ALL_PARTS = GNTMAP_host_map | GNTMAP_device_map


class GnttabState:
    """hypervisord-wide grant state: limits and each connection's maptrack."""

    def __init__(self, limits: GnttabLimits) -> None:
        self.limits = limits
        self.maptracks: dict[Any, Maptrack] = {}

    def maptrack(self, caller) -> Maptrack:
        mt = self.maptracks.get(caller.conn)
        if mt is None:
            limit = self.limits.max_maptrack if caller.privileged else \
                self.limits.max_maptrack_domu
            mt = self.maptracks[caller.conn] = Maptrack(caller.domid, limit)
        return mt


def state(hv) -> GnttabState:
    st = hv.gnttab
    if st is None:
        raise fail(E.XEN_ENOSYS, "grant tables not installed")
    return st


# -- parsing: argument maps become frozen ops ------------------------------------

@dataclass(frozen=True, slots=True)
class MapOp:
    dom: int
    ref: int
    flags: int


@dataclass(frozen=True, slots=True)
class UnmapOp:
    handle: int
    parts: int


@dataclass(frozen=True, slots=True)
class CopyPtr:
    u: int  # union {grant_ref_t ref; xen_pfn_t gmfn}
    domid: int
    offset: int


@dataclass(frozen=True, slots=True)
class CopyOp:
    source: CopyPtr
    dest: CopyPtr
    len: int
    flags: int


def _ops(args: dict, parse) -> list:
    ops = args.get("ops")
    if not isinstance(ops, list) or len(ops) > MAX_OPS:
        raise fail(E.XEN_EINVAL, f"ops must be a list of at most {MAX_OPS} maps")
    if not all(isinstance(o, dict) for o in ops):
        raise fail(E.XEN_EINVAL, "each op must be a map")
    return [parse(o) for o in ops]


def parse_map(o: dict) -> MapOp:
    u(o, "host_addr", 64, 0)  # accepted and ignored
    return MapOp(u(o, "dom", 16), u(o, "ref", 32), u(o, "flags", 32))


def parse_unmap(o: dict) -> UnmapOp:
    return UnmapOp(u(o, "handle", 32), u(o, "flags", 32, _ALL_PARTS) & _ALL_PARTS)


def _parse_ptr(p: Any) -> CopyPtr:
    if not isinstance(p, dict):
        raise fail(E.XEN_EINVAL, "copy source/dest must be maps")
    return CopyPtr(u(p, "u", 64), u(p, "domid", 16), u(p, "offset", 16, 0))


def parse_copy(o: dict) -> CopyOp:
    return CopyOp(_parse_ptr(o.get("source")), _parse_ptr(o.get("dest")),
                  u(o, "len", 16), u(o, "flags", 16, 0))


def _status(e: GntError, caller, what: str) -> dict:
    log.debug("d%d %s: %s", caller.domid, what, e)
    return {"status": int(e.status), "reason": e.reason}


# -- setup_table, query_size, versions ----------------------------------------------

def _target(hv, caller, domid: int):
    """``rcu_lock_domain_by_any_id`` plus XSM_TARGET: oneself, or anyone if privileged."""
    dom = hv.domains.get(caller.domid if domid == DOMID_SELF else domid)
    if dom is None or dom.dying or dom.gnttab is None:
        raise GntError(GntSt.GNTST_bad_domain, f"no domain {domid}")
    if dom.domid != caller.domid and not caller.privileged:
        raise GntError(GntSt.GNTST_permission_denied,
                       f"d{caller.domid} may not manage d{dom.domid}'s grant table")
    return dom


def setup_table(hv, caller, args):
    nr_frames = u(args, "nr_frames", 32)
    try:
        dom = _target(hv, caller, u(args, "dom", 16, DOMID_SELF))
        dom.gnttab.grow(nr_frames)
    except GntError as e:
        return _status(e, caller, "setup_table")
    return {"status": int(GntSt.GNTST_okay),
            "frame_list": [GNT_FIRST_SLOT + i for i in range(nr_frames)]}


def query_size(hv, caller, args):
    try:
        dom = _target(hv, caller, u(args, "dom", 16, DOMID_SELF))
    except GntError as e:
        return _status(e, caller, "query_size")
    return {"status": int(GntSt.GNTST_okay), "nr_frames": dom.gnttab.nr_frames,
            "max_nr_frames": dom.gnttab.max_frames}


def set_version(hv, caller, args):
    version = u(args, "version", 32)
    if version not in (1, 2):
        raise fail(E.XEN_EINVAL, f"no grant table version {version}")
    if version == 2:
        raise fail(E.XEN_ENOSYS, "only grant table v1 is supported (max-ver:1)")
    return {"version": 1}


def get_version(hv, caller, args):
    try:
        _target(hv, caller, u(args, "dom", 16, DOMID_SELF))
    except GntError as e:
        err = E.XEN_ESRCH if e.status == GntSt.GNTST_bad_domain else E.XEN_EPERM
        raise fail(err, e.reason) from None
    return {"version": 1}


# -- map / unmap ---------------------------------------------------------------------------

def _granter(hv, domid: int):
    dom = hv.domains.get(domid)  # rcu_lock_domain_by_id: no DOMID_SELF
    return None if dom is None or dom.dying else dom


def _delivery_refusal(caller, rd, fds: dict[str, int]) -> GntError | None:
    """Whether the validated mapping can be handed to this caller (see above)."""
    if not caller.privileged and rd.domid != caller.domid:
        return GntError(GntSt.GNTST_general_error,
                        f"d{caller.domid} is unprivileged: a page of d{rd.domid} cannot be "
                        f"handed to it without exposing d{rd.domid}'s other frames; "
                        "use GNTTABOP_copy")
    if f"memory{rd.domid}" not in fds and len(fds) >= rpc.MAX_FDS:
        return GntError(GntSt.GNTST_no_space,
                        f"more than {rpc.MAX_FDS} granting domains in one batch")
    return None


def _map_one(hv, caller, mt: Maptrack, op: MapOp, fds: dict[str, int]) -> dict:
    rd = _granter(hv, op.dom)
    try:
        m, act = core.map_grant_ref(mt, rd.gnttab if rd else None, op.ref, op.flags)
        refusal = _delivery_refusal(caller, rd, fds)
        if refusal is not None:
            core.unmap_grant_ref(mt, m.handle)  # Xen's undo_out
            raise refusal
    except GntError as e:
        return _status(e, caller, f"map d{op.dom} ref {op.ref:#x}")
    name = f"memory{rd.domid}"
    if name not in fds:
        fds[name] = hv.mem.hand_out(rd.mem)
    return {"status": int(GntSt.GNTST_okay), "handle": m.handle, "memory": name,
            "offset": rd.mem.offset_of_gfn(act.gfn),
            "dev_bus_addr": act.mfn * PAGE_SIZE if op.flags & GNTMAP_device_map else 0}


def map_grant_ref(hv, caller, args):
    ops = _ops(args, parse_map)
    mt = state(hv).maptrack(caller)
    fds: dict[str, int] = {}
    out = [_map_one(hv, caller, mt, op, fds) for op in ops]
    return {"ops": out, "_fds": fds} if fds else {"ops": out}


def unmap_grant_ref(hv, caller, args):
    ops = _ops(args, parse_unmap)
    mt = state(hv).maptrack(caller)
    out = []
    for op in ops:
        try:
            core.unmap_grant_ref(mt, op.handle, op.parts)
            out.append({"status": int(GntSt.GNTST_okay)})
        except GntError as e:
            out.append(_status(e, caller, "unmap"))
    return {"ops": out}


# -- copy ------------------------------------------------------------------------------------

def _copy_domain(hv, caller, ptr: CopyPtr, is_gref: bool):
    """``gnttab_copy_lock_domain``."""
    own = ptr.domid in (DOMID_SELF, caller.domid)
    if not is_gref and not own and not caller.privileged:
        raise GntError(GntSt.GNTST_permission_denied,
                       f"d{caller.domid} may reference only its own memory by frame, "
                       f"not d{ptr.domid}'s")
    dom = hv.domains.get(caller.domid if ptr.domid == DOMID_SELF else ptr.domid)
    if dom is None or dom.dying or dom.gnttab is None:
        raise GntError(GntSt.GNTST_bad_domain, f"no domain {ptr.domid}")
    return dom


def _claim(caller, dom, ptr: CopyPtr, is_gref: bool, readonly: bool, claims: list) -> int:
    """``gnttab_copy_claim_buf``: the gfn to copy from/to, pinned if a grant."""
    if is_gref:
        if ptr.u >= 1 << 32:
            raise GntError(GntSt.GNTST_bad_gntref, f"bad grant reference {ptr.u:#x}")
        act = core.acquire_for_copy(dom.gnttab, ptr.u, caller.domid, readonly)
        claims.append((dom.gnttab, ptr.u, readonly))
        return act.gfn
    if ptr.u not in dom.mem.p2m:
        side = "source" if readonly else "dest"
        raise GntError(GntSt.GNTST_bad_page, f"{side} frame {ptr.u:#x} of d{dom.domid} invalid")
    return ptr.u


def _copy_one(hv, caller, op: CopyOp) -> None:
    if op.len == 0:
        return
    src_gref, dst_gref = bool(op.flags & GNTCOPY_source_gref), bool(op.flags & GNTCOPY_dest_gref)
    sd = _copy_domain(hv, caller, op.source, src_gref)
    dd = _copy_domain(hv, caller, op.dest, dst_gref)
    claims: list = []
    try:
        sgfn = _claim(caller, sd, op.source, src_gref, True, claims)
        dgfn = _claim(caller, dd, op.dest, dst_gref, False, claims)
        if op.source.offset + op.len > PAGE_SIZE or op.dest.offset + op.len > PAGE_SIZE:
            raise GntError(GntSt.GNTST_bad_copy_arg, "copy beyond page area")
        data = os.pread(sd.mem.fd, op.len, sd.mem.offset_of_gfn(sgfn) + op.source.offset)
        os.pwrite(dd.mem.fd, data, dd.mem.offset_of_gfn(dgfn) + op.dest.offset)
    finally:
        for table, ref, ro in reversed(claims):
            core.release_for_copy(table, ref, ro)


def copy(hv, caller, args):
    out = []
    for op in _ops(args, parse_copy):
        try:
            _copy_one(hv, caller, op)
            out.append({"status": int(GntSt.GNTST_okay)})
        except GntError as e:
            out.append(_status(e, caller, "copy"))
    return {"ops": out}


# -- lifecycle hooks --------------------------------------------------------------------------

def domain_created(hv, dom) -> None:
    """Map the domain's grant frames (slots of its memory file) and make its table."""
    nr = min(state(hv).limits.max_grant_frames, NR_GNT_FRAMES)
    mm = mmap.mmap(dom.mem.fd, NR_GNT_FRAMES * PAGE_SIZE, mmap.MAP_SHARED,
                   mmap.PROT_READ | mmap.PROT_WRITE, offset=GNT_FIRST_SLOT * PAGE_SIZE)
    frames = core.SharedFrames(mm, NR_GNT_FRAMES, owns_buffer=True)
    dom.gnttab = core.GrantTable(dom.domid, frames, dom.mem.p2m, nr)


def conn_closed(hv, conn) -> None:
    mt = state(hv).maptracks.pop(conn, None)
    if mt is not None and mt.entries:
        n = core.release_maptrack(mt)
        log.info("d%d: %d grant mapping(s) released with %r", mt.domid, n, conn)


def domain_destroyed(hv, dom) -> None:
    st = state(hv)
    for conn, mt in list(st.maptracks.items()):
        if mt.domid == dom.domid:
            conn_closed(hv, conn)
    table = dom.gnttab
    if table is None:
        return
    n = table.revoke_all()
    if n:
        log.info("d%d destroyed: %d mapping(s) of its grants revoked", dom.domid, n)
    table.close()
    dom.gnttab = None


def frame_pinned(dom, gfn: int) -> bool:
    """Is ``gfn`` of ``dom`` pinned by a live grant mapping or copy?"""
    table = dom.gnttab
    return table is not None and any(a.gfn == gfn and a.pin for a in table.active.values())


def _close_all(hv_ref: "weakref.ref") -> None:
    """At exit, release every table's atomic views before the interpreter's
    final collection finalizes them in arbitrary order."""
    hv = hv_ref()
    if hv is not None:
        for dom in list(hv.domains.values()):
            if dom.gnttab is not None:
                dom.gnttab.close()


def install(hv, server=None) -> None:
    hv.gnttab = GnttabState(GnttabLimits(max_grant_frames=hv.config.max_grant_frames))
    atexit.register(_close_all, weakref.ref(hv))
    for dom in list(hv.domains.values()):
        if dom.gnttab is None:
            domain_created(hv, dom)
    hv.on_create.append(lambda dom: domain_created(hv, dom))
    hv.on_destroy.append(lambda dom: domain_destroyed(hv, dom))
    hv.frame_in_use.append(frame_pinned)
    if server is not None:
        server.conn_closed_hooks.append(lambda conn: conn_closed(hv, conn))


HANDLERS = {
    (GRANT_TABLE_OP, Op.GNTTABOP_map_grant_ref): Handler(map_grant_ref),
    (GRANT_TABLE_OP, Op.GNTTABOP_unmap_grant_ref): Handler(unmap_grant_ref),
    (GRANT_TABLE_OP, Op.GNTTABOP_setup_table): Handler(setup_table),
    (GRANT_TABLE_OP, Op.GNTTABOP_copy): Handler(copy),
    (GRANT_TABLE_OP, Op.GNTTABOP_query_size): Handler(query_size),
    (GRANT_TABLE_OP, Op.GNTTABOP_set_version): Handler(set_version),
    (GRANT_TABLE_OP, Op.GNTTABOP_get_version): Handler(get_version),
}
