"""SMP PV guests under ``xl create`` (``vcpus = 2``), real daemons.

The kernel (tests/pv/kernels/smp.S) brings vCPU 1 up with VCPUOP_initialise
+ VCPUOP_up (hypervisord/vcpu/smp.py), checks Xen's refusals itself
(``smp FAIL <letter>`` names the check), and the two vCPUs talk through
IPIs (EVTCHNOP_bind_ipi), a per-vCPU VIRQ_TIMER and, with cmdline "b", a
port dom0 notifies after the guest moved it to vCPU 1 (EVTCHNOP_bind_vcpu).
Each vCPU is a thread ``vcpuN`` of the guest's process: ``xl vcpu-list``
shows it with its own state and time, ``xl vcpu-pin`` pins that thread.
"""

from __future__ import annotations

import os
import re
import struct

import pytest
from unicorn import x86_const as X

from hypervisord.public import arch_x86
from hypervisord.public.callback import CALLBACKF_mask_events, CallbackType
from hypervisord.public.errno import XenErrno
from hypervisord.public.event_channel import EvtchnOp
from hypervisord.public.vcpu import VcpuOp
from hypervisord.public.xen import (VCPU_INFO_EVTCHN_UPCALL_PENDING_OFF, Hypercall,
                                    vcpu_info_offset)
from hypervisord.vcpu import smp
from hypervisord.vcpu.hypercalls import VcpuHypercalls
from tests.pv.test_vcpu import Guest
from tests.pv.test_xl_pv import launcher_log, write_pv
from tests.pv.test_xl_pv_events import _bind_and_notify
from tests.toolstack.stack import stack  # noqa: F401 (fixture)
from tests.toolstack.test_xl_sched import fields, vcpu_rows
from toolstack import vcpus as vc

pytestmark = pytest.mark.timeout(60)

SMP = "vcpus = 2\n"


def _shut_down(stack, name: str) -> str:
    stack.wait(lambda: f"({name}) shut down, reason" in launcher_log(stack), "the shutdown")
    return stack.guest_log(name)


def test_vcpu1_comes_up_sends_an_ipi_and_goes_down(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "smp", "smp", SMP)))
    log = _shut_down(stack, "smp")
    assert ") smp ok" in log and "FAIL" not in log, log
    assert ") vcpu1 up\n" in log and ") vcpu1 up again" in log, log
    assert "(smp) shut down, reason poweroff" in launcher_log(stack)
    stack.wait(lambda: stack.domids() == [0], "the domain to go")


def test_vcpu0_registers_vcpu1s_vcpu_info_and_vcpu1s_events_arrive_there(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "rv", "smp", SMP + 'cmdline = "r"\n')))
    log = _shut_down(stack, "rv")
    assert ") smp ok" in log and "FAIL" not in log, log


def test_a_shutdown_from_vcpu1_ends_the_domain_while_vcpu0_blocks(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "sd", "smp", SMP + 'cmdline = "s"\n')))
    log = _shut_down(stack, "sd")
    assert ") vcpu1 up" in log and "FAIL" not in log and ") smp ok" not in log, log
    assert "(sd) shut down, reason poweroff" in launcher_log(stack)
    stack.wait(lambda: stack.domids() == [0], "the domain to go")


def test_one_vcpu_guests_still_refuse_vcpu1(stack, tmp_path):
    """Without ``vcpus``: max_vcpus 1, vCPU 1 does not exist (-ENOENT)."""
    stack.xl_ok("create", str(write_pv(tmp_path, "one", "smp")))
    log = _shut_down(stack, "one")
    assert ") smp FAIL B" in log, log  # bind_ipi(vcpu 1): -ENOENT, not 0


def test_a_port_moved_to_vcpu1_wakes_vcpu1(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "mv", "smp", SMP + 'cmdline = "b"\n')))
    stack.wait(lambda: re.search(r"upcall port \d+", stack.guest_log("mv")), "the port")
    port = int(re.search(r"upcall port (\d+)", stack.guest_log("mv")).group(1))
    xc = stack.ts.xc
    _, r = xc.call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_bind_interdomain,
                   remote_dom=stack.domid_of("mv"), remote_port=port)
    _, st = xc.call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_status,
                    dom=stack.domid_of("mv"), port=port)
    assert int(st["vcpu"]) == 1  # EVTCHNOP_bind_vcpu reached hypervisord
    xc.call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_send, port=int(r["local_port"]))
    log = _shut_down(stack, "mv")
    assert ") vcpu1 got the moved port" in log and ") smp ok" in log, log


