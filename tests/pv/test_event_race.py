"""No event is lost while a PV kernel consumes its bits with locked instructions.

Unicorn (QEMU TCG without CF_PARALLEL: its ``curr_cflags()`` is 0, in
``qemu/include/exec/exec-all.h``) emulates ``lock btr``/``xchg``/``lock
cmpxchg`` as a plain load, modify, store (``do_nonatomic_op_*`` in
``qemu/tcg/tcg-op.c``). A bit another process sets in a guest word between
that load and store is overwritten: a lost pending bit (the port never
seen again: coalescing suppresses every later notification) or a lost
selector bit (the port pending with nothing pointing at it). Fixed by
making the vCPU process the only writer of those bits while guest code
can run (``pvxen_op.evtchn_vcpu_bits``, hypervisord/vcpu/events.py).

A second way to lose one, found by this test: a slice ended by
``emu_stop`` from another thread can cut such an instruction after its
store and run it again (the pending bit then looks clear); fixed by
ending slices between instructions (hypervisord/vcpu/stopreq.py).

The kernel (tests/pv/kernels/evrace.S) spins consuming its pending words
with those instructions, as Linux's upcall handler does, and counts each
port it takes in ``seen[]``; dom0 (this test, through hypervisord's privcmd
socket) sends on several of its ports at once, round after round, and
after each round waits until the guest has taken every port sent to at
least once more: a lost event leaves a counter that never moves.
"""

from __future__ import annotations

import mmap
import os
import random
import re
import struct
import time

import pytest
from elftools.elf.elffile import ELFFile

from hypervisord.public import memfile
from hypervisord.public.event_channel import EvtchnOp
from hypervisord.public.xen import (PAGE_SIZE, SHARED_INFO_EVTCHN_MASK_OFF,
                                    SHARED_INFO_EVTCHN_PENDING_OFF,
                                    VCPU_INFO_EVTCHN_PENDING_SEL_OFF, Hypercall)
from libxen import ctrl
from libxen.foreignmemory import map_file_frames
from tests.pv.test_events import guests  # noqa: F401 (fixture)
from tests.pv.test_xl_pv import launcher_log, write_pv
from tests.toolstack.stack import stack  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(90)

NPORTS = 7  # evrace.S; the last one ends the run
VIRT_BASE = 0xFFFF_FFFF_8000_0000
#: rounds of one test run; a round sends on 3..6 ports (not the last)
ROUNDS = int(os.environ.get("PVXEN_EVRACE_ROUNDS", "1500"))  # ~3-4 s
ROUND_TIMEOUT = 2.0  # a consumed event takes well under a millisecond


def _symbol(elf_path, name: str) -> int:
    with open(elf_path, "rb") as f:
        sym = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)
    return sym[0]["st_value"]


class Watch:
    """dom0's read-only view of the guest's seen[] and its shared_info bits."""

    def __init__(self, xc, domid: int, counters_gfn: int) -> None:
        _, r = ctrl.map_foreign(xc, domid, [counters_gfn])
        fd = r["fds"]["memory"]
        try:
            self.counters = map_file_frames(fd, [counters_gfn], writable=False)
            self.shinfo = mmap.mmap(fd, PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ,
                                    offset=memfile.slot_offset(memfile.SHARED_INFO_SLOT))
        finally:
            os.close(fd)

    def seen(self, port: int) -> int:
        return struct.unpack_from("<Q", self.counters, 8 * port)[0]

    def bits(self) -> str:
        pending = struct.unpack_from("<Q", self.shinfo, SHARED_INFO_EVTCHN_PENDING_OFF)[0]
        mask = struct.unpack_from("<Q", self.shinfo, SHARED_INFO_EVTCHN_MASK_OFF)[0]
        sel = struct.unpack_from("<Q", self.shinfo, VCPU_INFO_EVTCHN_PENDING_SEL_OFF)[0]
        return (f"evtchn_pending[0]={pending:#x} evtchn_mask[0]={mask:#x} "
                f"pending_sel={sel:#x} upcall_pending={self.shinfo[0]} "
                f"upcall_mask={self.shinfo[1]}")

    def close(self) -> None:
        self.counters.close()
        self.shinfo.close()


