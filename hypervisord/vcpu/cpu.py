"""One vCPU of a 64-bit PV guest: a Unicorn x86-64 engine, run in slices.

The CPU state a 64-bit PV kernel sees (Xen ``xen/arch/x86/domain.c``,
``arch_set_info_guest``; ``xen/include/public/arch-x86/xen-x86_64.h``):
long mode with paging on (CR0.PG|PE, CR4.PAE, EFER.LME|LMA|SCE|NX), CR3 =
the guest's own L4, and the kernel in **ring 3** with Xen's flat selectors
``FLAT_KERNEL_CS64`` (0xe033) / ``FLAT_KERNEL_SS64`` (0xe02b), which are
entries 262/261 of Xen's reserved GDT page (``FIRST_RESERVED_GDT_ENTRY``).
That GDT lives in hypervisor-private frames; ring 3 is entered with an
``iretq`` while paging is still off (linear = physical); after that the
GDT is mapped in Xen's L4 slot of every L4 the vCPU runs on (:mod:`.gdt`),
so later selector loads find it.

Traps are **recorded, not served** inside Unicorn hooks (STYLE.md rule 11):
each hook notes what happened in :attr:`VCpu.exit` and calls ``emu_stop``;
:meth:`VCpu.run_slice` returns that record and the caller serves it.
Unicorn quirks handled here (pv-guest-abi.md §1, §2.2), each with a test in
``tests/pv/test_vcpu.py`` (``tests/pv/test_traps.py`` for int N):

* **RIP after the syscall hook**: Unicorn adds the instruction length
  *after* the hook, so the exit record keeps the address of the ``syscall``
  and the slice sets RIP to the next instruction itself.
* **stale exception state**: a fault handed to ``UC_HOOK_INTR`` leaves
  QEMU's ``old_exception`` set, and the next fault becomes #DF; it is reset
  in the CPU context blob, in the hook and again after the slice (Unicorn
  re-runs the faulting instruction once before it stops; offset calibrated
  on the first fault).
* **missing #PF/#GP error code**: read from the same blob in the hook.
* **int N / int3 look like faults**: UC_HOOK_INTR gets them with RIP past
  the instruction and the IDT unread; they are told apart by the bytes
  before RIP (:mod:`.softint`) and never re-run.
* **syscall has no SYSCALL semantics**: RCX/R11 are not written, so a
  user-mode syscall gets them from :func:`.traps.syscall`.
* **ring 3**: ``reg_write`` of CS/SS leaves QEMU's CPL at 0, so the boot
  enters ring 3 by ``iretq`` (:meth:`VCpu.boot`).
* **descriptor loads go through paging**: GDTR holds a linear address, so
  the GDT is mapped for the CPU in every L4 (:meth:`VCpu.load_cr3`, :mod:`.gdt`).
* **code rewritten by another process**: :meth:`VCpu.code_changed` drops
  translated blocks of those frames (``ctl_remove_cache``).
* **emu_stop from another thread reruns an instruction**: taken after the
  store of a read-modify-write, it restarts that instruction; slices are
  ended from other threads through :mod:`.stopreq` instead (a native block
  hook that stops between instructions).
* the default 1 GiB translation buffer does not fit a confined guest's
  RLIMIT_AS: :data:`TCG_BUFFER` is set before the first run.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from dataclasses import dataclass
from enum import Enum

from unicorn import (UC_ARCH_X86, UC_HOOK_INSN, UC_HOOK_INSN_INVALID, UC_HOOK_INTR,
                     UC_MODE_64, UC_PROT_ALL, UC_PROT_READ, UC_PROT_WRITE, Uc, UcError)
from unicorn import x86_const as X

from unicorn.unicorn_py3.unicorn import uclib as _uclib

from hypervisord.public import arch_x86
from hypervisord.public.xen import PAGE_SIZE, vcpu_info_offset

from . import gdt, softint
from .memory import HV_PRIVATE_FRAMES, HV_PRIVATE_MFN, SHARED_INFO_MFN, GuestMemory
from .memory import GNTTAB_MFN, NR_GNT_FRAMES
from .stopreq import StopRequest

TCG_BUFFER = 32 << 20
#: a slice's length: a ticker thread (:class:`SliceTimer`) stops the engine this often.
#: Not ``emu_start(count=...)``: counting costs ~17x on a tight loop (measured,
#: bench/vcpu.py); nor ``timeout=``: a new thread per emu_start, i.e. per hypercall.
SLICE_SECONDS = 0.001
_NEVER = 0xFFFF_FFFF_FFFF_FFFF  # emu_start's "until": non-canonical, never reached

CR0_PE, CR0_ET, CR0_WP, CR0_PG = 1 << 0, 1 << 4, 1 << 16, 1 << 31
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 5, 1 << 9, 1 << 10
MSR_EFER = 0xC0000080
EFER_SCE, EFER_LME, EFER_LMA, EFER_NX = 1 << 0, 1 << 8, 1 << 10, 1 << 11
X86_EFLAGS_IF = 1 << 9

TRAP_DE, TRAP_DF, TRAP_GP, TRAP_PF, TRAP_UD = 0, 8, 13, 14, 6

#: GDT descriptors (SDM vol. 3 §3.4.5): 64-bit code DPL3, data DPL3, 32-bit code DPL3
_DESC_CS64_DPL3 = 0x00AFFA000000FFFF
_DESC_DS_DPL3 = 0x00CFF2000000FFFF
_DESC_CS32_DPL3 = 0x00CFFA000000FFFF

# Register access straight into libunicorn, for the hot path (a hypercall
# reads and writes ~8 registers): a PyDLL function keeps the GIL (these
# calls are a few hundred ns of C; releasing and taking the GIL again costs
# more) and has no argtypes to convert through (every caller passes a
# c_void_p engine, an int register id and a pointer). Measured per call:
# 1.22 us with the binding's prototypes, 0.62 us like this.
_rawlib = ctypes.PyDLL(_uclib._name, handle=_uclib._handle)
_uc_reg_read = _rawlib.uc_reg_read
_uc_reg_write = _rawlib.uc_reg_write
_uc_reg_read_batch = _rawlib.uc_reg_read_batch
_uc_emu_stop = _rawlib.uc_emu_stop
_uc_context_save = _rawlib.uc_context_save

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
_REG = {name: getattr(X, f"UC_X86_REG_{name.upper()}") for name in GPRS}


class ExitKind(Enum):
    SLICE = "slice"  # the slice ended (timer tick, or its instruction budget)
    HYPERCALL = "hypercall"  # syscall from guest kernel mode
    SYSCALL = "syscall"  # syscall from guest user mode: bounced to the syscall callback
    TRAP = "trap"  # an exception (vector, error code, cr2)
    HALT = "halt"  # emulation stopped by itself (hlt at CPL0 cannot happen in PV)
    ERROR = "error"  # Unicorn refused to go on (bad RIP, unmapped fetch ...)


@dataclass(slots=True)
class Exit:
    kind: ExitKind
    rip: int = 0
    vector: int = -1
    error_code: int = 0
    cr2: int = 0
    detail: str = ""
    via_intr: bool = False  # came through UC_HOOK_INTR (QEMU's exception state involved)
    #: ``int N`` / ``int3`` (a trap, not a fault): RIP is already past the instruction,
    #: which is ``insn_len`` bytes long
    software: bool = False
    insn_len: int = 0


@dataclass(frozen=True, slots=True)
class BootState:
    """Xen's initial state of vCPU 0 (``xg_dom_x86.c``, ``vcpu_x86_64``)."""

    rip: int
    rsp: int
    rsi: int
    cr3: int  # guest-physical address of the L4
    rflags: int = X86_EFLAGS_IF