def test_ipi_round_trips_between_two_blocked_vcpus(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "pp", "smp", SMP + 'cmdline = "p"\n')))
    log = _shut_down(stack, "pp")
    assert ") smp ok" in log and "FAIL" not in log, log
    ns = int(re.search(r"ipi round trip ns (\d+)", log).group(1))
    print(f"IPI round trip vCPU 0 -> 1 -> 0 (both blocked between): {ns / 1000:.0f} us")
    assert 0 < ns < 50_000_000  # 1000 of them within the test's time


def test_a_one_cpu_kernel_under_vcpus_2_gets_dom0s_events_and_its_timer(stack, tmp_path):
    """vCPU 0 alone in a domain of 2: dom0's notifications (the doorbell)
    and VIRQ_TIMER (the router) reach it as with one vCPU."""
    stack.xl_ok("create", str(write_pv(tmp_path, "u2", "upcall", SMP + 'cmdline = "3"\n')))
    _bind_and_notify(stack, "u2", 3)
    assert "INFO 2 vCPUs (vCPU 0 up)" in stack.guest_log("u2")  # the SMP path ran it
    stack.xl_ok("create", str(write_pv(tmp_path, "t2", "timer", SMP)))
    log = _shut_down(stack, "t2")
    assert log.count(") tick") in (4, 5) and ") timer ok" in log, log
    assert "(t2) shut down, reason poweroff" in launcher_log(stack)


def test_eight_vcpus_come_up_within_the_guests_limits(stack, tmp_path):
    """vcpus = 8: eight engines and threads in a confined guest process."""
    stack.xl_ok("create", str(write_pv(tmp_path, "v8", "smp",
                                       'vcpus = 8\ncmdline = "n"\n')))
    stack.wait(lambda: ") vcpus up 8" in stack.guest_log("v8")
               or "(v8) shut down" in launcher_log(stack), "every vCPU up", timeout=30)
    assert ") vcpus up 8" in stack.guest_log("v8"), stack.guest_log("v8")
    rows = vcpu_rows(stack, "v8")
    assert [fields(r)[2] for r in rows] == [str(v) for v in range(8)]
    assert all(fields(r)[3] != "-" for r in rows), rows  # all online, each its thread
    stack.xl_ok("destroy", "v8")
    stack.wait(lambda: stack.domids() == [0], "the domain to go")


def _waiting(stack, tmp_path, name: str) -> tuple[int, int]:
    stack.xl_ok("create", str(write_pv(tmp_path, name, "smp", SMP + 'cmdline = "w"\n')))
    stack.wait(lambda: ") vcpu1 spinning" in stack.guest_log(name)
               and ") smp waiting" in stack.guest_log(name), "both vCPUs")
    domid = stack.domid_of(name)
    return domid, stack.launcher_guests()[domid]


def test_vcpu_list_shows_two_vcpus_in_their_own_threads(stack, tmp_path):
    domid, pid = _waiting(stack, tmp_path, "vl")
    threads = vc.vcpu_threads(pid, 2)
    assert set(threads) == {0, 1} and threads[0] != threads[1]
    assert pid not in threads.values()  # each vCPU has a thread of its own
    assert all(vc.thread_name(pid, t) == f"vcpu{v}" for v, t in threads.items())
    rows = vcpu_rows(stack, "vl")
    assert [fields(r)[:3] for r in rows] == [["vl", str(domid), "0"], ["vl", str(domid), "1"]]
    # vCPU 0 blocks (SCHEDOP_block), vCPU 1 spins: their states and times differ
    stack.wait(lambda: fields(vcpu_rows(stack, "vl")[1])[4] == "r--", "vCPU 1 running")
    stack.wait(lambda: fields(vcpu_rows(stack, "vl")[0])[4] == "-b-", "vCPU 0 blocked")
    t1 = float(fields(vcpu_rows(stack, "vl")[1])[5])
    stack.wait(lambda: float(fields(vcpu_rows(stack, "vl")[1])[5]) >= t1 + 0.2,
               "vCPU 1's time to grow", timeout=10)
    assert float(fields(vcpu_rows(stack, "vl")[0])[5]) < t1 + 0.2

    def list_state() -> str:
        row = next(r for r in stack.xl_ok("list").out.splitlines() if r.startswith("vl "))
        return row.split()[4]
    # the domain runs while one of its vCPUs does (its main thread only waits)
    stack.wait(lambda: list_state() == "r-----", "xl list's r")
    stack.xl_ok("destroy", "vl")
    stack.wait(lambda: stack.domids() == [0], "the domain to go")


