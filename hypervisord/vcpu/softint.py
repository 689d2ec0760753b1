"""Telling a software interrupt from a CPU exception in Unicorn's UC_HOOK_INTR (pure).

Quirk (measured, Unicorn 2.1.4): ``int N`` and ``int3`` reach UC_HOOK_INTR
just as CPU exceptions do; the IDT (and so its gate DPLs) is never
consulted and nothing public says which kind it was. RIP differs: past a
software interrupt (a trap), at the faulting instruction for a fault. So:

* a vector >= 32 is software (Unicorn raises no external interrupts);
* #BP (3) is software when the byte before RIP is ``cc`` (``int3``) or the
  two are ``cd 03``;
* any other vector is software when the two bytes before RIP are
  ``cd <vector>``. A fault whose instruction follows such bytes would be
  misread; only a guest's own code can arrange that, and it only confuses
  that guest.

Worked example: ``int $0x80`` at 0x1000 stops with intno 0x80, RIP 0x1002:
length 2, and RIP stays where it is (the handler returns to 0x1002).
``xor %ecx,%ecx; div %ecx`` at 0x1003 stops with intno 0 and RIP 0x1005,
at the ``div``; the two bytes before it are ``31 c9``, not ``cd 00``: an
exception, which the vCPU re-runs alone for its precise state.
"""

from __future__ import annotations

from collections.abc import Callable

from . import paging


def code_before(read: Callable[[int, int], bytes], read_pte: paging.ReadPte, cr3: int,
                rip: int, n: int) -> bytes:
    """The ``n`` bytes before ``rip`` under the tables at ``cr3`` (unreadable ones as 0)."""
    if (rip - n) >> paging.PAGE_SHIFT == (rip - 1) >> paging.PAGE_SHIFT:
        try:  # the usual case: one page, one walk
            return read(paging.walk(read_pte, cr3, rip - n), n)
        except (paging.PageFault, IndexError):
            return bytes(n)
    out = b""
    for va in range(rip - n, rip):  # byte by byte across the page boundary
        try:
            out += read(paging.walk(read_pte, cr3, va), 1)
        except (paging.PageFault, IndexError):
            out += b"\0"
    return out


def length(read: Callable[[int, int], bytes], read_pte: paging.ReadPte, cr3: int,
           intno: int, rip: int) -> int:
    """Length of the ``int3`` (1) / ``int N`` (2) that raised ``intno``; 0: an exception."""
    if intno >= 32:
        return 2
    before = code_before(read, read_pte, cr3, rip, 2)
    if intno == 3 and before[-1:] == b"\xcc":
        return 1
    return 2 if before == bytes((0xCD, intno)) else 0
