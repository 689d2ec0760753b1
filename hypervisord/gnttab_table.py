"""Grant tables v1, the pure core: entries, pins, maptrack (no trio, no sockets).

Follows ``xen/include/public/grant_table.h`` and the rules of
``xen/common/grant_table.c``. Owns, for every granting domain, its
:class:`GrantTable` (Xen's ``struct grant_table``: the shared v1 entries in
the domain's grant frames plus the hypervisor-private *active* entries
with their pin counts) and, for every mapping process, its
:class:`Maptrack` (handles of the mappings it holds). The shell
(:mod:`hypervisord.gnttab`) parses hypercalls, delivers pages and copies.

Worked example (one ref, two dom0 processes A and B mapping d5's ref 9)::

    d5 writes entry 9: domid=0, frame=gfn 0x20, flags=GTF_permit_access
    A maps ref 9 read-only     pin = hstr 1        flags |= GTF_reading (CAS)
    B maps ref 9 writable      pin = hstr 1 hstw 1 flags |= GTF_writing (CAS)
    A unmaps                   pin = hstw 1        (reading stays: B reads too)
    d5 tries end_access        cmpxchg(flags, permit, 0) fails: reading|writing set
    B unmaps                   pin = 0             flags &= ~(GTF_writing|GTF_reading)
    d5 tries end_access        succeeds

Rules kept exactly as Xen does:

* **Shared entries are hostile input.** The flags+domid pair (Xen's
  ``grant_combo``) is read once with an atomic 32-bit load, validated as
  that copy, and GTF_reading/GTF_writing are set with a compare-and-swap
  of the whole 32-bit pair, so the entry cannot change between the check
  and the set; a guest racing it more than 5 times gets
  ``GNTST_general_error`` (``_set_status_v1``). The frame is read once,
  after the pin, and checked against the granter's P2M; from then on the
  active entry's copy is used, never the shared one.
* **Status bits mirror the pins.** GTF_reading stays set while any pin
  exists, GTF_writing while any writable pin exists; both are cleared with
  an atomic AND when the last such pin goes (``reduce_status_for_pin``).
* **Pins per kind** (host/device x read/write, Xen's ``GNTPIN_*`` 8-bit
  counters packed in one int), with Xen's overflow guard at 128. An unmap
  drops exactly the kinds its map took (XSA-224/234); a handle is freed
  when no part remains, so a second unmap is ``GNTST_bad_handle``.
* **Errors are Xen's**: bad flags -> ``GNTST_bad_gntref``; unknown granter
  -> ``GNTST_bad_domain``; ref beyond the table -> ``GNTST_bad_gntref``;
  entry not ``GTF_permit_access`` for the mapper, write of a GTF_readonly
  entry, or an entry pinned for another domain -> ``GNTST_general_error``;
  frame not populated -> ``GNTST_bad_page``; maptrack full ->
  ``GNTST_no_space``.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping as MappingT
from dataclasses import dataclass, field
from typing import Any

import atomics

from hypervisord.public.grant_table import (
    GNTMAP_device_map,
    GNTMAP_host_map,
    GNTMAP_readonly,
    GNTTAB_V1_ENTRIES_PER_FRAME,
    GRANT_ENTRY_V1,
    GRANT_ENTRY_V1_FRAME_OFF,
    GTF_permit_access,
    GTF_readonly,
    GTF_reading,
    GTF_sub_page,
    GTF_type_mask,
    GTF_writing,
    GntSt,
)

# Xen-internal pin counters (grant_table.c): four 8-bit counters in one int.
GNTPIN_hstw_inc = 1 << 0
GNTPIN_hstr_inc = 1 << 8
GNTPIN_devw_inc = 1 << 16
GNTPIN_devr_inc = 1 << 24
GNTPIN_cntr_mask = 0xFF
GNTPIN_hstw_mask = GNTPIN_cntr_mask * GNTPIN_hstw_inc
GNTPIN_hstr_mask = GNTPIN_cntr_mask * GNTPIN_hstr_inc
GNTPIN_devw_mask = GNTPIN_cntr_mask * GNTPIN_devw_inc
GNTPIN_devr_mask = GNTPIN_cntr_mask * GNTPIN_devr_inc
GNTPIN_writers = GNTPIN_hstw_mask | GNTPIN_devw_mask
INITIAL_NR_GRANT_FRAMES = 1  # Xen's x86 and Arm value
SET_STATUS_RETRIES = 5  # cmpxchg attempts before the entry is "unstable"
_U32 = struct.Struct("<I")


def oflow_mask(pin_incr: int) -> int:
    """``GNTPIN_incr2oflow_mask``: the top bit of each counter being bumped."""
    return pin_incr << 7


def pin_incr(flags: int) -> int:
    """The pin counters a map with GNTMAP_* ``flags`` takes (0: bad flags)."""
    ro = flags & GNTMAP_readonly
    incr = 0
    if flags & GNTMAP_device_map:
        incr += GNTPIN_devr_inc if ro else GNTPIN_devw_inc
    if flags & GNTMAP_host_map:
        incr += GNTPIN_hstr_inc if ro else GNTPIN_hstw_inc
    return incr


class GntError(Exception):
    """One op refused: a GNTST_* status and a reason naming who misbehaved."""

    def __init__(self, status: GntSt, reason: str) -> None:
        super().__init__(f"{status.name}: {reason}")
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class GnttabLimits:
    max_grant_frames: int = 4  # per granting domain (v1: 512 entries each)
    max_maptrack: int = 1 << 16  # live handles per dom0 process
    #: per domU process (it can map only its own grants): also bounds how long
    #: releasing its mappings holds hypervisord up when it dies (XSA-380)
    max_maptrack_domu: int = 1024


class SharedFrames:
    """The v1 entries of one domain's grant frames, over a writable buffer.

    Atomic views (PyPI ``atomics``) are made on first use of a ref and kept
    (making one costs ~100 us): a 32-bit one over flags+domid for loads and
    compare-and-swap, a 16-bit one over flags for the atomic clear. Views of
    refs that ``keep`` names (the pinned ones) stay; of the others at most
    ``max_cached`` are kept, least recently used first out, so refs a
    hostile caller merely probes cost no lasting memory. :meth:`close`
    releases them all.
    """

    def __init__(self, buf: Any, nr_frames: int, owns_buffer: bool = False,
                 max_cached: int = 64) -> None:
        self.nr_entries = nr_frames * GNTTAB_V1_ENTRIES_PER_FRAME
        self._buf = buf if owns_buffer else None
        self._mv = memoryview(buf)
        assert len(self._mv) >= self.nr_entries * GRANT_ENTRY_V1.size
        self._views: OrderedDict[int, tuple[Any, Any, Any, Any]] = OrderedDict()
        self.max_cached = max_cached
        self.keep: Callable[[int], bool] = lambda ref: False

    def _view(self, ref: int) -> tuple[Any, Any, Any, Any]:
        v = self._views.get(ref)
        if v is not None:
            self._views.move_to_end(ref)
            return v
        if not 0 <= ref < self.nr_entries:
            raise IndexError(f"grant ref {ref} outside the frames")
        off = ref * GRANT_ENTRY_V1.size
        c32 = atomics.atomicview(buffer=self._mv[off:off + 4], atype=atomics.UINT)
        c16 = atomics.atomicview(buffer=self._mv[off:off + 2], atype=atomics.UINT)
        v = self._views[ref] = (c32, c32.__enter__(), c16, c16.__enter__())
        if len(self._views) > self.max_cached:
            self._evict()
        return v

    def _evict(self) -> None:
        spare = len(self._views) - self.max_cached
        for ref in [r for r in self._views if not self.keep(r)][:-1][:spare]:
            c32, _, c16, _ = self._views.pop(ref)  # never the newest: it is in use
            c32.__exit__(None, None, None)
            c16.__exit__(None, None, None)

    @property
    def cached(self) -> int:
        return len(self._views)

    def load_combo(self, ref: int) -> int:
        """flags | domid << 16, one atomic load (``ACCESS_ONCE``)."""
        return int(self._view(ref)[1].load())

    def load_frame(self, ref: int) -> int:
        off = ref * GRANT_ENTRY_V1.size + GRANT_ENTRY_V1_FRAME_OFF
        return int(_U32.unpack(self._mv[off:off + 4])[0])

    def cmpxchg_combo(self, ref: int, old: int, new: int) -> int:
        """Compare-and-swap flags+domid; returns the value found."""
        res = self._view(ref)[1].cmpxchg_strong(old, new)
        return old if res.success else int(res.expected)

    def clear_flags(self, ref: int, mask: int) -> None:
        """``gnttab_clear_flags``: atomic AND of the 16-bit flags word."""
        self._view(ref)[3].bin_and(~mask & 0xFFFF)

    def store_flags(self, ref: int, flags: int) -> None:
        self._view(ref)[3].store(flags)

    def close(self) -> None:
        """Release the views (idempotent), and the buffer if it was handed over."""
        for c32, _, c16, _ in self._views.values():
            c32.__exit__(None, None, None)
            c16.__exit__(None, None, None)
        self._views.clear()
        self._mv.release()
        if self._buf is not None:
            self._buf.close()
            self._buf = None

    def __del__(self) -> None:
        # Dropped without close() (hypervisord exiting): release the views
        # quietly rather than let ``atomics`` complain about open contexts.
        if getattr(self, "_views", None) is not None:
            self.close()


@dataclass(slots=True)
class ActiveEntry:
    """Xen's ``struct active_grant_entry`` (v1, no transitive/sub-page)."""

    domid: int  # the domain the entry is pinned for
    gfn: int  # the granted frame, read once at the first pin
    mfn: int
    pin: int = 0