def test_vcpu_pin_of_vcpu1_pins_its_thread_only(stack, tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    domid, pid = _waiting(stack, tmp_path, "vp")
    threads = vc.vcpu_threads(pid, 2)
    before = os.sched_getaffinity(threads[0])
    stack.xl_ok("vcpu-pin", "vp", "1", str(cpus[1]))
    assert os.sched_getaffinity(threads[1]) == {cpus[1]}
    assert os.sched_getaffinity(threads[0]) == before
    stack.wait(lambda: fields(vcpu_rows(stack, "vp")[1])[3] == str(cpus[1]), "the move")
    rows = vcpu_rows(stack, "vp")
    assert fields(rows[1])[6] == str(cpus[1]) and fields(rows[0])[6] != str(cpus[1])
    stack.xl_ok("destroy", "vp")
    stack.wait(lambda: stack.domids() == [0], "the domain to go")


# -- VCPUOP_initialise in process: arch_set_info_guest's checks, field by field -----------

def _context(**f) -> bytes:
    """A 64-bit ``struct vcpu_guest_context`` (arch-x86/xen-x86_64.h) from field values."""
    off = arch_x86.VCPU_GUEST_CONTEXT_OFFSETS
    raw = bytearray(arch_x86.VCPU_GUEST_CONTEXT.size)
    regs = {n: 0 for n in arch_x86.CPU_USER_REGS_FIELDS}
    regs.update(f.pop("regs", {}))
    raw[off["user_regs"]:off["user_regs"] + arch_x86.CPU_USER_REGS.size] = \
        arch_x86.CPU_USER_REGS.pack(*(regs[n] for n in arch_x86.CPU_USER_REGS_FIELDS))
    for vector, (flags, cs, address) in f.pop("traps", {}).items():
        arch_x86.TRAP_INFO.pack_into(raw, off["trap_ctxt"] + 16 * vector, vector, flags, cs,
                                     address)
    for name, base in (("ctrlreg", off["ctrlreg"]), ("debugreg", off["debugreg"]),
                       ("gdt_frames", off["gdt_frames"])):
        for i, v in f.pop(name, {}).items():
            struct.pack_into("<Q", raw, base + 8 * i, v)
    for name, v in f.items():
        struct.pack_into("<Q", raw, off[name], v)
    return bytes(raw)


class _Smp:
    """The smp kernel's memory and vCPU 0, in this process (no daemons): a
    PvDomain of 2 vCPUs whose VCPUOP_initialise is called directly."""

    def __init__(self, tmp_path) -> None:
        self.g = Guest("smp", tmp_path)  # its own VCpu is not used: PvDomain boots vCPU 0
        self.console: list[bytes] = []

        def make_hc(cpu, first_mmu, waker, dom):
            return VcpuHypercalls(cpu, 1, self.console.append, smp=dom, first_mmu=first_mmu,
                                  waker=waker)

        self.dom = smp.PvDomain(1, self.g.mem, 2, make_hc)
        self.v0 = self.dom.boot(self.g.image.boot, None)
        self.v1 = self.dom.vcpu(1, create=True)
        self.l4 = self.g.image.boot.cr3
        self.good = dict(flags=arch_x86.VGCF_in_kernel,
                         regs={"rip": self.g.symbols["ap_entry"], "cs": 0xE033, "ss": 0xE02B,
                               "rsp": self.g.symbols["ap_stack_top"], "rflags": 0x200},
                         kernel_ss=0xE02B, kernel_sp=self.g.symbols["ap_stack_top"],
                         ctrlreg={3: self.l4})

    def init(self, **changes) -> int:
        f = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.good.items()}
        for k, v in changes.items():
            if isinstance(v, dict) and isinstance(f.get(k), dict):
                f[k].update(v)
            else:
                f[k] = v
        return self.dom.initialise(self.v1, smp.GuestContext.unpack(_context(**f)))


