"""Machine memory: 4 KiB frames in shared memory files, one owner each.

Every domain's frames live in that domain's own memory file (a memfd that
hypervisord creates): a domU process is handed its own file and nothing
else, so no descriptor or mapping in it reaches a frame of another domain.
Privileged (dom0) processes may be handed any domain's file for foreign
and grant mappings, as privcmd allows in Xen.

The layout of a domain memory file is pvxen ABI, in
:mod:`hypervisord.public.memfile`.

Machine frame numbers (MFNs) are global and allocated here; the P2M maps
a domain's gfn to its MFN, and ``frames[mfn]`` names the owner and gfn.
Files are sparse: a slot costs memory only once written. Releasing a frame
punches a hole, so ballooned-out memory is really returned to the host.

A file's size is hypervisord's alone: before any other process
gets a descriptor of it (:meth:`MachineMemory.hand_out`) it is sealed with
``F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL`` (``memfd_create(2)``,
``fcntl(2)``). A guest's ``ftruncate``, ``fallocate`` or ``write`` that
would change the size fails with ``EPERM``, so no daemon's mapping of the
file (shared_info, grant frames, a foreign-mapped store or ring page) can
ever lie beyond its end and fault. Until then (``createdomain``,
``max_mem``, ``populate_physmap`` by the builder) the physmap grows with
``max_mem``; from then on it is fixed, as a PV guest's P2M is sized once
at boot (Linux's ``xen_memory_setup`` reads ``XENMEM_maximum_reservation``
then). A later ``max_mem`` still sets the domain's page limit, as in Xen
(``xen/common/domctl.c`` never refuses it), but frames can only be
populated inside the sealed physmap.

What a guest can still do to its own file: punch holes in it (those pages
read as zeros everywhere, nobody faults) and write into slots of its
physmap it has no frame for. Such a write takes a page of host memory
(charged to the writing process's memory cgroup), bounded by the file:
at most the physmap (``max_mem`` when the file was sealed) and the
reserved slots, which is no more than the domain may populate anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
from dataclasses import dataclass, field

from hypervisord.public import memfile
from hypervisord.public.xen import PAGE_SIZE

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
#: what a domain's file is sealed with before it leaves hypervisord
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Give the pages back to the host (fallocate PUNCH_HOLE|KEEP_SIZE)."""
    rc = _libc.fallocate(ctypes.c_int(fd), ctypes.c_int(_FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE),
                         ctypes.c_long(offset), ctypes.c_long(length))
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class OutOfMemory(Exception):
    """No free machine frames left."""


@dataclass(slots=True)
class DomainMemory:
    """One domain's memory file and its P2M (gfn -> mfn)."""

    domid: int
    fd: int
    max_gfns: int
    p2m: dict[int, int] = field(default_factory=dict)
    sealed: bool = False  # size fixed for good: other processes hold the file

    @property
    def size(self) -> int:
        return memfile.file_size(self.max_gfns)

    offset_of_gfn = staticmethod(memfile.gfn_offset)

    @property
    def tot_pages(self) -> int:
        return len(self.p2m)


class MachineMemory:
    def __init__(self, total_bytes: int) -> None:
        self.total_frames = total_bytes // PAGE_SIZE
        self.frames: dict[int, tuple[int, int]] = {}  # mfn -> (domid, gfn)
        self._free_mfns: list[int] = []
        self._next_mfn = 0
        self.domains: dict[int, DomainMemory] = {}

    @property
    def free_frames(self) -> int:
        return self.total_frames - len(self.frames)

    @property
    def max_mfn(self) -> int:
        return self._next_mfn - 1 if self._next_mfn else 0

    def create(self, domid: int, max_gfns: int) -> DomainMemory:
        fd = os.memfd_create(f"pvxen-dom{domid}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        dm = DomainMemory(domid, fd, max_gfns)
        try:
            os.ftruncate(fd, dm.size)
        except OSError:
            os.close(fd)
            raise
        self.domains[domid] = dm
        return dm

    def set_max(self, dm: DomainMemory, max_gfns: int) -> None:
        """Grow (never shrink below populated frames) the domain's file, until
        it is sealed: from then on the physmap keeps its size."""
        if dm.sealed:
            return
        highest = max(dm.p2m, default=-1)
        dm.max_gfns = max(max_gfns, highest + 1)
        os.ftruncate(dm.fd, dm.size)

    def hand_out(self, dm: DomainMemory) -> int:
        """A descriptor of the domain's file for another process, the file
        sealed first so that no holder can change its size."""
        if not dm.sealed:
            fcntl.fcntl(dm.fd, fcntl.F_ADD_SEALS, SEALS)
            dm.sealed = True
        return os.dup(dm.fd)

    def _alloc_mfn(self) -> int:
        if len(self.frames) >= self.total_frames:
            raise OutOfMemory("machine memory exhausted")
        if self._free_mfns:
            return self._free_mfns.pop()
        mfn = self._next_mfn
        self._next_mfn += 1
        return mfn

    def populate(self, dm: DomainMemory, gfn: int) -> int:
        """Back ``gfn`` of the domain with a fresh (zeroed) frame."""
        if gfn in dm.p2m:
            return dm.p2m[gfn]
        if not 0 <= gfn < dm.max_gfns:
            raise ValueError(f"gfn {gfn:#x} outside the domain's physmap")
        mfn = self._alloc_mfn()
        self.frames[mfn] = (dm.domid, gfn)
        dm.p2m[gfn] = mfn
        return mfn

    def release(self, dm: DomainMemory, gfn: int) -> None:
        """Return ``gfn``'s frame to the machine; its contents are discarded."""
        mfn = dm.p2m.pop(gfn)
        del self.frames[mfn]
        self._free_mfns.append(mfn)
        punch_hole(dm.fd, dm.offset_of_gfn(gfn), PAGE_SIZE)

    def destroy(self, domid: int) -> None:
        dm = self.domains.pop(domid, None)
        if dm is None:
            return
        for gfn, mfn in dm.p2m.items():
            del self.frames[mfn]
            self._free_mfns.append(mfn)
        dm.p2m.clear()
        os.close(dm.fd)

    def owner_of(self, mfn: int) -> tuple[int, int] | None:
        return self.frames.get(mfn)