def _start(stack, tmp_path, name: str, cmdline: str = ""):
    cfg = write_pv(tmp_path, name, "evrace", f'cmdline = "{cmdline}"\n' if cmdline else "")
    stack.xl_ok("create", str(cfg))
    stack.wait(lambda: stack.guest_log(name).count("evrace port ") == NPORTS, "the ports")
    ports = [int(p) for p in re.findall(r"evrace port (\d+)", stack.guest_log(name))]
    domid = stack.domid_of(name)
    xc = stack.ts.xc
    local = {}
    for p in ports:
        _, r = xc.call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_bind_interdomain,
                       remote_dom=domid, remote_port=p)
        local[p] = int(r["local_port"])
    gfn = (_symbol(tmp_path / "evrace.elf", "counters") - VIRT_BASE) // PAGE_SIZE
    return ports, local, Watch(xc, domid, gfn)


def _send(xc, port: int) -> None:
    xc.call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_send, port=port)


@pytest.mark.parametrize("cmdline", ["", "n"], ids=["rewrites", "plain"])
def test_every_notified_port_is_consumed_under_a_storm(stack, tmp_path, cmdline):
    """ROUNDS rounds of sends on several ports of one word; each sent port
    must be taken by the guest again within ROUND_TIMEOUT. Fails on the
    first port whose event the guest never sees.

    Measured (ROUNDS 1500, ~10000 sends a run). main before the fix
    (hypervisord setting the bits, slices ended by a bare emu_stop):
    "rewrites" lost an event in round 0 or 1 in 7 of 7 runs, "plain" lost
    one (round 415) or overran the 90 s timeout in 256 ms selector repairs
    in 6 of 6. The vCPU owning its bits, bare emu_stop: rewrites 3 of 3
    lost one (rounds 263-1432), plain 1 of 2. hypervisord writing, slices
    ended between instructions: rewrites 2 of 2 (rounds 0-1), plain 2 of 2.
    Both fixes: 0 failures in 8 runs of each (~160000 sends).
    """
    ports, local, watch = _start(stack, tmp_path, "race", cmdline)
    xc = stack.ts.xc
    rng = random.Random(8)
    work = ports[:-1]
    try:
        t0 = time.perf_counter()
        sends = 0
        for rnd in range(ROUNDS):
            subset = rng.sample(work, rng.randint(3, len(work)))
            before = {p: watch.seen(p) for p in subset}
            for p in subset:
                for _ in range(rng.randint(1, 2)):
                    _send(xc, local[p])
                    sends += 1
            deadline = time.monotonic() + ROUND_TIMEOUT
            while True:
                lost = [p for p in subset if watch.seen(p) <= before[p]]
                if not lost:
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"ports {ports}: round {rnd} of {ROUNDS} ({sends} sends): "
                                f"port(s) {lost} notified but never taken by the guest; "
                                f"{watch.bits()}; "
                                f"seen {[watch.seen(p) for p in ports]}")
                time.sleep(0.0001)
        took = time.perf_counter() - t0
        print(f"{ROUNDS} rounds, {sends} sends in {took:.2f} s; seen "
              f"{[watch.seen(p) for p in work]}")
        _send(xc, local[ports[-1]])
        stack.wait(lambda: "evrace done" in stack.guest_log("race"), "the final handshake")
        stack.wait(lambda: "(race) shut down, reason poweroff" in launcher_log(stack),
                   "the poweroff")
    finally:
        watch.close()