@pytest.fixture
def smp_dom(tmp_path):
    d = _Smp(tmp_path)
    yield d
    for st in d.dom.vcpus:
        st.hc.events.close()


EINVAL = -XenErrno.XEN_EINVAL
NONCANON = 0x0000_8000_0000_0000
XEN_HOLE = arch_x86.HYPERVISOR_VIRT_START + 0x1000


@pytest.mark.parametrize("change", [
    {"debugreg": {7: 1 << 32}},                       # dr6/dr7 wider than 32 bits
    {"debugreg": {0: XEN_HOLE}},                      # breakpoint_addr_ok
    {"regs": {"rip": NONCANON}},
    {"regs": {"rsp": NONCANON}},
    {"kernel_sp": NONCANON},
    {"fs_base": NONCANON},
    {"gs_base_user": NONCANON},
    {"event_callback_eip": NONCANON},
    {"syscall_callback_eip": NONCANON},
    {"traps": {14: (0, 0xE033, NONCANON)}},
    {"ldt_base": 0x1008, "ldt_ents": 1},              # not page aligned
    {"ldt_base": XEN_HOLE},                           # __addr_ok, even with no entries
    {"ldt_ents": 8193},
    {"gdt_ents": 7169},                               # > FIRST_RESERVED_GDT_ENTRY
    {"flags": 0},                                     # user mode, no user L4
    {"ctrlreg": {3: 0x3fff0000 << 12}},               # not the domain's frame
    {"regs": {"cs": 0x10}},                           # no such GDT entry
    {"regs": {"ss": 0xE033}},                         # a code segment as the stack
    {"regs": {"ds": 0x18}},
], ids=repr)
def test_initialise_refuses_a_bad_context_and_changes_nothing(smp_dom, change) -> None:
    d = smp_dom
    count = d.v0.hc.mmu.types.count_of(d.l4 >> 12)
    assert d.init(**change) == EINVAL
    assert d.v1.initialised is False and d.v1.hc.mmu.base == 0
    assert d.v0.hc.mmu.types.count_of(d.l4 >> 12) == count  # no reference kept
    assert d.init() == 0  # the good one still goes in


def test_initialise_with_a_user_l4_that_is_no_table_drops_the_kernel_one(smp_dom) -> None:
    d = smp_dom
    data = d.g.symbols["ap_stack"] - d.g.image.notes.virt_base  # a writable data page
    count = d.v0.hc.mmu.types.count_of(d.l4 >> 12)
    assert d.init(ctrlreg={1: data}) == EINVAL
    assert d.v0.hc.mmu.types.count_of(d.l4 >> 12) == count


def test_initialise_enters_xens_state(smp_dom) -> None:
    d = smp_dom
    count = d.v0.hc.mmu.types.count_of(d.l4 >> 12)
    rc = d.init(flags=arch_x86.VGCF_failsafe_disables_events,  # and user mode:
                ctrlreg={1: d.l4}, regs={"rbx": 0x1234, "r15": 0x5678, "rsi": 7, "rflags":
                                         0x3000 | 0x200 | 0x1},
                traps={14: (0, 0xE030, 0xFFFFFFFF80001000)},  # cs RPL 0: fixed to 3
                failsafe_callback_eip=0xFFFFFFFF80002000, event_callback_eip=0xFFFFFFFF80003000,
                kernel_ss=0xE028, fs_base=0x7000, gs_base_kernel=0x8000, gs_base_user=0x9000)
    assert rc == 0 and d.v1.initialised
    cpu, hc = d.v1.cpu, d.v1.hc
    assert d.v0.hc.mmu.types.count_of(d.l4 >> 12) == count + 2  # CR3 and user CR3
    assert [cpu.reg(r) for r in ("rbx", "r15", "rsi")] == [0x1234, 0x5678, 7]
    assert cpu.reg("rflags") & 0x3201 == 0x201  # IOPL virtualised, IF on
    assert cpu.cpl == 3 and cpu.reg("rip") == d.g.symbols["ap_entry"]
    assert hc.trap_table == {14: (0, 0xE033, 0xFFFFFFFF80001000)}
    assert hc.callbacks[CallbackType.CALLBACKTYPE_failsafe] == (0xFFFFFFFF80002000,
                                                                CALLBACKF_mask_events)
    assert hc.callbacks[CallbackType.CALLBACKTYPE_event][0] == 0xFFFFFFFF80003000
    assert CallbackType.CALLBACKTYPE_syscall not in hc.callbacks
    assert cpu.kernel_ss == 0xE02B and cpu.kernel_mode is False  # !VGCF_in_kernel
    assert cpu.cr3 == d.l4 and cpu.kernel_cr3 == d.l4
    # user mode: the user GS base live, the kernel's in the shadow
    assert cpu.uc.reg_read(X.UC_X86_REG_GS_BASE) == 0x9000 and cpu.gs_base_shadow == 0x8000
    assert cpu.uc.reg_read(X.UC_X86_REG_FS_BASE) == 0x7000
    assert d.dom.vcpu_op(d.v0.hc, VcpuOp.VCPUOP_is_up, 1, 0) == 0


