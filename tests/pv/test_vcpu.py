"""The vCPU layer (hypervisord/vcpu) on our PV test kernels, in-process.

Each test assembles a kernel, lays it out with the PV domain builder
(toolstack/pvbuilder.py) into a memory file shaped as hypervisord's
(hypervisord/public/memfile.py), and runs vCPU 0 on it.
"""

from __future__ import annotations

import os
import struct
import time

import pytest
from elftools.elf.elffile import ELFFile

from hypervisord.public import memfile
from hypervisord.public.callback import CALLBACKF_mask_events, CallbackType
from hypervisord.public.sched import ShutdownReason
from hypervisord.public.xen import PAGE_SIZE, Hypercall
from hypervisord.vcpu import loop, paging
from hypervisord.vcpu.cpu import ExitKind, VCpu
from hypervisord.vcpu.hypercalls import VcpuHypercalls
from hypervisord.vcpu.memory import GuestMemory
from tests.pv.kernels import assemble
from toolstack import pvbuilder

NR_PAGES = 256


class Guest:
    def __init__(self, name: str, tmp_path, cmdline: str = "", version=(4, 19)) -> None:
        self.elf_path = assemble(name, tmp_path)
        data = self.elf_path.read_bytes()
        self.image = pvbuilder.build(data, NR_PAGES, cmdline=cmdline)
        self.fd = os.memfd_create(f"pv-{name}")
        os.ftruncate(self.fd, memfile.file_size(NR_PAGES))
        for pfn, page in self.image.frames.items():
            os.pwrite(self.fd, page, memfile.gfn_offset(pfn))
        self.mem = GuestMemory(self.fd, NR_PAGES)
        self.cpu = VCpu(self.mem)
        self.cpu.boot(self.image.boot)
        self.console: list[bytes] = []
        self.hc = VcpuHypercalls(self.cpu, 1, self.console.append, xen_version=version)
        with open(self.elf_path, "rb") as f:
            elf = ELFFile(f)
            self.symbols = {s.name: s["st_value"] for s in elf.get_section_by_name(".symtab")
                            .iter_symbols()}

    def run(self, **kw) -> int | None:
        return loop.run(self.cpu, self.hc, **kw)


def test_hello_prints_through_console_io_and_powers_off(tmp_path) -> None:
    g = Guest("hello", tmp_path)
    assert g.run() == ShutdownReason.SHUTDOWN_poweroff
    assert b"".join(g.console) == b"Hello from a PV kernel\n"


@pytest.mark.parametrize("reason", list(ShutdownReason))
def test_every_shutdown_reason(tmp_path, reason: ShutdownReason) -> None:
    g = Guest("hello", tmp_path, cmdline=str(int(reason)))
    assert g.run() == reason


def test_xen_version(tmp_path) -> None:
    g = Guest("version", tmp_path, version=(4, 7))
    assert g.run() == ShutdownReason.SHUTDOWN_poweroff
    assert b"".join(g.console) == b"XEN 4.07\n"


def test_entry_state_is_xens(tmp_path) -> None:
    """rsi = start_info's VA, ring 3 with FLAT_KERNEL_CS64, the L4 in CR3, RO tables."""
    g = Guest("hello", tmp_path)
    vb = g.image.notes.virt_base
    assert vb == 0xFFFFFFFF80000000
    assert g.cpu.reg("rsi") == vb + g.image.start_info_pfn * PAGE_SIZE
    assert g.cpu.cpl == 3
    assert g.cpu.cr3 == g.image.pt_pfns.start * PAGE_SIZE
    for pfn in g.image.pt_pfns:  # a page-table frame is never writable by the guest
        with pytest.raises(paging.PageFault) as e:
            paging.walk(g.mem.read_u64, g.cpu.cr3, vb + pfn * PAGE_SIZE, write=True)
        assert e.value.error_code == paging.PFEC_PRESENT | paging.PFEC_WRITE | paging.PFEC_USER
    # the boot stack is writable, and the hypercall page holds Xen's stub
    paging.walk(g.mem.read_u64, g.cpu.cr3, g.image.boot.rsp - 8, write=True)
    stub = g.mem.read((g.symbols["hypercall_page"] - vb) + 32 * Hypercall.sched_op, 12)
    assert stub == bytes.fromhex("514153b81d0000000f05415b")