@dataclass(slots=True, eq=False)
class Mapping:
    """A maptrack entry: one map_grant_ref that has not been fully undone."""

    handle: int
    table: "GrantTable"
    ref: int
    flags: int  # GNTMAP_host_map / GNTMAP_device_map still held, plus readonly
    revoked: bool = False  # the granter went away; the pins were dropped then

    @property
    def readonly(self) -> bool:
        return bool(self.flags & GNTMAP_readonly)


class GrantTable:
    """One granting domain's table: shared entries plus active entries."""

    def __init__(self, domid: int, frames: SharedFrames, p2m: MappingT[int, int],
                 max_frames: int) -> None:
        self.domid = domid
        self.frames = frames
        self.p2m = p2m
        self.max_frames = max_frames
        self.nr_frames = INITIAL_NR_GRANT_FRAMES
        self.active: dict[int, ActiveEntry] = {}
        frames.keep = self.active.__contains__
        self.maps: set[Mapping] = set()  # live mappings of our grants, for revocation

    @property
    def nr_entries(self) -> int:
        return self.nr_frames * GNTTAB_V1_ENTRIES_PER_FRAME

    def grow(self, nr_frames: int) -> None:
        """``gnttab_grow_table`` as ``GNTTABOP_setup_table`` drives it."""
        if nr_frames > self.max_frames:
            raise GntError(GntSt.GNTST_general_error,
                           f"d{self.domid} is limited to {self.max_frames} grant-table frames")
        self.nr_frames = max(self.nr_frames, nr_frames, INITIAL_NR_GRANT_FRAMES)

    # -- pinning -----------------------------------------------------------------
    def pin(self, ref: int, ldomid: int, incr: int, readonly: bool, mapflag: bool) -> ActiveEntry:
        """Take ``incr`` pins on ``ref`` for domain ``ldomid`` (map or copy)."""
        if not 0 <= ref < self.nr_entries:
            raise GntError(GntSt.GNTST_bad_gntref, f"bad ref {ref:#x} for d{self.domid}")
        act = self.active.get(ref)
        if act is not None and (act.domid != ldomid or act.pin & oflow_mask(incr)):
            raise GntError(GntSt.GNTST_general_error,
                           f"d{self.domid} ref {ref:#x} is pinned for d{act.domid}, or its "
                           f"pin count would overflow ({act.pin:#010x})")
        if act is not None and act.gfn not in self.p2m:
            # Xen's page reference keeps a pinned frame; ours is gone if the
            # granter released it (decrease_reservation): refuse new pins.
            raise GntError(GntSt.GNTST_bad_page,
                           f"d{self.domid} ref {ref:#x}: gfn {act.gfn:#x} was released")
        if act is None or (not readonly and not act.pin & GNTPIN_writers):
            self._set_status(ref, act, readonly, mapflag, ldomid)
            if act is None:
                gfn = self.frames.load_frame(ref)  # read once, after the pin
                mfn = self.p2m.get(gfn)
                if mfn is None:
                    self._reduce_status(ref, 0, readonly)
                    raise GntError(GntSt.GNTST_bad_page,
                                   f"d{self.domid} ref {ref:#x} grants gfn {gfn:#x}, "
                                   "which it has not populated")
                act = self.active[ref] = ActiveEntry(ldomid, gfn, mfn)
        act.pin += incr
        return act

    def unpin(self, ref: int, decr: int, readonly: bool) -> None:
        act = self.active[ref]
        for mask in (GNTPIN_hstw_mask, GNTPIN_hstr_mask, GNTPIN_devw_mask, GNTPIN_devr_mask):
            if decr & mask > act.pin & mask:
                raise AssertionError(f"pin underflow on d{self.domid} ref {ref:#x}")
        act.pin -= decr
        self._reduce_status(ref, act.pin, readonly)
        if act.pin == 0:
            del self.active[ref]

    def _set_status(self, ref: int, act: ActiveEntry | None, readonly: bool, mapflag: bool,
                    ldomid: int) -> None:
        """``_set_status_v1``: check the copy, then CAS in GTF_reading/GTF_writing."""
        mask = GTF_type_mask | (GTF_sub_page if mapflag else 0)
        combo = self.frames.load_combo(ref)
        for _ in range(SET_STATUS_RETRIES):
            flags, domid = combo & 0xFFFF, combo >> 16
            if act is None and ((flags & mask) != GTF_permit_access or domid != ldomid):
                raise GntError(GntSt.GNTST_general_error,
                               f"d{self.domid} ref {ref:#x}: bad flags ({flags:#x}) or dom "
                               f"({domid}); expected d{ldomid}")
            new = combo | GTF_reading
            if not readonly:
                if flags & GTF_readonly:
                    raise GntError(GntSt.GNTST_general_error,
                                   f"d{self.domid} ref {ref:#x}: attempt to write-pin "
                                   "a read-only grant entry")
                new |= GTF_writing
            prev = self.frames.cmpxchg_combo(ref, combo, new)
            if prev == combo:
                return
            combo = prev
        raise GntError(GntSt.GNTST_general_error,
                       f"d{self.domid} ref {ref:#x}: shared grant entry is unstable")

    def _reduce_status(self, ref: int, pin: int, readonly: bool) -> None:
        """``reduce_status_for_pin``: drop the bits no remaining pin needs."""
        clear = 0 if pin else GTF_reading
        if not readonly and not pin & GNTPIN_writers:
            clear |= GTF_writing
        if clear:
            self.frames.clear_flags(ref, clear)

    # -- teardown ----------------------------------------------------------------------
    def revoke_all(self) -> int:
        """The granter is going away: drop every mapping of its grants."""
        n = 0
        for m in list(self.maps):
            release(m)
            m.revoked = True
            n += 1
        return n

    def close(self) -> None:
        self.frames.close()


