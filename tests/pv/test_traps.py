"""Traps of a 64-bit PV guest as Xen delivers them (hypervisord/vcpu/traps.py).

Kernels in tests/pv/kernels/ log what each handler got (record.inc: tag,
error code, frame rip/cs/rflags/rsp, the upcall mask in the handler, the
handler's rsp); the tests check the log against Xen's rules
(xen/arch/x86/x86_64/entry.S create_bounce_frame, xen/arch/x86/traps.c,
xen/arch/x86/pv/traps.c, iret.c, emul-inv-op.c).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest

from hypervisord.public import arch_x86
from hypervisord.public.sched import ShutdownReason
from hypervisord.public.xen import PAGE_SIZE, vcpu_info_offset
from hypervisord.vcpu import cpuid, traps
from hypervisord.vcpu.cpu import Exit, ExitKind
from hypervisord.vcpu.hypercalls import GuestFault
from hypervisord.vcpu.memory import SHARED_INFO_MFN
from tests.pv.test_vcpu import Guest

IF = 1 << 9
NO_EC = (1 << 64) - 1


@dataclass(frozen=True)
class Entry:
    tag: int
    ec: int
    rip: int
    cs_word: int
    rflags: int
    rsp: int
    mask: int
    handler_rsp: int

    @property
    def cs(self) -> int:
        return self.cs_word & 0xFFFF

    @property
    def saved_mask(self) -> int:
        return (self.cs_word >> 32) & 0xFF


def read_log(g: Guest) -> list[Entry]:
    vb = g.image.notes.virt_base
    n = g.mem.read_u64(g.symbols["nlog"] - vb)
    raw = g.mem.read(g.symbols["log"] - vb, 64 * n)
    return [Entry(*struct.unpack_from("<8Q", raw, 64 * i)) for i in range(n)]


def vcpu_info(g: Guest, off: int, n: int = 8) -> int:
    gpa = SHARED_INFO_MFN * PAGE_SIZE + vcpu_info_offset(0) + off
    return int.from_bytes(g.mem.read(gpa, n), "little")


@pytest.fixture
def traps_all(tmp_path):
    g = Guest("traps_all", tmp_path)
    assert g.run() == ShutdownReason.SHUTDOWN_poweroff, b"".join(g.console)
    return g, read_log(g)


def test_each_exception_reaches_its_handler_with_xens_frame(traps_all) -> None:
    g, log = traps_all
    s = g.symbols
    got = [(e.tag, e.ec, e.rip) for e in log]
    assert got == [
        (0, NO_EC, s["site_de"]),  # #DE: a fault, at the div
        (3, NO_EC, s["site_bp"] + 1),  # #BP: a trap, past the int3
        (0x80, NO_EC, s["site_int80"] + 2),  # int $0x80, DPL 3: past it
        (0x82, NO_EC, s["site_int82"] + 2),  # int $0x82, DPL 1: allowed in kernel mode
        (13, 0x81 << 3 | 2, s["site_int81"]),  # int $0x81, DPL 0: #GP(vector, IDT)
        (13, 0, s["site_hlt"]),  # a privileged instruction: #GP(0)
        (6, NO_EC, s["site_ud"]),  # plain ud2
        (14, 0, s["site_pf"]),  # kernel-mode #PF: PFEC_user clear
    ]
    for e in log:
        assert e.cs == arch_x86.FLAT_KERNEL_CS64 & ~3  # kernel context: RPL 0
        assert e.rflags & (3 << 12) == 0  # IOPL never shown
    # the frame is 16-byte aligned below the interrupted rsp
    assert all(e.handler_rsp < e.rsp for e in log)


def test_events_mask_follows_ti_set_if_and_iret(traps_all) -> None:
    g, log = traps_all
    for e in log:
        assert e.saved_mask == 0 and e.rflags & IF  # events were on when it trapped
    # only the TI_SET_IF entry (#PF) masks events in its handler
    assert [e.mask for e in log] == [0] * 7 + [1]
    assert vcpu_info(g, 1, 1) == 0  # iret with IF set unmasked them again
    assert vcpu_info(g, 16) == 0x10  # vcpu_info.arch.cr2


def test_forced_emulation_prefix_gives_xens_cpuid_view(traps_all) -> None:
    g, _ = traps_all
    vb = g.image.notes.virt_base
    a, b, c, d, c1, d1 = struct.unpack("<6I", g.mem.read(g.symbols["cpuid_out"] - vb, 24))
    assert a == 0x40000005
    assert struct.pack("<3I", b, c, d) == b"XenVMMXenVMM"
    assert c1 & cpuid.X86_FEATURE_HYPERVISOR
    _, _, nc, nd = cpuid.native_cpuid(1, 0)
    assert c1 == (nc & cpuid._PV_LEAF1_ECX) | cpuid.X86_FEATURE_HYPERVISOR
    assert d1 == nd & cpuid._PV_LEAF1_EDX


def test_pv_cpuid_hypervisor_leaves() -> None:
    assert cpuid.pv_cpuid(0x40000001, 0, (4, 19))[0] == (4 << 16) | 19
    assert cpuid.pv_cpuid(0x40000002, 0, (4, 19))[:3] == (1, 0x40000000, 1)
    assert cpuid.pv_cpuid(0x40000006, 0, (4, 19)) == (0, 0, 0, 0)  # past the limit
    # features Xen never shows a PV guest: VMX (ecx 5), MTRR (edx 12), x2APIC (ecx 21)
    _, _, c, d = cpuid.pv_cpuid(1, 0, (4, 19))
    assert not c & (1 << 5 | 1 << 21) and not d & (1 << 12)


def test_int3_exit_is_past_the_instruction_and_not_rerun(tmp_path) -> None:
    """Quirk: UC_HOOK_INTR gives int3/int N with RIP already past them; the
    precise re-run that faults need would run the next instruction instead."""
    g = Guest("traps_all", tmp_path)
    s = g.symbols
    g.cpu.set_reg("rip", s["site_bp"])
    ex = g.cpu.run_slice()
    assert (ex.kind, ex.vector, ex.software, ex.insn_len) == (ExitKind.TRAP, 3, True, 1)
    assert ex.rip == g.cpu.reg("rip") == s["site_int80"]
    ex = g.cpu.run_slice()
    assert (ex.vector, ex.insn_len, ex.rip) == (0x80, 2, s["site_int82"])
    g.cpu.set_reg("rip", s["site_int81"])  # int $0x81 is also software
    assert g.cpu.run_slice().vector == 0x81
    g.cpu.set_reg("rip", s["site_de"])  # a fault after int N: still precise
    ex = g.cpu.run_slice()
    assert (ex.vector, ex.software, ex.rip) == (0, False, s["site_de"])
    g.cpu.set_reg("rip", s["site_hlt"])
    ex = g.cpu.run_slice()
    assert (ex.vector, ex.error_code, ex.software, ex.rip) == (13, 0, False, s["site_hlt"])


def _until_first_trap(g: Guest):
    while (ex := g.cpu.run_slice()).kind is not ExitKind.TRAP:
        if ex.kind is ExitKind.HYPERCALL:
            g.hc.dispatch()
    return ex


def test_a_bounce_onto_an_unwritable_stack_crashes_the_domain(tmp_path) -> None:
    """Xen's create_bounce_frame: a fault writing the frame is domain_crash."""
    g = Guest("traps_all", tmp_path)
    ex = _until_first_trap(g)
    assert ex.vector == 0 and 0 in g.hc.trap_table
    g.cpu.set_reg("rsp", 0x10000)  # not mapped
    with pytest.raises(GuestFault):
        traps.deliver(g.cpu, g.hc, ex)
    g.cpu.set_reg("rip", g.symbols["site_de"])
    g.cpu.set_reg("rsp", 0x10000)
    assert g.run() == ShutdownReason.SHUTDOWN_crash
    assert read_log(g) == []


def test_an_unreadable_iret_frame_crashes_the_domain(tmp_path) -> None:
    g = Guest("traps_all", tmp_path)
    _until_first_trap(g)
    g.hc.trap_table.clear()  # the next fault would crash anyway: make it the iret's doing
    assert traps.deliver(g.cpu, g.hc, Exit(ExitKind.TRAP, vector=0)) is False
    g.cpu.set_reg("rsp", 0x10000)
    with pytest.raises(traps.BadFrame, match="unreadable"):
        g.hc.iret()