def test_rip_after_the_syscall_hook_is_the_next_instruction(tmp_path) -> None:
    g = Guest("hello", tmp_path)
    ex = g.cpu.run_slice()
    assert ex.kind is ExitKind.HYPERCALL
    syscall_at = g.symbols["hypercall_page"] + 32 * Hypercall.console_io + 8
    assert ex.rip == syscall_at
    assert g.cpu.reg("rip") == syscall_at + 2
    assert g.cpu.reg("rax") == Hypercall.console_io


def test_second_fault_is_not_a_double_fault_and_has_its_error_code(tmp_path) -> None:
    g = Guest("fault", tmp_path)
    for _ in range(3):
        ex = g.cpu.run_slice()
        assert ex.kind is ExitKind.TRAP
        assert (ex.vector, ex.cr2, ex.error_code) == (14, 0x10, paging.PFEC_USER)
        assert ex.rip == g.symbols["faulting"]
    assert g.run() == ShutdownReason.SHUTDOWN_crash  # nobody to bounce it to yet


def test_code_written_by_another_process_is_retranslated(tmp_path) -> None:
    g = Guest("version", tmp_path)
    start = g.symbols["_start"]
    assert g.cpu.run_slice().kind is ExitKind.HYPERCALL  # _start's block is translated
    assert g.cpu.reg("rdi") == 0
    gpa = start - g.image.notes.virt_base
    os.pwrite(g.fd, bytes.fromhex("bf07000000"), memfile.gfn_offset(0) + gpa)  # mov $7,%edi
    g.cpu.code_changed(gpa, 5)
    g.cpu.set_reg("rip", start)
    assert g.cpu.run_slice().kind is ExitKind.HYPERCALL
    assert g.cpu.reg("rdi") == 7


def test_a_spinning_guest_stops_within_milliseconds(tmp_path) -> None:
    g = Guest("spin", tmp_path)
    deadline = [0.0]
    t0 = time.perf_counter()

    def stop() -> bool:
        now = time.perf_counter()
        if not deadline[0]:
            deadline[0] = now + 0.2
        return now >= deadline[0]

    stats = loop.LoopStats()
    assert g.run(stop=stop, stats=stats) is None
    late = time.perf_counter() - deadline[0]
    assert b"".join(g.console) == b"spinning\n"
    assert late < 0.05, f"stopped {late * 1000:.1f} ms late"
    assert stats.slices > 10
    assert time.perf_counter() - t0 < 1.0


def test_bad_pointer_is_efault_not_a_crash(tmp_path) -> None:
    g = Guest("hello", tmp_path)
    assert g.cpu.run_slice().kind is ExitKind.HYPERCALL
    g.cpu.set_reg("rdx", 0x10)  # console_io buffer: unmapped
    g.hc.dispatch()
    assert g.cpu.reg("rax") == (-14) & (2**64 - 1)
    assert g.console == []


def test_the_kernel_really_runs_in_ring_3(tmp_path) -> None:
    """``cli`` at CPL3 (IOPL 0) is #GP(0): the kernel is not in ring 0."""
    g = Guest("cli", tmp_path)
    ex = g.cpu.run_slice()
    assert ex.kind is ExitKind.TRAP
    assert (ex.vector, ex.error_code, ex.rip) == (13, 0, g.symbols["privileged"])


def test_page_table_updates_keep_xens_invariants(tmp_path) -> None:
    """update_va_mapping: a page table never writable, only own frames, the rest works."""
    g = Guest("ptupdate", tmp_path)
    reason = g.run()
    assert b"".join(g.console) == b"ptupdate ok\n"
    assert reason == ShutdownReason.SHUTDOWN_poweroff


