"""Hypercalls from guest code: decoded from registers, served or forwarded.

64-bit PV calling convention (Xen ``xen/arch/x86/pv/hypercall.c``,
``xen/include/public/arch-x86/xen-x86_64.h``): ``syscall`` from guest
kernel mode with the number in %rax and arguments in %rdi, %rsi, %rdx,
%r10, %r8; the result in %rax (``-errno`` on failure). The hypercall page
(:func:`hypercall_page`) holds one 32-byte stub per number.

Served here, on behalf of the vCPU (state that is the vCPU's own):
``console_io`` (CONSOLEIO_write to the guest's log, as Xen prints a domU's
``console_io`` to its console with the ``(dN)`` prefix), ``xen_version``
(local answers for the sub-ops that need no global state), ``vm_assist``,
``set_trap_table`` (stored for trap bounces), ``sched_op`` yield/block/poll,
``set_timer_op`` and ``vcpu_op`` (:mod:`.events`);
``sched_op`` shutdown goes to hypervisord (global state) and ends the vCPU;
``iret`` (:mod:`.traps`); ``stack_switch``, ``set_segment_base``,
``set_gdt``, ``update_descriptor`` (:mod:`.segments`); ``domctl``,
``sysctl``, ``platform_op`` (Xen's checks, then XSM's -EPERM: :mod:`.privops`).
Page tables (``update_va_mapping``, ``mmu_update``, ``mmuext_op``): :mod:`.mmu`
over :mod:`.pagetype`; ``multicall``: :mod:`.multicall`; ``physdev_op``:
:mod:`.physdev`; ``memory_op``/``grant_table_op`` are forwarded (:mod:`.forward_mm`).
Anything else returns ``-ENOSYS`` unless a forwarder is registered.
"""

from __future__ import annotations

import errno as _errno
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypervisord.public.callback import (CALLBACK_REGISTER, CALLBACK_UNREGISTER,
                                         CALLBACKF_mask_events, CALLBACKOP_register,
                                         CALLBACKOP_unregister, CallbackType)
from hypervisord.public.errno import XenErrno
from hypervisord.public.sched import SchedOp, ShutdownReason
from hypervisord.public.vcpu import VcpuOp
from hypervisord.public.version import XenVerOp
from hypervisord.public.xen import (CONSOLEIO_read, CONSOLEIO_write, HYPERCALL_STUB_SIZE,
                                    NR_HYPERCALL_STUBS, PAGE_SIZE, VMASST_CMD_disable,
                                    VMASST_CMD_enable, Hypercall)

from . import multicall, paging, physdev, privops, segments, traps
from .cpu import VCpu
from .events import VcpuEvents
from .mmu import Mmu, MmuError

ARG_REGS = ("rdi", "rsi", "rdx", "r10", "r8")
MAX_CONSOLE_WRITE = 16 << 10  # bytes per CONSOLEIO_write we copy (Xen loops in chunks)
TRAP_INFO = struct.Struct("<BBHxxxxQ")  # struct trap_info: vector, flags, cs, address
#: VM assists a 64-bit PV guest may turn on (Xen: VM_ASSIST_VALID for pv64)
VM_ASSIST_VALID = (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 32)
#: ``PVXEN_VCPU_TRACE=1`` logs every hypercall (number, arguments, result) to
#: the guest's log, as a debugging aid (Xen: ``hypercall_debug`` builds)
TRACE = os.environ.get("PVXEN_VCPU_TRACE") == "1"
log = logging.getLogger("vcpu")


class GuestFault(Exception):
    """A guest pointer could not be followed: the hypercall fails with -EFAULT."""


class Shutdown(Exception):
    """SCHEDOP_shutdown was accepted: the vCPU stops with this reason."""

    def __init__(self, reason: int) -> None:
        super().__init__(f"shutdown, reason {reason}")
        self.reason = reason


