"""A vCPU's life: slices, hypercalls served between them, shutdown.

The loop never serves a trap inside a Unicorn hook (STYLE.md rule 11): a
slice ends at a hypercall, a fault or a tick of the :class:`~.cpu.SliceTimer`
(every :data:`~.cpu.SLICE_SECONDS`), and the loop acts between slices. ``xl pause`` and ``xl
destroy`` reach the process as SIGSTOP/SIGKILL from hypervisord, so they
take effect at once even while the guest spins; the bounded slices are what
lets the Python side (signals, a stop request, later event upcalls) run.

A trap, or a syscall from guest user mode, goes to the guest's handler
(:func:`.traps.deliver`) when it registered one; else, or when the bounce
itself faults, the domain crashes. Before each slice
:meth:`.events.VcpuEvents.service` fires due timers and bounces a pending,
unmasked event upcall; after SCHEDOP_block/poll the loop waits in
:meth:`.events.VcpuEvents.block`.

With several vCPUs (:mod:`.smp`) each runs this loop in its own thread and
``lock`` is the domain's lock: held while the vCPU is between slices
(service, hypercall, trap bounce), released while Unicorn runs the guest
(``emu_start`` drops the GIL too) and while the vCPU is blocked.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from hypervisord.public.sched import ShutdownReason

from .cpu import ExitKind, SliceTimer, VCpu
from . import traps
from .hypercalls import GuestFault, Shutdown, VcpuHypercalls

log = logging.getLogger("vcpu")


@dataclass
class LoopStats:
    slices: int = 0
    hypercalls: int = 0
    seconds: float = 0.0


def run(cpu: VCpu, hc: VcpuHypercalls, *, stop: Callable[[], bool] | None = None,
        stats: LoopStats | None = None, lock=None) -> int | None:
    """Run ``cpu`` until the guest shuts down; its SHUTDOWN_* reason.

    ``stop()`` is asked between slices; True ends the loop with None.
    ``lock``: the domain's lock of an SMP guest (module doc), or None.
    """
    stats = stats if stats is not None else LoopStats()
    t0 = time.perf_counter()
    try:
        with SliceTimer(cpu):
            return _run(cpu, hc, stop, stats, lock if lock is not None else _NO_LOCK)
    finally:
        stats.seconds += time.perf_counter() - t0


_NO_LOCK = contextlib.nullcontext()


def _run(cpu: VCpu, hc: VcpuHypercalls, stop: Callable[[], bool] | None,
         stats: LoopStats, lock) -> int | None:
    while stop is None or not stop():
        try:
            with lock:
                hc.events.service(hc.callbacks)
        except (GuestFault, traps.BadFrame) as e:  # Xen: a failed bounce crashes
            log.error("d%d v%d: cannot deliver an event upcall: %s: domain crashed",
                      hc.domid, cpu.vcpu_id, e)
            return ShutdownReason.SHUTDOWN_crash
        ex = cpu.run_slice()
        stats.slices += 1
        if ex.kind is ExitKind.SLICE:
            continue
        if ex.kind is ExitKind.HYPERCALL:
            stats.hypercalls += 1
            try:
                with lock:
                    hc.dispatch()
            except Shutdown as s:
                return s.reason
            except traps.BadFrame as e:
                log.error("d%d v%d: %s: domain crashed", hc.domid, cpu.vcpu_id, e)
                return ShutdownReason.SHUTDOWN_crash
            if hc.events.blocked:
                hc.events.block(stop)
            continue
        if ex.kind in (ExitKind.TRAP, ExitKind.SYSCALL):
            try:
                with lock:
                    delivered = traps.deliver(cpu, hc, ex)
                if delivered:
                    continue
            except (GuestFault, traps.BadFrame) as e:  # Xen: a failed bounce crashes
                log.error("d%d v%d: cannot bounce trap %d: %s: domain crashed", hc.domid,
                          cpu.vcpu_id, ex.vector, e)
                return ShutdownReason.SHUTDOWN_crash
            log.error("d%d v%d: unhandled trap %d (error code %#x, cr2 %#x) at %#x: "
                      "domain crashed", hc.domid, cpu.vcpu_id, ex.vector, ex.error_code,
                      ex.cr2, ex.rip)
        else:
            log.error("d%d v%d: cannot run at %#x (%s): domain crashed", hc.domid,
                      cpu.vcpu_id, ex.rip, ex.detail)
        return ShutdownReason.SHUTDOWN_crash
    return None
