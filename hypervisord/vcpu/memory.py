"""A PV domain's memory as its vCPUs see it: the memory file, mapped once.

The domain's memory file (layout: :mod:`hypervisord.public.memfile`) is
mmapped ``MAP_SHARED`` once per guest process; every vCPU's Unicorn maps
host pointers into that one mapping (``mem_map_ptr``: no copies, so what
backendd or hypervisord write into a frame is what the guest reads, and
back; pv-guest-abi.md §1). Guest-physical address space of a vCPU::

    0 .. nr_pages << 12            guest frames 0 .. nr_pages - 1 ("machine"
                                   frames: a pvxen PV guest's MFN is its gfn)
    SHARED_INFO_MFN << 12          the shared_info slot (start_info.shared_info)
    GNTTAB_MFN << 12 ..            the grant-table slots (GNTTABOP_setup_table's
                                   frame_list names these frames to a PV guest)
    HV_PRIVATE_MFN << 12 ..        the hypervisor's own frames (GDT, see gdt.py), never
                                   reachable through a guest PTE

Guest PTEs may only name frames below ``nr_pages``, the shared_info frame or
the grant-table frames (checked by the page-table hypercalls, :mod:`.mmu`).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct

from hypervisord.public import memfile
from hypervisord.public.memfile import NR_GNT_FRAMES
from hypervisord.public.xen import PAGE_SIZE

#: the "machine frame" of shared_info that start_info.shared_info names
SHARED_INFO_MFN = (1 << 26) - 64
#: the first of the NR_GNT_FRAMES "machine frames" of the grant table
GNTTAB_MFN = SHARED_INFO_MFN + 1
#: the first frame of hypervisor-private memory (the vCPU's GDT)
HV_PRIVATE_MFN = (1 << 26) - 32
HV_PRIVATE_FRAMES = 18  # a GDT up to Xen's reserved page 14, and 3 tables mapping it (gdt.py)
MAX_PV_PAGES = SHARED_INFO_MFN  # guest frames must stay below shared_info

_Q = struct.Struct("<Q")


class GuestMemory:
    """The memory file of one domain, ``nr_pages`` guest frames, mapped shared."""

    def __init__(self, fd: int, nr_pages: int) -> None:
        if not 0 < nr_pages <= MAX_PV_PAGES:
            raise ValueError(f"nr_pages {nr_pages} out of range")
        size = memfile.file_size(nr_pages)
        if os.fstat(fd).st_size < size:
            raise ValueError(f"memory file holds fewer than {nr_pages} frames")
        self.nr_pages = nr_pages
        self.mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._export = ctypes.c_char.from_buffer(self.mm)  # pins the mapping
        self.host_base = ctypes.addressof(self._export)
        self.view = memoryview(self.mm)

    def host_ptr_of_gfn(self, gfn: int) -> int:
        return self.host_base + memfile.gfn_offset(gfn)

    @property
    def shared_info_ptr(self) -> int:
        return self.host_base + memfile.slot_offset(memfile.SHARED_INFO_SLOT)

    @property
    def grant_table_ptr(self) -> int:
        return self.host_base + memfile.slot_offset(memfile.GNT_FIRST_SLOT)

    def _offset(self, gpa: int, length: int) -> int:
        """File offset of guest-physical ``gpa .. gpa+length`` (one region)."""
        if 0 <= gpa and gpa + length <= self.nr_pages * PAGE_SIZE:
            return memfile.gfn_offset(0) + gpa
        base = SHARED_INFO_MFN * PAGE_SIZE
        if base <= gpa and gpa + length <= base + PAGE_SIZE:
            return memfile.slot_offset(memfile.SHARED_INFO_SLOT) + gpa - base
        base = GNTTAB_MFN * PAGE_SIZE
        if base <= gpa and gpa + length <= base + memfile.NR_GNT_FRAMES * PAGE_SIZE:
            return memfile.slot_offset(memfile.GNT_FIRST_SLOT) + gpa - base
        raise IndexError(f"guest-physical {gpa:#x}+{length} is not guest memory")

    def read(self, gpa: int, length: int) -> bytes:
        off = self._offset(gpa, length)
        return bytes(self.view[off:off + length])

    def write(self, gpa: int, data: bytes) -> None:
        off = self._offset(gpa, len(data))
        self.view[off:off + len(data)] = data

    def read_u64(self, gpa: int) -> int:
        return _Q.unpack_from(self.view, self._offset(gpa, 8))[0]

    def write_u64(self, gpa: int, value: int) -> None:
        _Q.pack_into(self.view, self._offset(gpa, 8), value)

    def close(self) -> None:
        self.view.release()
        del self._export
        self.mm.close()