def hypercall_page() -> bytes:
    """Xen's 64-bit PV hypercall page (``pv_ring3_init_hypercall_page``).

    Each 32-byte slot: ``push %rcx; push %r11; mov $nr,%eax; syscall;
    pop %r11; pop %rcx; ret``; slot 23 (``iret``): ``push %rcx; push %r11;
    push %rax; mov $23,%eax; syscall`` and nothing after (it never returns).
    """
    page = bytearray(b"\xcc" * PAGE_SIZE)  # int3 padding
    for nr in range(NR_HYPERCALL_STUBS):
        mov = b"\xb8" + struct.pack("<I", nr)
        if nr == Hypercall.iret:
            stub = b"\x51\x41\x53\x50" + mov + b"\x0f\x05"
        else:
            stub = b"\x51\x41\x53" + mov + b"\x0f\x05\x41\x5b\x59\xc3"
        page[nr * HYPERCALL_STUB_SIZE: nr * HYPERCALL_STUB_SIZE + len(stub)] = stub
    return bytes(page)


def copy_from_guest(cpu: VCpu, va: int, length: int) -> bytes:
    """``copy_from_guest``: follow the guest's own tables, page by page."""
    out = bytearray()
    try:
        while length > 0:
            gpa = paging.walk(cpu.mem.read_u64, cpu.cr3, va)
            chunk = min(length, PAGE_SIZE - (va & (PAGE_SIZE - 1)))
            out += cpu.mem.read(gpa, chunk)
            va, length = va + chunk, length - chunk
    except (paging.PageFault, IndexError) as e:
        raise GuestFault(str(e)) from None
    return bytes(out)


Forwarder = Callable[[int, list[int]], int]


