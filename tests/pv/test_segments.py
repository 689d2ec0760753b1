"""Segment and descriptor hypercalls (hypervisord/vcpu/segments.py) on the
segbase kernel, against xen/arch/x86/pv/misc-hypercalls.c and
descriptor-tables.c."""

from __future__ import annotations

import struct

from unicorn import x86_const as X

from hypervisord.public.sched import ShutdownReason
from hypervisord.vcpu import segments, traps
from tests.pv.test_vcpu import Guest

EINVAL = -22


def test_segment_bases_and_descriptors(tmp_path) -> None:
    g = Guest("segbase", tmp_path)
    assert g.run() == ShutdownReason.SHUTDOWN_poweroff
    vb, s = g.image.notes.virt_base, g.symbols
    results = struct.unpack("<14q", g.mem.read(s["results"] - vb, 8 * 14))
    assert results == (0, 0x0F5F5F5F5F5F5F5F, 0, 0x06565656565656, 0, EINVAL, EINVAL,
                       EINVAL, EINVAL, EINVAL, 0, EINVAL, EINVAL, 0)
    cpu = g.cpu
    assert cpu.gs_base_shadow == s["gsu_data"]  # the user GS base waits for user mode
    assert cpu.uc.reg_read(X.UC_X86_REG_GS_BASE) == s["gs_data"]
    gdt = s["gdt_page"] - vb
    assert cpu.gdt_frames == (gdt >> 12,) and cpu.gdt_ents == 8
    # check_descriptor raised the DPL 0 data descriptor to 3 in the frame; the
    # update_descriptor code descriptor likewise
    assert g.mem.read_u64(gdt + 8) == 0x00CFF2000000FFFF
    assert g.mem.read_u64(gdt + 24) == 0x00AFFA000000FFFF


def test_user_gs_base_is_swapped_in_for_user_mode(tmp_path) -> None:
    g = Guest("segbase", tmp_path)
    assert g.run() == ShutdownReason.SHUTDOWN_poweroff
    cpu = g.cpu
    cpu.user_cr3 = cpu.cr3
    kernel_gs, user_gs = cpu.uc.reg_read(X.UC_X86_REG_GS_BASE), cpu.gs_base_shadow
    traps.toggle_guest_mode(cpu)
    assert not cpu.kernel_mode
    assert (cpu.uc.reg_read(X.UC_X86_REG_GS_BASE), cpu.gs_base_shadow) == (user_gs, kernel_gs)
    traps.toggle_guest_mode(cpu)
    assert cpu.kernel_mode
    assert cpu.uc.reg_read(X.UC_X86_REG_GS_BASE) == kernel_gs


def test_check_descriptor_rules() -> None:
    assert segments.check_descriptor(0) == 0  # type 0 / not present: as is
    assert segments.check_descriptor(0x0000090000000067) == 0x0000090000000067  # not present
    assert segments.check_descriptor(0x00CF92000000FFFF) == 0x00CFF2000000FFFF  # DPL -> 3
    assert segments.check_descriptor(0x0000890000000067) is None  # TSS
    assert segments.check_descriptor(0x00008E0000080000) is None  # interrupt gate
    assert segments.check_descriptor(0x0000EC0000080000) is None  # call gate (subset)
