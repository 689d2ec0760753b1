"""io/ring.h semantics: sizing, free-running uint32 indices, overflow
detection, copy-once, and notification suppression without lost wakeups."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypervisord.public.io.ring import (
    SRING_RING_OFF,
    XEN_FLEX_RING_SIZE,
    BackRing,
    FrontRing,
    RingOverflowError,
    SharedRing,
    byte_ring_read,
    byte_ring_write,
    const_ring_size,
    flex_ring_queued,
    rd32,
    ring_notify_needed,
)

U32 = 2**32
ENTRY = 16  # 4 KiB page -> (4096 - 64) / 16 = 252 -> 128 slots
SEQ = struct.Struct("<Q")
indices = st.integers(0, U32 - 1)


def new_ring(entry: int = ENTRY, start: int | None = None) -> tuple[SharedRing, FrontRing, BackRing]:
    sring = SharedRing(bytearray(4096), entry)
    if start is None:
        return sring, FrontRing.init(sring), BackRing.init(sring)
    sring.init()  # as after a resume at index ``start`` (FRONT/BACK_RING_ATTACH)
    sring.req_prod = sring.rsp_prod = start
    sring.req_event = sring.rsp_event = start + 1
    return sring, FrontRing.attach(sring, start), BackRing.attach(sring, start)


# ---------------------------------------------------------------------------
# Sizing
# ---------------------------------------------------------------------------
@given(st.integers(0, U32 - 1))
def test_rd32_is_largest_power_of_two_not_above(x: int):
    r = rd32(x)
    if x == 0:
        assert r == 0
    else:
        assert r & (r - 1) == 0 and r <= x < 2 * r


def test_ring_sizes():
    assert [rd32(v) for v in (1, 2, 3, 36, 252, 336, 504, U32 - 1)] == [1, 2, 2, 32, 128, 256, 256, 2**31]
    assert const_ring_size(4096, 112) == 32  # blkif
    assert const_ring_size(8192, 112) == 64  # blkif, ring-page-order 1: 8128/112 = 72 -> 64
    assert const_ring_size(4096, 12) == 256 and const_ring_size(4096, 8) == 256  # netif tx/rx
    assert const_ring_size(64, 8) == 0 and const_ring_size(4096, 4033) == 0


def test_shared_ring_init_golden_bytes():
    buf = bytearray(b"\xaa" * 4096)
    sring = SharedRing(buf, 112)
    FrontRing.init(sring)
    assert bytes(buf[:SRING_RING_OFF]) == bytes.fromhex("00000000 01000000 00000000 01000000") + bytes(48)
    assert buf[SRING_RING_OFF:] == b"\xaa" * (4096 - SRING_RING_OFF)  # entries untouched
    assert sring.nr_ents == 32


def test_shared_ring_refuses_bad_buffers():
    with pytest.raises(ValueError):
        SharedRing(bytes(4096), ENTRY)  # read-only
    with pytest.raises(ValueError):
        SharedRing(bytearray(4096), 4096)  # no entry fits
    with pytest.raises(ValueError):
        SharedRing(bytearray(4096), ENTRY, size=8192)  # size beyond the buffer
    sring = SharedRing(bytearray(4096), ENTRY)
    with pytest.raises(ValueError):
        sring.put(0, bytes(ENTRY + 1))


# ---------------------------------------------------------------------------
# Free-running indices
# ---------------------------------------------------------------------------
@given(start=st.integers(U32 - 300, U32 - 1) | indices, batches=st.lists(st.integers(1, 128), max_size=8))
def test_requests_and_responses_survive_wraparound(start: int, batches: list[int]):
    sring, front, back = new_ring(start=start)
    seq = 0
    for n in batches:
        for _ in range(n):
            front.put_request(SEQ.pack(seq))
            seq += 1
        front.push_requests()
        got = back.take_requests()
        assert [SEQ.unpack(r[:8])[0] for r in got] == list(range(seq - n, seq))
        for r in got:
            back.put_response(r)
        back.push_responses()
        assert [SEQ.unpack(r[:8])[0] for r in front.take_responses()] == list(range(seq - n, seq))
        assert front.free_requests() == sring.nr_ents
    total = sum(batches)
    for idx in (front.req_prod_pvt, front.rsp_cons, back.req_cons, back.rsp_prod_pvt, sring.req_prod):
        assert idx == (start + total) % U32


@given(new=indices, n=st.integers(1, 256), back=st.integers(0, 300))
def test_notify_needed_iff_event_in_published_window(new: int, n: int, back: int):
    old = (new - n) % U32
    event = (new - back) % U32  # event lies `back` steps behind new
    assert ring_notify_needed(new, old, event) == (back < n)


def test_full_ring_refuses_another_request():
    sring, front, _ = new_ring()
    for i in range(sring.nr_ents):
        front.put_request(SEQ.pack(i))
    assert front.full() and front.free_requests() == 0
    with pytest.raises(RingOverflowError):
        front.put_request(b"x")


# ---------------------------------------------------------------------------
# Overflow detection (hostile peers)
# ---------------------------------------------------------------------------
@given(start=indices, delta=st.integers(0, 1000))
def test_request_prod_overflow(start: int, delta: int):
    sring, _, back = new_ring(start=start)
    sring.req_prod = start + delta  # the front end may publish anything
    assert back.request_prod_overflow(sring.req_prod) == (delta > sring.nr_ents)
    if delta > sring.nr_ents:
        with pytest.raises(RingOverflowError, match="front end published req_prod"):
            back.take_requests()
        assert back.req_cons == start  # nothing consumed
    else:
        assert len(back.take_requests()) == delta
    assert back.nr_unconsumed_requests() <= sring.nr_ents


@given(start=indices)
def test_request_cons_overflow_stops_at_free_response_slots(start: int):
    sring, front, back = new_ring(start=start)
    for i in range(sring.nr_ents):
        front.put_request(SEQ.pack(i))
    front.push_requests()
    assert len(back.take_requests()) == sring.nr_ents  # none answered yet
    assert back.request_cons_overflow(back.req_cons)
    sring.req_prod = start + sring.nr_ents + 1  # a lie: one more than fits
    with pytest.raises(RingOverflowError):
        back.take_requests()
    back.put_response(b"done")
    back.push_responses()
    assert not back.request_cons_overflow(back.req_cons)


@given(start=indices, delta=st.integers(0, 1000))
def test_response_prod_overflow(start: int, delta: int):
    sring, front, _ = new_ring(start=start)
    sring.rsp_prod = start + delta
    if delta > sring.nr_ents:
        with pytest.raises(RingOverflowError, match="back end published rsp_prod"):
            front.take_responses()
    else:
        assert len(front.take_responses()) == delta


def test_response_without_request_is_refused():
    _, _, back = new_ring()
    with pytest.raises(RingOverflowError):
        back.put_response(b"unsolicited")


# ---------------------------------------------------------------------------
# Copy once (RING_COPY_REQUEST): the peer cannot change what we validated.
# ---------------------------------------------------------------------------
class TracingRing(SharedRing):
    """Counts shared-field accesses and runs ``hook`` before access ``hook_at``."""

    __slots__ = ("accesses", "hook_at", "hook", "copies")

    def __init__(self, buf: bytearray, entry: int) -> None:
        super().__init__(buf, entry)
        self.accesses = 0
        self.hook_at = -1
        self.hook: Callable[[], None] | None = None
        self.copies: list[int] = []

    def _tick(self) -> None:
        if self.accesses == self.hook_at and self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        self.accesses += 1

    def _load(self, off: int) -> int:
        self._tick()
        return super()._load(off)

    def _store(self, off: int, value: int) -> None:
        self._tick()
        super()._store(off, value)

    def copy(self, idx: int) -> bytes:
        self.copies.append(idx)
        return super().copy(idx)


def test_each_request_is_read_once_and_the_copy_is_private():
    sring = TracingRing(bytearray(4096), ENTRY)
    front, back = FrontRing.init(sring), BackRing.init(sring)
    for i in range(5):
        front.put_request(SEQ.pack(i) + b"segments")
    front.push_requests()
    sring.accesses = 0
    got = back.take_requests()
    assert sring.accesses == 1  # req_prod read exactly once per batch
    assert sring.copies == [0, 1, 2, 3, 4]  # every slot copied exactly once
    sring.slot(2)[:] = b"\xff" * ENTRY  # the front end rewrites after the copy
    assert got[2] == SEQ.pack(2) + b"segments"


def test_each_response_is_read_once_and_the_copy_is_private():
    sring = TracingRing(bytearray(4096), ENTRY)
    front, back = FrontRing.init(sring), BackRing.init(sring)
    for i in range(4):
        front.put_request(SEQ.pack(i))
    front.push_requests()
    for r in back.take_requests():
        back.put_response(r[:8] + b"answered")
    back.push_responses()
    sring.accesses, sring.copies = 0, []
    got = front.take_responses()
    assert sring.accesses == 1  # rsp_prod read exactly once per batch
    assert sring.copies == [0, 1, 2, 3]
    sring.slot(1)[:] = b"\xff" * ENTRY  # the back end rewrites after the copy
    assert got[1] == SEQ.pack(1) + b"answered"


def test_put_zero_fills_the_slot():
    sring, front, back = new_ring(entry=112)
    sring.slot(0)[:] = b"\xee" * 112  # stale bytes from an earlier request
    front.put_request(b"\x01" * 24)
    front.push_requests()
    back.take_requests()
    back.put_response(b"\x02" * 16)
    assert bytes(sring.slot(0)) == b"\x02" * 16 + bytes(96)  # no leak (XSA-216)


# ---------------------------------------------------------------------------
# No lost wakeup: run the other end's whole operation at every single
# shared-memory access of this end's operation.
# ---------------------------------------------------------------------------
def _final_check_without_recheck(back: BackRing) -> bool:
    """A broken RING_FINAL_CHECK_FOR_REQUESTS (no re-read after the barrier)."""
    if back.nr_unconsumed_requests():
        return True
    back.sring.req_event = back.req_cons + 1
    return False


def _idle_pair() -> tuple[TracingRing, FrontRing, BackRing]:
    """A ring with history: 3 requests served, req_event left behind."""
    sring = TracingRing(bytearray(4096), ENTRY)
    front, back = FrontRing.init(sring), BackRing.init(sring)
    for i in range(3):
        front.put_request(SEQ.pack(i))
    assert front.push_requests_and_check_notify()
    for r in back.take_requests():
        back.put_response(r)
    back.push_responses_and_check_notify()
    front.take_responses()
    return sring, front, back


def _lost_wakeups_requests(final_check: Callable[[BackRing], bool]) -> list[int]:
    lost = []
    for k in range(12):
        sring, front, back = _idle_pair()
        notified: list[bool] = []

        def push(front: FrontRing = front, notified: list[bool] = notified) -> None:
            front.put_request(b"late")
            notified.append(front.push_requests_and_check_notify())

        sring.accesses, sring.hook_at, sring.hook = 0, k, push
        work = final_check(back)
        if sring.hook is not None:  # k beyond the check's last access
            sring.hook = None
            push()
        if not work and not notified[0]:
            lost.append(k)
    return lost


def test_final_check_for_requests_never_loses_a_wakeup():
    assert _lost_wakeups_requests(BackRing.final_check_for_requests) == []


def test_the_interleaving_test_catches_a_missing_recheck():
    assert _lost_wakeups_requests(_final_check_without_recheck) != []


def test_push_requests_never_loses_a_wakeup():
    for k in range(12):
        sring, front, back = _idle_pair()
        sleeping: list[bool] = []
        sring.accesses, sring.hook_at = 0, k
        sring.hook = lambda b=back, s=sleeping: s.append(not b.final_check_for_requests())
        front.put_request(b"x")
        notify = front.push_requests_and_check_notify()
        if sring.hook is not None:
            sring.hook = None
            sleeping.append(not back.final_check_for_requests())
        assert notify or not sleeping[0], f"lost wakeup with the back end checking at access {k}"


def test_responses_never_lose_a_wakeup():
    for k in range(12):
        sring, front, back = _idle_pair()
        front.put_request(b"q")
        front.push_requests()
        back.take_requests()
        notified: list[bool] = []

        def respond(back: BackRing = back, notified: list[bool] = notified) -> None:
            back.put_response(b"a")
            notified.append(back.push_responses_and_check_notify())

        sring.accesses, sring.hook_at, sring.hook = 0, k, respond
        work = front.final_check_for_responses()
        if sring.hook is not None:
            sring.hook = None
            respond()
        assert work or notified[0], f"lost response wakeup at access {k}"


# ---------------------------------------------------------------------------
# A busy ring needs few notifications.
# ---------------------------------------------------------------------------
def simulate(rng: random.Random, total: int = 1000) -> dict[str, int]:
    """Front submits ``total`` requests in random batches; back serves them.

    Each end runs only while awake or after a notification from the other,
    and goes to sleep only through the FINAL_CHECK protocol. A lost wakeup
    shows up as both ends asleep with work left.
    """
    sring, front, back = new_ring()
    sent = answered = pushes = 0
    kicks = {"req": 0, "rsp": 0}
    front_awake, back_awake = True, False
    front_kicked = back_kicked = False
    while answered < total:
        runnable = [n for n, on in (("front", front_awake or front_kicked), ("back", back_awake or back_kicked)) if on]
        assert runnable, f"lost wakeup: both ends asleep with {total - answered} requests outstanding"
        if rng.choice(runnable) == "front":
            front_kicked, front_awake = False, True
            for r in front.take_responses():
                assert SEQ.unpack(r[:8])[0] == answered  # in order, exactly once
                answered += 1
            n = min(rng.randint(1, 32), front.free_requests(), total - sent)
            for _ in range(n):
                front.put_request(SEQ.pack(sent))
                sent += 1
            if n:
                pushes += 1
                if front.push_requests_and_check_notify():
                    kicks["req"] += 1
                    back_kicked = True
            elif not front.final_check_for_responses():
                front_awake = False  # nothing to send, nothing to read: sleep
        else:
            back_kicked, back_awake = False, True
            reqs = back.take_requests(limit=rng.randint(1, 32))
            for r in reqs:
                back.put_response(r)
            if reqs and back.push_responses_and_check_notify():
                kicks["rsp"] += 1
                front_kicked = True
            if not reqs and not back.final_check_for_requests():
                back_awake = False
    assert sent == answered == total
    return {"pushes": pushes, **kicks}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_busy_ring_needs_few_notifications(seed: int):
    stats = simulate(random.Random(seed))
    assert stats["req"] <= stats["pushes"]
    assert stats["req"] < 1000 // 4
    assert stats["rsp"] < 1000 // 4


def test_notification_count_for_one_schedule_is_small():
    stats = simulate(random.Random(1234))
    assert 0 < stats["req"] + stats["rsp"] < 200


# ---------------------------------------------------------------------------
# Byte rings (console, DEFINE_XEN_FLEX_RING)
# ---------------------------------------------------------------------------
@given(prod=indices, data=st.binary(max_size=1024))
def test_byte_ring_roundtrip_across_the_wrap(prod: int, data: bytes):
    ring = bytearray(1024)
    byte_ring_write(ring, prod, data)
    assert byte_ring_read(ring, prod, len(data)) == data


def test_byte_ring_refuses_more_than_its_size():
    with pytest.raises(ValueError):
        byte_ring_write(bytearray(16), 0, bytes(17))
    with pytest.raises(ValueError):
        byte_ring_read(bytes(16), 0, 17)


@given(cons=indices, n=st.integers(0, 2048))
def test_flex_ring_queued(cons: int, n: int):
    size = 2048
    prod = (cons + n) % U32
    want = 0 if n == 0 else (size if n % size == 0 else n % size)
    assert flex_ring_queued(prod, cons, size) == want


def test_flex_ring_size():
    assert XEN_FLEX_RING_SIZE(0) == 2048 and XEN_FLEX_RING_SIZE(1) == 4096
    with pytest.raises(ValueError):
        flex_ring_queued(1, 0, 1000)


def test_simulation_detects_sleeping_without_final_check(monkeypatch: pytest.MonkeyPatch):
    # A back end that sleeps without re-arming req_event is never woken again.
    monkeypatch.setattr(BackRing, "final_check_for_requests", lambda self: self.nr_unconsumed_requests() != 0)
    with pytest.raises(AssertionError, match="lost wakeup"):
        for seed in range(20):
            simulate(random.Random(seed))