@dataclass
class VcpuHypercalls:
    """The hypercall table of one vCPU; ``console`` receives console_io text."""

    cpu: VCpu
    domid: int
    console: Callable[[bytes], None]
    xen_version: tuple[int, int] = (4, 19)
    forward: dict[int, Forwarder] = field(default_factory=dict)
    trap_table: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    #: CALLBACKTYPE_* -> (address, CALLBACKF_* flags), from callback_op/set_callbacks
    callbacks: dict[int, tuple[int, int]] = field(default_factory=dict)
    vm_assist: int = 0
    yields: int = 0
    count: int = 0
    #: the process's event-channel stream (None: no hypervisord, in-process tests)
    evtchn_fd: int | None = None
    mmu: Mmu = field(init=False)
    physdev: physdev.PhysdevState = field(default_factory=physdev.PhysdevState)
    in_multicall: bool = False
    #: upcalls, block/poll, timers, vcpu_op (:mod:`.events`)
    events: VcpuEvents = field(init=False)
    #: an SMP domain (:class:`.smp.PvDomain`): serves vcpu_op for every vCPU; None: one vCPU
    smp: Any = None
    #: vCPU 0's Mmu, whose per-domain state (page types ...) a later vCPU shares
    first_mmu: Mmu | None = None
    waker: Any = None  # this vCPU's waker (SMP: see events.VcpuEvents)

    def __post_init__(self) -> None:
        self.mmu = Mmu(self.cpu, self.domid) if self.first_mmu is None \
            else Mmu.for_vcpu(self.cpu, self.first_mmu)
        self.events = VcpuEvents(self.cpu, lambda va, n: copy_from_guest(self.cpu, va, n),
                                 self.copy_to_guest, self.evtchn_fd, waker=self.waker)

    def dispatch(self) -> None:
        """Serve the hypercall the vCPU just stopped at; result in %rax."""
        cpu = self.cpu
        nr, *args = cpu.regs(("rax",) + ARG_REGS)  # one batch: reg_read costs ~2 us each
        self.count += 1
        handler = _TABLE.get(nr)
        try:
            if handler is not None:
                rc = handler(self, *args)
            elif nr in self.forward:
                rc = self.forward[nr](nr, args)
            else:
                rc = -XenErrno.XEN_ENOSYS
        except GuestFault:
            rc = -XenErrno.XEN_EFAULT
        if TRACE:
            log.info("hypercall %d(%s) = %s", nr, ", ".join(f"{a:#x}" for a in args), rc)
        if rc is not None:  # None: the handler set the registers itself (iret)
            cpu.set_reg("rax", rc)

    # -- the handlers ------------------------------------------------------------------------

    def console_io(self, cmd: int, count: int, buf: int, *_: int) -> int:
        if cmd == CONSOLEIO_write:
            count &= 0xFFFF_FFFF
            data = copy_from_guest(self.cpu, buf, min(count, MAX_CONSOLE_WRITE))
            self.console(data)
            return 0
        if cmd == CONSOLEIO_read:
            return 0  # no input for a domU's console_io (Xen: dom0/hwdom only)
        return -XenErrno.XEN_ENOSYS

    def xen_version_op(self, cmd: int, arg: int, *_: int) -> int:
        if cmd == XenVerOp.XENVER_version:
            major, minor = self.xen_version
            return (major << 16) | minor
        if cmd == XenVerOp.XENVER_get_features:
            # xen_feature_info { unsigned int submap_idx; uint32_t submap; }
            idx = struct.unpack("<I", copy_from_guest(self.cpu, arg, 4))[0]
            self.copy_to_guest(arg + 4, struct.pack("<I", 0))  # no optional features yet
            return 0 if idx == 0 else -XenErrno.XEN_EINVAL
        return -XenErrno.XEN_ENOSYS

    def vm_assist_op(self, cmd: int, type_: int, *_: int) -> int:
        if type_ >= 64 or not (1 << type_) & VM_ASSIST_VALID:
            return -XenErrno.XEN_EINVAL
        if cmd == VMASST_CMD_enable:
            self.vm_assist |= 1 << type_
        elif cmd == VMASST_CMD_disable:
            self.vm_assist &= ~(1 << type_)
        else:
            return -XenErrno.XEN_ENOSYS
        return 0

    def set_trap_table(self, traps: int, *_: int) -> int:
        """``do_set_trap_table``: a list of trap_info ended by address 0; 0 clears."""
        if traps == 0:
            self.trap_table.clear()
            return 0
        for i in range(256):
            vector, flags, cs, address = TRAP_INFO.unpack(
                copy_from_guest(self.cpu, traps + i * TRAP_INFO.size, TRAP_INFO.size))
            if address == 0:
                return 0
            if not paging.is_canonical(address):
                return -XenErrno.XEN_EINVAL
            self.trap_table[vector] = (flags, cs, address)
        return 0

    def register_callback(self, type_: int, flags: int, address: int) -> int:
        """``register_guest_callback`` (``xen/arch/x86/pv/callback.c``)."""
        if not paging.is_canonical(address):
            return -XenErrno.XEN_EINVAL
        if type_ not in _REGISTRABLE:
            return -XenErrno.XEN_ENOSYS
        if type_ == CallbackType.CALLBACKTYPE_event:
            flags = CALLBACKF_mask_events  # event delivery always masks events
        self.callbacks[type_] = (address, flags & CALLBACKF_mask_events)
        return 0

    def callback_op(self, cmd: int, arg: int, *_: int) -> int:
        cmd &= 0xFFFF_FFFF
        if cmd == CALLBACKOP_register:
            type_, flags, address = CALLBACK_REGISTER.unpack(
                copy_from_guest(self.cpu, arg, CALLBACK_REGISTER.size))
            return self.register_callback(type_, flags, address)
        if cmd == CALLBACKOP_unregister:
            type_, _unused = CALLBACK_UNREGISTER.unpack(
                copy_from_guest(self.cpu, arg, CALLBACK_UNREGISTER.size))
            if type_ == CallbackType.CALLBACKTYPE_nmi:
                self.callbacks.pop(type_, None)
                return 0
            # Xen: the others cannot be unregistered
            return -XenErrno.XEN_EINVAL if type_ in _REGISTRABLE else -XenErrno.XEN_ENOSYS
        return -XenErrno.XEN_ENOSYS

    def set_callbacks(self, event: int, failsafe: int, syscall: int, *_: int) -> int:
        """``do_set_callbacks``: the three at once; like Xen, always 0."""
        self.register_callback(CallbackType.CALLBACKTYPE_event, 0, event)
        self.register_callback(CallbackType.CALLBACKTYPE_failsafe, 0, failsafe)
        self.register_callback(CallbackType.CALLBACKTYPE_syscall, 0, syscall)
        return 0

    def sched_op(self, cmd: int, arg: int, *_: int) -> int:
        if cmd == SchedOp.SCHEDOP_yield:
            # Xen gives the pCPU to another runnable vCPU; here the host
            # scheduler is the vCPU scheduler, so give it the CPU. A guest
            # polling with yield (PV GRUB at its prompt) still stays runnable
            # and busy, as on Xen.
            self.yields += 1
            os.sched_yield()
            return 0
        if cmd == SchedOp.SCHEDOP_block:
            return self.events.sched_block()  # the loop then waits (events.block)
        if cmd == SchedOp.SCHEDOP_poll:
            return self.events.sched_poll(arg)
        if cmd == SchedOp.SCHEDOP_shutdown:
            (reason,) = struct.unpack("<I", copy_from_guest(self.cpu, arg, 4))
            if reason > max(ShutdownReason):
                return -XenErrno.XEN_EINVAL
            raise Shutdown(reason)
        return -XenErrno.XEN_ENOSYS

    def iret(self, *_: int) -> None:
        """``HYPERVISOR_iret`` (never returns to the stub); a bad frame crashes."""
        try:
            traps.iret(self.cpu, lambda va, n: copy_from_guest(self.cpu, va, n))
        except GuestFault as e:
            raise traps.BadFrame(f"iret frame unreadable: {e}") from None

    def set_timer_op(self, timeout: int, *_: int) -> int:
        """``do_set_timer_op`` (x86-64: one 64-bit argument)."""
        return self.events.set_timer_op(timeout)

    def vcpu_op(self, cmd: int, vcpuid: int, arg: int, *_: int) -> int:
        """``do_vcpu_op``: a domain of several vCPUs serves it in :mod:`.smp`;
        with one, only this vCPU exists (-ENOENT for others)."""
        cmd, vcpuid = cmd & 0xFFFF_FFFF, vcpuid & 0xFFFF_FFFF
        if self.smp is not None:
            return self.smp.vcpu_op(self, cmd, vcpuid, arg)
        if vcpuid != self.cpu.vcpu_id:
            return -XenErrno.XEN_ENOENT
        if cmd == VcpuOp.VCPUOP_down:  # the last vCPU going down: domain_shutdown(poweroff)
            raise Shutdown(ShutdownReason.SHUTDOWN_poweroff)
        return self.events.vcpu_op(cmd, arg)

    def update_va_mapping(self, va: int, val: int, flags: int, *_: int) -> int:
        return self.mmu.update_va_mapping(va, val, flags, self._mm_copy_in)

    def mmu_update(self, reqs: int, count: int, done: int, foreigndom: int, *_: int) -> int:
        return self.mmu.mmu_update(reqs, count & 0xFFFF_FFFF, done, foreigndom & 0xFFFF_FFFF,
                                   self._mm_copy_in, self._mm_copy_out)

    def mmuext_op(self, uops: int, count: int, done: int, foreigndom: int, *_: int) -> int:
        return self.mmu.mmuext_op(uops, count & 0xFFFF_FFFF, done, foreigndom & 0xFFFF_FFFF,
                                  self._mm_copy_in, self._mm_copy_out)

    def _mm_copy_in(self, va: int, n: int) -> bytes:
        try:
            return copy_from_guest(self.cpu, va, n)
        except GuestFault as e:
            raise MmuError(XenErrno.XEN_EFAULT, str(e)) from None

    def _mm_copy_out(self, va: int, data: bytes) -> None:
        try:
            self.copy_to_guest(va, data)
        except GuestFault:
            pass  # Xen ignores a failed write of the done count

    def multicall(self, calls: int, nr_calls: int, *_: int) -> int:
        return multicall.run(self, calls, nr_calls & 0xFFFF_FFFF)

    def physdev_op(self, cmd: int, arg: int, *_: int) -> int:
        return physdev.physdev_op(self.physdev, cmd & 0xFFFF_FFFF, arg,
                                  lambda va, n: copy_from_guest(self.cpu, va, n))

    def call(self, nr: int, args: list[int]) -> int | None:
        """One hypercall by number, as :meth:`dispatch` serves it (for multicall)."""
        handler = _TABLE.get(nr)
        try:
            if handler is not None:
                return handler(self, *args)
            if nr in self.forward:
                return self.forward[nr](nr, args)
        except GuestFault:
            return -XenErrno.XEN_EFAULT
        return -XenErrno.XEN_ENOSYS

    def copy_in(self, va: int, length: int) -> bytes:
        return copy_from_guest(self.cpu, va, length)

    def copy_to_guest(self, va: int, data: bytes) -> None:
        try:
            gpa = paging.walk(self.cpu.mem.read_u64, self.cpu.cr3, va, write=True)
            if (gpa & (PAGE_SIZE - 1)) + len(data) > PAGE_SIZE:
                raise GuestFault("copy_to_guest crosses a page")
            self.cpu.mem.write(gpa, data)
        except (paging.PageFault, IndexError) as e:
            raise GuestFault(str(e)) from None


