"""Shared producer/consumer rings: mirrors ``xen/include/public/io/ring.h``
(Xen commit c447b730, 4.23-unstable) as plain classes over a memoryview.

Owns the ``struct <name>_sring`` header layout, ring sizing (``__RD32``,
``__CONST_RING_SIZE``), the front/back private state and every ring macro,
with the same index arithmetic: ``RING_IDX`` is a free-running uint32, so
all differences are taken modulo 2**32 and only ``idx & (size - 1)`` picks
a slot. Also the byte-ring helpers of ``DEFINE_XEN_FLEX_RING``.

Who writes what in the shared header (64 bytes on every ABI)::

    req_prod   front   requests published up to here
    req_event  back    "notify me when req_prod passes this"
    rsp_prod   back    responses published up to here
    rsp_event  front   "notify me when rsp_prod passes this"
    pvt, pad   nobody after SHARED_RING_INIT (zeroed)

Worked example (a 4-slot ring). The back end has consumed everything and
goes idle: RING_FINAL_CHECK_FOR_REQUESTS finds nothing, sets
``req_event = req_cons + 1 = 8``, issues a full barrier and checks again
(still nothing), so it sleeps. The front queues requests 7 and 8 privately
(``req_prod_pvt = 9``) and pushes: ``old = 7, new = 9``; it must notify iff
the event index lies in the newly published window ``(old, new]``, i.e.
``(new - req_event) < (new - old)`` in uint32 arithmetic: ``1 < 2``, so
it notifies once for two requests. While the back end is busy its
``req_event`` stays behind, so further pushes send nothing: a busy ring
needs few notifications. The re-check after the barrier closes the race in
which the front pushes between the back end's first check and its
``req_event`` write: either the front sees the new ``req_event`` (and
notifies) or the back end's re-check sees the new ``req_prod``.

Where C has ``xen_wmb()``/``xen_mb()`` this module calls the functions of
the same name (see their docstrings for what they amount to in CPython).
Whatever comes from the other end is copied once (``RING_COPY_REQUEST``)
and only the copy is parsed.

Each index is read by one end while the other writes it, so every access is
one aligned access (a plain ``RING_IDX`` access in C); the stdlib has none
(``struct.pack_into`` zeroes the field first), so :class:`SharedRing` takes
accessors: ``libxen.ringidx.shared_ring``'s atomic ones between
processes, the default :func:`private_index` only within one.
"""

from __future__ import annotations

import mmap
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

RING_IDX = struct.Struct("<I")  # typedef unsigned int RING_IDX
RING_IDX_MASK = 0xFFFFFFFF
XEN_PAGE_SHIFT = 12

# struct <name>_sring header: req_prod, req_event, rsp_prod, rsp_event,
# pvt (union, 4 bytes), __pad[44]; ring[] starts at 64.
SRING_HEADER = struct.Struct("<IIII4s44s")
SRING_REQ_PROD_OFF = 0
SRING_REQ_EVENT_OFF = 4
SRING_RSP_PROD_OFF = 8
SRING_RSP_EVENT_OFF = 12
SRING_PVT_OFF = 16
SRING_PAD_OFF = 20
SRING_RING_OFF = 64
assert SRING_HEADER.size == SRING_RING_OFF == 64


IndexOps = tuple[Callable[[], int], Callable[[int], None], Callable[[], None]]
IndexAccess = Callable[[memoryview, int], IndexOps]
_INDEX_OFFS = (SRING_REQ_PROD_OFF, SRING_REQ_EVENT_OFF, SRING_RSP_PROD_OFF, SRING_RSP_EVENT_OFF)


def private_index(buf: memoryview, off: int) -> IndexOps:
    """An IndexAccess: ``(load, store, close)`` of the index at ``off``, not atomic."""
    return (lambda: int(RING_IDX.unpack_from(buf, off)[0]),
            lambda value: RING_IDX.pack_into(buf, off, value & RING_IDX_MASK), lambda: None)


class RingOverflowError(Exception):
    """The other end published an index no well-behaved peer can reach."""


def xen_mb() -> None:
    """Full barrier: earlier loads/stores complete before later ones.

    CPython has no fence primitive. Acquiring and releasing an uncontended
    lock executes a locked read-modify-write (sem_trywait/sem_post), which on
    x86-64 drains the store buffer: exactly the store->load ordering that
    the notification-suppression protocol needs.
    """
    with _fence:
        pass


def xen_wmb() -> None:
    """Write barrier: a no-op on x86-64 (TSO keeps stores in program order,
    and every shared-memory store here is its own C call)."""


def xen_rmb() -> None:
    """Read barrier: a no-op on x86-64 (loads are not reordered with loads)."""


_fence = threading.Lock()


def ring_idx(x: int) -> int:
    """Reduce to a RING_IDX (uint32)."""
    return x & RING_IDX_MASK


