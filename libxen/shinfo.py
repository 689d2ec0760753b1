"""Atomic access to the event-channel bits of one ``shared_info`` page.

Follows the 2-level event-channel ABI of ``xen/include/public/xen.h``
(``struct shared_info``: ``evtchn_pending[64]`` / ``evtchn_mask[64]``;
``struct vcpu_info``: ``evtchn_upcall_pending``, ``evtchn_pending_sel``)
and the bit protocol of Xen's ``xen/common/event_2l.c``.

The page is shared between processes that change it concurrently:
hypervisord sets pending bits, the domain's process clears them, either
side may flip mask bits. Every change is therefore a real atomic
read-modify-write on the shared memory (x86 ``lock bts``/``lock btr``,
through the PyPI ``atomics`` package), never a Python read-then-write.
Used by hypervisord (:mod:`hypervisord.evtchn`) and by the client side
(:mod:`libxen.evtchn`) alike.

Cost model: creating an ``atomics`` view costs tens of microseconds, using
a kept one a few, and calling its operation directly a fraction of one.
So each 64-bit word gets ONE view, made the first time a port in it is
touched (a domain with a handful of ports makes one or two) and kept
until :meth:`SharedInfoBits.close`, which must run before the page is
unmapped (a view pins the buffer: ``mmap.close`` refuses while one lives).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import atomics

from hypervisord.public.xen import (
    SHARED_INFO_EVTCHN_MASK_OFF,
    SHARED_INFO_EVTCHN_PENDING_OFF,
    SHARED_INFO_VCPU_INFO_OFF,
    VCPU_INFO_EVTCHN_PENDING_SEL_OFF,
    VCPU_INFO_EVTCHN_UPCALL_PENDING_OFF,
    VCPU_INFO_SIZE,
    XEN_LEGACY_MAX_VCPUS,
)

BITS_PER_WORD = 64  # BITS_PER_EVTCHN_WORD on x86-64: xen_ulong_t
NR_PORTS_2L = BITS_PER_WORD * BITS_PER_WORD  # EVTCHN_2L_NR_CHANNELS

_BitOp = Callable[[int], Any]  # bit index -> truthy old value


def _fast_ops(view: Any) -> tuple[_BitOp, _BitOp, _BitOp] | None:
    """The view's C functions, bound to its address (10x faster than its methods).

    Relies on the package's internals (``_core``); any change there falls back
    to the public, slower methods in :class:`AtomicWord`.
    """
    try:
        from atomics._impl.enums import MemoryOrder, OpType

        core = view._core
        addr = core.address
        order = MemoryOrder.SEQ_CST.value
        bts = core.get_op_func(OpType.BIT_TEST_SET)
        btr = core.get_op_func(OpType.BIT_TEST_RESET)
        bt = core.get_op_func(OpType.BIT_TEST)
    except (ImportError, AttributeError):
        return None
    if bts is None or btr is None or bt is None:
        return None
    return (lambda bit: bts(addr, bit, order),
            lambda bit: btr(addr, bit, order),
            lambda bit: bt(addr, bit, order))


def _released(bit: int) -> Any:
    raise ValueError("atomic word used after release")


class AtomicWord:
    """One naturally aligned unsigned word of shared memory, with atomic bit ops.

    ``test_and_set(bit)``, ``test_and_clear(bit)`` and ``test(bit)`` return the
    bit's value before the operation (truthy/falsy).
    """

    __slots__ = ("_buf", "_ctx", "_view", "test_and_set", "test_and_clear", "test")

    def __init__(self, buf: memoryview) -> None:
        self._buf = buf
        self._ctx = atomics.atomicview(buffer=buf, atype=atomics.UINT)
        self._view = self._ctx.__enter__()
        fast = _fast_ops(self._view)
        if fast is None:
            fast = (self._view.bit_test_set, self._view.bit_test_reset, self._view.bit_test)
        self.test_and_set, self.test_and_clear, self.test = fast

    def load(self) -> int:
        return self._view.load()

    def close(self) -> None:
        if getattr(self, "_ctx", None) is not None:
            self._ctx.__exit__(None, None, None)
            self._ctx = None
            self._view = None
            self._buf.release()
            # The fast ops hold a raw address: never let them outlive the view.
            self.test_and_set = self.test_and_clear = self.test = _released

    def __del__(self) -> None:
        # A word dropped without close() (a process exiting) still releases
        # its view quietly, instead of atomics' complaint about an open context.
        self.close()


class SharedInfoBits:
    """The event-channel bits of one domain's ``shared_info`` page.

    Ports outside ``0 .. NR_PORTS_2L-1`` and vCPUs outside the legacy
    ``vcpu_info`` array raise :class:`ValueError`: callers validate ports
    against their own limits first.
    """

    def __init__(self, page: Any) -> None:
        self._mv = memoryview(page)
        self._pending: list[AtomicWord | None] = [None] * BITS_PER_WORD
        self._mask: list[AtomicWord | None] = [None] * BITS_PER_WORD
        self._sel: dict[int, AtomicWord] = {}
        self._upcall: dict[int, AtomicWord] = {}
        self._closed = False

    # -- views, made once per word ---------------------------------------------
    def _word(self, table: list[AtomicWord | None], base: int, idx: int) -> AtomicWord:
        w = table[idx]
        if w is None:
            if self._closed:
                raise ValueError("shared_info bits already released")
            off = base + idx * 8
            w = table[idx] = AtomicWord(self._mv[off:off + 8])
        return w

    def _pending_word(self, port: int) -> AtomicWord:
        if not 0 <= port < NR_PORTS_2L:
            raise ValueError(f"port {port} outside the 2-level ABI")
        return self._pending[port >> 6] or self._word(
            self._pending, SHARED_INFO_EVTCHN_PENDING_OFF, port >> 6)

    def _mask_word(self, port: int) -> AtomicWord:
        if not 0 <= port < NR_PORTS_2L:
            raise ValueError(f"port {port} outside the 2-level ABI")
        return self._mask[port >> 6] or self._word(
            self._mask, SHARED_INFO_EVTCHN_MASK_OFF, port >> 6)

    def _vcpu_word(self, table: dict[int, AtomicWord], vcpu: int, field: int,
                   width: int) -> AtomicWord:
        w = table.get(vcpu)
        if w is None:
            if not 0 <= vcpu < XEN_LEGACY_MAX_VCPUS:
                raise ValueError(f"vcpu {vcpu} has no legacy vcpu_info")
            if self._closed:
                raise ValueError("shared_info bits already released")
            off = SHARED_INFO_VCPU_INFO_OFF + vcpu * VCPU_INFO_SIZE + field
            w = table[vcpu] = AtomicWord(self._mv[off:off + width])
        return w

    # -- the 2-level protocol (event_2l.c) -------------------------------------------
    def set_pending(self, port: int, vcpu: int = 0) -> bool:
        """Mark ``port`` pending; True when the owner must be notified.

        That is when the pending bit went 0 -> 1 and the port is not masked:
        further sends before the owner clears the bit coalesce into nothing.
        As Xen, also set the vCPU's selector bit and, when that went 0 -> 1,
        ``evtchn_upcall_pending``.
        """
        if self._pending_word(port).test_and_set(port & 63):
            return False
        if self._mask_word(port).test(port & 63):
            return False
        self._mark_vcpu(port, vcpu)
        return True

    def _mark_vcpu(self, port: int, vcpu: int) -> None:
        sel = self._vcpu_word(self._sel, vcpu, VCPU_INFO_EVTCHN_PENDING_SEL_OFF, 8)
        if not sel.test_and_set(port >> 6):
            up = self._vcpu_word(self._upcall, vcpu, VCPU_INFO_EVTCHN_UPCALL_PENDING_OFF, 1)
            up.test_and_set(0)

    def clear_pending(self, port: int) -> bool:
        """Test-and-clear the pending bit (the receiver's first step)."""
        return bool(self._pending_word(port).test_and_clear(port & 63))

    def is_pending(self, port: int) -> bool:
        return bool(self._pending_word(port).test(port & 63))

    def is_masked(self, port: int) -> bool:
        return bool(self._mask_word(port).test(port & 63))

    def mask(self, port: int) -> bool:
        """Set the mask bit; returns whether it was already set."""
        return bool(self._mask_word(port).test_and_set(port & 63))

    def unmask(self, port: int, vcpu: int = 0) -> bool:
        """Xen's ``evtchn_2l_unmask``: True when the port must be notified now.

        That is when the mask bit was set and the port is pending: the
        event that arrived while masked is delivered on unmask.
        """
        if not self._mask_word(port).test_and_clear(port & 63):
            return False
        if not self._pending_word(port).test(port & 63):
            return False
        self._mark_vcpu(port, vcpu)
        return True

    def reset_port(self, port: int) -> None:
        """A freed port: clear its pending bit (Xen's evtchn_free) and its mask.

        Xen leaves the mask bit to the guest kernel, which masks ports when
        it unbinds them; pvxen processes have no such kernel, so a port is
        handed out again unmasked, as a fresh shared_info has them all.
        """
        self._pending_word(port).test_and_clear(port & 63)
        self._mask_word(port).test_and_clear(port & 63)

    # -- teardown ----------------------------------------------------------------------
    def close(self) -> None:
        """Release every view (before the page is unmapped). Idempotent."""
        self._closed = True
        words = [w for w in self._pending + self._mask if w is not None]
        words += list(self._sel.values()) + list(self._upcall.values())
        for w in words:
            w.close()
        self._pending = [None] * BITS_PER_WORD
        self._mask = [None] * BITS_PER_WORD
        self._sel.clear()
        self._upcall.clear()
        self._mv.release()

    @property
    def views(self) -> int:
        """How many atomic views are held (tests check they are released)."""
        return (sum(w is not None for w in self._pending + self._mask)
                + len(self._sel) + len(self._upcall))
