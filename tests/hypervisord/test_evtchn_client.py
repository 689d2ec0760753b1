"""libxen.evtchn receive side, against a fake stream and a private page (trio)."""

from __future__ import annotations

import mmap
import socket
import struct

import pytest
import trio

from hypervisord.public.pvxen import HYPERVISOR_pvxen_op
import trio.testing

from libxen.evtchn import EvtchnStatus, XenEvtchn
from libxen.shinfo import SharedInfoBits

pytestmark = pytest.mark.timeout(30)


class FakeXenCall:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, dict]] = []

    async def call(self, hypercall: int, subop: int, **args) -> tuple[int, dict]:
        self.calls.append((hypercall, subop, args))
        return 0, {"port": 7, "local_port": 8,
                   "status": 2, "vcpu": 0, "u": {"interdomain": {"dom": 3, "port": 9}}}


class Hv:
    """The hypervisor's side: sets bits, writes port numbers."""

    def __init__(self, page: mmap.mmap, sock: socket.socket) -> None:
        self.bits = SharedInfoBits(page)
        self.sock = sock

    def send(self, port: int) -> None:
        if self.bits.set_pending(port):
            self.sock.send(struct.pack("<I", port))


@pytest.fixture
async def world():
    page = mmap.mmap(-1, 4096)
    mine, theirs = socket.socketpair()
    xc = FakeXenCall()
    hv = Hv(page, mine)
    async with XenEvtchn.open(xc, theirs.detach(), shared_info=page) as xe:
        yield xe, hv, xc
    hv.bits.close()
    mine.close()


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked(cushion=0.01)


async def test_pending_yields_ports_once_per_0_to_1(world):
    xe, hv, _ = world
    for _ in range(100):
        hv.send(5)
    hv.send(6)
    assert await xe.wait() == 5
    assert await xe.wait() == 6
    await settle()
    assert xe.received == 2
    hv.send(5)  # cleared by the receiver: notifies again
    assert await xe.wait() == 5


async def test_wait_port_never_misses_an_event_fired_while_busy(world):
    xe, hv, _ = world
    hv.send(4)
    await settle()  # fired while nobody waited on 4: goes to the queue ...
    with trio.fail_after(1):
        await xe.wait_port(4)  # ... and wait_port takes it from there
    hv.send(4)
    await settle()  # claimed now: kept for the next wait_port
    with trio.fail_after(1):
        await xe.wait_port(4)
    with trio.move_on_after(0.1) as scope:
        await xe.wait_port(4)  # nothing new
    assert scope.cancelled_caught


async def test_stale_notifications_are_dropped(world):
    xe, hv, _ = world
    hv.sock.send(struct.pack("<I", 9))  # bit clear: closed since, or a resend
    hv.sock.send(struct.pack("<I", 0) + struct.pack("<I", 2**32 - 1))  # nonsense
    hv.send(3)
    assert await xe.wait() == 3
    await settle()
    assert xe.received == 4


async def test_port_numbers_split_across_reads(world):
    xe, hv, _ = world
    hv.bits.set_pending(300)
    data = struct.pack("<I", 300)
    hv.sock.send(data[:1])
    await settle()
    hv.sock.send(data[1:])
    assert await xe.wait() == 300


async def test_wait_port_sees_a_pending_bit_nobody_announced(world):
    xe, hv, _ = world
    hv.bits.set_pending(12)  # set before this process had its stream
    with trio.fail_after(1):
        await xe.wait_port(12)
    assert not hv.bits.is_pending(12)


async def test_waiters_on_one_port_all_wake(world):
    xe, hv, _ = world
    woke = []

    async def waiter(i: int) -> None:
        await xe.wait_port(20)
        woke.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(waiter, i)
        await settle()
        hv.send(20)
    assert sorted(woke) == [0, 1, 2]


async def test_ops_and_unbind_wakes_waiters(world):
    xe, hv, xc = world
    assert await xe.bind_unbound_port(3) == 7
    assert await xe.bind_interdomain(3, 9) == 8
    assert await xe.status(8) == EvtchnStatus(2, 0, 3, 9, None)

    async def waiter() -> None:
        await xe.wait_port(8)

    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await settle()
            await xe.unbind(8)
    # (the first call asks hypervisord for doorbells: pvxen's own op)
    assert [c[1] for c in xc.calls if c[0] != HYPERVISOR_pvxen_op] == [6, 0, 5, 3]


async def test_broken_stream_raises():
    page = mmap.mmap(-1, 4096)
    mine, theirs = socket.socketpair()
    async with XenEvtchn.open(FakeXenCall(), theirs.detach(), shared_info=page) as xe:
        mine.close()
        with pytest.raises(ConnectionResetError), trio.fail_after(1):
            await xe.wait()
        with pytest.raises(ConnectionResetError), trio.fail_after(1):
            await xe.wait_port(5)
    page.close()  # the client released its views
