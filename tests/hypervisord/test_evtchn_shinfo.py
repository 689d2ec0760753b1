"""shared_info event bits (libxen.shinfo): layout, protocol, real atomicity."""

from __future__ import annotations

import mmap
import multiprocessing
import struct

import pytest

from hypervisord.public.xen import (
    SHARED_INFO_EVTCHN_MASK_OFF as MASK,
    SHARED_INFO_EVTCHN_PENDING_OFF as PENDING,
    VCPU_INFO_EVTCHN_PENDING_SEL_OFF as SEL,
    VCPU_INFO_EVTCHN_UPCALL_PENDING_OFF as UPCALL,
)
from libxen.shinfo import NR_PORTS_2L, SharedInfoBits

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def page():
    m = mmap.mmap(-1, 4096)
    yield m
    m.close()


def word(page, off: int, idx: int = 0) -> int:
    return struct.unpack_from("<Q", page, off + 8 * idx)[0]


def test_set_pending_follows_event_2l(page):
    bits = SharedInfoBits(page)
    assert bits.set_pending(70) is True  # 0 -> 1, unmasked: notify
    assert word(page, PENDING, 1) == 1 << 6
    assert word(page, SEL) == 1 << 1  # selector bit port // 64
    assert page[UPCALL] == 1
    assert bits.set_pending(70) is False  # already pending: coalesced
    assert bits.clear_pending(70) is True
    assert bits.clear_pending(70) is False
    assert bits.set_pending(70) is True  # after the clear it notifies again
    bits.close()


def test_masked_port_is_delivered_on_unmask(page):
    bits = SharedInfoBits(page)
    assert bits.mask(5) is False
    assert word(page, MASK) == 1 << 5
    assert bits.set_pending(5) is False  # masked: no notification
    assert bits.is_pending(5)
    assert bits.unmask(5) is True  # pending and was masked: deliver now
    assert bits.unmask(5) is False  # not masked any more
    bits.clear_pending(5)
    bits.mask(5)
    assert bits.unmask(5) is False  # masked but nothing pending
    bits.close()


def test_reset_port_clears_pending_and_mask(page):
    bits = SharedInfoBits(page)
    bits.mask(9)
    bits.set_pending(9)
    bits.reset_port(9)
    assert not bits.is_pending(9) and not bits.is_masked(9)
    bits.close()


def test_ports_outside_the_abi_raise(page):
    bits = SharedInfoBits(page)
    for port in (-1, NR_PORTS_2L, 2**32 - 1):
        with pytest.raises(ValueError):
            bits.set_pending(port)
    assert bits.set_pending(NR_PORTS_2L - 1) is True
    assert word(page, PENDING, 63) == 1 << 63
    bits.close()


def test_views_are_kept_per_word_and_released(page):
    bits = SharedInfoBits(page)
    for port in range(1, 64):
        bits.set_pending(port)
    assert bits.views == 4  # pending word 0, mask word 0, selector, upcall byte
    bits.close()
    assert bits.views == 0
    with pytest.raises(ValueError):
        bits.set_pending(1)
    page.close()  # no export left: the page can be unmapped


def _hammer(shared: mmap.mmap, base: int, rounds: int) -> None:
    """Set then clear this process's 32 bits; exit 1 if any update was lost."""
    bits = SharedInfoBits(shared)
    lost = 0
    for _ in range(rounds):
        for b in range(base, base + 32):
            lost += not bits.set_pending(b)  # only we touch b: it must be clear
        for b in range(base, base + 32):
            lost += not bits.clear_pending(b)  # ... and still set
    bits.close()
    raise SystemExit(1 if lost else 0)


def test_two_processes_flip_bits_of_one_word_without_losing_any():
    # Two processes read-modify-write disjoint bits of the SAME 64-bit word.
    # A plain read-then-write would now and then undo the other side's bit.
    shared = mmap.mmap(-1, 4096, mmap.MAP_SHARED)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(shared, base, 2000)) for base in (0, 32)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(50)
    assert [p.exitcode for p in procs] == [0, 0]
    assert word(shared, PENDING) == 0
    shared.close()