def test_initialise_loads_the_guests_gdt_and_its_selectors(smp_dom) -> None:
    """Linux's way: its own GDT (gdt_frames) and CS/SS from it, RPL/DPL made 3."""
    d = smp_dom
    page = d.g.symbols["vipage"] - d.g.image.notes.virt_base
    code64_dpl0, data_dpl0 = 0x00AF9A000000FFFF, 0x00CF92000000FFFF
    d.g.mem.write(page + 16, struct.pack("<QQ", code64_dpl0, data_dpl0))
    assert d.init(regs={"cs": 0x10, "ss": 0x18}, gdt_ents=4,
                  gdt_frames={0: page >> 12}) == 0
    cpu = d.v1.cpu
    assert cpu.gdt_frames == (page >> 12,) and cpu.gdt_ents == 4
    assert cpu.seg(X.UC_X86_REG_CS) == 0x13 and cpu.seg(X.UC_X86_REG_SS) == 0x1B
    dpl3 = 3 << 45
    assert struct.unpack("<QQ", d.g.mem.read(page + 16, 16)) == (code64_dpl0 | dpl3,
                                                                 data_dpl0 | dpl3)


def test_vcpus_past_the_legacy_32_cannot_come_up(tmp_path) -> None:
    d = _Smp(tmp_path)
    d.dom.max_vcpus, d.dom.vcpus = 40, d.dom.vcpus + [None] * 38
    op = lambda cmd, v: d.dom.vcpu_op(d.v0.hc, cmd, v, 0)  # noqa: E731
    assert op(VcpuOp.VCPUOP_initialise, 35) == EINVAL  # Xen: the dummy vcpu_info
    assert op(VcpuOp.VCPUOP_up, 35) == EINVAL and op(VcpuOp.VCPUOP_is_up, 35) == 0
    assert op(VcpuOp.VCPUOP_is_up, 40) == -XenErrno.XEN_ENOENT
    for st in d.dom.vcpus:
        if st is not None:
            st.hc.events.close()


def test_the_doorbell_wakes_the_vcpu_whose_slot_has_the_upcall(smp_dom) -> None:
    """The stream is the domain's; a notification wakes the vCPU it is for
    (its shared_info slot's evtchn_upcall_pending), not every vCPU."""
    d = smp_dom
    assert d.init() == 0
    d.v1.down = False  # as VCPUOP_up, without its thread
    si = d.v0.hc.events.shared_info
    pending = vcpu_info_offset(1) + VCPU_INFO_EVTCHN_UPCALL_PENDING_OFF
    d.dom.stream.closed = False  # as if hypervisord's stream were there (fd None here)
    for st in (d.v0, d.v1):
        st.hc.events.waker.arm()
    si[pending] = 1
    d.dom.doorbell()
    assert d.v1.hc.events.waker.wait(0) and not d.v0.hc.events.waker.wait(0)
    si[pending] = 0
    d.v1.hc.events.waker.arm()
    d.dom.doorbell()  # nothing pending anywhere: nobody
    assert not d.v1.hc.events.waker.wait(0) and not d.v0.hc.events.waker.wait(0)
    d.v0.hc.events.poll_ports = [3]  # a poller is woken to look at its ports
    d.dom.doorbell()
    assert d.v0.hc.events.waker.wait(0) and not d.v1.hc.events.waker.wait(0)
    d.dom.stream.closed = True  # hypervisord went away: every vCPU learns it
    d.dom.doorbell()
    assert d.v1.hc.events.waker.wait(0) and d.v1.hc.events.waker.closed
