"""Foreign memory mappings for dom0 (libxenforeignmemory over privcmd).

``ForeignMemory(xc).map(domid, gfns, writable)`` returns one contiguous
memoryview over the requested guest frames of another domain, in order,
as ``xenforeignmemory_map`` returns one contiguous region. hypervisord's
``pvxen_op.map_foreign`` (dom0 only: a domU gets ``-EPERM``) hands over the
domain's memory file and its populated gfns; frame ``gfn`` lives at
:func:`hypervisord.public.memfile.gfn_offset`. Runs of consecutive gfns are one
mapping; any other page is placed into the region with ``MAP_FIXED``
(the region is a Python ``mmap`` object, so it is unmapped as a whole
when that object is closed or collected).

Every requested gfn must be populated (else ``EINVAL``, nothing mapped).
As with privcmd, the mapping is a privilege of dom0 and outlives what
hypervisord accounts: a frame the domain balloons out later reads as
zeros here, and the pages of a destroyed domain stay alive until dom0
unmaps them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os

from libxen import ctrl
from hypervisord.public import memfile
from hypervisord.public.xen import PAGE_SIZE

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_MAP_FIXED = 0x10
_MAP_FAILED = ctypes.c_void_p(-1).value


class _PyBuffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.py_object), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int),
                ("ndim", ctypes.c_int), ("format", ctypes.c_char_p),
                ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


def _address(obj: mmap.mmap) -> int:
    """The start address of an mmap object (read-only ones included)."""
    view = _PyBuffer()
    if ctypes.pythonapi.PyObject_GetBuffer(ctypes.py_object(obj), ctypes.byref(view), 0) != 0:
        raise BufferError("no buffer")
    try:
        assert view.buf is not None
        return view.buf
    finally:
        ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))


def _runs(gfns: list[int]) -> list[tuple[int, int, int]]:
    """(index, first gfn, count) for each run of consecutive gfns."""
    runs: list[tuple[int, int, int]] = []
    for i, gfn in enumerate(gfns):
        if runs and runs[-1][1] + runs[-1][2] == gfn:
            idx, first, n = runs[-1]
            runs[-1] = (idx, first, n + 1)
        else:
            runs.append((i, gfn, 1))
    return runs


def map_file_frames(fd: int, gfns: list[int], writable: bool) -> mmap.mmap:
    """One region holding ``gfns`` of a domain memory file, in order."""
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    runs = _runs(gfns)
    _, first, _ = runs[0]
    region = mmap.mmap(fd, len(gfns) * PAGE_SIZE, mmap.MAP_SHARED, prot,
                       offset=memfile.gfn_offset(first))
    base = _address(region)
    for idx, gfn, n in runs[1:]:
        addr = _libc.mmap(base + idx * PAGE_SIZE, n * PAGE_SIZE, prot,
                          mmap.MAP_SHARED | _MAP_FIXED, fd, memfile.gfn_offset(gfn))
        if addr == _MAP_FAILED or addr is None:
            err = ctypes.get_errno()
            region.close()
            raise OSError(err, f"mmap of gfn {gfn:#x}: {os.strerror(err)}")
    return region


class ForeignMemory:
    """``xenforeignmemory_*`` for a dom0 process."""

    def __init__(self, xc) -> None:
        self.xc = xc

    async def map(self, domid: int, gfns: list[int], writable: bool = True) -> memoryview:
        """The frames ``gfns`` of domain ``domid`` as one memoryview."""
        if not gfns:
            raise ValueError("no frames to map")
        gfns = list(gfns)
        _, r = await ctrl.map_foreign(self.xc, domid, gfns[:4096])
        fd = r["fds"]["memory"]
        try:
            populated = set(r["populated"])
            for i in range(4096, len(gfns), 4096):  # the op checks 4096 frames a call
                _, more = await ctrl.map_foreign(self.xc, domid, gfns[i:i + 4096])
                os.close(more["fds"]["memory"])
                populated.update(more["populated"])
            missing = [g for g in gfns if g not in populated]
            if missing:
                raise OSError(errno.EINVAL, f"d{domid} has not populated gfn(s) "
                              f"{', '.join(hex(g) for g in missing[:8])}")
            region = map_file_frames(fd, list(gfns), writable)
        finally:
            os.close(fd)
        return memoryview(region)

    @staticmethod
    def unmap(view: memoryview) -> None:
        """``xenforeignmemory_unmap``: release the view and its region now."""
        region = view.obj
        view.release()
        if isinstance(region, mmap.mmap):
            region.close()
