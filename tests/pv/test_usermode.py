"""Guest user mode and back (hypervisord/vcpu/traps.py): the usermode kernel
(tests/pv/kernels/usermode.S) irets to user code on its own page tables,
which make syscalls, int $0x80 and faults, each entering the kernel on its
stack_switch stack with Xen's frame (xen/arch/x86/x86_64/entry.S
lstar_enter, switch_to_kernel, create_bounce_frame; pv/iret.c)."""

from __future__ import annotations

import struct

import pytest
from unicorn import x86_const as X


from hypervisord.public import arch_x86
from hypervisord.public.sched import ShutdownReason
from hypervisord.vcpu import paging, traps
from tests.pv.test_traps import NO_EC, read_log, vcpu_info
from tests.pv.test_vcpu import Guest

USER_VA = 0x400000
MAGIC = 0x1BADC0DE
#: spare frames of the 256-page test guest for the user tables (L4, L3, L2, L1, page)
USER_PFNS = (248, 249, 250, 251, 252)


def user_tables(g: Guest) -> int:
    """The user L4: the kernel's entries plus VA 0x400000 -> a page holding MAGIC."""
    l4, l3, l2, l1, page = (p * paging.PAGE_SIZE for p in USER_PFNS)
    g.mem.write(l4, g.mem.read(g.cpu.cr3, paging.PAGE_SIZE))
    flags = 7  # P|RW|U: Xen sets _PAGE_USER on every 64-bit PV mapping
    for table, index, target in ((l4, paging.table_index(USER_VA, 4), l3),
                                 (l3, paging.table_index(USER_VA, 3), l2),
                                 (l2, paging.table_index(USER_VA, 2), l1),
                                 (l1, paging.table_index(USER_VA, 1), page)):
        g.mem.write_u64(table + 8 * index, target | flags)
    g.mem.write_u64(page, MAGIC)
    return l4


def user_guest(tmp_path, cmdline: str = "") -> Guest:
    g = Guest("usermode", tmp_path, cmdline=cmdline)
    g.kernel_l4 = g.cpu.cr3
    g.cpu.user_cr3 = user_tables(g)  # what MMUEXT_NEW_USER_BASEPTR sets
    return g


def user_out(g: Guest) -> tuple[int, ...]:
    """magic, syscall's rax, rcx, r11; user cs, ss; set_gdt's rc; the kernel's cs"""
    vb = g.image.notes.virt_base
    return struct.unpack("<8Q", g.mem.read(g.symbols["user_out"] - vb, 64))


def test_user_mode_round_trips(tmp_path) -> None:
    g = user_guest(tmp_path)
    assert g.run() == ShutdownReason.SHUTDOWN_poweroff, b"".join(g.console)
    s = g.symbols
    magic, sys_rax, sys_rcx, sys_r11, user_cs, user_ss, _, kernel_cs = user_out(g)
    assert (user_cs, user_ss, kernel_cs) == (0xE033, 0xE02B, 0xE033)
    assert magic == MAGIC  # user mode ran on the user page tables
    assert sys_rax == 7 + 42  # the syscall's result came back
    # iret with VGCF_in_syscall returns as sysretq: rcx = rip, r11 = rflags
    assert sys_rcx == s["site_sys_ret"] and sys_r11 & (1 << 9)
    log = read_log(g)
    got = [(e.tag, e.ec, e.rip, e.cs) for e in log]
    user_cs = arch_x86.FLAT_USER_CS64
    assert got == [
        (0x5C, s["site_sys_ret"], s["site_sys_ret"], user_cs),  # rcx = the return address
        (0x80, NO_EC, s["site_int80"] + 2, user_cs),
        (13, 0x81 << 3 | 2, s["site_int81"], user_cs),  # DPL 0 from user mode: #GP
        (14, paging.PFEC_USER, s["site_pf"], user_cs),  # not present, from user mode
        (3, NO_EC, s["site_bp"] + 1, user_cs),
        (0x5C, s["site_exit"] + 2, s["site_exit"] + 2, user_cs),
        (14, 0, s["site_kpf"], user_cs & ~3),  # the kernel's own: not mapped there
    ]
    kstack = s["kstack_top"]
    for e in log[:6]:  # from user mode: on the stack_switch stack, the user's rsp saved
        assert kstack - 1024 < e.handler_rsp < kstack
        assert s["kstack_top"] < e.rsp <= s["ustack_top"]
        assert e.mask == 0 and e.saved_mask == 0  # no TI_SET_IF / mask_events here
    assert vcpu_info(g, 16) == USER_VA  # cr2 of the last #PF
    assert g.cpu.kernel_mode and g.cpu.cr3 == g.kernel_l4


