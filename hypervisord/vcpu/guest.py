"""The process of a PV guest: its vCPUs on the domain's memory, until shutdown.

Forked by the launcher like a program guest (``toolstack/guestproc.py``:
three descriptors, confined), it runs :func:`run` instead of a Python
program:

1. a first hypercall (``xen_version``), so hypervisord learns the
   process's pid and holds it stopped (SIGSTOP) while the domain is paused;
2. ``start_info`` read from its frame for ``nr_pages`` (copy, then check);
3. the memory file mapped once, vCPU 0 booted in Xen's entry state
   (``boot``: what the domain builder computed), and :func:`.loop.run`;
   The event-channel stream ``evtchn_fd`` wakes the vCPU (:mod:`.events`);
4. on SCHEDOP_shutdown, the reason is passed on to hypervisord (global
   state) and returned, for the exit status the launcher reads; a crash
   counts as SHUTDOWN_crash (Xen's ``domain_crash``);
5. unless the reason's action is ``preserve`` (``preserve``: the launcher
   passes those reasons): then the process stays, idle, so that the domain
   stays too, shut down (``xl list`` state ``c`` for a crash), as libxl
   leaves it, until ``xl destroy`` kills the process.

A domain of several vCPUs (``vcpus = N`` in xl.cfg: hypervisord's
``max_vcpus``, asked after the first hypercall) runs each vCPU in a thread
of its own, ``vcpuN``, and this process's main thread waits for the
shutdown (:mod:`.smp`); with one vCPU, vCPU 0 runs on the main thread.

``console_io`` text goes to stderr, which is the guest's log file, with
Xen's ``(dN)`` prefix.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from hypervisord.public import memfile
from hypervisord.public.sched import ShutdownReason
from hypervisord.public.xen import PAGE_SIZE, START_INFO, XEN_START_INFO_MAGIC
from libxen import ctrl
from libxen.sync import SyncXenCall, XenError

from . import loop, smp
from .cpu import BootState, VCpu
from .forward import Forwarder
from .forward_mm import MemoryForwarder
from .hypercalls import GuestFault, VcpuHypercalls, copy_from_guest
from .memory import MAX_PV_PAGES, GuestMemory

log = logging.getLogger("vcpu")


class ConsoleWriter:
    """Lines of CONSOLEIO_write, prefixed as Xen's ``guest_console_write`` does."""

    def __init__(self, domid: int, out=None) -> None:
        self.prefix = f"(d{domid}) ".encode()
        self.out = out if out is not None else sys.stderr.buffer
        self.partial = b""

    def __call__(self, data: bytes) -> None:
        text = self.partial + data.replace(b"\r", b"")
        *lines, self.partial = text.split(b"\n")
        for line in lines:
            self.out.write(self.prefix + line + b"\n")
        if len(self.partial) > 1024:
            self.out.write(self.prefix + self.partial + b"\n")
            self.partial = b""
        self.out.flush()


def read_nr_pages(memory_fd: int, start_info_gfn: int) -> int:
    page = os.pread(memory_fd, START_INFO.size, memfile.gfn_offset(start_info_gfn))
    fields = START_INFO.unpack(page)
    if fields[0].rstrip(b"\0") != XEN_START_INFO_MAGIC:
        raise ValueError("start_info: bad magic")
    nr_pages = fields[1]
    if not 0 < nr_pages <= MAX_PV_PAGES:
        raise ValueError(f"start_info: nr_pages {nr_pages}")
    return nr_pages