class VCpu:
    """One vCPU over a domain's :class:`GuestMemory`."""

    def __init__(self, mem: GuestMemory, vcpu_id: int = 0) -> None:
        self.mem = mem
        self.vcpu_id = vcpu_id
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.ctl_set_tcg_buffer_size(TCG_BUFFER)  # before the first run: see module doc
        uc.mem_map_ptr(0, mem.nr_pages * PAGE_SIZE, UC_PROT_ALL, mem.host_ptr_of_gfn(0))
        uc.mem_map_ptr(SHARED_INFO_MFN * PAGE_SIZE, PAGE_SIZE, UC_PROT_READ | UC_PROT_WRITE,
                       mem.shared_info_ptr)
        uc.mem_map_ptr(GNTTAB_MFN * PAGE_SIZE, NR_GNT_FRAMES * PAGE_SIZE,
                       UC_PROT_READ | UC_PROT_WRITE, mem.grant_table_ptr)
        uc.mem_map(HV_PRIVATE_MFN * PAGE_SIZE, HV_PRIVATE_FRAMES * PAGE_SIZE, UC_PROT_ALL)
        self.uc = uc
        self.exit: Exit | None = None
        self._hooks = [
            uc.hook_add(UC_HOOK_INSN, self._on_syscall, aux1=X.UC_X86_INS_SYSCALL),
            uc.hook_add(UC_HOOK_INTR, self._on_interrupt),
            uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid),
        ]
        #: how other threads end a slice: between instructions (stopreq.py)
        self.stop_request = StopRequest(uc)
        self.request_stop = self.stop_request.request
        self._ctx = uc.context_save()  # reused by _clear_stale_exception
        self._val = ctypes.c_uint64()
        self._val_ref = ctypes.byref(self._val)
        self._batches: dict[tuple[str, ...], tuple] = {}  # regs(): prepared arrays
        self._ctx_error_code: int | None = None  # calibrated offsets into the context blob
        self._old_exception: tuple[int, ctypes.c_int] | None = None  # (offset, its cell in _ctx)
        self.slices = 0
        # Xen's software view of the vCPU (64-bit PV: kernel and user both run in
        # ring 3; see traps.py). ``kernel_mode`` is TF_kernel_mode.
        self.kernel_mode = True
        #: the user L4 (guest-physical, MMUEXT_NEW_USER_BASEPTR; 0 = none): CR3 in user mode
        self.user_cr3 = 0
        #: the kernel L4 while in user mode (CR3 holds the user one then)
        self.kernel_cr3 = 0
        #: the kernel stack of a trap from user mode (stack_switch; the builder's at boot)
        self.kernel_ss = arch_x86.FLAT_KERNEL_SS64
        self.kernel_sp = 0
        #: the inactive GS base (Xen's GS shadow): user's in kernel mode, and back
        self.gs_base_shadow = 0
        #: guest-physical address of this vCPU's struct vcpu_info (where the upcall
        #: mask and cr2 live): its shared_info slot until VCPUOP_register_vcpu_info
        #: (vCPUs past the legacy 32 have none before that: 0)
        self.vcpu_info_gpa = SHARED_INFO_MFN * PAGE_SIZE + vcpu_info_offset(vcpu_id) \
            if vcpu_id < arch_x86.XEN_LEGACY_MAX_VCPUS else 0
        #: the guest's GDT (set_gdt): its frames and number of entries
        self.gdt_frames: tuple[int, ...] = ()
        self.gdt_ents = 0
        #: another vCPU changed page tables: flush our TLB before the next slice
        #: (set from another thread, with an ``emu_stop``: :mod:`.smp`)
        self.tlb_stale = False

    # -- boot state ----------------------------------------------------------------------

    def _write_gdt(self) -> int:
        """Xen's reserved flat descriptors in our private GDT; its linear base."""
        base = HV_PRIVATE_MFN * PAGE_SIZE
        first = arch_x86.FIRST_RESERVED_GDT_ENTRY
        for sel, desc in ((arch_x86.FLAT_RING3_CS32, _DESC_CS32_DPL3),
                          (arch_x86.FLAT_RING3_DS32, _DESC_DS_DPL3),
                          (arch_x86.FLAT_RING3_CS64, _DESC_CS64_DPL3)):
            index = sel >> 3
            assert first <= index < first + 8
            self.uc.mem_write(base + 8 * index, struct.pack("<Q", desc))
        return base

    def boot(self, state: BootState) -> None:
        """Enter Xen's 64-bit PV entry state (long mode, ring 3, guest CR3).

        Ring 3 is entered as a CPU does: an ``iretq`` at CPL0 with a frame
        (rip, FLAT_KERNEL_CS64, rflags, rsp, FLAT_KERNEL_SS64), run from a
        hypervisor-private frame while paging is still off (Unicorn's fake
        long mode: linear = physical), so it reads our private GDT. Writing
        CS/SS with ``reg_write`` would not do: it leaves QEMU's CPL at 0
        (measured: ``cli`` did not fault), and the guest would run in ring 0.
        Paging is switched on after the ``iretq``, before any guest code.
        """
        uc = self.uc
        gdt_base = self._write_gdt()
        limit = 8 * (arch_x86.FIRST_RESERVED_GDT_ENTRY + 8) - 1
        uc.reg_write(X.UC_X86_REG_GDTR, (0, gdt_base, limit, 0))
        tramp = (HV_PRIVATE_MFN + 1) * PAGE_SIZE  # page 1 of the private frames
        frame = struct.pack("<5Q", state.rip, arch_x86.FLAT_KERNEL_CS64, state.rflags,
                            state.rsp, arch_x86.FLAT_KERNEL_SS64)
        uc.mem_write(tramp, b"\x48\xcf")  # iretq
        uc.mem_write(tramp + PAGE_SIZE - len(frame), frame)
        uc.reg_write(X.UC_X86_REG_RSP, tramp + PAGE_SIZE - len(frame))
        uc.emu_start(tramp, state.rip, count=1)  # stops at the entry, before any fetch there
        if uc.reg_read(X.UC_X86_REG_RIP) != state.rip:
            raise RuntimeError("vCPU boot: the iretq to the guest's entry did not happen")
        # hypervisor frames are never code again (no guest PTE can name them anyway)
        uc.mem_protect(HV_PRIVATE_MFN * PAGE_SIZE, HV_PRIVATE_FRAMES * PAGE_SIZE,
                       UC_PROT_READ | UC_PROT_WRITE)
        for seg in (X.UC_X86_REG_DS, X.UC_X86_REG_ES, X.UC_X86_REG_FS, X.UC_X86_REG_GS):
            uc.reg_write(seg, arch_x86.FLAT_KERNEL_DS64)
        uc.reg_write(X.UC_X86_REG_CR4, uc.reg_read(X.UC_X86_REG_CR4) | CR4_PAE
                     | CR4_OSFXSR | CR4_OSXMMEXCPT)
        uc.msr_write(MSR_EFER, EFER_SCE | EFER_LME | EFER_LMA | EFER_NX)
        gdt.ensure_slot(self, state.cr3)
        uc.reg_write(X.UC_X86_REG_CR3, state.cr3)
        uc.reg_write(X.UC_X86_REG_CR0, CR0_PG | CR0_WP | CR0_ET | CR0_PE)
        gdt.install(self)  # from now on descriptors load through the guest's tables
        uc.reg_write(_REG["rsi"], state.rsi)
        self.kernel_sp = state.rsp  # xg_dom_x86.c: kernel_ss/kernel_sp = ss/rsp

    # -- registers -----------------------------------------------------------------------

    def reg(self, name: str) -> int:
        return self._get(_REG[name])

    def regs(self, names: tuple[str, ...]) -> list[int]:
        """General registers in one ``uc_reg_read_batch`` call: the binding's
        ``reg_read`` picks a register class in Python per call (~3 us here),
        and even one ctypes call per register cost ~0.9 us each, which
        dominated a hypercall's cost (bench/vcpu.py, cProfile). The argument
        arrays are built once per tuple of names."""
        batch = self._batches.get(names)
        if batch is None:
            values = (ctypes.c_uint64 * len(names))()
            ptrs = (ctypes.c_void_p * len(names))(
                *(ctypes.addressof(values) + 8 * i for i in range(len(names))))
            ids = (ctypes.c_int * len(names))(*(_REG[n] for n in names))
            batch = self._batches[names] = (ids, ptrs, values, len(names))
        ids, ptrs, values, count = batch
        err = _uc_reg_read_batch(self.uc._uch, ids, ptrs, count)
        if err:
            raise UcError(err)
        return values[:]

    def seg(self, reg_id: int) -> int:
        """A segment selector (``UC_X86_REG_CS`` ...) through the C API, as :meth:`regs`."""
        self._val.value = 0  # a selector fills only the low bytes
        return self._get(reg_id) & 0xFFFF

    def set_reg(self, name: str, value: int) -> None:
        self._set(_REG[name], value)

    def _get(self, reg_id: int) -> int:
        err = _uc_reg_read(self.uc._uch, reg_id, self._val_ref)
        if err:
            raise UcError(err)
        return self._val.value

    def _set(self, reg_id: int, value: int) -> None:
        self._val.value = value & 0xFFFF_FFFF_FFFF_FFFF
        err = _uc_reg_write(self.uc._uch, reg_id, self._val_ref)
        if err:
            raise UcError(err)

    @property
    def cr3(self) -> int:
        return self.uc.reg_read(X.UC_X86_REG_CR3)

    def load_cr3(self, cr3: int) -> None:
        """Run on the L4 at ``cr3`` (guest-physical): Xen's slot put in it first
        (:func:`.gdt.ensure_slot`); Unicorn flushes its TLB on a CR3 write."""
        gdt.ensure_slot(self, cr3)
        self.uc.reg_write(X.UC_X86_REG_CR3, cr3)

    @property
    def cpl(self) -> int:
        """The current privilege level: 3 for a PV kernel (entered by iretq)."""
        return self.uc.reg_read(X.UC_X86_REG_CS) & 3

    # -- hooks: record and stop ------------------------------------------------------------

    def _on_syscall(self, uc: Uc, _user: object) -> None:
        # Xen's lstar_enter: a syscall in guest kernel mode is a hypercall; from
        # guest user mode it goes to the kernel's syscall callback.
        kind = ExitKind.HYPERCALL if self.kernel_mode else ExitKind.SYSCALL
        self.exit = Exit(kind, rip=self._get(X.UC_X86_REG_RIP))
        _uc_emu_stop(self.uc._uch)  # the binding's emu_stop, without its prototype overhead

    def _on_interrupt(self, uc: Uc, intno: int, _user: object) -> None:
        rip = self._get(X.UC_X86_REG_RIP)
        insn_len = softint.length(self.mem.read, self.mem.read_u64, self.cr3, intno, rip)
        if insn_len:
            # int N / int3: a trap with RIP past the instruction; nothing to re-run
            # (re-running would execute the *next* instruction). Measured: it leaves
            # no exception in flight.
            self.exit = Exit(ExitKind.TRAP, rip=rip, vector=intno, via_intr=True,
                             software=True, insn_len=insn_len)
            uc.emu_stop()
            return
        cr2 = uc.reg_read(X.UC_X86_REG_CR2) if intno == TRAP_PF else 0
        self.exit = Exit(ExitKind.TRAP, rip=uc.reg_read(X.UC_X86_REG_RIP), vector=intno,
                         cr2=cr2, via_intr=True)
        # In the hook, before QEMU goes on: the error code is still the fault's
        # and old_exception must be cleared now (see _take_exception_state).
        self.exit.error_code = self._take_exception_state(intno)
        uc.emu_stop()

    def _on_invalid(self, uc: Uc, _user: object) -> bool:
        self.exit = Exit(ExitKind.TRAP, rip=uc.reg_read(X.UC_X86_REG_RIP), vector=TRAP_UD)
        return False  # not handled here: emu_start ends with UC_ERR_INSN_INVALID

    # -- running ---------------------------------------------------------------------------

    def run_slice(self, count: int = 0) -> Exit:
        """Run until a trap, a :class:`SliceTimer` tick (or ``count`` instructions,
        when given); what stopped the vCPU."""
        self.exit = None
        self.slices += 1
        if self.tlb_stale:
            self.tlb_stale = False
            self.flush_tlb()
        self._clear_stale_exception()
        start = self._get(X.UC_X86_REG_RIP)
        try:
            self.uc.emu_start(start, _NEVER, count=count)
        except UcError as e:
            if self.exit is None:
                return Exit(ExitKind.ERROR, rip=self.reg("rip"), detail=str(e))
        ex = self.exit
        if ex is None:
            return Exit(ExitKind.SLICE, rip=self._get(X.UC_X86_REG_RIP))
        if ex.kind in (ExitKind.HYPERCALL, ExitKind.SYSCALL):
            # Quirk: Unicorn adds 2 after the hook; make it exact whatever it did.
            self._set(X.UC_X86_REG_RIP, ex.rip + 2)
        elif ex.kind is ExitKind.TRAP and ex.software:
            self._set(X.UC_X86_REG_RIP, ex.rip)
        elif ex.kind is ExitKind.TRAP and ex.via_intr:
            ex = self._precise_trap(ex)
        elif ex.kind is ExitKind.TRAP:  # #UD from UC_HOOK_INSN_INVALID: RIP is exact
            self._set(X.UC_X86_REG_RIP, ex.rip)
        return ex

    # -- the exception-state quirk -----------------------------------------------------------

    def _clear_stale_exception(self) -> None:
        """``old_exception`` back to -1 before a slice, when something left it set.

        Measured: a slice that ends at a hypercall can leave it at 14 with no
        fault the guest saw (a fault QEMU raised and swallowed while
        translating), and the guest's next real #PF then escalates to #DF and
        a triple fault stops the vCPU silently. Reading it costs one context
        copy into a context kept for this; it is written back only when set.
        """
        ctx = self._ctx
        off = self._ctx_error_code if self._ctx_error_code is not None \
            else _KNOWN_ERROR_CODE_OFFSET
        if self._old_exception is None or self._old_exception[0] != off:
            self._old_exception = (off, ctypes.c_int.from_address(ctx._context.value + off + 112))
        cell = self._old_exception[1]
        err = _uc_context_save(self.uc._uch, ctx._context)  # context_update, minus the binding
        if err:
            raise UcError(err)
        if cell.value != -1 and 0 <= cell.value < 32:
            cell.value = -1
            self.uc.context_restore(ctx)

    def _precise_trap(self, ex: Exit) -> Exit:
        """The fault of the instruction at ``ex.rip``, as the CPU raises it.

        Measured: in a slice without an instruction count, the first fault of
        an instruction does not reach UC_HOOK_INTR; Unicorn re-runs it and the
        hook sees the second one, escalated to #DF (8) by the stale
        ``old_exception``. So after any trap the exception state is cleared
        and the instruction re-run alone (``count=1``), where the hook gets
        the true vector and error code. Only traps pay for this.
        """
        self._take_exception_state(ex.vector)
        self.uc.reg_write(X.UC_X86_REG_RIP, ex.rip)
        self.exit = None
        try:
            self.uc.emu_start(ex.rip, _NEVER, count=1)
        except UcError as e:
            if self.exit is None:
                return Exit(ExitKind.ERROR, rip=ex.rip, detail=str(e))
        precise = self.exit
        if precise is None or precise.kind is not ExitKind.TRAP or not precise.via_intr:
            return precise or Exit(ExitKind.SLICE, rip=self.reg("rip"))  # it ran after all
        self._take_exception_state(precise.vector)
        self.uc.reg_write(X.UC_X86_REG_RIP, precise.rip)
        return precise

    def _take_exception_state(self, vector: int) -> int:
        """The fault's error code; QEMU's ``old_exception`` reset to -1.

        Both live only in the CPU context blob (``CPUX86State.error_code``
        and, 112 bytes on, ``old_exception``; pv-guest-abi.md §2.2). The
        offset is found on first use from the blob itself: the int32 pair
        (anything, ``vector``) with ``old_exception == vector`` at +112.
        """
        ctx = self.uc.context_save()
        raw = bytearray(bytes(ctx))
        off = self._ctx_error_code
        if off is None:
            off = self._ctx_error_code = _calibrate(raw, vector)
        error_code = struct.unpack_from("<i", raw, off)[0]
        struct.pack_into("<i", raw, off + 112, -1)
        ctypes.memmove(ctx._context, bytes(raw), len(raw))
        self.uc.context_restore(ctx)
        return error_code & 0xFFFF_FFFF

    def code_changed(self, gpa: int, length: int) -> None:
        """Frames ``gpa .. gpa+length`` were written outside this engine: retranslate.

        QEMU notices self-modifying code only for stores made through its
        own softmmu; a store by another process (a grant copy, the builder)
        into a code page would leave stale translated blocks.
        """
        # ctl_remove_cache(gpa range) did not drop the block (measured: stale
        # code ran); it seems to want virtual addresses. Flush all until known.
        del gpa, length
        self.uc.ctl_flush_tb()

    def flush_tlb(self) -> None:
        """Drop the softmmu TLB (after a PTE changed; ~1 us). The 2.1.4 binding
        has no helper for UC_CTL_TLB_FLUSH."""
        self.uc.ctl(_UC_CTL_TLB_FLUSH, _UC_CTL_IO_WRITE)

    def close(self) -> None:
        for h in self._hooks:
            self.uc.hook_del(h)
        self._hooks.clear()