def test_a_slice_end_never_runs_a_locked_increment_twice(tmp_path):
    """Slices are ended from other threads (the slice ticker, the event
    waker). A bare ``emu_stop`` there is taken after the store of a
    read-modify-write and before the instruction's end, and the instruction
    is run again: measured 260 reruns in 272 slices of this loop. A
    guest's ``lock btr`` of a pending bit then finds the bit clear (CF 0)
    and never handles its event, its ``xchg`` of the selector takes 0, a
    ``lock cmpxchg`` that took a lock fails. hypervisord/vcpu/stopreq.py
    ends them between instructions."""
    from hypervisord.vcpu import loop
    from tests.pv.test_vcpu import Guest

    g = Guest("rmw", tmp_path)
    t0 = time.monotonic()
    stats = loop.LoopStats()
    assert loop.run(g.cpu, g.hc, stop=lambda: time.monotonic() - t0 > 0.3, stats=stats) is None
    count = struct.unpack("<Q", g.mem.read(g.symbols["count"] - VIRT_BASE, 8))[0]
    r15 = g.cpu.reg("r15")
    g.hc.events.close()
    assert g.cpu.stop_request.native  # x86-64: the block hook, not the emu_stop fallback
    assert r15 > 1000 and stats.slices > 10
    # the last slice may end between the two increments: count = r15 + 1
    assert count - r15 in (0, 1), f"{count - r15} reruns in {stats.slices} slices"


def test_hypervisord_leaves_a_pv_guests_bits_alone_and_a_paused_guest_loses_nothing(
        stack, tmp_path):
    """The fix for the race above: while the guest can run, hypervisord writes
    none of its pending/selector bits (pvxen_op.evtchn_vcpu_bits), it only
    queues the ports on the stream, and the vCPU sets them between slices.
    Paused (its process SIGSTOPped), the guest's bits stay as they are
    under a burst of sends that never blocks dom0; unpaused, it takes
    every port."""
    ports, local, watch = _start(stack, tmp_path, "paused")
    xc = stack.ts.xc
    work = ports[:-1]
    try:
        stack.xl_ok("pause", "paused")
        time.sleep(0.05)  # the SIGSTOP lands
        before = {p: watch.seen(p) for p in work}
        pending0 = struct.unpack_from("<Q", watch.shinfo, SHARED_INFO_EVTCHN_PENDING_OFF)[0]
        sel0 = struct.unpack_from("<Q", watch.shinfo, VCPU_INFO_EVTCHN_PENDING_SEL_OFF)[0]
        t0 = time.perf_counter()
        for _ in range(300):
            for p in work:
                _send(xc, local[p])
        took = time.perf_counter() - t0
        assert took < 20, f"{300 * len(work)} sends took {took:.1f} s"
        pending = struct.unpack_from("<Q", watch.shinfo, SHARED_INFO_EVTCHN_PENDING_OFF)[0]
        sel = struct.unpack_from("<Q", watch.shinfo, VCPU_INFO_EVTCHN_PENDING_SEL_OFF)[0]
        assert (pending, sel) == (pending0, sel0), watch.bits()
        assert {p: watch.seen(p) for p in work} == before  # really paused
        stack.xl_ok("unpause", "paused")
        stack.wait(lambda: all(watch.seen(p) > before[p] for p in work),
                   "every port taken after the unpause", timeout=5)
        _send(xc, local[ports[-1]])
        stack.wait(lambda: "evrace done" in stack.guest_log("paused"), "the final handshake")
    finally:
        watch.close()


