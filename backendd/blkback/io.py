"""blkback's image file: requests go straight between the file and the
granted pages (``preadv``/``pwritev`` on memoryviews of the mappings, no
copy in between), flushes are ``fsync``, discards punch holes.

Blocking: a read or write is first tried inline with ``RWF_NOWAIT``
(``preadv2(2)``: the kernel refuses with ``EAGAIN`` rather than wait for the
disk, and may do part of it), so a request served from the page cache costs
no thread hop; what is left, and every ``fsync``/``fallocate``, runs in a
worker thread (``trio.to_thread``), so one device waiting for its disk never
stalls the others. Linux's blkback submits bios and completes them from
the block layer's interrupt; this is the same split in user space.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass, field

from hypervisord.public.io.blkif import BLKIF_SECTOR_SIZE

#: linux/falloc.h
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
#: discard-granularity we publish: the page/file-system block a hole is made of
DISCARD_GRANULARITY = 4096

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int


class ImageError(Exception):
    """The image cannot be opened; the message names the path."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


@dataclass
class Image:
    """An open raw image (sparse is fine)."""

    path: str
    fd: int
    readonly: bool
    size: int
    nowait_write: bool = True  #: RWF_NOWAIT on buffered writes (filesystem-dependent)
    stats: dict[str, int] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str, readonly: bool) -> "Image":
        if not path:
            raise ImageError(errno.EINVAL, "no image path (params is empty)")
        try:
            fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as e:
            raise ImageError(e.errno or errno.EIO,
                             f"cannot open image {path} {'read-only' if readonly else 'read-write'}: "
                             f"{e.strerror}") from e
        try:
            st = os.fstat(fd)
            size = st.st_size
            if not (os.path.stat.S_ISREG(st.st_mode) or os.path.stat.S_ISBLK(st.st_mode)):
                raise ImageError(errno.EINVAL, f"image {path} is not a file or block device")
            if os.path.stat.S_ISBLK(st.st_mode):
                size = os.lseek(fd, 0, os.SEEK_END)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, readonly, size)

    @property
    def sectors(self) -> int:
        return self.size // BLKIF_SECTOR_SIZE

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        # A device probed, never connected, then removed: its driver object
        # goes, and the descriptor with it.
        self.close()

    # -- inline attempts (never block on the disk) -----------------------------------
    def try_read(self, bufs: list[memoryview], offset: int) -> int:
        """Bytes read without waiting (0 when nothing was cached)."""
        try:
            return os.preadv(self.fd, bufs, offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return 0

    def try_write(self, bufs: list[memoryview], offset: int) -> int:
        if not self.nowait_write:
            return 0
        try:
            return os.pwritev(self.fd, bufs, offset, os.RWF_NOWAIT)
        except BlockingIOError:
            return 0
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                self.nowait_write = False  # this file system cannot: always the thread
                return 0
            raise

    # -- blocking (called in a worker thread) ----------------------------------------
    def read(self, bufs: list[memoryview], offset: int) -> None:
        _all(os.preadv, self.fd, bufs, offset, zero_fill=True)

    def write(self, bufs: list[memoryview], offset: int) -> None:
        _all(os.pwritev, self.fd, bufs, offset, zero_fill=False)

    def flush(self) -> None:
        os.fsync(self.fd)

    def discard(self, offset: int, length: int) -> None:
        """Punch a hole (the file keeps its size: ``sectors`` do not change)."""
        if length == 0:
            return
        if _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fallocate(PUNCH_HOLE) on {self.path}: {os.strerror(err)}")


def skip(bufs: list[memoryview], n: int) -> list[memoryview]:
    """``bufs`` without their first ``n`` bytes (views, no copy)."""
    out = []
    for b in bufs:
        if n >= len(b):
            n -= len(b)
            continue
        out.append(b[n:] if n else b)
        n = 0
    return out


def _all(op, fd: int, bufs: list[memoryview], offset: int, zero_fill: bool) -> None:
    """Repeat a vectored op until every byte is done (short transfers)."""
    total = sum(len(b) for b in bufs)
    done = 0
    while done < total:
        rest = skip(bufs, done)
        n = op(fd, rest, offset + done)
        if n == 0:
            if zero_fill:  # past the end of a file that shrank: reads as zeros
                for b in rest:
                    b[:] = bytes(len(b))
                return
            raise OSError(errno.EIO, "short write: no progress")
        done += n