class SliceTimer:
    """Ends the running slice of ``cpu`` every ``period`` seconds (a
    :class:`~.stopreq.StopRequest` from a thread; ctypes drops the GIL while
    the engine runs). A tick that lands between slices ends the next one at
    its first block: harmless."""

    def __init__(self, cpu: VCpu, period: float = SLICE_SECONDS) -> None:
        self.cpu, self.period = cpu, period
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._tick, name=f"vcpu{cpu.vcpu_id}-tick",
                                        daemon=True)

    def _tick(self) -> None:
        while not self._done.wait(self.period):
            self.cpu.request_stop()  # never uc.emu_stop from here: stopreq.py

    def __enter__(self) -> "SliceTimer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


_UC_CTL_IO_WRITE = 1
_UC_CTL_TLB_FLUSH = 11  # UC_CTL_TLB_FLUSH in unicorn.h (uc_control_type)

#: where CPUX86State.error_code sits in 2.1.4's context (pv-guest-abi.md §2.2)
_KNOWN_ERROR_CODE_OFFSET = 5424


def _calibrate(raw: bytearray, vector: int) -> int:
    """Offset of ``error_code`` in the context blob of this Unicorn build."""
    candidates = [_KNOWN_ERROR_CODE_OFFSET] + list(range(len(raw) - 116, -1, -4))
    for off in candidates:
        if 0 <= off <= len(raw) - 116 and struct.unpack_from("<i", raw, off + 112)[0] == vector:
            return off
    raise RuntimeError("cannot find old_exception in Unicorn's CPU context")
