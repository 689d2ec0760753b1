"""Event upcalls, blocking, polling and timers of one PV vCPU.

How an event reaches guest code (Xen: ``xen/common/event_2l.c``,
``xen/arch/x86/x86_64/entry.S`` ``test_guest_events``):

1. hypervisord writes the port (and the vCPU it is bound to) on this
   process's event-channel stream (``evtchn_fd``), unless the port is
   pending already (see "Who writes the bits" below);
2. :class:`~.waker.EventWaker`, a thread reading that stream, cuts the running
   slice short (``VCpu.request_stop``: :mod:`.stopreq`), wakes a blocked
   vCPU and keeps the entry;
3. between slices, while Unicorn is stopped, :meth:`VcpuEvents.apply_notifications`
   makes each kept port pending in the domain's ``shared_info`` (slot 0 of
   the memory file, which this process maps) as Xen's ``evtchn_2l_set_pending``:
   the port's bit, then, unless the port is masked, its word's bit in
   ``vcpu_info.evtchn_pending_sel``, then ``evtchn_upcall_pending``;
4. :meth:`VcpuEvents.service` then sees ``evtchn_upcall_pending
   && !evtchn_upcall_mask`` (``test_guest_events``) and bounces to the
   ``CALLBACKTYPE_event`` callback with TBF_INTERRUPT
   (:func:`.traps.create_bounce_frame`: no error code, the mask set, the
   frame's ``rflags.IF`` = !saved mask, from user mode onto the kernel stack);
5. the handler clears what it consumed and returns with ``HYPERVISOR_iret``,
   which restores the mask from the saved ``rflags.IF`` (:func:`.traps.iret`).

Who writes the bits. The guest clears and tests them with ``lock btr``,
``xchg`` and ``lock cmpxchg``, which Unicorn emulates as a plain load,
modify, store (QEMU TCG without ``CF_PARALLEL``: unicorn's
``curr_cflags()`` returns 0, so ``tcg_gen_atomic_*`` take
``do_nonatomic_op_*`` in ``qemu/tcg/tcg-op.c``): a bit another process set
between that load and store would be lost, the port never notified again
(measured on the old design, where hypervisord set the bits itself:
tests/pv/test_event_race.py lost an event in ~3000 sends, at once when the
kernel rewrites its pending word often). So this process owns them:
``guest.run`` asks hypervisord for ``pvxen_op.evtchn_vcpu_bits`` before the
guest runs (:attr:`VcpuEvents.owns_bits`), and everything that sets an
event bit while guest code can run is here, between slices: the stream's
entries (step 3), ``VIRQ_TIMER`` (:meth:`VcpuEvents.send_virq`), the
selector repair. hypervisord still writes some bits, but only while our
one vCPU waits for its answer or is stopped (``EVTCHNOP_unmask``'s
re-raise, ``EVTCHNOP_close``/``reset``; ``hypervisord/evtchn.py``).
Without that op (``owns_bits`` False: in-process tests that play the old
hypervisord) the stream is a doorbell only and its entries are dropped.

Applying between slices is safe only if a slice never ends inside a guest
instruction: slices ended from other threads stop between instructions
(:mod:`.stopreq`; a bare ``emu_stop`` there reran a ``lock btr`` cut after
its store, and the event was lost the same way). SMP (:mod:`.smp`): the
vCPUs of one process run guest code at once, so one vCPU applying between
its slices would race with another's guest code; a domain of several vCPUs
therefore does not ask for ``evtchn_vcpu_bits`` and hypervisord sets its
bits as before. That race, and the vCPUs' locked instructions on shared
words racing each other (parallel engines, none atomic), stay open there.

``VIRQ_TIMER`` is raised **here**, not in hypervisord: a vCPU's timer is the
vCPU's own state, as in Xen where ``send_guest_vcpu_virq`` runs on the
vCPU's own CPU. The binding (port allocation) is global and stays in
hypervisord (``EVTCHNOP_bind_virq`` is forwarded); the forwarder tells us
the port (:meth:`VcpuEvents.bound_virq`) and a tick sets its bits in
``shared_info`` directly, with no round trip per tick.

Deviation: an upcall with no event callback registered is left pending
(Xen would bounce to address 0 and crash the domain).
``VCPUOP_register_vcpu_info`` moves the guest's ``vcpu_info`` into
one of its frames (:meth:`VcpuEvents.register_vcpu_info`), which updates
:attr:`.cpu.VCpu.vcpu_info_gpa`, where every reader of ``vcpu_info`` looks
(the trap bounces' mask and cr2 too).
"""

