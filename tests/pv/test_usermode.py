"""Guest user mode and back (hypervisord/vcpu/traps.py): the usermode kernel
(tests/pv/kernels/usermode.S) irets to user code on its own page tables,
which make syscalls, int $0x80 and faults, each entering the kernel on its
stack_switch stack with Xen's frame (xen/arch/x86/x86_64/entry.S
lstar_enter, switch_to_kernel, create_bounce_frame; pv/iret.c)."""

from __future__ import annotations

import struct


from hypervisord.public import arch_x86
from hypervisord.public.sched import ShutdownReason
from hypervisord.vcpu import paging
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
    vb = g.image.notes.virt_base
    return struct.unpack("<4Q", g.mem.read(g.symbols["user_out"] - vb, 32))


def test_user_mode_round_trips(tmp_path) -> None:
    g = user_guest(tmp_path)
    assert g.run() == ShutdownReason.SHUTDOWN_poweroff, b"".join(g.console)
    s = g.symbols
    magic, sys_rax, sys_rcx, sys_r11 = user_out(g)
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
    assert g.run(stop=lambda: bool(read_log(g))) is None  # until the first kernel entry
    s = g.symbols
    (e,) = read_log(g)
    assert (e.tag, e.ec, e.rip, e.cs) == (6, NO_EC, s["site_sys"], arch_x86.FLAT_USER_CS64)
    assert e.rsp <= s["ustack_top"] and not g.cpu.kernel_mode  # back in user mode
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
