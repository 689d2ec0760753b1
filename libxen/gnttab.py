"""Grant tables, the client side (libxengntshr + libxengnttab), for trio.

Follows ``xen/include/public/grant_table.h`` (v1) and what Linux's
``drivers/xen/grant-table.c`` does on the guest side:

* :class:`GrantTable` is the **granting** side. A process writes entries
  straight into its own grant frames (slots of its own memory file, as
  ``GNTTABOP_setup_table`` names them): ``domid`` and ``frame`` first, the
  flags last (``gnttab_grant_foreign_access_ref``); revoking is a
  compare-and-swap of the flags to 0 that fails while hypervisord has
  GTF_reading/GTF_writing set, i.e. while the page is mapped or being
  copied (``gnttab_end_foreign_access_ref``). Refs below
  ``GNTTAB_NR_RESERVED_ENTRIES`` are never handed out: the toolstack
  seeds entry 0 (console) and 1 (xenstore) with :func:`seed_grant_table`,
  as ``xc_dom_gnttab_seed`` does.
* :class:`GrantMapper` is the **mapping** side: ``map`` returns the page
  as a memoryview backed by one page-sized mmap of the granter's memory
  file (dom0 processes only; hypervisord refuses to hand a domU another
  domain's file, see :mod:`hypervisord.gnttab`), ``unmap`` drops it, and
  ``copy`` asks hypervisord to copy between grants and own frames.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

import atomics

from hypervisord.public import memfile
from hypervisord.public.memfile import GNT_FIRST_SLOT, NR_GNT_FRAMES
from hypervisord.public.grant_table import (
    GNTCOPY_dest_gref,
    GNTCOPY_source_gref,
    GNTMAP_host_map,
    GNTMAP_readonly,
    GNTTAB_NR_RESERVED_ENTRIES,
    GNTTAB_RESERVED_CONSOLE,
    GNTTAB_RESERVED_XENSTORE,
    GNTTAB_V1_ENTRIES_PER_FRAME,
    GRANT_ENTRY_V1,
    GTF_permit_access,
    GTF_readonly,
    GTF_reading,
    GTF_writing,
    GnttabOp as Op,
    GntSt,
    gnttabop_error,
)
from hypervisord.public.xen import DOMID_SELF, PAGE_SIZE, Hypercall

GNTTAB = Hypercall.grant_table_op
_DOMID_FRAME = struct.Struct("<HI")  # grant_entry_v1 after flags


class GrantError(Exception):
    """A grant op was refused: ``status`` is the GNTST_* code."""

    def __init__(self, status: int, what: str, reason: str | None = None) -> None:
        msg = f"{what}: {gnttabop_error(status)}" + (f" ({reason})" if reason else "")
        super().__init__(msg)
        self.status = status
        self.reason = reason


class GrantBusy(OSError):
    """``end_access`` on an entry that is still mapped or being copied."""


def preload() -> None:
    """Load ``atomics``' C library now: a guest process calls this before it
    drops privileges, as the library is found lazily on first use."""
    atomics.atomic(width=2, atype=atomics.UINT)


def _check_status(r: dict, what: str) -> dict:
    if r.get("status", 0) != GntSt.GNTST_okay:
        raise GrantError(r["status"], what, r.get("reason"))
    return r


# -- granting side ----------------------------------------------------------------

async def setup_table(xc, nr_frames: int, dom: int = DOMID_SELF) -> list[int]:
    """``GNTTABOP_setup_table``: the frame numbers (pages of the memory file)."""
    _, r = await xc.call(GNTTAB, Op.GNTTABOP_setup_table, dom=dom, nr_frames=nr_frames)
    return _check_status(r, "setup_table")["frame_list"]


async def query_size(xc, dom: int = DOMID_SELF) -> tuple[int, int]:
    """``GNTTABOP_query_size``: (nr_frames, max_nr_frames)."""
    _, r = await xc.call(GNTTAB, Op.GNTTABOP_query_size, dom=dom)
    _check_status(r, "query_size")
    return r["nr_frames"], r["max_nr_frames"]


class _Flags:
    """Atomic access to one entry's 16-bit flags word (views kept for reuse)."""

    def __init__(self, mv: memoryview) -> None:
        self._ctx = atomics.atomicview(buffer=mv, atype=atomics.UINT)
        self.v = self._ctx.__enter__()

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = self.v = None

    def __del__(self) -> None:
        if getattr(self, "_ctx", None) is not None:
            self.close()