@dataclass(slots=True, eq=False)
class Maptrack:
    """The mappings one process holds (Xen keeps one per domain; we keep one
    per connection, as each gntdev file of a Linux dom0 has its own)."""

    domid: int
    limit: int
    entries: dict[int, Mapping] = field(default_factory=dict)
    next_handle: int = 0

    def _new_handle(self) -> int:
        while self.next_handle in self.entries:
            self.next_handle = (self.next_handle + 1) & 0xFFFFFFFF
        handle = self.next_handle
        self.next_handle = (handle + 1) & 0xFFFFFFFF
        return handle


def release(m: Mapping, parts: int = GNTMAP_host_map | GNTMAP_device_map) -> int:
    """Drop ``parts`` of a mapping's pins; returns the parts actually dropped."""
    done = m.flags & parts & (GNTMAP_host_map | GNTMAP_device_map)
    if done and not m.revoked:
        m.table.unpin(m.ref, pin_incr(done | (m.flags & GNTMAP_readonly)), m.readonly)
    m.flags &= ~done
    if not m.flags & (GNTMAP_host_map | GNTMAP_device_map):
        m.table.maps.discard(m)
    return done


def map_grant_ref(mt: Maptrack, rd: GrantTable | None, ref: int,
                  flags: int) -> tuple[Mapping, ActiveEntry]:
    """``map_grant_ref``: validate, pin, record a handle; raises :class:`GntError`."""
    incr = pin_incr(flags)
    if not incr:
        raise GntError(GntSt.GNTST_bad_gntref,
                       f"bad flags {flags:#x}: neither GNTMAP_host_map nor GNTMAP_device_map")
    if rd is None:
        raise GntError(GntSt.GNTST_bad_domain, "no such granting domain")
    if len(mt.entries) >= mt.limit:
        raise GntError(GntSt.GNTST_no_space, f"d{mt.domid} holds {mt.limit} mappings already")
    ro = bool(flags & GNTMAP_readonly)
    act = rd.pin(ref, mt.domid, incr, ro, mapflag=True)
    kept = flags & (GNTMAP_host_map | GNTMAP_device_map | GNTMAP_readonly)
    m = Mapping(mt._new_handle(), rd, ref, kept)
    mt.entries[m.handle] = m
    rd.maps.add(m)
    return m, act