from __future__ import annotations

import contextlib
import logging
import struct
import time
from collections.abc import Callable

from hypervisord.public import memfile
from hypervisord.public.callback import CallbackType
from hypervisord.public.errno import XenErrno
from hypervisord.public.pvxen import (EVTCHN_NOTIFY_DOORBELL, EVTCHN_NOTIFY_PORT_MASK,
                                      EVTCHN_NOTIFY_VCPU_SHIFT)
from hypervisord.public.sched import SCHED_POLL
from hypervisord.public.vcpu import (VCPU_REGISTER_RUNSTATE_MEMORY_AREA,
                                     VCPU_REGISTER_VCPU_INFO,
                                     VCPU_SET_PERIODIC_TIMER, VCPU_SET_SINGLESHOT_TIMER,
                                     Runstate, VcpuOp)
from hypervisord.public.xen import (PAGE_SIZE, SHARED_INFO_EVTCHN_MASK_OFF,
                                    SHARED_INFO_EVTCHN_PENDING_OFF,
                                    VCPU_INFO_EVTCHN_PENDING_SEL_OFF,
                                    VCPU_INFO_EVTCHN_UPCALL_MASK_OFF,
                                    VCPU_INFO_EVTCHN_UPCALL_PENDING_OFF, VCPU_INFO_SIZE,
                                    VCPU_INFO_TIME_OFF, XEN_LEGACY_MAX_VCPUS, Virq,
                                    vcpu_info_offset)
from libxen.shinfo import NR_PORTS_2L, AtomicWord, SharedInfoBits

from . import traps, vtime
from .cpu import VCpu
from .memory import SHARED_INFO_MFN
from .waker import EventWaker

log = logging.getLogger("vcpu")

MAX_POLL_PORTS = 128  # Xen's do_poll: "fairly arbitrary limit"
#: how often a poll re-reads its ports: hypervisord notifies nobody for a
#: port that goes pending while masked, and pollers usually mask theirs
POLL_RECHECK = 0.001
WAIT_CHUNK = 0.1  # a blocked vCPU still looks at stop() this often
_Q = struct.Struct("<Q")
_PENDING, _MASK = SHARED_INFO_EVTCHN_PENDING_OFF, SHARED_INFO_EVTCHN_MASK_OFF
_BITMAP = NR_PORTS_2L // 8

CopyIn = Callable[[int, int], bytes]
CopyOut = Callable[[int, bytes], None]


