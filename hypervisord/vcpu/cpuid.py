"""The forced-emulation prefix and the CPUID view of a 64-bit PV guest.

A PV kernel that wants Xen's CPUID (not the bare CPU's) writes
``ud2; .ascii "xen"; cpuid`` (``XEN_EMULATE_PREFIX``,
``xen/include/public/arch-x86/xen.h``): the ``ud2`` raises #UD and Xen's
``emulate_forced_invalid_op`` (``xen/arch/x86/pv/emul-inv-op.c``) answers
the ``cpuid`` from the domain's policy and resumes after it. Any other #UD
goes to the guest's handler as usual.

The view (``guest_cpuid``, ``xen/arch/x86/cpuid.c``) is a documented
subset of Xen's:

* the CPU is the one this vCPU runs on, Unicorn's emulated x86-64 (what a
  plain ``cpuid`` returns): every leaf starts from it;
* leaf 1 keeps only the features ``xen/include/public/arch-x86/cpufeatureset.h``
  marks for every guest (``A``) and sets ``HYPERVISOR`` (ecx bit 31);
  ``OSXSAVE`` is clear (the guest's CR4 has no OSXSAVE here);
* the hypervisor leaves 0x40000000..0x40000005 (``cpuid_hypervisor_leaves``):
  "XenVMMXenVMM" and the largest leaf, the Xen version, one hypercall page
  at MSR 0x40000000 with ``XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD``, a
  zero time leaf, and the machine address width of leaf 5.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc, UcError
from unicorn import x86_const as X

from . import paging
from .memory import SHARED_INFO_MFN

if TYPE_CHECKING:
    from .cpu import VCpu
    from .hypercalls import VcpuHypercalls

#: ud2; .ascii "xen"; cpuid
XEN_EMULATE_PREFIX = b"\x0f\x0bxen"
CPUID = b"\x0f\xa2"

XEN_CPUID_FIRST_LEAF = 0x40000000
XEN_CPUID_MAX_NUM_LEAVES = 5
XEN_CPUID_SIGNATURE = (0x566E6558, 0x65584D4D, 0x4D4D566E)  # "XenV" "MMXe" "nVMM"
XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD = 1 << 0

#: leaf 1 bits marked "A" (all guests) in cpufeatureset.h, words 0 (edx) and 1 (ecx)
_PV_LEAF1_EDX = sum(1 << b for b in (0, 2, 4, 5, 6, 7, 8, 9, 11, 14, 15, 16, 19, 22, 23, 24,
                                     25, 26, 27, 28))
_PV_LEAF1_ECX = sum(1 << b for b in (0, 1, 9, 12, 13, 19, 20, 22, 23, 25, 26, 28, 29, 30))
X86_FEATURE_HYPERVISOR = 1 << 31  # ecx


@functools.lru_cache(maxsize=256)
def native_cpuid(leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    """What ``cpuid`` returns on the emulated CPU (a scratch engine, run once per leaf)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_tcg_buffer_size(1 << 20)
    uc.mem_map(0, 0x1000, UC_PROT_ALL)
    uc.mem_write(0, CPUID)
    uc.reg_write(X.UC_X86_REG_RAX, leaf)
    uc.reg_write(X.UC_X86_REG_RCX, subleaf)
    try:
        uc.emu_start(0, len(CPUID))
    except UcError:
        return (0, 0, 0, 0)
    return tuple(uc.reg_read(r) & 0xFFFF_FFFF for r in  # type: ignore[return-value]
                 (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX))


def pv_cpuid(leaf: int, subleaf: int, xen_version: tuple[int, int]) -> tuple[int, int, int, int]:
    """The guest's view of ``leaf``/``subleaf`` (module doc)."""
    leaf &= 0xFFFF_FFFF
    subleaf &= 0xFFFF_FFFF
    idx = leaf - XEN_CPUID_FIRST_LEAF
    if 0 <= idx < 0x100:  # Xen's range: answered by Xen, never by the CPU
        return _hypervisor_leaf(idx, subleaf, xen_version)
    a, b, c, d = native_cpuid(leaf, subleaf)
    if leaf == 1:
        c = (c & _PV_LEAF1_ECX) | X86_FEATURE_HYPERVISOR
        d &= _PV_LEAF1_EDX
    return a, b, c, d


def _hypervisor_leaf(idx: int, subleaf: int,
                     xen_version: tuple[int, int]) -> tuple[int, int, int, int]:
    if idx == 0:
        return (XEN_CPUID_FIRST_LEAF + XEN_CPUID_MAX_NUM_LEAVES,) + XEN_CPUID_SIGNATURE
    if idx == 1:
        major, minor = xen_version
        return ((major << 16) | minor, 0, 0, 0)
    if idx == 2:
        return (1, XEN_CPUID_FIRST_LEAF, XEN_CPUID_FEAT1_MMU_PT_UPDATE_PRESERVE_AD, 0)
    if idx == 5 and subleaf == 0:  # machine address width: our frames stay below 2^26
        return (0, SHARED_INFO_MFN.bit_length() + paging.PAGE_SHIFT, 0, 0)
    return (0, 0, 0, 0)  # leaf 3 (time: no TSC emulation), 4 (HVM only), beyond the limit


def _read_code(cpu: VCpu, va: int, n: int) -> tuple[bytes, int | None]:
    """``n`` bytes at ``va`` (byte by byte: they may straddle pages); the bytes
    read and the first address that could not be read (None: all read)."""
    out = bytearray()
    for a in range(va, va + n):
        try:
            out += cpu.mem.read(paging.walk(cpu.mem.read_u64, cpu.cr3, a), 1)
        except (paging.PageFault, IndexError):
            return bytes(out), a
    return bytes(out), None


def emulate_forced_invalid_op(cpu: VCpu, hc: VcpuHypercalls) -> bool:
    """The #UD at RIP is ``XEN_EMULATE_PREFIX`` + ``cpuid``: answer it; False if not.

    As Xen, the signature (5 bytes) and then the instruction (2) are read,
    and one that cannot be read is a #PF for the guest at the first byte
    that could not be.
    """
    from . import traps  # traps imports this module

    rip = cpu.reg("rip")
    eip = rip
    for want in (XEN_EMULATE_PREFIX, CPUID):
        got, bad = _read_code(cpu, eip, len(want))
        if bad is not None:
            return traps.inject_exception(cpu, hc, traps.TRAP_PF, 0, cr2=bad)
        if got != want:
            return False
        eip += len(want)
    eax, ecx = cpu.regs(("rax", "rcx"))
    a, b, c, d = pv_cpuid(eax, ecx, hc.xen_version)
    for name, value in (("rax", a), ("rbx", b), ("rcx", c), ("rdx", d), ("rip", eip)):
        cpu.set_reg(name, value)
    return True
