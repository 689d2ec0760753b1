"""A PV domain of several vCPUs: VCPUOP_initialise/up/down/is_up, one host thread each.

A domain created with ``vcpus = N`` (``max_vcpus``, XEN_DOMCTL_max_vcpus;
the guest process asks hypervisord: ``PvxenOp.max_vcpus``) has vCPUs 0 ..
N-1 (Xen: ``domain_vcpu``; a vcpuid beyond is -ENOENT). vCPU 0 is
initialised by the domain builder and up at boot; the others are down and
uninitialised until the guest brings them up, as a PV Linux does in
``cpu_initialize_context``: ``VCPUOP_initialise`` with a ``struct
vcpu_guest_context`` (64-bit layout, ``hypervisord/public/arch_x86.py``),
then ``VCPUOP_up`` (``xen/common/domain.c``, ``common_vcpu_op``,
``default_initialise_vcpu``; ``xen/arch/x86/domain.c``,
``arch_set_info_guest``).

**Per vCPU** (Xen's ``struct vcpu``): a Unicorn engine of its own on the
one mapping of the domain's memory (``mem_map_ptr``: no copies), with its
registers, CR3 and user CR3, GDT (the hypervisor-private frames of each
engine, :mod:`.gdt`), LDT, kernel stack (``stack_switch``), segment bases,
trap table, callbacks, timers, runstate and ``vcpu_info`` (its
shared_info slot N, or the frame VCPUOP_register_vcpu_info named), all in
its :class:`~.hypercalls.VcpuHypercalls`. **Per domain** (``struct
domain``): shared_info, the page types and type counts, M2P, released and
grant frames (one :class:`~.pagetype.PageTypes` that every vCPU's
:class:`~.mmu.Mmu` shares), the hypercall connection, the console.

**Threads**: each vCPU that is up runs :func:`.loop.run` in a host thread
of the guest process named ``vcpuN`` (``prctl(PR_SET_NAME)``), which is how
``xl vcpu-list`` finds it (``toolstack/vcpus.py``: its own Time(s), CPU,
State, affinity) and what ``xl vcpu-pin`` pins; a vCPU that is down has no
thread (``xl`` shows it offline; its affinity is kept for its next
thread, and a new thread starts with the process's, not its creator's).
The main thread waits for the domain's end and makes the shutdown call.
The domain's **lock** (Xen holds the domain's lock, or the page's, where
we hold this one) is taken by a vCPU thread while it is between slices (every hypercall, upcall, trap bounce:
page-type counting, the connection, another vCPU's state), and released
while Unicorn runs the guest (``emu_start`` drops the GIL) or the vCPU is
blocked: vCPUs run guest code in parallel, and serve hypercalls one at a
time.

**Events**: hypervisord marks a port pending for the vCPU it is bound to
(``notify_vcpu_id``: EVTCHNOP_bind_vcpu, bind_ipi, a per-vCPU VIRQ), in
that vCPU's shared_info slot, then rings the process's one event-channel
stream. Its reader (:class:`~.waker.EventWaker`) calls
:meth:`PvDomain.doorbell`, which wakes only the vCPUs that now have an
upcall pending or are polling (each has a :class:`PeerWaker`); each vCPU delivers
its own upcalls. ``VIRQ_TIMER`` is per vCPU (its timers fire on its own
thread); the forwarder's report of a bind_virq goes to the vCPU named
(:class:`_EventRouter`). SCHEDOP_block waits on the blocking vCPU only; a
shutdown from any vCPU stops them all; the last vCPU going down powers the
domain off (Xen's ``VCPUOP_down``).

Deviations (documented subset): the FPU state of the context
(VGCF_i387_valid) is not loaded (a new vCPU starts with a reset FPU), nor
are debug registers (they are checked as Xen does); vCPUs 32 and up
(beyond shared_info's ``vcpu_info`` array) cannot be brought up
(VCPUOP_initialise is -EINVAL, Xen's answer while their ``vcpu_info`` is the
dummy one, and registering one elsewhere is -ENOSYS); CS/SS must be Xen's
flat selectors or 64-bit code / writable data descriptors of the new GDT,
DS/ES/FS/GS null, flat or such data descriptors; VCPUOP_send_nmi is
-ENOSYS. A TLB flush reaches another vCPU before its next slice, not at
once (Xen waits for the flush IPI): that vCPU may run at most one more
slice (:data:`.cpu.SLICE_SECONDS`) on stale translations. Code written
through one engine is not invalidated in another's translation cache.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
import threading
from dataclasses import dataclass

from unicorn import x86_const as X

from hypervisord.public import arch_x86
from hypervisord.public.callback import CALLBACKF_mask_events, CallbackType
from hypervisord.public.errno import XenErrno
from hypervisord.public.sched import ShutdownReason
from hypervisord.public.vcpu import VcpuOp
from hypervisord.public.xen import VCPU_INFO_EVTCHN_UPCALL_PENDING_OFF, vcpu_info_offset

from . import gdt, loop, paging, segments, traps
from .cpu import BootState, VCpu
from .hypercalls import Shutdown, VcpuHypercalls, copy_from_guest
from .pagetype import PGT_l4_page_table, MmuError
from .waker import EventWaker

log = logging.getLogger("vcpu")

X86_EFLAGS_MBS, X86_EFLAGS_IF, X86_EFLAGS_IOPL = 0x2, 0x200, 0x3000
X86_EFLAGS_VM = 0x20000
X86_EFLAGS_ALL = 0x3F7FD5  # xen/arch/x86/include/asm/x86-defns.h
MAX_LDT_ENTS = 8192
THREAD_STACK = 4 << 20  # QEMU's translator runs on the vCPU thread's stack
_M_ARENA_MAX = -8  # malloc.h
_PR_SET_NAME = 15
_FIELDS = struct.Struct("<512sQ" + "15QIIQH2xB3xQQH6xH6xH6xH6xH6x" + "4096s" + "QQ" + "16QQ"
                        + "QQ" + "8Q8Q" + "QQQ" + "Q" + "QQQ")
assert _FIELDS.size == arch_x86.VCPU_GUEST_CONTEXT.size
_GPRS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
         "rax", "rcx", "rdx", "rsi", "rdi")


@dataclass
class GuestContext:
    """The fields of ``struct vcpu_guest_context`` that pvxen uses (copied once)."""

    flags: int
    gprs: dict[int | str, int]
    rip: int
    cs: int
    rflags: int
    rsp: int
    ss: int
    es: int
    ds: int
    fs: int
    gs: int
    trap_ctxt: bytes
    ldt_base: int
    ldt_ents: int
    gdt_frames: tuple[int, ...]
    gdt_ents: int
    kernel_ss: int
    kernel_sp: int
    ctrlreg: tuple[int, ...]
    debugreg: tuple[int, ...]
    event_callback_eip: int
    failsafe_callback_eip: int
    syscall_callback_eip: int
    vm_assist: int
    fs_base: int
    gs_base_kernel: int
    gs_base_user: int

    @classmethod
    def unpack(cls, raw: bytes) -> "GuestContext":
        v = _FIELDS.unpack(raw)
        _fpu, flags, *rest = v
        regs, rest = rest[:27], rest[27:]
        gprs = dict(zip(_GPRS, regs[:15]))
        rip, cs, _mask, rflags, rsp, ss, es, ds, fs, gs = regs[17:27]
        trap_ctxt, ldt_base, ldt_ents, *rest = rest
        gdt_frames, (gdt_ents, kernel_ss, kernel_sp), rest = rest[:16], rest[16:19], rest[19:]
        ctrlreg, debugreg, rest = rest[:8], rest[8:16], rest[16:]
        return cls(flags, gprs, rip, cs, rflags, rsp, ss, es, ds, fs, gs, trap_ctxt, ldt_base,
                   ldt_ents, tuple(gdt_frames), gdt_ents, kernel_ss, kernel_sp, tuple(ctrlreg),
                   tuple(debugreg), *rest)


def _fixup_selector(sel: int) -> int:
    """``__fixup_guest_selector`` for a 64-bit PV guest: RPL at least 3."""
    sel &= 0xFFFF
    return sel if sel & 3 >= 3 else (sel & ~3) | 3


def _addr_ok(addr: int) -> bool:
    """``__addr_ok`` (``asm/x86_64/uaccess.h``)."""
    return addr < (1 << 47) or addr >= arch_x86.HYPERVISOR_VIRT_END


class PeerWaker(EventWaker):
    """The waker of one vCPU of an SMP domain: no stream of its own, the
    domain's doorbell (:meth:`PvDomain.doorbell`) kicks it."""

    def __init__(self, stop_engine) -> None:
        super().__init__(None, stop_engine)
        self.closed = False  # the stream is the domain's; the doorbell passes its EOF on


