"""Ring indices are single atomic accesses: two processes never see a torn one.

``struct.pack_into`` zeroes a field before it packs it,
so a process reading a ring index while the other end wrote it now and then
read 0, and took the ring for corrupted. These run each kind of shared ring
from two processes over one memfd page (see :mod:`tests.hypervisord.ring_stress`
for the harness and for the counts the old code produced) long enough for
the old accessors to fail, and require no torn value, no corruption.
"""

from __future__ import annotations

import mmap

import pytest

from libxen.ringidx import SharedWord, load_once, shared_ring, store_once
from tests.hypervisord import ring_stress


@pytest.mark.timeout(30)
def test_a_shared_index_is_never_seen_torn_by_the_other_process():
    r = ring_stress.word_stress("atomic", 3.0)
    assert "error" not in r, r
    assert r["stores"] > 100_000 and r["reads"] > 100_000, r  # they really raced
    assert (r["torn"], r["zero"]) == (0, 0), r


@pytest.mark.timeout(40)
def test_xenstore_ring_stream_both_directions_from_two_processes():
    client, server = ring_stress.stream_stress(8.0)
    assert client.get("errors") == [] and server.get("errors") == [], (client, server)
    # Every byte each end sent arrived, in order, at the other.
    assert client["sent"] == server["received"] > 100_000, (client, server)
    assert server["sent"] == client["received"] > 100_000, (client, server)


@pytest.mark.timeout(40)
def test_io_ring_front_and_back_from_two_processes():
    front, back = ring_stress.ring_stress("atomic", 8.0)
    assert front.get("errors") == [] and back.get("errors") == [], (front, back)
    assert front["requests"] == front["responses"] == back["requests"] > 10_000, (front, back)


def test_shared_word_is_one_access_of_its_width_and_dies_with_close():
    page = mmap.mmap(-1, 4096)
    word = SharedWord(page, 8)
    word.store(0x1_2345_6789)  # a RING_IDX wraps modulo 2**32
    assert word.load() == 0x2345_6789
    assert page[8:12] == (0x2345_6789).to_bytes(4, "little") and page[12:16] == bytes(4)
    load = word.load
    word.close()
    word.close()  # idempotent
    with pytest.raises(ValueError, match="after close"):
        load()  # a kept op never touches the page after close
    with pytest.raises(ValueError):
        SharedWord(page, 6)  # not naturally aligned: could not be one access
    with pytest.raises(ValueError):
        SharedWord(page, 4094)  # past the page
    store_once(page, 2068, 1)
    byte = SharedWord(page, 3088, 1)  # a u8 flag (console.h's connection)
    byte.store(0x1FF)
    assert (load_once(page, 2068), byte.load(), page[3088]) == (1, 0xFF, 0xFF)
    byte.close()
    page.close()  # nothing pins the mapping any more


def test_shared_ring_releases_the_page_on_close():
    page = mmap.mmap(-1, 4096)
    sring = shared_ring(page, 16)
    sring.req_prod = 5
    assert (sring.req_prod, page[0:4]) == (5, (5).to_bytes(4, "little"))
    sring.close()
    page.close()
