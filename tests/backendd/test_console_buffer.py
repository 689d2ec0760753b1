"""The pure parts of the console service (backendd.console): xenconsoled's
bounded output buffer (io.c buffer_append/buffer_advance with
discard_overflowed_data) and its per-domain event budget (RATE_LIMIT_*)."""

from __future__ import annotations

import pytest

from backendd.console import RATE_LIMIT_ALLOWANCE, RATE_LIMIT_PERIOD, OutputBuffer, RateLimit
from frontends.console import ConsoleFront
from backendd.console import ConsoleRing


def test_worked_example_discards_the_middle():
    b = OutputBuffer(8)
    b.append(b"abcdefghijk")  # 11 > 5/4 * 8: keep cap/2, then the newest `over` bytes
    assert b.peek(100) == b"abcdijk" and b.discarded == 4


def test_written_part_dropped_before_the_middle():
    b = OutputBuffer(8)
    b.append(b"abcdef")
    b.advance(3)  # more than a quarter already out: that part goes, nothing is lost
    b.append(b"ghijk")
    assert b.peek(100) == b"defghijk" and b.discarded == 0


def test_memory_stays_bounded_whatever_is_printed():
    b = OutputBuffer(1 << 12)
    for _ in range(2000):
        b.append(b"y" * 2048)  # a pty nobody reads
        assert len(b) <= 5 * (1 << 12) // 4
    assert b.peek(4) == b"yyyy"
    b.advance(len(b))
    assert len(b) == 0 and b.peek(10) == b""


def test_unlimited_buffer_keeps_everything():
    b = OutputBuffer(0)
    b.append(b"z" * 100_000)
    assert len(b) == 100_000 and b.discarded == 0


def test_rate_limit_is_xenconsoleds():
    assert (RATE_LIMIT_ALLOWANCE, RATE_LIMIT_PERIOD) == (30, 0.2)
    r = RateLimit()
    pauses = [r.event(10.0 + i * 0.001) for i in range(30)]
    assert pauses[:29] == [0.0] * 29
    assert pauses[29] == pytest.approx(0.2 - 0.029)  # the rest of the period
    assert r.event(10.2) == 0.0 and r.count == 1  # a new period, a new budget


def test_frontend_and_backend_halves_agree():
    page = memoryview(bytearray(4096))
    front, back = ConsoleFront(page), ConsoleRing(page)
    assert front.write(b"x" * 3000) == 2048  # out[] is 2048 bytes
    assert back.read_output() == b"x" * 2048
    assert back.write_input(b"k" * 1500) == 1024 and back.in_space() == 0
    assert front.read() == b"k" * 1024 and back.in_space() == 1024
    assert back.illegal == 0