class _EventRouter:
    """The forwarder's reports (bind_virq, bind_ipi, bind_vcpu, close, reset)
    to the vCPU they concern; it also keeps which port notifies which vCPU
    (0 unless bound elsewhere), so that each vCPU's selector repair
    (:meth:`.events.VcpuEvents.resync_selectors`) looks at its own ports only."""

    def __init__(self, dom: "PvDomain") -> None:
        self.dom = dom
        self.elsewhere: dict[int, int] = {}  # port -> its vCPU, when not vCPU 0

    def bound_virq(self, virq: int, vcpu: int, port: int) -> None:
        st = self.dom.vcpu(vcpu, create=True) \
            if 0 <= vcpu < min(self.dom.max_vcpus, arch_x86.XEN_LEGACY_MAX_VCPUS) else None
        if st is not None:
            st.hc.events.bound_virq(virq, vcpu, port)
            st.kick()
        self.port_vcpu(port, vcpu)

    def port_vcpu(self, port: int, vcpu: int) -> None:
        if vcpu:
            self.elsewhere[port] = vcpu
        else:
            self.elsewhere.pop(port, None)
        self._masks()

    def closed_port(self, port: int | None) -> None:
        for st in self.dom.vcpus:
            if st is not None:
                st.hc.events.closed_port(port)
        if port is None:
            self.elsewhere.clear()
        else:
            self.elsewhere.pop(port, None)
        self._masks()

    def _masks(self) -> None:
        others = 0
        for port in self.elsewhere:
            others |= 1 << port
        for st in self.dom.vcpus:
            if st is None:
                continue
            if st.vcpu_id == 0:
                st.hc.events.resync_ports = ~others
            else:
                mine = 0
                for port, v in self.elsewhere.items():
                    if v == st.vcpu_id:
                        mine |= 1 << port
                st.hc.events.resync_ports = mine


