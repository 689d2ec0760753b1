"""Event upcalls, block/poll, timers and guest time of a PV vCPU, in-process.

The guest (tests/pv/kernels/{upcall,timer,time,vcpuop}.S) runs on a thread;
this test plays hypervisord's part of event delivery exactly as
hypervisord/evtchn.py does it: the 2-level bits set in the domain's
shared_info (libxen.shinfo, the same code) and the port number written on
the process's event-channel stream (a socketpair here). Event-channel ops
the guest forwards reach a fake hypervisor connection (:class:`FakeXc`).
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from hypervisord.public import memfile
from hypervisord.public.event_channel import EvtchnOp
from hypervisord.public.sched import ShutdownReason
from hypervisord.public.xen import PAGE_SIZE, Virq, vcpu_info_offset
from hypervisord.vcpu import events as ev, traps, vtime
from hypervisord.vcpu.forward import Forwarder
from hypervisord.vcpu.hypercalls import VcpuHypercalls, copy_from_guest
from libxen.shinfo import SharedInfoBits
from tests.pv.test_vcpu import Guest

pytestmark = pytest.mark.timeout(30)


class FakeXc:
    """hypervisord's side of the forwarded event_channel_op, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict]] = []
        self.next_port = 5

    def call(self, _hypercall: int, subop: int, **args):
        self.calls.append((subop, args))
        if subop in (EvtchnOp.EVTCHNOP_alloc_unbound, EvtchnOp.EVTCHNOP_bind_virq):
            port, self.next_port = self.next_port, self.next_port + 1
            return 0, {"port": port}
        return 0, {}