def test_a_full_stream_queues_one_entry_per_port_and_loses_none():
    """hypervisord's side of a stream nobody reads (a paused guest) with a
    small socket buffer: writes never block, entries beyond what the socket
    holds wait deduplicated (bounded), and every port arrives once read."""
    import socket
    from types import SimpleNamespace

    from hypervisord.server import Connection

    conn = Connection(SimpleNamespace(), None, SimpleNamespace(domid=1), False)
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with mine, theirs:
        mine.setblocking(False)
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.evtchn_sock = mine
        ports = [3 + i % 40 | (i % 2) << 16 for i in range(40)]
        t0 = time.perf_counter()
        for n in range(200_000):
            conn.notify(ports[n % len(ports)])
        assert time.perf_counter() - t0 < 10
        assert len(conn.outbuf) <= 4 * len(ports) and len(conn.pending_ports) <= len(ports)
        stream = b""
        deadline = time.monotonic() + 5
        while conn.outbuf or conn.pending_ports:
            assert time.monotonic() < deadline
            stream += theirs.recv(1 << 16)
            conn._flush_nowait()  # what the notifier task does once writable
        theirs.setblocking(False)
        try:
            stream += theirs.recv(1 << 20)
        except BlockingIOError:
            pass
        assert len(stream) % 4 == 0  # the u32 entries kept their alignment
        assert {x for (x,) in struct.iter_unpack("<I", stream)} == set(ports)


def test_a_masked_port_waits_and_evtchnop_unmask_delivers_it(stack, tmp_path):
    """Masks with the vCPU owning the bits: a send to a port the guest masked
    (its own ``lock bts`` on evtchn_mask) makes it pending without a
    selector bit, so the guest does not take it; EVTCHNOP_unmask (Xen's
    evtchn_2l_unmask, in hypervisord while the guest waits for the answer)
    re-raises it and the guest takes it; unmasked, a send arrives at once."""
    ports, local, watch = _start(stack, tmp_path, "mask", cmdline="m")
    xc = stack.ts.xc
    masked, trigger = ports[0], ports[-2]
    try:
        stack.wait(lambda: watch.seen(63) == 1, "the guest's mask")
        for _ in range(3):
            _send(xc, local[masked])
        time.sleep(0.1)
        assert watch.seen(masked) == 0, "a masked port was taken"
        pending = struct.unpack_from("<Q", watch.shinfo, SHARED_INFO_EVTCHN_PENDING_OFF)[0]
        assert pending >> masked & 1, f"the masked port is not pending: {watch.bits()}"
        _send(xc, local[trigger])  # the guest unmasks it
        stack.wait(lambda: watch.seen(masked) == 1, "the re-raised port", timeout=5)
        assert watch.seen(62) == 0  # EVTCHNOP_unmask returned 0
        _send(xc, local[masked])
        stack.wait(lambda: watch.seen(masked) == 2, "a send to the unmasked port", timeout=5)
        _send(xc, local[ports[-1]])
        stack.wait(lambda: "evrace done" in stack.guest_log("mask"), "the final handshake")
    finally:
        watch.close()


def test_the_vcpu_applies_the_streams_entries_itself(guests, tmp_path):
    """In-process, the vCPU side of owned bits: hypervisord's part is only the
    entry on the stream (no bit); the vCPU sets the 2-level bits between
    slices, into the vcpu_info the kernel registered, and drops the entries
    of a port closed meanwhile."""
    g = guests("upcall", tmp_path, cmdline="r2")
    events = g.hc.events
    events.owns_bits = True
    g.start()
    g.wait_text("upcall port 5\n")
    for n in (1, 2):
        deadline = time.monotonic() + 5
        while g.shinfo_bits.is_pending(5):
            assert time.monotonic() < deadline
            time.sleep(0.001)
        g.stream.send(struct.pack("<I", 5))  # vcpu 0 in bits 16..23
        g.wait_text(f"upcall {n}\n")
    assert g.join() == 0  # SHUTDOWN_poweroff
    assert events.applied == 2
    g.stream.send(struct.pack("<II", 7, 8))
    deadline = time.monotonic() + 5
    while not events.waker.queued:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    events.closed_port(7)  # EVTCHNOP_close of 7 came back: its entry is stale
    assert not g.shinfo_bits.is_pending(7) and g.shinfo_bits.is_pending(8)
