"""Pure parts of the restart of xenstored: the kept introductions and the
ring reconnection of ``docs/misc/xenstore-ring.txt`` on one page in memory."""

from __future__ import annotations

import struct

import pytest
import trio

from libxen.xsring import XsRingStream
from hypervisord.public.io.xs_wire import (
    XENSTORE_CONNECTED,
    XENSTORE_ERROR_COMM,
    XENSTORE_RECONNECT,
    XENSTORE_SERVER_FEATURE_ERROR,
    XENSTORE_SERVER_FEATURE_RECONNECTION,
    XS_RING_CONNECTION_OFF,
    XS_RING_ERROR_OFF,
    XS_RING_REQ_CONS_OFF,
    XS_RING_REQ_PROD_OFF,
    XS_RING_SERVER_FEATURES_OFF,
)
from xenstored.domain import DomainRecord, DomainRecords, Domains
from xenstored.quota import Quotas

U32 = struct.Struct("<I")


def test_records_round_trip_for_their_boot_only(tmp_path):
    domains = Domains(Quotas())
    domains.introduce(3, 0x3FF, 1, 4)
    domains.introduce(7, 0x1FF, 2, 4).target = 3
    records = DomainRecords(tmp_path)
    records.save("boot-a", domains)
    assert records.load("boot-a") == [DomainRecord(3, 0x3FF, 1, 4, None),
                                      DomainRecord(7, 0x1FF, 2, 4, 3)]
    assert records.load("boot-b") == []  # another hypervisor boot: nothing survives
    assert not (tmp_path / "domains.tmp").exists()
    domains.release(3)
    records.save("boot-a", domains)
    assert [r.domid for r in records.load("boot-a")] == [7]


def test_damaged_records_are_refused(tmp_path):
    records = DomainRecords(tmp_path)
    assert records.load("x") == []  # none kept yet
    domains = Domains(Quotas())
    domains.introduce(3, 0x3FF, 1, 4)
    records.save("x", domains)
    data = bytearray(records.path.read_bytes())
    data[-1] ^= 0xFF
    records.path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged"):
        records.load("x")


async def test_server_asks_guest_resets_on_a_packet_boundary():
    page = bytearray(4096)
    view = memoryview(page)
    U32.pack_into(view, XS_RING_SERVER_FEATURES_OFF,
                  XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR)
    guest = XsRingStream(view, lambda: server.kick(), server=False)
    kicks_to = [guest]  # which guest stream the event channel's kicks reach
    server = XsRingStream(view, lambda: kicks_to[0].kick(), server=True)
    await guest.send_all(b"0123456789")
    assert await server.receive_some(5) == b"01234"  # the dead daemon read half of it
    server.stop(XENSTORE_ERROR_COMM)
    with pytest.raises(trio.BrokenResourceError):
        await guest.receive_some()
    assert guest.server_error == XENSTORE_ERROR_COMM

    fresh = XsRingStream(view, lambda: server.kick(), server=False)
    kicks_to[0] = fresh

    async def serve() -> None:
        while not server.reconnect_requested:
            await server._wait(server._kicks)  # the port fired
        server.reset()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with trio.fail_after(5):
            await fresh.reconnect()
    assert U32.unpack_from(view, XS_RING_CONNECTION_OFF)[0] == XENSTORE_CONNECTED
    assert U32.unpack_from(view, XS_RING_ERROR_OFF)[0] == 0
    assert U32.unpack_from(view, XS_RING_REQ_CONS_OFF)[0] == 0
    assert U32.unpack_from(view, XS_RING_REQ_PROD_OFF)[0] == 0
    await fresh.send_all(b"whole")  # after the reset, packets start clean
    assert await XsRingStream(view, lambda: None, server=True).receive_some() == b"whole"


def test_only_the_guest_sets_reconnect():
    page = memoryview(bytearray(4096))
    server = XsRingStream(page, lambda: None, server=True)
    assert not server.reconnect_requested
    U32.pack_into(page, XS_RING_CONNECTION_OFF, XENSTORE_RECONNECT)
    assert server.reconnect_requested
