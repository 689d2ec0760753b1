"""Ending a running slice from another thread, between guest instructions.

Unicorn's ``uc_emu_stop`` from another thread (the slice ticker, the event
waker) is not safe for guest code: Unicorn checks for an exit request after
every guest memory access, also after the store of a read-modify-write and
before that instruction's end (its flags, its register), and restarts the
whole instruction on the next slice. Measured on Unicorn 2.1.4 (``tests/pv/
test_event_race.py``): in a loop of ``lock incq`` nearly every slice end
counted one increment twice. A guest's ``lock btr`` of a pending event bit
then finds it clear on the rerun (the event is never handled), its ``xchg``
of ``evtchn_pending_sel`` takes 0, a ``lock cmpxchg`` that took a spinlock
fails on the rerun.

So another thread only *asks* (:meth:`StopRequest.request`: a flag), and the
slice ends where that is safe: a native ``UC_HOOK_BLOCK`` callback (17
bytes of x86-64 machine code in an executable page, no Python, a few
nanoseconds per translated block run) looks at the flag when a block starts and, when
set, clears it and calls ``uc_emu_stop`` itself, before the block's first
instruction (an exit request taken at a block's first memory access is
safe too: that access is a load, or a store that a rerun repeats
identically). Measured: no rerun (tests/pv/test_event_race.py). Cost:
Unicorn's dispatch of a block hook, paid per block run: bench/vcpu.py's
4-instruction register loop went from 1.33 to 0.81 G insn/s (loop_ratio
0.95 -> 0.58; a callback that only returns already costs 30%); the
hypercall rate and PV GRUB's boot did not move beyond the noise, as real
code has longer blocks and memory accesses, each of which already calls
into Unicorn. Hooks that end a slice from *inside* the
engine (hypercall, trap) are at an instruction boundary and keep calling
``emu_stop`` directly.

Where the host is not x86-64 (the machine code is SysV x86-64), the request
falls back to ``uc_emu_stop``, with the rerun hazard above.

The callback, as ``uc_cb_hookcode_t(uc, address, size, user_data)``::

    movzx eax, byte [rcx]      ; user_data->flag
    test  al, al
    jz    1f
    mov   byte [rcx], 0
    mov   rax, [rcx + 8]       ; user_data->uc_emu_stop
    jmp   rax                  ; tail call uc_emu_stop(uc): rdi is still uc
 1: ret
"""

from __future__ import annotations

import ctypes
import mmap
import platform

from unicorn import UC_HOOK_BLOCK, Uc

_HOOK = bytes.fromhex("0fb60184c07409c60100488b4108ffe0c3")


def _uclib():
    try:
        from unicorn.unicorn_py3.unicorn import uclib
    except ImportError:  # another binding layout: no native hook
        return None
    return uclib


class StopRequest:
    """A flag another thread sets; the engine stops at the next block start."""

    def __init__(self, uc: Uc) -> None:
        self._uc = uc
        self._page: mmap.mmap | None = None
        self._data = (ctypes.c_uint64 * 2)()  # flag (byte 0), uc_emu_stop's address
        self._flag = ctypes.c_uint8.from_address(ctypes.addressof(self._data))
        self.native = False
        lib = _uclib()
        if lib is None or platform.machine().lower() not in ("x86_64", "amd64"):
            return
        try:
            page = mmap.mmap(-1, mmap.PAGESIZE,
                             prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        except OSError:  # no executable anonymous memory here
            return
        page.write(_HOOK)
        self._page = page
        self._data[1] = ctypes.cast(lib.uc_emu_stop, ctypes.c_void_p).value
        hook = ctypes.addressof(ctypes.c_char.from_buffer(page))
        self._hh = ctypes.c_size_t()
        err = lib.uc_hook_add(uc._uch, ctypes.byref(self._hh), UC_HOOK_BLOCK,
                              ctypes.c_void_p(hook), ctypes.cast(self._data, ctypes.c_void_p),
                              1, 0)  # begin > end: every block
        self.native = err == 0
        # the engine calls into our page and data as long as it lives: keep
        # them alive with it, whoever holds the engine last
        uc._pvxen_stop_request = self

    def request(self) -> None:
        """End the running slice soon, between two guest instructions (any thread)."""
        if self.native:
            self._flag.value = 1
        else:
            self._uc.emu_stop()