class VcpuEvents:
    """Event and timer state of one vCPU (the vCPU's own, as in Xen's ``struct vcpu``)."""

    def __init__(self, cpu: VCpu, copy_in: CopyIn, copy_out: CopyOut,
                 evtchn_fd: int | None = None, clock: vtime.DomainClock | None = None,
                 waker: EventWaker | None = None) -> None:
        self.cpu, self.copy_in, self.copy_out = cpu, copy_in, copy_out
        self.clock = clock if clock is not None else vtime.DomainClock()
        self.timers = vtime.VcpuTimers()
        # an SMP domain hands each vCPU its waker (the stream's doorbell is the
        # domain's: hypervisor/vcpu/smp.py), and ``guard``, the domain's lock,
        # which block() holds while it looks at this vCPU's state
        self.waker = waker if waker is not None else EventWaker(evtchn_fd, cpu.request_stop)
        self.guard = contextlib.nullcontext()
        #: the ports bound to this vCPU, as a bitmap (-1: all; SMP: :mod:`.smp`)
        self.resync_ports = -1
        off = memfile.slot_offset(memfile.SHARED_INFO_SLOT)
        self.shared_info = cpu.mem.view[off:off + PAGE_SIZE]
        self.bits = SharedInfoBits(self.shared_info)
        self.virq_ports: dict[int, int] = {}  # per-vCPU VIRQ -> port, learnt from bind_virq
        self.blocked = False
        self.poll_ports: list[int] | None = None
        self.poll_timeout = 0
        self.upcalls = 0
        self.resyncs = 0  # selector bits given back (resync_selectors)
        #: pvxen_op.evtchn_vcpu_bits was granted: the stream's entries are
        #: ours to apply, hypervisord does not write our bits (module doc)
        self.owns_bits = False
        self.applied = 0  # stream entries that made a port pending
        self.timer_events = 0
        self._last_time_update = -1
        self._services = 0
        # where the guest's vcpu_info is (cpu.vcpu_info_gpa, as a view and an
        # offset): shared_info's slot, or the frame VCPUOP_register_vcpu_info
        # named (then _legacy mirrors hypervisord's bits into it)
        self._vi_view, self._vi_off = self.shared_info, vcpu_info_offset(cpu.vcpu_id)
        assert cpu.vcpu_info_gpa == SHARED_INFO_MFN * PAGE_SIZE + self._vi_off
        self._registered_gpa: int | None = None
        self._legacy: tuple[AtomicWord, AtomicWord] | None = None  # set once registered
        legacy = self._vi_off
        self._legacy_words = (  # shared_info's upcall_pending and pending_sel, atomically
            AtomicWord(self.shared_info[legacy + VCPU_INFO_EVTCHN_UPCALL_PENDING_OFF:
                                        legacy + VCPU_INFO_EVTCHN_UPCALL_PENDING_OFF + 1]),
            AtomicWord(self.shared_info[legacy + VCPU_INFO_EVTCHN_PENDING_SEL_OFF:
                                        legacy + VCPU_INFO_EVTCHN_PENDING_SEL_OFF + 8]))
        self.runstate = vtime.RunstateClock(self.clock.now())
        self.runstate_area: int | None = None  # guest VA, VCPUOP_register_runstate_memory_area
        # Xen's builder masks every vCPU's upcalls (xg_dom_x86.c, shared_info_x86_64);
        # pvxen's lays out guest frames only, and shared_info is this vCPU's to set
        self.set_mask(1)
        self.update_time()
        sec, nsec = self.clock.wallclock()
        vtime.write_wallclock(self.shared_info, sec, nsec)

    # -- vcpu_info --------------------------------------------------------------------
    def mask(self) -> int:
        return self._vi_view[self._vi_off + VCPU_INFO_EVTCHN_UPCALL_MASK_OFF]

    def set_mask(self, value: int) -> None:
        self._vi_view[self._vi_off + VCPU_INFO_EVTCHN_UPCALL_MASK_OFF] = value

    def need_delivery(self) -> bool:
        """Xen's ``local_events_need_delivery``: pending and not masked."""
        if self._legacy is not None:
            self._pull_legacy()
        view, off = self._vi_view, self._vi_off
        return bool(view[off]) and not view[off + 1]

    def update_time(self) -> None:
        p = self.clock.refresh()
        vtime.write_time_info(self._vi_view, self._vi_off + VCPU_INFO_TIME_OFF, p)
        self._last_time_update = p.system_time

    # -- between slices -----------------------------------------------------------------
    def service(self, callbacks: dict[int, tuple[int, int]]) -> bool:
        """Timers, time info, then the upcall if one is due; True when bounced.

        Runs before every slice, i.e. after every hypercall: the common case
        (no timer armed, nothing pending) reads two bytes and two attributes;
        the clock is read only with a timer armed or every 256th call (for
        the time info's refresh), ~4 us less per hypercall (bench/vcpu.py).
        """
        if self.waker.queued:
            self.apply_notifications()
        t = self.timers
        self._services += 1
        if t.singleshot is not None or t.period \
                or not self._services & 255:
            now = self.clock.now()
            self._expire(now)
            if now - self._last_time_update >= vtime.UPDATE_SECONDS * 1e9:
                self.update_time()
            if not self._services & 255:
                self.resync_selectors()
        if self._legacy is not None:
            self._pull_legacy()
        view, off = self._vi_view, self._vi_off
        if not view[off] or view[off + 1]:  # need_delivery(), inlined
            return False
        cb = callbacks.get(CallbackType.CALLBACKTYPE_event)
        if cb is None or cb[0] == 0:
            return False  # see the module doc: left pending
        self.bounce_upcall(cb[0])
        return True

    def resync_selectors(self) -> bool:
        """Give a pending, unmasked port back its selector bit if it lost it.

        Why: Unicorn runs TCG without parallel CPUs, so the guest's ``xchg``
        and ``lock bts/btr`` on shared_info are a plain load and store, not
        atomic against another writer. Without :attr:`owns_bits`
        hypervisord is one, and the handler's ``xchg`` of
        ``evtchn_pending_sel`` can overwrite a selector bit it set in
        between: the port stays pending with no upcall and no new
        notification ever. With :attr:`owns_bits` (the normal case, module
        doc) nothing writes the bits while the guest runs and this finds
        nothing; it stays as a cheap guard. Between slices the guest is
        stopped, so the words can be compared here; the repair costs at most
        a spurious upcall. (A pending bit lost the same way cannot be seen
        here: that is why the vCPU owns the bits.) True when repaired.
        """
        si = self.shared_info
        live = int.from_bytes(si[_PENDING:_PENDING + _BITMAP], "little") \
            & ~int.from_bytes(si[_MASK:_MASK + _BITMAP], "little") & self.resync_ports
        if not live:
            return False
        words = 0
        for w in range(NR_PORTS_2L // 64):
            if (live >> (64 * w)) & 0xFFFF_FFFF_FFFF_FFFF:
                words |= 1 << w
        view, off = self._vi_view, self._vi_off
        missing = words & ~_Q.unpack_from(view, off + VCPU_INFO_EVTCHN_PENDING_SEL_OFF)[0]
        if not missing:
            return False
        if self._legacy is None:  # hypervisord writes these too: atomically
            upcall, sel = self._legacy_words
            for w in range(64):
                if missing >> w & 1:
                    sel.test_and_set(w)
            upcall.test_and_set(0)
        else:  # the registered copy: only we (and the stopped guest) write it
            old = _Q.unpack_from(view, off + VCPU_INFO_EVTCHN_PENDING_SEL_OFF)[0]
            _Q.pack_into(view, off + VCPU_INFO_EVTCHN_PENDING_SEL_OFF, old | missing)
            view[off + VCPU_INFO_EVTCHN_UPCALL_PENDING_OFF] = 1
        self.resyncs += 1
        return True

    def _expire(self, now: int) -> None:
        if self.timers.expire(now):
            self.send_virq(Virq.VIRQ_TIMER)

    def send_virq(self, virq: int) -> None:
        """``send_guest_vcpu_virq``: nothing when the guest bound no port."""
        port = self.virq_ports.get(virq)
        if port is None:
            return
        if virq == Virq.VIRQ_TIMER:
            self.timer_events += 1
        self.bits.set_pending(port, self.cpu.vcpu_id)

    def bounce_upcall(self, handler: int) -> None:
        """``create_bounce_frame`` with TBF_INTERRUPT (module doc, step 3)."""
        traps.create_bounce_frame(self.cpu, self.copy_out, handler, interrupt=True)
        self.upcalls += 1

    # -- sched_op -------------------------------------------------------------------------
    def sched_block(self) -> int:
        """SCHEDOP_block: events on (``local_event_delivery_enable``), then block."""
        self.set_mask(0)
        self.blocked = True
        return 0

    def sched_poll(self, arg: int) -> int:
        """SCHEDOP_poll: check here (errors are returned at once), wait in :meth:`block`."""
        ports_va, nr_ports, timeout = SCHED_POLL.unpack(self.copy_in(arg, SCHED_POLL.size))
        if nr_ports > MAX_POLL_PORTS:
            return -XenErrno.XEN_EINVAL
        raw = self.copy_in(ports_va, 4 * nr_ports) if nr_ports else b""
        ports = list(struct.unpack(f"<{nr_ports}I", raw))
        if any(p >= NR_PORTS_2L for p in ports):
            return -XenErrno.XEN_EINVAL
        self.apply_notifications()
        if self.need_delivery() or any(self.bits.is_pending(p) for p in ports):
            return 0
        if timeout and timeout <= self.clock.now():
            return 0
        self.poll_ports, self.poll_timeout, self.blocked = ports, timeout, True
        return 0

    def block(self, stop: Callable[[], bool] | None = None) -> None:
        """Wait, as a blocked vCPU, until an event needs delivery, a polled
        port is pending, the poll times out, or ``stop()``; timers fire meanwhile."""
        self._set_runstate(Runstate.RUNSTATE_blocked)
        try:
            while not (stop is not None and stop()):
                self.waker.arm()
                with self.guard:
                    if self.waker.queued:  # after arm(): a later entry kicks the wait
                        self.apply_notifications()
                    now = self.clock.now()
                    if self._wake_due(now):
                        return
                if self.waker.closed and self.timers.next_deadline() is None \
                        and not self.poll_timeout:
                    time.sleep(WAIT_CHUNK)  # nothing can wake us; keep looking at stop()
                    continue
                self.waker.wait(self._wait_seconds(now))
        finally:
            self.blocked, self.poll_ports, self.poll_timeout = False, None, 0
            self._set_runstate(Runstate.RUNSTATE_running)
            self.update_time()  # Xen refreshes the time info when a vCPU is scheduled in

    def _wake_due(self, now: int) -> bool:
        self._expire(now)
        self.resync_selectors()
        if self.need_delivery():
            return True
        if self.poll_ports is not None:
            if any(self.bits.is_pending(p) for p in self.poll_ports):
                return True
            if self.poll_timeout and self.poll_timeout <= now:
                return True
        return False

    def _wait_seconds(self, now: int) -> float:
        limit = WAIT_CHUNK
        if self.poll_ports is not None:
            limit = POLL_RECHECK
            if self.poll_timeout:
                limit = min(limit, (self.poll_timeout - now) / 1e9)
        deadline = self.timers.next_deadline()
        if deadline is not None:
            limit = min(limit, (deadline - now) / 1e9)
        return limit

    # -- timers -----------------------------------------------------------------------------
    def set_timer_op(self, timeout: int) -> int:
        self.timers.set_timer_op(timeout, self.clock.now())
        return 0

    def bound_virq(self, virq: int, vcpu: int, port: int) -> None:
        """The forwarder's report of a successful EVTCHNOP_bind_virq."""
        if vcpu == self.cpu.vcpu_id and virq == Virq.VIRQ_TIMER:
            self.virq_ports[virq] = port

    def port_vcpu(self, port: int, vcpu: int) -> None:
        """The forwarder's report: ``port`` now notifies ``vcpu`` (bind_ipi,
        bind_vcpu); one vCPU has nothing to do with it (an SMP domain does)."""

    def closed_port(self, port: int | None) -> None:
        """EVTCHNOP_close of ``port`` (None: EVTCHNOP_reset, every port)."""
        for virq, p in list(self.virq_ports.items()):
            if port is None or p == port:
                del self.virq_ports[virq]
        # entries on the stream now were sent before the close: applying them
        # would make the closed port pending again (hypervisord cleared it)
        self.apply_notifications(skip=port if port is not None else -1)

    # -- the stream's entries (owned bits, module doc) ------------------------------------
    def apply_notifications(self, skip: int | None = None) -> None:
        """Xen's 2-level set_pending of each entry the stream brought (step 3).

        Runs between slices only (Unicorn stopped): the one writer of
        these bits while the guest can run, so the guest's non-atomic
        ``lock btr``/``xchg`` cannot lose one. ``skip``: a just-closed port
        (-1: all, after EVTCHNOP_reset) whose entries are dropped. Without
        :attr:`owns_bits` the entries are only dropped (hypervisord set
        the bits).
        """
        entries = self.waker.take()
        if not entries or not self.owns_bits:
            return
        for entry in entries:
            port = entry & EVTCHN_NOTIFY_PORT_MASK
            vcpu = (entry >> EVTCHN_NOTIFY_VCPU_SHIFT) & 0xFF
            if entry & EVTCHN_NOTIFY_DOORBELL or port >= NR_PORTS_2L \
                    or vcpu >= XEN_LEGACY_MAX_VCPUS:
                log.warning("event stream: entry %#x ignored", entry)
                continue
            if skip == -1 or port == skip:
                continue
            if self.bits.set_pending(port, vcpu):
                self.applied += 1

    # -- vcpu_op ----------------------------------------------------------------------------
    def vcpu_op(self, cmd: int, arg: int, copy_in: CopyIn | None = None,
                copy_out: CopyOut | None = None) -> int:
        """VCPUOP_* on this vCPU (the caller checked vcpuid and handled down).

        ``copy_in``/``copy_out``: the calling vCPU's, when another vCPU asks
        (``arg`` is in the caller's address space); this vCPU's by default.
        """
        copy_in = copy_in or self.copy_in
        copy_out = copy_out or self.copy_out
        now = self.clock.now()
        if cmd == VcpuOp.VCPUOP_is_up:
            return 1
        if cmd == VcpuOp.VCPUOP_up:
            return 0  # initialised and up already
        if cmd == VcpuOp.VCPUOP_initialise:
            return -XenErrno.XEN_EEXIST  # default_initialise_vcpu: already initialised
        if cmd == VcpuOp.VCPUOP_set_periodic_timer:
            (period,) = VCPU_SET_PERIODIC_TIMER.unpack(
                copy_in(arg, VCPU_SET_PERIODIC_TIMER.size))
            if period < vtime.MILLISECS or period > vtime.STIME_DELTA_MAX:
                return -XenErrno.XEN_EINVAL
            if self.timers.set_periodic(period, now):
                self.send_virq(Virq.VIRQ_TIMER)
            return 0
        if cmd == VcpuOp.VCPUOP_stop_periodic_timer:
            self.timers.set_periodic(0, now)
            return 0
        if cmd == VcpuOp.VCPUOP_set_singleshot_timer:
            timeout, _flags = VCPU_SET_SINGLESHOT_TIMER.unpack(
                copy_in(arg, VCPU_SET_SINGLESHOT_TIMER.size))
            if timeout < now:  # Xen HEAD: "just inject the event" (no -ETIME any more)
                self.timers.singleshot = None
                self.send_virq(Virq.VIRQ_TIMER)
            else:
                self.timers.singleshot = timeout
            return 0
        if cmd == VcpuOp.VCPUOP_stop_singleshot_timer:
            self.timers.singleshot = None
            return 0
        if cmd == VcpuOp.VCPUOP_get_runstate_info:
            copy_out(arg, self._runstate_info())
            return 0
        if cmd == VcpuOp.VCPUOP_register_vcpu_info:
            mfn, offset, _rsvd = VCPU_REGISTER_VCPU_INFO.unpack(
                copy_in(arg, VCPU_REGISTER_VCPU_INFO.size))
            return self.register_vcpu_info(mfn, offset)
        if cmd == VcpuOp.VCPUOP_register_runstate_memory_area:
            (va,) = VCPU_REGISTER_RUNSTATE_MEMORY_AREA.unpack(
                copy_in(arg, VCPU_REGISTER_RUNSTATE_MEMORY_AREA.size))
            self.runstate_area = va or None
            self._write_runstate_area()
            return 0
        return -XenErrno.XEN_ENOSYS

    def register_vcpu_info(self, mfn: int, offset: int) -> int:
        """``VCPUOP_register_vcpu_info`` (``xen/common/domain.c``, ``map_guest_area``).

        hypervisord keeps setting ``evtchn_pending_sel``/``evtchn_upcall_pending``
        in shared_info's slot (global code does not know where each vCPU's
        vcpu_info went); :meth:`_pull_legacy` moves them into the registered
        copy before every look at it. Safe without atomics on the guest's
        side: the guest runs only between our looks (one thread per vCPU).
        """
        gaddr = (mfn << 12) + offset
        if offset >= PAGE_SIZE or gaddr >> 12 != mfn:
            return -XenErrno.XEN_EINVAL
        if self._registered_gpa is not None:
            return -XenErrno.XEN_EBUSY
        if (gaddr >> 12) != ((gaddr + VCPU_INFO_SIZE - 1) >> 12) or gaddr % 8:
            return -XenErrno.XEN_ENXIO
        if mfn >= self.cpu.mem.nr_pages:
            return -XenErrno.XEN_EINVAL  # not a frame of ours
        view, off = self.cpu.mem.view, memfile.gfn_offset(0) + gaddr
        # vcpu_info_populate: the new one starts as a copy of the old
        view[off:off + VCPU_INFO_SIZE] = self._vi_view[self._vi_off:self._vi_off + VCPU_INFO_SIZE]
        self._legacy = self._legacy_words
        self._vi_view, self._vi_off, self._registered_gpa = view, off, gaddr
        self.cpu.vcpu_info_gpa = gaddr
        self.update_time()
        return 0

    def _pull_legacy(self) -> None:
        """Move hypervisord's bits from shared_info's slot to the registered vcpu_info.

        ``upcall_pending`` is cleared first, then the selector bits: a bit
        hypervisord sets in between is moved now and its upcall_pending seen
        next time (a spurious upcall at worst, never a lost one).
        """
        assert self._legacy is not None
        upcall, sel = self._legacy
        if not upcall.test_and_clear(0) and not sel.load():
            return
        bits = 0
        word = sel.load()
        while word:
            bit = (word & -word).bit_length() - 1
            if sel.test_and_clear(bit):
                bits |= 1 << bit
            word &= word - 1
        view, off = self._vi_view, self._vi_off
        old = _Q.unpack_from(view, off + VCPU_INFO_EVTCHN_PENDING_SEL_OFF)[0]
        _Q.pack_into(view, off + VCPU_INFO_EVTCHN_PENDING_SEL_OFF, old | bits)
        view[off + VCPU_INFO_EVTCHN_UPCALL_PENDING_OFF] = 1

    def _runstate_info(self) -> bytes:
        return self.runstate.info(self.clock.now())

    def _set_runstate(self, state: Runstate) -> None:
        self.runstate.enter(state, self.clock.now())
        self._write_runstate_area()

    def _write_runstate_area(self) -> None:
        if self.runstate_area is None:
            return
        from .hypercalls import GuestFault  # here: hypercalls imports this module

        try:
            self.copy_out(self.runstate_area, self._runstate_info())
        except GuestFault as e:  # Xen: an unwritable area is just not updated
            log.debug("runstate area %#x not writable: %s", self.runstate_area, e)

    def close(self) -> None:
        self.waker.close()
        self.bits.close()
        self._legacy = None
        for word in self._legacy_words:
            word.close()