class GrantTable:
    """This process's grant table (its domain's, when it is the domain's process)."""

    def __init__(self, memory_fd: int, frame_list: list[int]) -> None:
        expected = list(range(GNT_FIRST_SLOT, GNT_FIRST_SLOT + len(frame_list)))
        if not frame_list or frame_list != expected:
            raise ValueError(f"unexpected grant frames {frame_list}")
        self._mm = mmap.mmap(memory_fd, NR_GNT_FRAMES * PAGE_SIZE, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE, offset=GNT_FIRST_SLOT * PAGE_SIZE)
        self._mv = memoryview(self._mm)
        self.nr_entries = len(frame_list) * GNTTAB_V1_ENTRIES_PER_FRAME
        self._free = list(range(self.nr_entries - 1, GNTTAB_NR_RESERVED_ENTRIES - 1, -1))
        self._flags: dict[int, _Flags] = {}

    @classmethod
    async def open(cls, xc, memory_fd: int, nr_frames: int = NR_GNT_FRAMES) -> "GrantTable":
        return cls(memory_fd, await setup_table(xc, nr_frames))

    def _f(self, ref: int) -> _Flags:
        f = self._flags.get(ref)
        if f is None:
            if not 0 <= ref < self.nr_entries:
                raise ValueError(f"grant ref {ref} outside the table")
            off = ref * GRANT_ENTRY_V1.size
            f = self._flags[ref] = _Flags(self._mv[off:off + 2])
        return f

    def grant_access(self, domid: int, gfn: int, readonly: bool = False) -> int:
        """``gnttab_grant_foreign_access``: a ref that lets ``domid`` use ``gfn``."""
        if not self._free:
            raise OSError(28, "no free grant references")  # ENOSPC
        ref = self._free.pop()
        self.grant_access_ref(ref, domid, gfn, readonly)
        return ref

    def grant_access_ref(self, ref: int, domid: int, gfn: int, readonly: bool = False) -> None:
        f = self._f(ref)
        _DOMID_FRAME.pack_into(self._mv, ref * GRANT_ENTRY_V1.size + 2, domid, gfn)
        # wmb(): the flags are published last (an atomic store; x86 keeps order).
        f.v.store(GTF_permit_access | (GTF_readonly if readonly else 0))

    def flags(self, ref: int) -> int:
        return int(self._f(ref).v.load())

    def try_end_access(self, ref: int) -> bool:
        """``gnttab_end_foreign_access_ref``: revoke unless in use; frees the ref."""
        f = self._f(ref)
        flags = int(f.v.load())
        while True:
            if flags & (GTF_reading | GTF_writing):
                return False
            res = f.v.cmpxchg_strong(flags, 0)
            if res.success:
                break
            flags = int(res.expected)
        if ref >= GNTTAB_NR_RESERVED_ENTRIES and ref not in self._free:
            self._free.append(ref)
        return True

    def end_access(self, ref: int) -> None:
        if not self.try_end_access(ref):
            raise GrantBusy(16, f"grant ref {ref} is still mapped or being copied")  # EBUSY

    def close(self) -> None:
        for f in self._flags.values():
            f.close()
        self._flags.clear()
        self._mv.release()
        self._mm.close()


async def seed_grant_table(xc, domid: int, console_gfn: int | None, xenstore_gfn: int | None,
                           console_domid: int = 0, xenstore_domid: int = 0) -> None:
    """dom0: pre-fill a new domain's reserved entries (``xc_dom_gnttab_seed``)."""
    from libxen import ctrl

    _, r = await ctrl.map_foreign(xc, domid)
    fd = r["fds"]["memory"]
    try:
        mm = mmap.mmap(fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                       offset=GNT_FIRST_SLOT * PAGE_SIZE)
    finally:
        os.close(fd)
    with mm:
        for ref, gfn, dom in ((GNTTAB_RESERVED_CONSOLE, console_gfn, console_domid),
                              (GNTTAB_RESERVED_XENSTORE, xenstore_gfn, xenstore_domid)):
            if gfn is not None:
                GRANT_ENTRY_V1.pack_into(mm, ref * GRANT_ENTRY_V1.size, GTF_permit_access,
                                         dom, gfn)