class EventGuest(Guest):
    """A Guest with an event-channel stream and a forwarder to :class:`FakeXc`."""

    def __init__(self, name: str, tmp_path, cmdline: str = "") -> None:
        super().__init__(name, tmp_path, cmdline=cmdline)
        self.stream, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.theirs = theirs
        self.hc.events.close()  # the harness made one without a stream: replace it
        self.hc = VcpuHypercalls(self.cpu, 1, self.console.append, evtchn_fd=theirs.fileno())
        self.xc = FakeXc()
        self.hc.forward.update(Forwarder(self.xc, lambda va, n: copy_from_guest(self.cpu, va, n),
                                         self.hc.copy_to_guest, self.hc.events).table())
        off = memfile.slot_offset(memfile.SHARED_INFO_SLOT)
        self.shinfo_bits = SharedInfoBits(self.mem.view[off:off + PAGE_SIZE])
        self.result: list = []
        self.thread: threading.Thread | None = None

    def start(self, **kw) -> None:
        self.thread = threading.Thread(target=lambda: self.result.append(self.run(**kw)))
        self.thread.start()

    def join(self, timeout: float = 10) -> int | None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), self.text()
        return self.result[0]

    def text(self) -> str:
        return b"".join(self.console).decode(errors="replace")

    def wait_text(self, needle: str, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert time.monotonic() < deadline, f"no {needle!r} in {self.text()!r}"
            time.sleep(0.001)

    def notify(self, port: int) -> bool:
        """hypervisord's evtchn.set_pending + Connection.notify."""
        if self.shinfo_bits.set_pending(port, 0):
            self.stream.send(struct.pack("<I", port))
            return True
        return False

    def vcpu_info(self) -> bytes:
        off = memfile.slot_offset(memfile.SHARED_INFO_SLOT) + vcpu_info_offset(0)
        return bytes(self.mem.view[off:off + 64])

    def close(self) -> None:
        self.shinfo_bits.close()
        self.hc.events.close()
        self.stream.close()
        self.theirs.close()


@pytest.fixture
def guests():
    made: list[EventGuest] = []

    def make(name, tmp_path, **kw) -> EventGuest:
        g = EventGuest(name, tmp_path, **kw)
        made.append(g)
        return g

    yield make
    for g in made:
        if g.thread is not None and g.thread.is_alive():
            g.thread.join(5)
        g.close()


def test_a_notified_port_reaches_the_guests_event_handler(guests, tmp_path) -> None:
    g = guests("upcall", tmp_path, cmdline="3")
    g.start()
    g.wait_text("upcall port 5\n")
    assert g.xc.calls[0] == (EvtchnOp.EVTCHNOP_alloc_unbound, {"dom": 0x7FF0, "remote_dom": 0})
    for n in (1, 2, 3):
        # wait until the guest consumed the previous event (its bit clear again)
        deadline = time.monotonic() + 5
        while g.shinfo_bits.is_pending(5):
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert g.notify(5)
        g.wait_text(f"upcall {n}\n")
    assert g.join() == ShutdownReason.SHUTDOWN_poweroff
    assert "upcall ok\n" in g.text()
    assert 1 <= g.hc.events.upcalls <= 3  # the handler also takes events that come meanwhile
    info = g.vcpu_info()
    assert info[0] == 0 and struct.unpack_from("<Q", info, 8)[0] == 0  # all consumed
    assert g.hc.events.mask() == 0  # the handler's iret gave the saved IF back


def test_the_upcall_frame_and_mask_are_xens(guests, tmp_path) -> None:
    """The frame of create_bounce_frame(TBF_INTERRUPT) and do_iret's mask rule."""
    g = guests("upcall", tmp_path)
    g.start(stop=lambda: "upcall port" in g.text())
    assert g.join() is None
    cpu, events = g.cpu, g.hc.events
    handler = g.symbols["on_event"]
    assert g.hc.callbacks[0][0] == handler
    events.set_mask(0)
    g.notify(5)
    rcx, r11, rip, rflags, rsp = cpu.regs(("rcx", "r11", "rip", "rflags", "rsp"))
    assert events.service(g.hc.callbacks)
    new_rsp = cpu.reg("rsp")
    assert new_rsp == (rsp & ~15) - 56 and cpu.reg("rip") == handler
    frame = struct.unpack("<7Q", copy_from_guest(cpu, new_rsp, 56))
    assert frame[:3] == (rcx, r11, rip)
    assert frame[3] == 0xE030  # FLAT_KERNEL_CS64 with RPL 0 (kernel context), saved mask 0
    assert frame[4] & traps.X86_EFLAGS_IF  # IF = !saved mask
    assert frame[5:] == (rsp, 0xE02B)
    assert events.mask() == 1
    assert not events.service(g.hc.callbacks)  # masked now: no second bounce


def test_a_masked_upcall_waits_for_the_mask_to_clear(guests, tmp_path) -> None:
    g = guests("upcall", tmp_path)
    g.start(stop=lambda: "upcall port" in g.text())
    g.join()
    events = g.hc.events
    assert events.mask() == 1  # as the builder left it: the kernel has not blocked yet
    g.notify(5)
    assert g.vcpu_info()[0] == 1  # upcall pending ...
    assert not events.service(g.hc.callbacks)  # ... but masked: nothing delivered
    assert events.upcalls == 0


def test_block_waits_for_the_event_not_a_fixed_time(guests, tmp_path) -> None:
    g = guests("upcall", tmp_path)
    g.start()
    g.wait_text("upcall port 5\n")
    time.sleep(0.3)
    assert g.thread.is_alive()  # blocked: no event yet
    assert g.hc.events.runstate.state == 2  # RUNSTATE_blocked
    slices = g.cpu.slices
    time.sleep(0.2)
    assert g.cpu.slices - slices < 10  # not spinning (a 10 ms sleep loop would run ~20)
    t0 = time.perf_counter()
    g.notify(5)
    assert g.join() == ShutdownReason.SHUTDOWN_poweroff
    assert time.perf_counter() - t0 < 0.5


def test_a_running_guest_is_interrupted_at_once(guests, tmp_path) -> None:
    """The stream's reader ends the running slice: no wait for the next tick."""
    g = guests("upcall", tmp_path, cmdline="s")
    g.start()
    g.wait_text("upcall port 5\n")
    while g.hc.events.mask():  # the kernel unmasks, then spins
        time.sleep(0.001)
    time.sleep(0.05)
    notifications = g.hc.events.waker.notifications
    g.notify(5)
    assert g.join() == ShutdownReason.SHUTDOWN_poweroff
    assert "upcall 1\nupcall ok\n" in g.text()
    assert g.hc.events.waker.notifications == notifications + 1


def test_the_timer_ticks_on_virq_timer(guests, tmp_path) -> None:
    g = guests("timer", tmp_path)
    t0 = time.perf_counter()
    g.start()
    assert g.join() == ShutdownReason.SHUTDOWN_poweroff, g.text()
    took = time.perf_counter() - t0
    # 4, or 5 when a late tick comes before the kernel stops the timer
    assert g.text().count("tick\n") in (4, 5) and "timer ok\n" in g.text(), g.text()
    assert (EvtchnOp.EVTCHNOP_bind_virq, {"virq": Virq.VIRQ_TIMER, "vcpu": 0}) in g.xc.calls
    # one 5 ms singleshot, then a 5 ms periodic timer: its first tick at once
    # (Xen's vcpu_periodic_timer_work: a period since the last), two more
    assert 0.014 < took < 2.0
    assert g.hc.events.timer_events == g.text().count("tick\n")
    assert g.hc.events.timers.next_deadline() is None  # stopped


def test_guest_time_is_monotonic_and_close_to_real_time(guests, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(vtime, "UPDATE_SECONDS", 0.002)  # re-publish often, mid-reads
    g = guests("time", tmp_path)
    g.start()
    assert g.join() == ShutdownReason.SHUTDOWN_poweroff, g.text()
    assert "time ok\n" in g.text(), g.text()
    first, last = struct.unpack("<QQ", g.mem.read(g.symbols["samples"]
                                                  - g.image.notes.virt_base, 16))
    now = g.hc.events.clock.now()
    assert first < last <= now + 1_000_000  # within 1 ms of the host's clock
    assert now - last < 200_000_000  # and it was read a moment ago
    assert last - first > 20_000_000  # the kernel spins for 30 ms of its own time


def test_version_protocol_never_leaves_an_odd_version(tmp_path) -> None:
    page = bytearray(PAGE_SIZE)
    view = memoryview(page)
    clock = vtime.DomainClock(calibrate=0.001)
    for _ in range(3):
        vtime.write_time_info(view, 32, clock.refresh())
    version, tsc, system_time, mul, shift, flags = struct.unpack_from("<I4xQQIbB", page, 32)
    assert version == 6 and flags == 1  # XEN_PVCLOCK_TSC_STABLE_BIT
    ns = system_time + vtime.scale_delta(vtime.rdtsc() - tsc, mul, shift)
    assert abs(ns - clock.now()) < 1_000_000
    assert 1 << 31 <= mul < 1 << 32


def test_time_scale_is_xens_set_time_scale() -> None:
    for ns_per_tick in (0.409, 1.0, 3.3, 0.001):
        mul, shift = vtime.time_scale(ns_per_tick)
        assert 1 << 31 <= mul < 1 << 32
        delta = 10 ** 9
        assert abs(vtime.scale_delta(delta, mul, shift) - delta * ns_per_tick) \
            <= delta * ns_per_tick * 1e-6 + 1


def test_set_timer_op_follows_xen() -> None:
    t = vtime.VcpuTimers()
    t.set_timer_op(5_000, now=1_000)
    assert t.singleshot == 5_000
    t.set_timer_op(0, now=1_000)
    assert t.singleshot is None
    t.set_timer_op((1 << 64) - 5, now=1_000)  # negative: Linux's wrapped jiffies
    assert t.singleshot == 1_000 + 100 * vtime.MILLISECS
    t.set_timer_op(1_000 + (1 << 51), now=1_000)  # beyond 2^50 ns: likewise
    assert t.singleshot == 1_000 + 100 * vtime.MILLISECS
    assert not t.expire(1_000) and t.expire(1_000 + 100 * vtime.MILLISECS)
    assert not t.set_periodic(10, now=0)
    assert [t.expire(n) for n in (5, 10, 15, 20)] == [False, True, False, True]
    t.set_periodic(0, now=22)
    assert t.next_deadline() is None and not t.expire(100)
    assert t.set_periodic(10, now=100)  # Xen: a period since the last tick: one now
    assert t.next_deadline() == 110


def test_vcpu_op_and_poll_answer_as_xen(guests, tmp_path) -> None:
    g = guests("vcpuop", tmp_path)
    g.start()
    assert g.join() == ShutdownReason.SHUTDOWN_poweroff, g.text()
    results = struct.unpack("<14q", g.mem.read(g.symbols["results"]
                                                - g.image.notes.virt_base, 14 * 8))
    assert results == (
        1,  # is_up(0)
        -2,  # is_up(1): no such vCPU (ENOENT)
        -17,  # initialise(0): already initialised (EEXIST)
        0,  # up(0)
        -22,  # set_periodic_timer(0.5 ms): below 1 ms (EINVAL)
        0,  # get_runstate_info
        0,  # RUNSTATE_running in it
        0,  # poll(port 5, timeout in 20 ms): times out, 0
        -22,  # poll of port 5000 (beyond the 2-level ABI): EINVAL
        -6,  # register_vcpu_info across a page boundary: ENXIO
        -6,  # ... misaligned: ENXIO
        -22,  # ... a frame that is not the guest's: EINVAL
        0,  # ... at vipage + 64
        -16,  # ... again: EBUSY
    )
    gpa = g.symbols["vipage"] - g.image.notes.virt_base + 64
    assert g.cpu.vcpu_info_gpa == gpa
    version = struct.unpack("<I", g.mem.read(gpa + 32, 4))[0]
    assert version and version % 2 == 0  # the time info is published there now
    assert "vcpuop ok\n" in g.text()
    (polled_ns,) = struct.unpack("<Q", g.mem.read(g.symbols["polled_ns"]
                                                  - g.image.notes.virt_base, 8))
    assert 19_000_000 <= polled_ns < 500_000_000  # the poll really waited for its timeout


def test_events_reach_a_registered_vcpu_info(guests, tmp_path) -> None:
    """After VCPUOP_register_vcpu_info hypervisord still sets shared_info's
    copy; the vCPU moves the bits to the guest's frame before it looks."""
    g = guests("upcall", tmp_path, cmdline="r2")
    g.start()
    g.wait_text("upcall port 5\n")
    gpa = g.symbols["vipage"] - g.image.notes.virt_base + 128
    assert g.cpu.vcpu_info_gpa == gpa
    for n in (1, 2):
        deadline = time.monotonic() + 5
        while g.shinfo_bits.is_pending(5):
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert g.notify(5)
        g.wait_text(f"upcall {n}\n")
    assert g.join() == ShutdownReason.SHUTDOWN_poweroff
    assert g.vcpu_info()[0] == 0  # the legacy copy's bits were taken
    assert g.mem.read(gpa, 1) == b"\0"


def test_down_of_the_last_vcpu_powers_the_domain_off(guests, tmp_path) -> None:
    g = guests("vcpuop", tmp_path, cmdline="d")
    g.start()
    assert g.join() == ShutdownReason.SHUTDOWN_poweroff
    assert "vcpuop ok" not in g.text()  # it went down before reaching the end


def test_a_closed_virq_port_is_not_raised_any_more(guests, tmp_path) -> None:
    g = guests("upcall", tmp_path)
    events = g.hc.events
    events.bound_virq(Virq.VIRQ_TIMER, 0, 9)
    events.bound_virq(Virq.VIRQ_TIMER, 1, 10)  # another vCPU's: not ours
    assert events.virq_ports == {Virq.VIRQ_TIMER: 9}
    events.send_virq(Virq.VIRQ_TIMER)
    assert g.shinfo_bits.is_pending(9)
    events.closed_port(9)
    g.shinfo_bits.clear_pending(9)
    events.send_virq(Virq.VIRQ_TIMER)
    assert not g.shinfo_bits.is_pending(9)


class Mem:
    """Guest memory for the forwarder: one struct at a time, by address."""

    def __init__(self) -> None:
        self.data: dict[int, bytes] = {}

    def copy_in(self, va: int, n: int) -> bytes:
        return self.data[va][:n]

    def copy_out(self, va: int, data: bytes) -> None:
        self.data[va] = data


class StatusXc(FakeXc):
    def call(self, hypercall: int, subop: int, **args):
        rc, r = super().call(hypercall, subop, **args)
        if subop == EvtchnOp.EVTCHNOP_status:
            return 0, {"status": 2, "vcpu": 0, "u": {"interdomain": {"dom": 3, "port": 9}}}
        if subop == EvtchnOp.EVTCHNOP_bind_interdomain:
            return 0, {"local_port": 12}
        return rc, r


def test_the_forwarded_event_channel_ops_are_event_channel_h() -> None:
    from hypervisord.public import event_channel as E

    class Events:
        def __init__(self) -> None:
            self.bound, self.closed = [], []

        def bound_virq(self, virq, vcpu, port):
            self.bound.append((virq, vcpu, port))

        def closed_port(self, port):
            self.closed.append(port)

        def port_vcpu(self, port, vcpu):
            self.moved.append((port, vcpu))

    xc, mem, events = StatusXc(), Mem(), Events()
    events.moved = []
    fw = Forwarder(xc, mem.copy_in, mem.copy_out, events)
    op = fw.table()[0x20]  # __HYPERVISOR_event_channel_op

    mem.data[1] = E.EVTCHN_BIND_INTERDOMAIN.pack(3, 9, 0)
    assert op(0x20, [EvtchnOp.EVTCHNOP_bind_interdomain, 1]) == 0
    assert E.EVTCHN_BIND_INTERDOMAIN.unpack(mem.data[1]) == (3, 9, 12)
    mem.data[2] = E.EVTCHN_BIND_VIRQ.pack(Virq.VIRQ_TIMER, 0, 0)
    assert op(0x20, [EvtchnOp.EVTCHNOP_bind_virq, 2]) == 0
    assert E.EVTCHN_BIND_VIRQ.unpack(mem.data[2]) == (0, 0, 5)
    assert events.bound == [(0, 0, 5)]
    mem.data[3] = E.EVTCHN_STATUS.pack(0x7FF0, 12, 0, 0, b"")
    assert op(0x20, [EvtchnOp.EVTCHNOP_status, 3]) == 0
    assert E.EVTCHN_STATUS_INTERDOMAIN.unpack(mem.data[3]) == (0x7FF0, 12, 2, 0, 3, 9)
    mem.data[4] = E.EVTCHN_UNMASK.pack(12)
    assert op(0x20, [EvtchnOp.EVTCHNOP_unmask, 4]) == 0
    mem.data[5] = E.EVTCHN_BIND_VCPU.pack(12, 0)
    assert op(0x20, [EvtchnOp.EVTCHNOP_bind_vcpu, 5]) == 0
    assert events.moved == [(12, 0)]  # told to the vCPUs (hypervisord/vcpu/smp.py)
    mem.data[6] = E.EVTCHN_CLOSE.pack(5)
    assert op(0x20, [EvtchnOp.EVTCHNOP_close, 6]) == 0
    mem.data[7] = E.EVTCHN_RESET.pack(0x7FF0)
    assert op(0x20, [EvtchnOp.EVTCHNOP_reset, 7]) == 0
    assert events.closed == [5, None]
    assert op(0x20, [EvtchnOp.EVTCHNOP_init_control, 7]) == -38  # FIFO ABI: not here
    assert [c[0] for c in xc.calls] == [
        EvtchnOp.EVTCHNOP_bind_interdomain, EvtchnOp.EVTCHNOP_bind_virq,
        EvtchnOp.EVTCHNOP_status, EvtchnOp.EVTCHNOP_unmask, EvtchnOp.EVTCHNOP_bind_vcpu,
        EvtchnOp.EVTCHNOP_close, EvtchnOp.EVTCHNOP_reset]
    assert xc.calls[0][1] == {"remote_dom": 3, "remote_port": 9}
    assert xc.calls[3][1] == {"port": 12}
    assert xc.calls[4][1] == {"port": 12, "vcpu": 0}
    assert xc.calls[6][1] == {"dom": 0x7FF0}


def test_an_event_between_the_check_and_the_wait_is_not_lost(guests, tmp_path,
                                                              monkeypatch) -> None:
    """block() arms the waker *before* it looks at the bits (the final-check
    order of io/ring.h's notification rules): a notification that lands
    between its look and its wait must end the wait at once, not after
    WAIT_CHUNK."""
    g = guests("upcall", tmp_path)
    g.start(stop=lambda: "upcall port" in g.text())
    g.join()
    events = g.hc.events
    events.set_mask(0)
    looks = []
    real = ev.VcpuEvents.need_delivery

    def need_delivery(self) -> bool:
        seen = real(self)
        if not looks:  # the event arrives right after the first look
            g.notify(5)
        looks.append(seen)
        return seen

    monkeypatch.setattr(ev.VcpuEvents, "need_delivery", need_delivery)
    monkeypatch.setattr(ev, "WAIT_CHUNK", 5.0)  # a lost kick would cost seconds
    events.blocked = True
    t0 = time.perf_counter()
    events.block()
    assert time.perf_counter() - t0 < 1.0
    assert looks[0] is False and looks[-1] is True


def test_the_wallclock_plus_system_time_is_the_time_of_day(tmp_path) -> None:
    g = Guest("hello", tmp_path)
    off = memfile.slot_offset(memfile.SHARED_INFO_SLOT) + 3072  # shared_info.wc_version
    version, sec, nsec, sec_hi = struct.unpack_from("<IIII", g.mem.view, off)
    assert version and version % 2 == 0
    assert sec_hi == 0 and 0 <= nsec < 1_000_000_000
    wall = sec * 1_000_000_000 + nsec + g.hc.events.clock.now()
    assert abs(wall - time.time_ns()) < 50_000_000
    g.hc.events.close()


def test_a_lost_selector_bit_is_given_back(guests, tmp_path) -> None:
    """The guest's xchg of evtchn_pending_sel is not atomic under Unicorn (see
    VcpuEvents.resync_selectors): a port left pending with no selector bit
    and no upcall_pending must still reach the handler."""
    g = guests("upcall", tmp_path)
    g.start()
    g.wait_text("upcall port 5\n")
    while not g.hc.events.blocked:
        time.sleep(0.001)
    off = memfile.slot_offset(memfile.SHARED_INFO_SLOT) + 2048  # evtchn_pending[0]
    g.mem.view[off] |= 1 << 5  # what is left when the selector bit was overwritten
    assert g.vcpu_info()[0] == 0 and g.vcpu_info()[8] == 0
    g.stream.send(struct.pack("<I", 5))  # the notification hypervisord did send
    assert g.join() == ShutdownReason.SHUTDOWN_poweroff, g.text()
    assert "upcall 1\n" in g.text()
    assert g.hc.events.resyncs == 1
