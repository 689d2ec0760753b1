"""``memory_op`` and ``grant_table_op`` from guest code, forwarded to hypervisord.

Memory ownership and grant tables are global state (hypervisord's); the
vCPU decodes the guest's struct from guest memory once, makes the same
hypercall on the domain's connection (the domid is the connection's), writes
the OUT fields back, and keeps its page-table view (:class:`.mmu.Mmu`) in
step: frames given back are no longer the domain's to map, the grant-table
frames become mappable once ``GNTTABOP_setup_table`` made them.

``memory_op`` (``xen/common/memory.c``, ``xen/include/public/memory.h``):

* ``XENMEM_populate_physmap`` / ``XENMEM_decrease_reservation``: the extent
  list is read from the guest (a bad handle: the extents read so far are
  done, as Xen stops at the failing copy); the count of extents done is
  returned. pvxen keeps a frame that is typed as a page table (its
  contents are what the type counts stand on): ``decrease_reservation``
  stops short before it, as it stops before a frame that is granted and
  mapped. ``populate_physmap`` writes the "MFN" of each extent back (a
  pvxen PV guest's MFN is its pfn), as Xen does for a PV guest.
* ``XENMEM_current_reservation``, ``maximum_reservation``, ``maximum_gpfn``
  (arg: a ``domid_t``), ``maximum_ram_page`` (arg NULL).
* ``XENMEM_memory_map``: the toolstack sets no E820 for a PV guest, so
  Xen's answer is ``-ENOSYS`` (after reading the struct: ``-EFAULT`` first);
  ``XENMEM_machine_memory_map``: ``-EPERM`` (``XSM_PRIV``);
  ``XENMEM_add_to_physmap``: ``-EACCES`` (translated guests only).
  An unreadable reservation struct is "``start_extent`` done", as in Xen.
* ``XENMEM_increase_reservation``: frames anywhere, their MFNs written out
  (unless the list is NULL). A pvxen PV guest's MFNs are its pfns and its
  vCPU maps only pfns below ``nr_pages``, so the frames handed out are the
  ones it gave back (lowest first), populated again through hypervisord;
  with none given back, 0 extents are done (Xen would go on up to
  ``max_pages`` when ``maxmem`` is above ``memory``).
* anything else: ``-ENOSYS``.

``grant_table_op`` (``xen/common/grant_table.c``, ``public/grant_table.h``):
``GNTTABOP_setup_table`` (frame_list in pvxen machine frames
``GNTTAB_MFN + i``, which the guest maps with ``update_va_mapping`` /
``mmu_update``: they are the guest's grant table, shared writable as in
Xen), ``GNTTABOP_query_size``, ``GNTTABOP_set_version``,
``GNTTABOP_get_version``, ``GNTTABOP_copy`` (done by hypervisord; a copy
into one of the guest's own page-table frames is refused here, where the
page types are). Mapping grants into a vCPU guest (a backend in a PV domU)
is not served: ``-ENOSYS``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from hypervisord.public.errno import XenErrno
from hypervisord.public.grant_table import (GNTCOPY_dest_gref, GNTTAB_COPY,
                                            GNTTAB_GET_VERSION, GNTTAB_QUERY_SIZE,
                                            GNTTAB_SET_VERSION, GNTTAB_SETUP_TABLE,
                                            GnttabOp, GntSt)
from hypervisord.public.memfile import GNT_FIRST_SLOT
from hypervisord.public.memory import XEN_MEMORY_RESERVATION, XenMemOp
from hypervisord.public.xen import DOMID_SELF, DOMID_T, PAGE_SIZE, Hypercall
from libxen.sync import XenError

from .memory import GNTTAB_MFN
from .mmu import Mmu

CopyIn = Callable[[int, int], bytes]
CopyOut = Callable[[int, bytes], None]
MEMOP_CMD_MASK = 0x3F  # xen/include/public/memory.h: low bits of cmd; the rest: start_extent
MEMOP_EXTENT_SHIFT = 6
MAX_GRANT_OPS = 64  # setup/query/copy ops per call (a guest asks for few; bounded work)
_COPY_STATUS_OFF = GNTTAB_COPY.size - 4  # struct gnttab_copy: ... len, flags, status, pad
_XEN_PFN = struct.Struct("<Q")


class MemoryForwarder:
    """memory_op and grant_table_op of one vCPU over ``xc`` (a SyncXenCall)."""

    def __init__(self, xc, mmu: Mmu, copy_in: CopyIn, copy_out: CopyOut, fault: type) -> None:
        self.xc, self.mmu, self.copy_in, self._copy_out = xc, mmu, copy_in, copy_out
        self.fault = fault  # what copy_in/copy_out raise for a bad guest pointer

    def copy_out(self, va: int, data: bytes) -> None:
        """copy_to_guest, split at page boundaries (the vCPU's copies one page at a time)."""
        while data:
            n = min(len(data), PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            self._copy_out(va, data[:n])
            va, data = va + n, data[n:]

    def table(self) -> dict[int, Callable[[int, list[int]], int]]:
        return {Hypercall.memory_op: self.memory_op,
                Hypercall.grant_table_op: self.grant_table_op}

    def _call(self, hypercall: int, subop: int, **args) -> tuple[int, dict]:
        try:
            return self.xc.call(hypercall, subop, **args)
        except XenError as e:
            return -e.errno, {}

    # -- memory_op ---------------------------------------------------------------------------

    def memory_op(self, _nr: int, args: list[int]) -> int:
        cmd, arg = args[0] & 0xFFFF_FFFF, args[1]
        op, start = cmd & MEMOP_CMD_MASK, cmd >> MEMOP_EXTENT_SHIFT
        M = XenMemOp
        if op in (M.XENMEM_populate_physmap, M.XENMEM_decrease_reservation,
                  M.XENMEM_increase_reservation):
            return self._reservation(op, start, arg)
        if op in (M.XENMEM_current_reservation, M.XENMEM_maximum_reservation,
                  M.XENMEM_maximum_gpfn, M.XENMEM_maximum_ram_page) and start:
            return -XenErrno.XEN_EINVAL  # no continuation of these
        if op in (M.XENMEM_current_reservation, M.XENMEM_maximum_reservation,
                  M.XENMEM_maximum_gpfn):
            (domid,) = DOMID_T.unpack(self.copy_in(arg, DOMID_T.size))
            return self._call(Hypercall.memory_op, op, domid=domid)[0]
        if op == M.XENMEM_maximum_ram_page:
            return self._call(Hypercall.memory_op, op)[0]
        if op == M.XENMEM_memory_map:
            self.copy_in(arg, 16)  # struct xen_memory_map { uint nr_entries; handle buffer; }
            return -XenErrno.XEN_ENOSYS
        if op == M.XENMEM_add_to_physmap:
            self.copy_in(arg, 24)  # struct xen_add_to_physmap
            return -XenErrno.XEN_EACCES  # xatp_permission_check: translated guests only
        if op == M.XENMEM_machine_memory_map:
            return -XenErrno.XEN_EPERM
        return -XenErrno.XEN_ENOSYS

    def _extents(self, handle: int, start: int, nr: int) -> list[int]:
        """The guest's xen_pfn_t array from ``start``: as many as can be read."""
        out: list[int] = []
        for i in range(start, nr):
            try:
                out.append(_XEN_PFN.unpack(self.copy_in(handle + 8 * i, 8))[0])
            except self.fault:
                break
        return out

    def _reservation(self, op: int, start: int, arg: int) -> int:
        try:
            handle, nr, order, _flags, domid = XEN_MEMORY_RESERVATION.unpack(
                self.copy_in(arg, XEN_MEMORY_RESERVATION.size))
        except self.fault:
            return start  # Xen: an unreadable reservation is "start_extent done"
        nr = min(nr, start + self.mmu.nr_pages)  # no more than the domain has: bounded work
        if start >= nr:
            return start
        if order:
            return start  # 2 MiB extents: a PV domU may not (multipage_allocation_permitted)
        if op == XenMemOp.XENMEM_increase_reservation:
            # New frames, their MFNs out: a pvxen PV guest's MFN is its pfn, and
            # only its own pfns are mapped for its vCPU, so the frames it gave
            # back are what can be handed out again (lowest first).
            gfns = sorted(self.mmu.released)[:nr - start]
        else:
            gfns = self._extents(handle, start, nr)
        if op == XenMemOp.XENMEM_decrease_reservation:
            for i, gfn in enumerate(gfns):
                if self.mmu.in_use_as_table(gfn):
                    del gfns[i:]
                    break
        if not gfns:
            return start
        hop = XenMemOp.XENMEM_populate_physmap if op == XenMemOp.XENMEM_increase_reservation \
            else op
        rc, _ = self._call(Hypercall.memory_op, hop, domid=domid, extent_order=0,
                           extent_start=gfns)
        if rc < 0:
            return rc
        done = gfns[:rc]
        if domid not in (DOMID_SELF, self.mmu.domid):
            return start + rc  # another domain's (privileged): nothing of ours changed
        if op == XenMemOp.XENMEM_decrease_reservation:
            self.mmu.released.update(done)
        else:
            self.mmu.released.difference_update(done)
            for i, gfn in enumerate(done):  # OUT: the MFN of each extent (== gfn)
                if handle == 0 and op == XenMemOp.XENMEM_increase_reservation:
                    break  # a NULL extent list: increase_reservation writes nothing back
                try:
                    self.copy_out(handle + 8 * (start + i), _XEN_PFN.pack(gfn))
                except self.fault:
                    return start + i
        self.mmu.cpu.flush_tlb()
        return start + rc

    # -- grant_table_op ------------------------------------------------------------------------

    def grant_table_op(self, _nr: int, args: list[int]) -> int:
        cmd, uop, count = args[0] & 0xFFFF_FFFF, args[1], args[2] & 0xFFFF_FFFF
        G = GnttabOp
        if cmd == G.GNTTABOP_setup_table:
            for i in range(min(count, MAX_GRANT_OPS)):
                self._setup_table(uop + i * GNTTAB_SETUP_TABLE.size)
            return 0
        if cmd == G.GNTTABOP_query_size:
            for i in range(min(count, MAX_GRANT_OPS)):
                self._query_size(uop + i * GNTTAB_QUERY_SIZE.size)
            return 0
        if cmd == G.GNTTABOP_set_version:
            (version,) = GNTTAB_SET_VERSION.unpack(self.copy_in(uop, GNTTAB_SET_VERSION.size))
            rc, r = self._call(Hypercall.grant_table_op, cmd, version=version)
            if rc < 0:
                return rc
            self.copy_out(uop, GNTTAB_SET_VERSION.pack(int(r["version"])))
            return 0
        if cmd == G.GNTTABOP_copy:  # in chunks (Xen: continuations); a signal still stops us
            for first in range(0, count, MAX_GRANT_OPS):
                rc = self._copy(uop + first * GNTTAB_COPY.size, min(count - first, MAX_GRANT_OPS))
                if rc < 0:
                    return rc
            return 0
        if cmd == G.GNTTABOP_get_version:
            dom, _pad, _ = GNTTAB_GET_VERSION.unpack(self.copy_in(uop, GNTTAB_GET_VERSION.size))
            rc, r = self._call(Hypercall.grant_table_op, cmd, dom=dom)
            if rc < 0:
                return rc
            self.copy_out(uop, GNTTAB_GET_VERSION.pack(dom, 0, int(r["version"])))
            return 0
        return -XenErrno.XEN_ENOSYS

    def _copy(self, uop: int, count: int) -> int:
        """``GNTTABOP_copy``: the ops read once, done by hypervisord (it holds
        every domain's memory and grant table), each op's status written back.

        One check stays here, where the page types are: a copy into one of the
        guest's own frames that is typed as a page table fails
        (``GNTST_general_error``), as Xen's ``get_page_type(PGT_writable_page)``
        does, so no copy rewrites a validated table.
        """
        ops, wire, refused, faulted = [], [], {}, False
        for i in range(count):
            va = uop + i * GNTTAB_COPY.size
            try:
                (s_u, s_dom, s_off, d_u, d_dom, d_off, length, flags,
                 _status) = GNTTAB_COPY.unpack(self.copy_in(va, GNTTAB_COPY.size))
            except self.fault:  # Xen's loop: the ops before it are done, then -EFAULT
                faulted = True
                break
            ops.append(va)
            own_dest = not flags & GNTCOPY_dest_gref and d_dom in (DOMID_SELF, self.mmu.domid)
            if own_dest and self.mmu.in_use_as_table(d_u):
                refused[i] = GntSt.GNTST_general_error
                continue
            wire.append((i, {"source": {"u": s_u, "domid": s_dom, "offset": s_off},
                             "dest": {"u": d_u, "domid": d_dom, "offset": d_off},
                             "len": length, "flags": flags}))
        statuses = dict(refused)
        if wire:
            rc, r = self._call(Hypercall.grant_table_op, GnttabOp.GNTTABOP_copy,
                               ops=[op for _, op in wire])
            if rc < 0:
                return rc
            for (i, _), result in zip(wire, r["ops"]):
                statuses[i] = int(result.get("status", GntSt.GNTST_general_error))
        for i, va in enumerate(ops):
            self.copy_out(va + _COPY_STATUS_OFF, struct.pack("<h", statuses[i]))
        return -XenErrno.XEN_EFAULT if faulted else 0

    def _setup_table(self, va: int) -> None:
        dom, nr_frames, _status, frame_list = GNTTAB_SETUP_TABLE.unpack(
            self.copy_in(va, GNTTAB_SETUP_TABLE.size))
        _, r = self._call(Hypercall.grant_table_op, GnttabOp.GNTTABOP_setup_table,
                           dom=dom, nr_frames=nr_frames)
        status = int(r.get("status", GntSt.GNTST_general_error))
        if status == GntSt.GNTST_okay and dom in (DOMID_SELF, self.mmu.domid):
            # hypervisord names memory-file slots; the guest's "machine frames" of them
            mfns = [GNTTAB_MFN + slot - GNT_FIRST_SLOT for slot in r["frame_list"]]
            self.mmu.grant_frames.update(mfns)
            try:
                for i, mfn in enumerate(mfns):
                    self.copy_out(frame_list + 8 * i, _XEN_PFN.pack(mfn))
            except self.fault:
                status = GntSt.GNTST_bad_virt_addr
        self.copy_out(va, GNTTAB_SETUP_TABLE.pack(dom, nr_frames, status, frame_list))

    def _query_size(self, va: int) -> None:
        dom, _nr, _max, _status = GNTTAB_QUERY_SIZE.unpack(
            self.copy_in(va, GNTTAB_QUERY_SIZE.size))
        _, r = self._call(Hypercall.grant_table_op, GnttabOp.GNTTABOP_query_size, dom=dom)
        status = int(r.get("status", GntSt.GNTST_general_error))
        self.copy_out(va, GNTTAB_QUERY_SIZE.pack(dom, int(r.get("nr_frames", 0)),
                                                 int(r.get("max_nr_frames", 0)), status))
