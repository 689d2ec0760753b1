"""A domain's end of the XenStore ring, written by hand for hostile tests.

Independent of ``libxen/xsring.py`` on purpose: a test guest must be able to
write what a correct client never would (indices past the ring, its own
corrupted response index). Plain ``struct`` accesses are fine here: only
the guest side of the test writes these words while the daemon reads them.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import struct
from collections.abc import Callable

from hypervisord.public import memfile
from hypervisord.public.io.xs_wire import (
    XENSTORE_RING_SIZE,
    XS_RING_REQ_OFF,
    XS_RING_REQ_PROD_OFF,
    XS_RING_RSP_CONS_OFF,
    XS_RING_RSP_OFF,
    XS_RING_RSP_PROD_OFF,
)
from hypervisord.public.xen import PAGE_SIZE

HEADER = struct.Struct("<IIII")
U32 = struct.Struct("<I")


class RawRing:
    def __init__(self, memory_fd: int, gfn: int) -> None:
        self.page = mmap.mmap(memory_fd, PAGE_SIZE, offset=memfile.gfn_offset(gfn))

    def get(self, off: int) -> int:
        return U32.unpack_from(self.page, off)[0]

    def put(self, off: int, value: int) -> None:
        U32.pack_into(self.page, off, value & 0xFFFFFFFF)

    def put_request(self, data: bytes) -> None:
        prod = self.get(XS_RING_REQ_PROD_OFF)
        for i, b in enumerate(data):
            self.page[XS_RING_REQ_OFF + (prod + i) % XENSTORE_RING_SIZE] = b
        self.put(XS_RING_REQ_PROD_OFF, prod + len(data))

    def take_response(self) -> bytes:
        """What the daemon answered so far; nothing if the indices are off
        (our own corruption included: it is left in place)."""
        cons, prod = self.get(XS_RING_RSP_CONS_OFF), self.get(XS_RING_RSP_PROD_OFF)
        avail = (prod - cons) & 0xFFFFFFFF
        if not 0 < avail <= XENSTORE_RING_SIZE:
            return b""
        data = bytes(self.page[XS_RING_RSP_OFF + (cons + i) % XENSTORE_RING_SIZE]
                     for i in range(avail))
        self.put(XS_RING_RSP_CONS_OFF, prod)
        return data


def run_ring_guest(xc, xs, guest: Callable[[dict, int, str, int], None], mode: str):
    """Start a domain (``test_domain_ring.start_domain``) whose process runs
    ``guest(fds, port, mode, result_w)`` in a fork; ``(domid, child, result)``
    once the guest wrote the repr of its result on the pipe."""
    from tests.xenstored.test_domain_ring import start_domain

    domid, port, fds = start_domain(xc, xs)
    result_r, result_w = os.pipe()
    child = multiprocessing.get_context("fork").Process(
        target=guest, args=(fds, port, mode, result_w))
    child.start()
    os.close(result_w)
    for fd in fds.values():
        os.close(fd)
    try:
        text = os.read(result_r, 65536).decode()
    finally:
        os.close(result_r)
    if text.startswith("error"):
        child.kill()
        raise AssertionError(text)
    return domid, child, eval(text)  # noqa: S307 - our own child's repr of bytes