_TABLE: dict[int, Callable[..., int]] = {
    Hypercall.console_io: VcpuHypercalls.console_io,
    Hypercall.xen_version: VcpuHypercalls.xen_version_op,
    Hypercall.vm_assist: VcpuHypercalls.vm_assist_op,
    Hypercall.set_trap_table: VcpuHypercalls.set_trap_table,
    Hypercall.sched_op: VcpuHypercalls.sched_op,
    Hypercall.update_va_mapping: VcpuHypercalls.update_va_mapping,
    Hypercall.iret: VcpuHypercalls.iret,
    Hypercall.mmu_update: VcpuHypercalls.mmu_update,
    Hypercall.callback_op: VcpuHypercalls.callback_op,
    Hypercall.set_callbacks: VcpuHypercalls.set_callbacks,
    Hypercall.mmuext_op: VcpuHypercalls.mmuext_op,
    Hypercall.multicall: VcpuHypercalls.multicall,
    Hypercall.physdev_op: VcpuHypercalls.physdev_op,
    Hypercall.set_timer_op: VcpuHypercalls.set_timer_op,
    Hypercall.vcpu_op: VcpuHypercalls.vcpu_op,
    Hypercall.stack_switch: segments.stack_switch,
    Hypercall.set_segment_base: segments.set_segment_base,
    Hypercall.set_gdt: segments.set_gdt,
    Hypercall.update_descriptor: segments.update_descriptor,
    Hypercall.domctl: lambda hc, va, *_: privops.domctl(hc.copy_in, va),
    Hypercall.sysctl: lambda hc, va, *_: privops.sysctl(hc.copy_in, va),
    Hypercall.platform_op: lambda hc, va, *_: privops.platform_op(hc.copy_in, va),
}

_REGISTRABLE = frozenset({CallbackType.CALLBACKTYPE_event, CallbackType.CALLBACKTYPE_failsafe,
                          CallbackType.CALLBACKTYPE_syscall, CallbackType.CALLBACKTYPE_syscall32,
                          CallbackType.CALLBACKTYPE_sysenter, CallbackType.CALLBACKTYPE_nmi})

assert _errno.ENOSYS == XenErrno.XEN_ENOSYS