# -- mapping side -------------------------------------------------------------------------

@dataclass(eq=False)
class GrantMap:
    """One mapped grant: ``view`` is the page; ``handle`` is hypervisord's."""

    domid: int
    ref: int
    handle: int
    readonly: bool
    view: memoryview
    _mm: mmap.mmap


@dataclass(frozen=True, slots=True)
class CopyPtr:
    """One side of a copy: a grant ref of ``domid``, or (gref=False) a gmfn."""

    u: int
    domid: int = DOMID_SELF
    offset: int = 0
    gref: bool = True

    def args(self) -> dict:
        return {"u": self.u, "domid": self.domid, "offset": self.offset}


@dataclass(frozen=True, slots=True)
class Copy:
    source: CopyPtr
    dest: CopyPtr
    len: int

    def args(self) -> dict:
        flags = (GNTCOPY_source_gref if self.source.gref else 0) | \
                (GNTCOPY_dest_gref if self.dest.gref else 0)
        return {"source": self.source.args(), "dest": self.dest.args(), "len": self.len,
                "flags": flags}


def _mmap_page(fd: int, offset: int, readonly: bool) -> mmap.mmap:
    prot = mmap.PROT_READ | (0 if readonly else mmap.PROT_WRITE)
    return mmap.mmap(fd, PAGE_SIZE, mmap.MAP_SHARED, prot, offset=offset)


class GrantMapper:
    """libxengnttab: map other domains' grants (dom0), copy (anyone)."""

    def __init__(self, xc) -> None:
        self.xc = xc

    async def map_batch(self, refs: list[tuple[int, int, bool]]) -> list[GrantMap | GrantError]:
        """Map ``(domid, ref, readonly)`` triples in one hypercall."""
        ops = [{"dom": d, "ref": r, "flags": GNTMAP_host_map | (GNTMAP_readonly if ro else 0)}
               for d, r, ro in refs]
        _, res = await self.xc.call(GNTTAB, Op.GNTTABOP_map_grant_ref, ops=ops)
        fds: dict[str, int] = res.get("fds", {})
        out: list[GrantMap | GrantError] = []
        undo: list[int] = []
        try:
            for (domid, ref, ro), r in zip(refs, res["ops"]):
                what = f"map d{domid} ref {ref}"
                if r["status"] != GntSt.GNTST_okay:
                    out.append(GrantError(r["status"], what, r.get("reason")))
                    continue
                try:
                    mm = _mmap_page(fds[r["memory"]], r["offset"], ro)
                except (OSError, KeyError) as e:  # our side failed: give the handle back
                    undo.append(r["handle"])
                    out.append(GrantError(GntSt.GNTST_general_error, what, f"local mmap: {e!r}"))
                    continue
                out.append(GrantMap(domid, ref, r["handle"], ro, memoryview(mm), mm))
        finally:
            for fd in fds.values():
                os.close(fd)
        for handle in undo:
            await self.unmap_handle(handle)
        return out

    async def map(self, domid: int, ref: int, readonly: bool = False) -> GrantMap:
        (m,) = await self.map_batch([(domid, ref, readonly)])
        if isinstance(m, GrantError):
            raise m
        return m

    async def unmap(self, m: GrantMap) -> None:
        """Drop the local mapping (the view must not be in use), then the handle."""
        m.view.release()
        m._mm.close()
        _, res = await self.xc.call(GNTTAB, Op.GNTTABOP_unmap_grant_ref,
                                    ops=[{"handle": m.handle}])
        _check_status(res["ops"][0], f"unmap handle {m.handle}")

    async def unmap_handle(self, handle: int) -> int:
        """Raw ``unmap_grant_ref`` of one handle; returns its GNTST_* status."""
        _, res = await self.xc.call(GNTTAB, Op.GNTTABOP_unmap_grant_ref, ops=[{"handle": handle}])
        return res["ops"][0]["status"]

    async def copy(self, segs: list[Copy]) -> list[int]:
        """``GNTTABOP_copy``: one GNTST_* status per segment."""
        _, res = await self.xc.call(GNTTAB, Op.GNTTABOP_copy, ops=[s.args() for s in segs])
        return [r["status"] for r in res["ops"]]


def gfn_offset(gfn: int) -> int:
    """Where guest frame ``gfn`` lives in a domain's memory file."""
    return memfile.gfn_offset(gfn)