class VcpuState:
    """One vCPU of the domain: its engine and hypercall state, up/down, thread."""

    def __init__(self, vcpu_id: int, cpu: VCpu, hc: VcpuHypercalls) -> None:
        self.vcpu_id, self.cpu, self.hc = vcpu_id, cpu, hc
        self.initialised = False
        self.down = True
        self.thread: threading.Thread | None = None
        self.affinity: set[int] | None = None  # its thread's, while it has none

    def kick(self) -> None:
        """Cut the running slice short and wake the vCPU if blocked."""
        self.hc.events.waker.kick()


class PvDomain:
    """The vCPUs of one PV domain in its process (module doc).

    ``make_hc(cpu, first_mmu, waker, smp)`` builds a vCPU's hypercall table
    with its forwarders (``guest.run`` knows the connection); vCPU 0 is
    made by :meth:`boot`.
    """

    def __init__(self, domid: int, mem, max_vcpus: int, make_hc) -> None:
        self.domid, self.mem, self.max_vcpus = domid, mem, max_vcpus
        self.make_hc = make_hc
        self.lock = threading.RLock()
        self.vcpus: list[VcpuState | None] = [None] * max_vcpus
        self.reason: int | None = None
        self.done = threading.Event()
        self.events = _EventRouter(self)
        _thread_budget()

    # -- vCPUs -------------------------------------------------------------------------------
    def boot(self, boot: BootState, evtchn_fd: int | None) -> VcpuState:
        """vCPU 0 in the builder's state, initialised and up (its thread not started)."""
        cpu = VCpu(self.mem, 0)
        cpu.boot(boot)
        # the stream's reader is nobody's waker: it rings the doorbell, which
        # wakes the vCPUs concerned, vCPU 0 like any other
        self.stream = EventWaker(evtchn_fd, self.doorbell)
        hc = self.make_hc(cpu, None, PeerWaker(cpu.request_stop), self)
        st = self.vcpus[0] = VcpuState(0, cpu, hc)
        hc.events.guard = self.lock
        st.initialised, st.down = True, False
        return st

    def vcpu(self, vcpu_id: int, create: bool = False) -> VcpuState | None:
        """vCPU ``vcpu_id`` (< max_vcpus); made on first use (its engine is ~32 MiB)."""
        st = self.vcpus[vcpu_id]
        if st is None and create:
            cpu = VCpu(self.mem, vcpu_id)
            hc = self.make_hc(cpu, self.vcpus[0].hc.mmu, PeerWaker(cpu.request_stop), self)
            hc.vm_assist = self.vcpus[0].hc.vm_assist  # Xen: d->vm_assist
            hc.events.guard = self.lock
            st = self.vcpus[vcpu_id] = VcpuState(vcpu_id, cpu, hc)
            self.events._masks()
        return st

    def doorbell(self) -> None:
        """A notification on the stream (in its reader's thread): wake the
        vCPUs with an upcall pending in their shared_info slot, or polling."""
        closed = self.stream.closed
        for st in self.vcpus:
            if st is None or st.down:
                continue
            ev = st.hc.events
            if closed:
                ev.waker.closed = True  # hypervisord went away: nothing will wake it
            if closed or ev.poll_ports is not None \
                    or ev.shared_info[vcpu_info_offset(st.vcpu_id)
                                      + VCPU_INFO_EVTCHN_UPCALL_PENDING_OFF]:
                st.kick()

    # -- the threads --------------------------------------------------------------------------
    def start(self, st: VcpuState) -> None:
        """A thread for ``st`` (the caller holds the lock, or no thread runs yet)."""
        if st.thread is not None:
            return  # still leaving after a down: it sees the vCPU up again
        st.thread = threading.Thread(target=self._thread, args=(st,), name=f"vcpu{st.vcpu_id}",
                                     daemon=True)
        st.thread.start()

    def _thread(self, st: VcpuState) -> None:
        _set_thread_name(f"vcpu{st.vcpu_id}")
        # a new thread inherits its creator's affinity (another vCPU's, maybe
        # pinned): a vCPU's is its own, kept across down/up (xl vcpu-pin)
        _set_affinity(st.affinity if st.affinity is not None else _affinity(os.getpid()))
        while True:
            try:
                reason = loop.run(st.cpu, st.hc, lock=self.lock,
                                  stop=lambda: st.down or self.reason is not None)
            except Exception:  # noqa: BLE001 - our bug: the domain crashes, with the traceback
                log.exception("vCPU %d failed", st.vcpu_id)
                reason = ShutdownReason.SHUTDOWN_crash
            if reason is not None:
                self.finish(reason)
            with self.lock:
                if st.down or self.reason is not None:
                    st.affinity = _affinity(0)
                    st.thread = None
                    return
            # brought up again while we were leaving: go on

    def finish(self, reason: int) -> None:
        """SCHEDOP_shutdown (or a crash) on one vCPU: every vCPU stops."""
        with self.lock:
            if self.reason is None:
                self.reason = reason
        for st in self.vcpus:
            if st is not None:
                st.kick()
        self.done.set()

    def run(self) -> int:
        """Start vCPU 0; wait until the domain shuts down; its reason."""
        self.start(self.vcpus[0])
        self.done.wait()
        for st in self.vcpus:
            t = st.thread if st is not None else None
            if t is not None:
                t.join(timeout=5)
        return self.reason if self.reason is not None else ShutdownReason.SHUTDOWN_crash

    # -- vcpu_op -------------------------------------------------------------------------------
    def vcpu_op(self, hc: VcpuHypercalls, cmd: int, vcpuid: int, arg: int) -> int:
        """``do_vcpu_op`` for ``hc``'s vCPU on vCPU ``vcpuid`` (the caller holds the lock)."""
        if vcpuid >= self.max_vcpus:
            return -XenErrno.XEN_ENOENT
        me = hc.cpu.vcpu_id
        if cmd == VcpuOp.VCPUOP_is_up:
            st = self.vcpus[vcpuid]
            return int(st is not None and not st.down)
        if cmd == VcpuOp.VCPUOP_up:
            st = self.vcpus[vcpuid]
            if st is None or not st.initialised:
                return -XenErrno.XEN_EINVAL
            if st.down:
                st.down = False
                self.start(st)
            return 0
        if cmd == VcpuOp.VCPUOP_down:
            if not any(s is not None and not s.down and s.vcpu_id != vcpuid for s in self.vcpus):
                raise Shutdown(ShutdownReason.SHUTDOWN_poweroff)  # the last vCPU going down
            st = self.vcpus[vcpuid]
            if st is not None and not st.down:
                st.down = True  # our own: the loop ends after this call (synchronous)
                if vcpuid != me:
                    st.kick()  # another: asynchronous, as Xen's vcpu_sleep_nosync
            return 0
        if vcpuid >= arch_x86.XEN_LEGACY_MAX_VCPUS:
            # no vcpu_info slot in shared_info: Xen's dummy_vcpu_info until the
            # guest registers one, which pvxen cannot do yet (module doc)
            return -XenErrno.XEN_EINVAL if cmd == VcpuOp.VCPUOP_initialise \
                else -XenErrno.XEN_ENOSYS
        if cmd == VcpuOp.VCPUOP_initialise:
            st = self.vcpu(vcpuid, create=True)
            raw = copy_from_guest(hc.cpu, arg, arch_x86.VCPU_GUEST_CONTEXT.size)
            if st.initialised:
                return -XenErrno.XEN_EEXIST
            return self.initialise(st, GuestContext.unpack(raw))
        if cmd == VcpuOp.VCPUOP_send_nmi:
            return -XenErrno.XEN_ENOSYS  # module doc
        if vcpuid == me:
            return hc.events.vcpu_op(cmd, arg)
        if cmd in (VcpuOp.VCPUOP_set_singleshot_timer, VcpuOp.VCPUOP_stop_singleshot_timer):
            return -XenErrno.XEN_EINVAL  # Xen: "v != current"
        st = self.vcpu(vcpuid, create=True)
        rc = st.hc.events.vcpu_op(cmd, arg, lambda va, n: copy_from_guest(hc.cpu, va, n),
                                  hc.copy_to_guest)
        st.kick()  # its timers or vcpu_info may have changed: let it look again
        return rc

    # -- VCPUOP_initialise: arch_set_info_guest ------------------------------------------------
    def initialise(self, st: VcpuState, c: GuestContext) -> int:
        """Check every field first (nothing changes on a refusal), take the
        type references of the base pointers, then enter the state."""
        if c.debugreg[6] >> 32 or c.debugreg[7] >> 32:
            return -XenErrno.XEN_EINVAL
        if not all(_addr_ok(d) for d in c.debugreg[:4]):
            return -XenErrno.XEN_EINVAL  # breakpoint_addr_ok
        canon = paging.is_canonical
        if not all(canon(a) for a in (c.rip, c.rsp, c.kernel_sp, c.fs_base, c.gs_base_kernel,
                                      c.gs_base_user, c.event_callback_eip,
                                      c.syscall_callback_eip, c.failsafe_callback_eip)) \
                or (c.ldt_ents and not canon(c.ldt_base)):
            return -XenErrno.XEN_EINVAL
        cs, ss = _fixup_selector(c.cs), _fixup_selector(c.ss)
        kernel_ss = _fixup_selector(c.kernel_ss)
        traps_ = {}
        for i in range(256):
            _vec, flags, tcs, address = arch_x86.TRAP_INFO.unpack_from(c.trap_ctxt, 16 * i)
            if not canon(address):
                return -XenErrno.XEN_EINVAL
            if address:
                traps_[i] = (flags, _fixup_selector(tcs), address)
        if not _addr_ok(c.ldt_base) or c.ldt_base & (paging.PAGE_SIZE - 1) \
                or c.ldt_ents > MAX_LDT_ENTS:
            return -XenErrno.XEN_EINVAL
        nr_gdt_frames = -(-c.gdt_ents // 512)
        if nr_gdt_frames > len(c.gdt_frames):
            return -XenErrno.XEN_EINVAL
        in_kernel = bool(c.flags & arch_x86.VGCF_in_kernel)
        if not in_kernel and not c.ctrlreg[1]:
            return -XenErrno.XEN_EINVAL
        fixed = segments.check_gdt(self.mem, c.gdt_frames[:nr_gdt_frames], c.gdt_ents)
        if fixed is None:
            return -XenErrno.XEN_EINVAL
        descs = [d for _, ds in fixed for d in ds][:c.gdt_ents]
        if not (_selector_ok(cs, descs, gdt.code64_desc, arch_x86.FLAT_KERNEL_CS64)
                and _selector_ok(ss, descs, gdt.stack_desc, arch_x86.FLAT_KERNEL_SS64)
                and all(s == 0 or _selector_ok(s, descs, gdt.stack_desc,
                                               arch_x86.FLAT_KERNEL_SS64)
                        for s in (c.ds, c.es, c.fs, c.gs))):
            return -XenErrno.XEN_EINVAL
        # the base pointers (get_page_from_mfn + get_page_type(PGT_root_page_table))
        mmu = st.hc.mmu
        l4, user_l4 = c.ctrlreg[3] >> paging.PAGE_SHIFT, c.ctrlreg[1] >> paging.PAGE_SHIFT
        try:
            if not mmu.owns(l4) or (user_l4 and not mmu.owns(user_l4)):
                return -XenErrno.XEN_EINVAL
            mmu.types.get_type(l4, PGT_l4_page_table)
            if user_l4:
                try:
                    mmu.types.get_type(user_l4, PGT_l4_page_table)
                except MmuError:
                    mmu.types.put_type(l4)
                    raise
        except MmuError as e:
            return -e.errno
        self._enter(st, c, cs, ss, kernel_ss, traps_, fixed, l4, user_l4, in_kernel)
        st.initialised = True
        return 0

    def _enter(self, st: VcpuState, c: GuestContext, cs: int, ss: int, kernel_ss: int,
               traps_: dict, fixed: list, l4: int, user_l4: int, in_kernel: bool) -> None:
        cpu, hc = st.cpu, st.hc
        rflags = (c.rflags & X86_EFLAGS_ALL & ~(X86_EFLAGS_IOPL | X86_EFLAGS_VM)) \
            | X86_EFLAGS_MBS | X86_EFLAGS_IF
        cpu.boot(BootState(rip=c.rip, rsp=c.rsp, rsi=c.gprs["rsi"], cr3=l4 << paging.PAGE_SHIFT,
                           rflags=rflags))
        for name, value in c.gprs.items():
            if name != "rsi":
                cpu.set_reg(name, value)
        segments.load_gdt(cpu, fixed, c.gdt_ents)
        for reg, sel in ((X.UC_X86_REG_CS, cs), (X.UC_X86_REG_SS, ss)):
            gdt.load_selector(cpu, reg, sel)
        for reg, sel in ((X.UC_X86_REG_DS, c.ds), (X.UC_X86_REG_ES, c.es),
                         (X.UC_X86_REG_FS, c.fs), (X.UC_X86_REG_GS, c.gs)):
            if sel:
                cpu.uc.reg_write(reg, sel)
        cpu.uc.reg_write(X.UC_X86_REG_FS_BASE, c.fs_base)
        cpu.uc.reg_write(X.UC_X86_REG_GS_BASE, c.gs_base_kernel)
        cpu.gs_base_shadow = c.gs_base_user
        cpu.kernel_ss, cpu.kernel_sp = kernel_ss, c.kernel_sp
        mmu = hc.mmu
        mmu.base, mmu.user_base = l4, user_l4
        cpu.user_cr3 = user_l4 << paging.PAGE_SHIFT
        mmu.ldt = (c.ldt_base if c.ldt_ents else 0, c.ldt_ents)
        hc.trap_table.clear()
        hc.trap_table.update(traps_)
        for type_, address, mask in (
                (CallbackType.CALLBACKTYPE_event, c.event_callback_eip, True),
                (CallbackType.CALLBACKTYPE_failsafe, c.failsafe_callback_eip,
                 c.flags & arch_x86.VGCF_failsafe_disables_events),
                (CallbackType.CALLBACKTYPE_syscall, c.syscall_callback_eip,
                 c.flags & arch_x86.VGCF_syscall_disables_events)):
            if address:
                hc.callbacks[type_] = (address, CALLBACKF_mask_events if mask else 0)
            else:
                hc.callbacks.pop(type_, None)
        if not in_kernel:
            traps.toggle_guest_mode(cpu)  # TF_kernel_mode clear: start in guest user mode


def _selector_ok(sel: int, descs: list[int], check, flat: int) -> bool:
    """Xen's flat selector, or one of the new GDT's entries that passes ``check``."""
    if sel == flat:
        return True
    index = sel >> 3
    return not sel & 4 and index < len(descs) and check(descs[index])


def _thread_budget() -> None:
    """Two threads per vCPU (its loop, its slice ticker) within a confined
    guest's RLIMIT_AS (``toolstack/confine.py``: its memory + 256 MiB): a
    thread costs ~72 MiB of address space by default (measured: glibc's
    64 MiB malloc arena per thread, an 8 MiB stack), a vCPU's engine ~33 MiB
    (its translation buffer). So threads share glibc's arenas
    (``mallopt(M_ARENA_MAX)``; Python allocates small objects itself) and
    get :data:`THREAD_STACK`."""
    threading.stack_size(THREAD_STACK)
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_ARENA_MAX, 1)
    except (OSError, AttributeError) as e:  # not glibc: its own defaults
        log.warning("mallopt(M_ARENA_MAX): %s", e)


def _affinity(tid: int) -> set[int] | None:
    try:
        return os.sched_getaffinity(tid)
    except OSError:
        return None


def _set_affinity(cpus: set[int] | None) -> None:
    if cpus:
        try:
            os.sched_setaffinity(0, cpus)
        except OSError as e:  # CPUs gone meanwhile (or outside our cgroup's cpuset)
            log.warning("vCPU affinity %s: %s", sorted(cpus), e)


def _set_thread_name(name: str) -> None:
    """``prctl(PR_SET_NAME)``: the name ``xl vcpu-list`` looks for (toolstack/vcpus.py)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError) as e:  # no libc prctl: xl shows the vCPU offline
        log.warning("cannot name thread %s: %s", name, e)


__all__ = ["PvDomain", "GuestContext"]