def test_syscall_without_a_callback_is_ud_at_the_syscall(tmp_path) -> None:
    g = user_guest(tmp_path, cmdline="n")  # the kernel registers no syscall callback
    # until the #UD handler has logged and its iret is back in user mode (a slice
    # may also end inside the handler, so the log alone is not the point to stop)
    assert g.run(stop=lambda: bool(read_log(g)) and not g.cpu.kernel_mode) is None
    s = g.symbols
    (e,) = read_log(g)
    assert (e.tag, e.ec, e.rip, e.cs) == (6, NO_EC, s["site_sys"], arch_x86.FLAT_USER_CS64)
    assert e.rsp <= s["ustack_top"]
    # the instruction's own effect stays: rcx = next rip, r11 = rflags (Xen: "hardware")
    assert g.cpu.reg("rcx") == s["site_sys_ret"]


def test_iret_to_user_mode_without_user_tables_crashes(tmp_path) -> None:
    g = Guest("usermode", tmp_path)  # no user_cr3: Xen's "no user page tables"
    assert g.run() == ShutdownReason.SHUTDOWN_crash
    assert read_log(g) == [] and g.cpu.kernel_mode


def test_kernel_stack_in_xens_hole_crashes_the_domain(tmp_path) -> None:
    g = user_guest(tmp_path)
    ex = None
    while ex is None or ex.kind.value != "hypercall" or g.cpu.reg("rax") != 3:
        ex = g.cpu.run_slice()  # up to stack_switch
    g.cpu.set_reg("rsi", arch_x86.HYPERVISOR_VIRT_START + 0x1000)
    g.hc.dispatch()
    assert g.cpu.kernel_sp == arch_x86.HYPERVISOR_VIRT_START + 0x1000
    assert g.run() == ShutdownReason.SHUTDOWN_crash  # the first bounce from user mode
    assert read_log(g) == []
    assert user_out(g)[0] == MAGIC  # user mode ran until its syscall


def test_user_mode_on_the_kernels_own_gdt_selectors(tmp_path) -> None:
    """Linux's way: user code on __USER_CS 0x33 / __USER_DS 0x2b from its GDT;
    the kernel entered on Xen's flat selectors; the frame keeps the user's."""
    g = user_guest(tmp_path, cmdline="g")
    assert g.run() == ShutdownReason.SHUTDOWN_poweroff, b"".join(g.console)
    magic, sys_rax, _, _, user_cs, user_ss, rc, kernel_cs = user_out(g)
    assert (rc, magic, sys_rax) == (0, MAGIC, 49)
    assert (user_cs, user_ss, kernel_cs) == (0x33, 0x2B, arch_x86.FLAT_KERNEL_CS64)
    log = read_log(g)
    assert [e.cs for e in log] == [0x33] * 6 + [arch_x86.FLAT_KERNEL_CS64 & ~3]
    assert g.cpu.uc.reg_read(X.UC_X86_REG_CS) == arch_x86.FLAT_KERNEL_CS64


def test_iret_to_a_selector_that_is_no_user_code_crashes(tmp_path) -> None:
    """A data or absent descriptor as CS: Xen's iretq faults (failsafe); here a crash."""
    g = user_guest(tmp_path)
    ex = None
    while ex is None or ex.kind.value != "hypercall" or g.cpu.reg("rax") != 23:
        ex = g.cpu.run_slice()  # up to the first iret (to user mode)
        if ex.kind.value == "hypercall" and g.cpu.reg("rax") != 23:
            g.hc.dispatch()
    frame = g.cpu.reg("rsp")
    for bad_cs in (0xE02B, 0x33, 0x1003):  # data; past the GDT's (none set); LDT
        g.hc.copy_to_guest(frame + 8 * 5, struct.pack("<Q", bad_cs))
        with pytest.raises(traps.BadFrame, match="not a 64-bit code"):
            g.hc.dispatch()
    assert g.cpu.kernel_mode