def test_mmu_update_of_an_l1_entry_checks_the_new_entry(tmp_path) -> None:
    from hypervisord.public.xen import MMU_UPDATE
    from hypervisord.vcpu import pagetype

    g = Guest("ptupdate", tmp_path)
    vb = g.image.notes.virt_base
    spare = vb + 0xF0000
    l1_frame, index = g.hc.mmu._l1_slot(spare)
    slot = (l1_frame << 12) + 8 * index
    l4 = g.image.pt_pfns.start
    assert g.hc.mmu.types.type_of(l1_frame) == pagetype.PGT_l1_page_table
    req_va = g.image.boot.rsp - 64
    req_gpa = paging.walk(g.mem.read_u64, g.cpu.cr3, req_va, write=True)

    def mmu_update(val: int) -> tuple[int, int]:
        g.mem.write(req_gpa, MMU_UPDATE.pack(slot, val) + bytes(4))
        rc = g.hc.mmu_update(req_va, 1, req_va + 16, 0x7FF0)
        return rc, int.from_bytes(g.mem.read(req_gpa + 16, 4), "little")

    assert mmu_update((l4 << 12) | 7) == (-22, 0)  # a page table, writable: never
    assert mmu_update((0x100000 << 12) | 5) == (-22, 0)  # not our frame
    assert mmu_update((l4 << 12) | 5) == (0, 1)  # read-only: fine
    assert g.mem.read_u64(slot) == (l4 << 12) | 5
    # a frame that is no page table is simply written, as Xen's PGT_writable_page case
    target = (req_gpa & ~0xFFF) + 0x800
    g.mem.write(req_gpa, MMU_UPDATE.pack(target, 0x1234) + bytes(4))
    assert g.hc.mmu_update(req_va, 1, 0, 0x7FF0) == 0
    assert g.mem.read_u64(target) == 0x1234


def test_traps_bounce_to_the_guests_handlers_and_iret_returns(tmp_path) -> None:
    from hypervisord.public.xen import vcpu_info_offset
    from hypervisord.vcpu.memory import SHARED_INFO_MFN

    g = Guest("trap", tmp_path)
    assert g.run() == ShutdownReason.SHUTDOWN_poweroff
    assert b"".join(g.console) == b"trap ok\n"
    assert set(g.hc.trap_table) == {6, 14}
    cr2 = g.mem.read_u64(SHARED_INFO_MFN * PAGE_SIZE + vcpu_info_offset(0) + 16)
    assert cr2 == 0x10  # vcpu_info.arch.cr2


def test_a_trap_without_a_handler_still_crashes(tmp_path) -> None:
    g = Guest("cli", tmp_path)  # #GP: no trap table at all
    assert g.run() == ShutdownReason.SHUTDOWN_crash


def test_callbacks_registered_as_xen_does(tmp_path) -> None:
    """callback_op register/unregister and set_callbacks (xen/arch/x86/pv/callback.c)."""
    g = Guest("callbacks", tmp_path)
    assert g.run() == ShutdownReason.SHUTDOWN_poweroff
    va = g.symbols["results"] - g.image.notes.virt_base
    results = struct.unpack("<6q", g.mem.read(va, 48))
    EINVAL, ENOSYS = 22, 38
    assert results == (0, 0, -EINVAL, -ENOSYS, -EINVAL, 0)
    cb = g.hc.callbacks
    assert cb[CallbackType.CALLBACKTYPE_event] == (g.symbols["on_event"], CALLBACKF_mask_events)
    assert cb[CallbackType.CALLBACKTYPE_failsafe] == (g.symbols["on_failsafe"], 0)
    # set_callbacks registers syscall without mask_events, replacing the flagged one
    assert cb[CallbackType.CALLBACKTYPE_syscall] == (g.symbols["on_syscall"], 0)


def test_the_hypercall_trace_logs_each_call_with_its_result(tmp_path, monkeypatch, caplog) -> None:
    """PVXEN_VCPU_TRACE=1 (read at import): number, arguments and result per call."""
    from hypervisord.vcpu import hypercalls

    monkeypatch.setattr(hypercalls, "TRACE", True)
    g = Guest("hello", tmp_path)
    with caplog.at_level("INFO", logger="vcpu"):
        assert g.run() == ShutdownReason.SHUTDOWN_poweroff
    lines = [r.getMessage() for r in caplog.records if r.name == "vcpu"]
    assert any(m.startswith("hypercall 18(0x0, 0x17,") and m.endswith(") = 0") for m in lines), lines