def rd32(x: int) -> int:
    """``__RD32``: round a 32-bit value down to a power of two (0 stays 0)."""
    x &= RING_IDX_MASK
    return 1 << (x.bit_length() - 1) if x else 0


def const_ring_size(area_size: int, entry_size: int) -> int:
    """``__CONST_RING_SIZE``/``__RING_SIZE``: entries that fit in ``area_size``
    bytes after the header, rounded down to a power of two."""
    if entry_size <= 0 or area_size < SRING_RING_OFF:
        return 0
    return rd32((area_size - SRING_RING_OFF) // entry_size)


def ring_notify_needed(new: int, old: int, event: int) -> bool:
    """The CHECK_NOTIFY test: does ``event`` lie in ``(old, new]`` mod 2**32?"""
    return ring_idx(new - event) < ring_idx(new - old)


class SharedRing:
    """A ``struct <name>_sring`` living in ``buf`` (a page or several).

    Every shared field goes through ``_load``/``_store`` (tests subclass them
    to interleave the other end at any single access), they through the
    ``index_access`` accessors (module docstring). :meth:`close` before unmap.
    """

    __slots__ = ("_buf", "entry_size", "nr_ents", "_ops")

    def __init__(self, buf: memoryview | bytearray | mmap.mmap, entry_size: int,
                 size: int | None = None, *, index_access: IndexAccess = private_index) -> None:
        mv = memoryview(buf)
        if mv.readonly:
            raise ValueError("a shared ring needs a writable buffer")
        mv = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
        area = len(mv) if size is None else size
        if area > len(mv):
            raise ValueError(f"ring size {area} exceeds the {len(mv)}-byte buffer")
        self.nr_ents = const_ring_size(area, entry_size)
        if self.nr_ents == 0:
            raise ValueError(f"no {entry_size}-byte entry fits in {area} bytes")
        self._buf = mv
        self.entry_size = entry_size
        self._ops: dict[int, IndexOps] = {off: index_access(mv, off) for off in _INDEX_OFFS}

    def close(self) -> None:
        """Drop the accessors and our view of the buffer (idempotent)."""
        ops, self._ops = self._ops, {}
        for _, _, close in ops.values():
            close()
        self._buf.release()

    def _load(self, off: int) -> int:
        return self._ops[off][0]()

    def _store(self, off: int, value: int) -> None:
        self._ops[off][1](value & RING_IDX_MASK)

    @property
    def req_prod(self) -> int:
        return self._load(SRING_REQ_PROD_OFF)

    @req_prod.setter
    def req_prod(self, v: int) -> None:
        self._store(SRING_REQ_PROD_OFF, v)

    @property
    def req_event(self) -> int:
        return self._load(SRING_REQ_EVENT_OFF)

    @req_event.setter
    def req_event(self, v: int) -> None:
        self._store(SRING_REQ_EVENT_OFF, v)

    @property
    def rsp_prod(self) -> int:
        return self._load(SRING_RSP_PROD_OFF)

    @rsp_prod.setter
    def rsp_prod(self, v: int) -> None:
        self._store(SRING_RSP_PROD_OFF, v)

    @property
    def rsp_event(self) -> int:
        return self._load(SRING_RSP_EVENT_OFF)

    @rsp_event.setter
    def rsp_event(self, v: int) -> None:
        self._store(SRING_RSP_EVENT_OFF, v)

    def init(self) -> None:
        """``SHARED_RING_INIT``: only the front end initialises the page."""
        self.req_prod = self.rsp_prod = 0
        self.req_event = self.rsp_event = 1
        self._buf[SRING_PVT_OFF:SRING_RING_OFF] = bytes(SRING_RING_OFF - SRING_PVT_OFF)

    def slot(self, idx: int) -> memoryview:
        """``RING_GET_REQUEST``/``RING_GET_RESPONSE``: the live entry bytes.
        Only the producer of a slot should hold this; consumers copy."""
        off = SRING_RING_OFF + (idx & (self.nr_ents - 1)) * self.entry_size
        return self._buf[off : off + self.entry_size]

    def copy(self, idx: int) -> bytes:
        """``RING_COPY_*``: one read of the entry into private memory."""
        return bytes(self.slot(idx))

    def put(self, idx: int, data: bytes) -> None:
        if len(data) > self.entry_size:
            raise ValueError(f"{len(data)}-byte entry exceeds the {self.entry_size}-byte slot")
        s = self.slot(idx)
        s[: len(data)] = data
        s[len(data) :] = bytes(self.entry_size - len(data))  # no stale bytes leak


@dataclass(slots=True)
class FrontRing:
    """``struct <name>_front_ring``: pushes requests, takes responses."""

    sring: SharedRing
    req_prod_pvt: int = 0
    rsp_cons: int = 0
    nr_ents: int = field(init=False)

    def __post_init__(self) -> None:
        self.nr_ents = self.sring.nr_ents
        self.req_prod_pvt = ring_idx(self.req_prod_pvt)
        self.rsp_cons = ring_idx(self.rsp_cons)

    @classmethod
    def init(cls, sring: SharedRing) -> FrontRing:
        """``XEN_FRONT_RING_INIT``: initialise the shared page and attach."""
        sring.init()
        return cls(sring)

    @classmethod
    def attach(cls, sring: SharedRing, start: int) -> FrontRing:
        """``FRONT_RING_ATTACH``: resume at index ``start``."""
        return cls(sring, start, start)

    def free_requests(self) -> int:
        """``RING_FREE_REQUESTS``."""
        return self.nr_ents - ring_idx(self.req_prod_pvt - self.rsp_cons)

    def full(self) -> bool:
        """``RING_FULL``."""
        return self.free_requests() == 0

    def put_request(self, data: bytes) -> int:
        """Write a request at ``req_prod_pvt`` (unpublished); returns its index."""
        if self.full():
            raise RingOverflowError("front ring full: all slots await responses")
        idx = self.req_prod_pvt
        self.sring.put(idx, data)
        self.req_prod_pvt = ring_idx(idx + 1)
        return idx

    def push_requests(self) -> None:
        """``RING_PUSH_REQUESTS``."""
        xen_wmb()  # back sees requests /before/ updated producer index
        self.sring.req_prod = self.req_prod_pvt

    def push_requests_and_check_notify(self) -> bool:
        """``RING_PUSH_REQUESTS_AND_CHECK_NOTIFY``: True = kick the back end."""
        old = self.sring.req_prod
        new = self.req_prod_pvt
        xen_wmb()  # back sees requests /before/ updated producer index
        self.sring.req_prod = new
        xen_mb()  # back sees new requests /before/ we check req_event
        return ring_notify_needed(new, old, self.sring.req_event)

    def nr_unconsumed_responses(self) -> int:
        """``XEN_RING_NR_UNCONSUMED_RESPONSES`` (= RING_HAS_UNCONSUMED_RESPONSES)."""
        return ring_idx(self.sring.rsp_prod - self.rsp_cons)

    def response_prod_overflow(self, prod: int) -> bool:
        """``RING_RESPONSE_PROD_OVERFLOW``: an ill-behaved back end."""
        return ring_idx(prod - self.rsp_cons) > self.nr_ents

    def take_responses(self, limit: int | None = None) -> list[bytes]:
        """Copy out responses up to one snapshot of ``rsp_prod``."""
        rp = self.sring.rsp_prod  # read once
        xen_rmb()  # see responses up to rp
        if self.response_prod_overflow(rp):
            raise RingOverflowError(
                f"back end published rsp_prod={rp}, more than {self.nr_ents} past rsp_cons={self.rsp_cons}"
            )
        out: list[bytes] = []
        rc = self.rsp_cons
        while rc != rp and (limit is None or len(out) < limit):
            out.append(self.sring.copy(rc))
            rc = ring_idx(rc + 1)
        self.rsp_cons = rc
        return out

    def final_check_for_responses(self) -> bool:
        """``RING_FINAL_CHECK_FOR_RESPONSES``: True = more work, don't sleep."""
        if self.nr_unconsumed_responses():
            return True
        self.sring.rsp_event = ring_idx(self.rsp_cons + 1)
        xen_mb()  # publish rsp_event /before/ re-reading rsp_prod
        return self.nr_unconsumed_responses() != 0


@dataclass(slots=True)
class BackRing:
    """``struct <name>_back_ring``: takes requests, pushes responses."""

    sring: SharedRing
    rsp_prod_pvt: int = 0
    req_cons: int = 0
    nr_ents: int = field(init=False)

    def __post_init__(self) -> None:
        self.nr_ents = self.sring.nr_ents
        self.rsp_prod_pvt = ring_idx(self.rsp_prod_pvt)
        self.req_cons = ring_idx(self.req_cons)

    @classmethod
    def init(cls, sring: SharedRing) -> BackRing:
        """``BACK_RING_INIT``: the back end never initialises the page."""
        return cls(sring)

    @classmethod
    def attach(cls, sring: SharedRing, start: int) -> BackRing:
        """``BACK_RING_ATTACH``."""
        return cls(sring, start, start)

    def nr_unconsumed_requests(self) -> int:
        """``XEN_RING_NR_UNCONSUMED_REQUESTS``: bounded by the free response
        slots, so a lying ``req_prod`` cannot claim more than RING_SIZE."""
        req = ring_idx(self.sring.req_prod - self.req_cons)
        rsp = self.nr_ents - ring_idx(self.req_cons - self.rsp_prod_pvt)
        return min(req, rsp)

    def request_cons_overflow(self, cons: int) -> bool:
        """``RING_REQUEST_CONS_OVERFLOW``: would consuming ``cons`` leave no
        slot for its response?"""
        return ring_idx(cons - self.rsp_prod_pvt) >= self.nr_ents

    def request_prod_overflow(self, prod: int) -> bool:
        """``RING_REQUEST_PROD_OVERFLOW``: can there be this many requests?"""
        return ring_idx(prod - self.rsp_prod_pvt) > self.nr_ents

    def take_requests(self, limit: int | None = None) -> list[bytes]:
        """Copy out requests up to one snapshot of ``req_prod``.

        Raises RingOverflowError for an ill-behaved front end; the caller
        should then stop serving the ring and mark the device broken.
        """
        rp = self.sring.req_prod  # read once
        xen_rmb()  # see requests up to rp
        if self.request_prod_overflow(rp):
            raise RingOverflowError(
                f"front end published req_prod={rp}, more than {self.nr_ents} "
                f"past rsp_prod_pvt={self.rsp_prod_pvt}"
            )
        out: list[bytes] = []
        rc = self.req_cons
        while rc != rp and (limit is None or len(out) < limit):
            if self.request_cons_overflow(rc):
                break
            out.append(self.sring.copy(rc))  # RING_COPY_REQUEST
            rc = ring_idx(rc + 1)
        self.req_cons = rc
        return out

    def put_response(self, data: bytes) -> int:
        """Write a response at ``rsp_prod_pvt`` (unpublished)."""
        idx = self.rsp_prod_pvt
        if ring_idx(self.req_cons - idx) == 0:
            raise RingOverflowError("response without an outstanding request")
        self.sring.put(idx, data)
        self.rsp_prod_pvt = ring_idx(idx + 1)
        return idx

    def push_responses(self) -> None:
        """``RING_PUSH_RESPONSES``."""
        xen_wmb()  # front sees resps /before/ updated producer index
        self.sring.rsp_prod = self.rsp_prod_pvt

    def push_responses_and_check_notify(self) -> bool:
        """``RING_PUSH_RESPONSES_AND_CHECK_NOTIFY``: True = kick the front."""
        old = self.sring.rsp_prod
        new = self.rsp_prod_pvt
        xen_wmb()  # front sees resps /before/ updated producer index
        self.sring.rsp_prod = new
        xen_mb()  # front sees new resps /before/ we check rsp_event
        return ring_notify_needed(new, old, self.sring.rsp_event)

    def final_check_for_requests(self) -> bool:
        """``RING_FINAL_CHECK_FOR_REQUESTS``: True = more work, don't sleep."""
        if self.nr_unconsumed_requests():
            return True
        self.sring.req_event = ring_idx(self.req_cons + 1)
        xen_mb()  # publish req_event /before/ re-reading req_prod
        return self.nr_unconsumed_requests() != 0


# ---------------------------------------------------------------------------
# DEFINE_XEN_FLEX_RING: byte rings of power-of-two size (console, pvcalls).
# ---------------------------------------------------------------------------
def XEN_FLEX_RING_SIZE(order: int) -> int:  # noqa: N802 - Xen's macro name
    """Size of each of the two byte rings in a 2**order-page allocation."""
    return 1 << (order + XEN_PAGE_SHIFT - 1)


def flex_ring_queued(prod: int, cons: int, ring_size: int) -> int:
    """``$NAME_queued``: bytes waiting, given free-running indices."""
    if ring_size & (ring_size - 1) or ring_size == 0:
        raise ValueError(f"ring size {ring_size} is not a power of two")
    if prod == cons:
        return 0
    prod &= ring_size - 1
    cons &= ring_size - 1
    if prod == cons:
        return ring_size  # full
    return prod - cons if prod > cons else ring_size - (cons - prod)


def byte_ring_read(ring: memoryview | bytes | bytearray, cons: int, n: int) -> bytes:
    """Copy ``n`` bytes starting at free-running index ``cons`` (wrapping)."""
    size = len(ring)
    if n > size:
        raise ValueError(f"{n} bytes exceed the {size}-byte ring")
    start = cons & (size - 1)
    first = min(n, size - start)
    return bytes(ring[start : start + first]) + bytes(ring[: n - first])


def byte_ring_write(ring: memoryview | bytearray, prod: int, data: bytes) -> None:
    """Copy ``data`` in starting at free-running index ``prod`` (wrapping)."""
    size = len(ring)
    if len(data) > size:
        raise ValueError(f"{len(data)} bytes exceed the {size}-byte ring")
    start = prod & (size - 1)
    first = min(len(data), size - start)
    ring[start : start + first] = data[:first]
    ring[: len(data) - first] = data[first:]