def run(domid: int, start_info_gfn: int, boot: dict, hypercall_fd: int, evtchn_fd: int,
        memory_fd: int, preserve: frozenset[int] = frozenset()) -> int | None:
    """The guest's life; its SHUTDOWN_* reason (None: hypervisord went away)."""
    os.dup(hypercall_fd)  # kept open until exit (see frontends/runtime.run)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s d{domid} %(levelname)s %(message)s")
    xc = SyncXenCall(fd=hypercall_fd)
    try:
        # hypervisord learns our pid (and stops us if paused); its answer is
        # what the guest's XENVER_version gets
        word, _ = ctrl.xen_version(xc)
    except (XenError, OSError) as e:
        log.error("first hypercall failed: %s", e)
        return None
    try:
        max_vcpus = ctrl.own_max_vcpus(xc)
    except (XenError, OSError) as e:
        log.error("max_vcpus: %s", e)
        return None
    if max_vcpus > 1:  # hypervisord keeps setting the bits (events.py, SMP)
        return _finish(xc, _run_smp(domid, start_info_gfn, boot, xc, word, evtchn_fd,
                                    memory_fd, max_vcpus), preserve)
    try:  # before the guest runs: from now on its event bits are ours (events.py)
        ctrl.evtchn_vcpu_bits(xc)
        owns_bits = True
    except XenError as e:
        log.warning("evtchn_vcpu_bits refused (%s): hypervisord sets the event bits", e)
        owns_bits = False
    try:
        mem = GuestMemory(memory_fd, read_nr_pages(memory_fd, start_info_gfn))
        cpu = VCpu(mem)
        cpu.boot(BootState(**boot))
        hc = VcpuHypercalls(cpu, domid, ConsoleWriter(domid),
                            xen_version=(word >> 16, word & 0xFFFF), evtchn_fd=evtchn_fd)
        hc.events.owns_bits = owns_bits
        hc.forward.update(Forwarder(xc, lambda va, n: copy_from_guest(cpu, va, n),
                                    hc.copy_to_guest, hc.events).table())
        hc.forward.update(MemoryForwarder(xc, hc.mmu, lambda va, n: copy_from_guest(cpu, va, n),
                                          hc.copy_to_guest, GuestFault).table())
        reason = loop.run(cpu, hc)
    except Exception:  # noqa: BLE001 - our bug: the domain crashes, with the traceback
        log.exception("vCPU 0 failed")
        reason = ShutdownReason.SHUTDOWN_crash
    return _finish(xc, reason, preserve)


def _run_smp(domid: int, start_info_gfn: int, boot: dict, xc: SyncXenCall, word: int,
             evtchn_fd: int, memory_fd: int, max_vcpus: int) -> int | None:
    """vCPUs 0 .. max_vcpus-1, each in its thread (:mod:`.smp`); the reason."""
    try:
        mem = GuestMemory(memory_fd, read_nr_pages(memory_fd, start_info_gfn))
        console = ConsoleWriter(domid)

        def make_hc(cpu: VCpu, first_mmu, waker, dom: smp.PvDomain) -> VcpuHypercalls:
            hc = VcpuHypercalls(cpu, domid, console, xen_version=(word >> 16, word & 0xFFFF),
                                smp=dom, first_mmu=first_mmu, waker=waker)
            copy_in = lambda va, n: copy_from_guest(cpu, va, n)  # noqa: E731
            hc.forward.update(Forwarder(xc, copy_in, hc.copy_to_guest, dom.events).table())
            hc.forward.update(MemoryForwarder(xc, hc.mmu, copy_in, hc.copy_to_guest,
                                              GuestFault).table())
            return hc

        dom = smp.PvDomain(domid, mem, max_vcpus, make_hc)
        dom.boot(BootState(**boot), evtchn_fd)
        log.info("%d vCPUs (vCPU 0 up)", max_vcpus)
    except Exception:  # noqa: BLE001 - our bug: the domain crashes, with the traceback
        log.exception("vCPU 0 failed")
        return ShutdownReason.SHUTDOWN_crash
    return dom.run()


def _finish(xc: SyncXenCall, reason: int | None, preserve: frozenset[int]) -> int:
    if reason is None:
        reason = ShutdownReason.SHUTDOWN_crash
    try:
        ctrl.shutdown(xc, reason)
    except (XenError, OSError) as e:
        log.error("SCHEDOP_shutdown(%d) failed: %s", reason, e)
        return reason
    if reason in preserve:
        log.info("shut down, reason %d: preserved until xl destroy", reason)
        while True:  # hypervisord's SIGKILL ends it (xl destroy)
            time.sleep(3600)
    return reason