def unmap_grant_ref(mt: Maptrack, handle: int,
                    parts: int = GNTMAP_host_map | GNTMAP_device_map) -> None:
    """``unmap_grant_ref``: drop what the handle's map took (or some parts)."""
    m = mt.entries.get(handle)
    if m is None:
        raise GntError(GntSt.GNTST_bad_handle,
                       f"d{mt.domid} has no mapping with handle {handle:#x}")
    release(m, parts)
    if not m.flags & (GNTMAP_host_map | GNTMAP_device_map):
        del mt.entries[handle]


def release_maptrack(mt: Maptrack) -> int:
    """The mapping process went away (``gnttab_release_mappings``)."""
    n = len(mt.entries)
    for m in mt.entries.values():
        release(m)
    mt.entries.clear()
    return n


def acquire_for_copy(rd: GrantTable, ref: int, ldomid: int, readonly: bool) -> ActiveEntry:
    """``acquire_grant_for_copy`` (v1): one host pin for the copy's duration."""
    incr = GNTPIN_hstr_inc if readonly else GNTPIN_hstw_inc
    return rd.pin(ref, ldomid, incr, readonly, mapflag=False)


def release_for_copy(rd: GrantTable, ref: int, readonly: bool) -> None:
    rd.unpin(ref, GNTPIN_hstr_inc if readonly else GNTPIN_hstw_inc, readonly)
