"""backendd.console.ConsoleRing against a page laid out as
xen/include/public/io/console.h (guest side simulated by writing the page)."""

from __future__ import annotations

from hypervisord.public.io.console import (
    XENCONS_IN_CONS_OFF, XENCONS_IN_OFF, XENCONS_IN_PROD_OFF, XENCONS_IN_SIZE,
    XENCONS_INDICES, XENCONS_OUT_OFF, XENCONS_OUT_PROD_OFF, XENCONS_OUT_SIZE, XENCONS_RING_IDX)
from backendd.console import ConsoleRing


def page() -> memoryview:
    return memoryview(bytearray(4096))


def guest_print(p: memoryview, data: bytes) -> None:
    (prod,) = XENCONS_RING_IDX.unpack_from(p, XENCONS_OUT_PROD_OFF)
    for i, b in enumerate(data):
        p[XENCONS_OUT_OFF + (prod + i) % XENCONS_OUT_SIZE] = b
    XENCONS_RING_IDX.pack_into(p, XENCONS_OUT_PROD_OFF, (prod + len(data)) % 2**32)


def indices(p):
    return XENCONS_INDICES.unpack_from(p, XENCONS_IN_CONS_OFF)


def test_output_copied_and_consumed_across_wrap():
    p = page()
    r = ConsoleRing(p)
    guest_print(p, b"x" * 2000)
    assert r.read_output() == b"x" * 2000
    guest_print(p, b"hello across the wrap\n")
    assert r.read_output() == b"hello across the wrap\n"
    assert indices(p)[2] == indices(p)[3] == 2022
    assert r.read_output() == b""


def test_output_limit_is_honoured():
    p = page()
    r = ConsoleRing(p)
    guest_print(p, b"abcdef")
    assert r.read_output(limit=4) == b"abcd"
    assert r.read_output() == b"ef"


def test_index_wraps_at_2_32():
    p = page()
    XENCONS_RING_IDX.pack_into(p, XENCONS_OUT_PROD_OFF, 2**32 - 3)
    XENCONS_RING_IDX.pack_into(p, XENCONS_IN_CONS_OFF + 8, 2**32 - 3)
    r = ConsoleRing(p)
    guest_print(p, b"wrap!")
    assert r.read_output() == b"wrap!"
    assert indices(p)[2] == 2


def test_hostile_producer_far_ahead_is_discarded_then_ring_works():
    p = page()
    r = ConsoleRing(p)
    XENCONS_RING_IDX.pack_into(p, XENCONS_OUT_PROD_OFF, 10 * XENCONS_OUT_SIZE)
    assert r.read_output() == b""
    assert r.illegal == 1
    guest_print(p, b"ok\n")
    assert r.read_output() == b"ok\n"


def test_hostile_producer_backwards_is_discarded():
    p = page()
    r = ConsoleRing(p)
    guest_print(p, b"12345")
    assert r.read_output() == b"12345"
    XENCONS_RING_IDX.pack_into(p, XENCONS_OUT_PROD_OFF, 1)   # behind out_cons (5)
    assert r.read_output() == b""
    assert r.illegal == 1
    assert indices(p)[2] == 1


def test_input_bounded_by_guest_consumption():
    p = page()
    r = ConsoleRing(p)
    assert r.write_input(b"a" * 5000) == XENCONS_IN_SIZE
    assert r.in_space() == 0
    assert r.write_input(b"more") == 0          # guest not reading: nothing taken
    XENCONS_RING_IDX.pack_into(p, XENCONS_IN_CONS_OFF, 3)   # guest read 3 bytes
    assert r.write_input(b"xyz!") == 3
    assert bytes(p[XENCONS_IN_OFF:XENCONS_IN_OFF + 3]) == b"xyz"
    assert indices(p)[1] == XENCONS_IN_SIZE + 3


def test_hostile_in_cons_takes_no_input():
    p = page()
    r = ConsoleRing(p)
    XENCONS_RING_IDX.pack_into(p, XENCONS_IN_CONS_OFF, 5000)   # ahead of in_prod
    assert r.in_space() == 0
    assert r.write_input(b"abc") == 0
    assert r.illegal == 1
    assert indices(p)[1] == 0


# -- both halves over one page: frontends.console.ConsoleFront <-> ConsoleRing --

from frontends.console import ConsoleFront  # noqa: E402


def test_front_and_back_move_bytes_both_ways_with_backpressure():
    p = page()
    back, front = ConsoleRing(p), ConsoleFront(p)
    assert front.write(b"guest says hi\n") == 14
    assert back.read_output() == b"guest says hi\n"
    assert front.write(b"y" * 3000) == XENCONS_OUT_SIZE   # ring full: rest refused
    assert front.write(b"z") == 0
    assert back.read_output() == b"y" * XENCONS_OUT_SIZE
    assert front.write(b"z") == 1
    assert back.write_input(b"typed\n") == 6
    assert front.read() == b"typed\n"
    assert front.read() == b""


def test_front_ignores_hostile_backend_indices():
    p = page()
    front = ConsoleFront(p)
    XENCONS_RING_IDX.pack_into(p, XENCONS_IN_PROD_OFF, 99999)     # in_prod far ahead
    assert front.read() == b""
    assert indices(p)[0] == 99999
    XENCONS_RING_IDX.pack_into(p, XENCONS_IN_CONS_OFF + 8, 12345)  # out_cons ahead of out_prod
    assert front.write(b"abc") == 0
