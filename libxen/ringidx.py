"""Single-access loads and stores of the words two processes share in a ring page.

A ring's producer and consumer indices (``io/ring.h``'s ``req_prod``,
``rsp_event`` ..., ``io/xs_wire.h``'s ``req_cons``/``rsp_prod`` ...,
``io/console.h``'s ``in_prod`` ...) and its connection flags are read by
one process while another writes them. Xen's C reads and writes each one
with one aligned access of its size (a plain ``RING_IDX`` assignment, or
``READ_ONCE``/``WRITE_ONCE`` in Linux's ``drivers/xen/xenbus/xenbus_comms.c``),
and orders them against the data with barriers: ``xen_wmb()`` (Linux
``virt_wmb()``) between filling the ring and publishing the producer index,
``xen_rmb()`` (``virt_rmb()``) between reading the producer index and
reading the ring, ``xen_mb()`` (``virt_mb()``) between the data copy and
publishing the consumer index, and between publishing an event index and
re-checking the producer (the final check of ``io/ring.h``).

CPython gives no such access: ``struct.pack_into`` first zeroes the whole
field (``s_pack_internal`` clears it, then packs), so a reader in another
process sees 0 now and then, and a lying index breaks the ring. Here every
such word is one ``atomics`` (PyPI) view, and its ``load``/``store`` are
sequentially consistent atomic operations: on x86-64 a ``mov`` for the
load and an ``xchg`` (a full barrier) for the store. That is at least as
strong as each of ``xen_wmb``/``xen_rmb``/``xen_mb`` where Xen puts them
next to an index access, so callers need no separate fence around them.

Cost model (see :mod:`libxen.shinfo`): making a view costs tens of
microseconds, so a ring makes one per word when it attaches and keeps it;
the kept view's C functions are called directly with a private scratch
word (about 0.3 us a call, against several for the view's methods). A word
is used by one thread at a time (trio code is); :meth:`SharedWord.close`
must run before the page is unmapped (a view pins the buffer).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import atomics
from atomics.exc import AlignmentError

from hypervisord.public.io.ring import SharedRing

_CTYPES = {1: ctypes.c_uint8, 2: ctypes.c_uint16, 4: ctypes.c_uint32, 8: ctypes.c_uint64}


_Ops = tuple[Callable[[], int], Callable[[int], None], Callable[[], None]]


def _fast_ops(owner: Any, view: Any, width: int) -> _Ops | None:
    """``(load, store, kill)`` closures over the view's C functions (10x its
    methods). They keep ``owner`` (the :class:`SharedWord`) alive, so a caller
    may keep just them; after ``kill()`` they raise instead of touching the
    raw address, so they can never reach an unmapped page.

    Relies on the package's internals (``_core``, the patomic signatures
    ``load(obj, order, res)`` and ``store(obj, desired, order)``); any change
    there falls back to the public methods.
    """
    try:
        from atomics._impl.enums import MemoryOrder, OpType

        core = view._core
        addr = core.address
        order = MemoryOrder.SEQ_CST.value
        fload = core.get_op_func(OpType.LOAD)
        fstore = core.get_op_func(OpType.STORE)
    except (ImportError, AttributeError):
        return None
    if fload is None or fstore is None:
        return None
    ctype = _CTYPES[width]
    got, put = ctype(), ctype()  # private scratch words, one per direction
    got_addr, put_addr = ctypes.addressof(got), ctypes.addressof(put)
    mask = (1 << (8 * width)) - 1
    live = [owner]

    def load() -> int:
        if live[0] is None:
            _released()
        fload(addr, order, got_addr)
        return got.value

    def store(value: int) -> None:
        if live[0] is None:
            _released()
        put.value = value & mask
        fstore(addr, put_addr, order)

    def kill() -> None:
        live[0] = None

    return load, store, kill


def _released(*_: object) -> Any:
    raise ValueError("shared ring word used after close")


def _method_ops(owner: Any, view: Any, width: int) -> _Ops:
    """The slow, public way (``view.load()``/``view.store()``), same contract."""
    mask = (1 << (8 * width)) - 1
    box = [(owner, view)]

    def load() -> int:
        if box[0] is None:
            _released()
        return box[0][1].load()

    def store(value: int) -> None:
        if box[0] is None:
            _released()
        box[0][1].store(value & mask)

    def kill() -> None:
        box[0] = None

    return load, store, kill


class SharedWord:
    """One naturally aligned unsigned word of a shared page.

    ``load()`` and ``store(value)`` are single atomic accesses of the word's
    width (sequentially consistent). ``store`` reduces ``value`` modulo
    2**(8*width), as a C assignment to a ``RING_IDX`` does.
    """

    __slots__ = ("_buf", "_ctx", "_kill", "_view", "load", "store", "width")

    def __init__(self, page: Any, offset: int, width: int = 4) -> None:
        if width not in _CTYPES:
            raise ValueError(f"no atomic access of width {width}")
        mv = memoryview(page)
        if offset < 0 or offset + width > len(mv):
            mv.release()
            raise ValueError(f"word at {offset} outside the {len(mv)}-byte page")
        self._buf = mv[offset:offset + width]
        mv.release()
        self.width = width
        try:
            # atomics refuses a misaligned buffer (it could not be one access).
            self._ctx = atomics.atomicview(buffer=self._buf, atype=atomics.UINT)
            self._view = self._ctx.__enter__()
        except BaseException as e:
            self._ctx = self._view = None
            self._buf.release()
            if isinstance(e, AlignmentError):
                raise ValueError(f"word at {offset} is not {width}-byte aligned") from e
            raise
        fast = _fast_ops(self, self._view, width)
        if fast is None:
            fast = _method_ops(self, self._view, width)
        self.load, self.store, self._kill = fast

    def close(self) -> None:
        """Release the view (idempotent); the word is unusable afterwards."""
        if getattr(self, "_ctx", None) is not None:
            # The fast ops hold a raw address: never let them outlive the view.
            self._kill()
            self.load = self.store = _released
            self._ctx.__exit__(None, None, None)
            self._ctx = self._view = None
            self._buf.release()

    def __del__(self) -> None:
        # Unreachable, its ops too, without close() (a process exiting):
        # release quietly instead of atomics' complaint about an open context.
        self.close()


def store_once(page: Any, offset: int, value: int, width: int = 4) -> None:
    """One atomic store to a word written once (a connection or feature flag)."""
    word = SharedWord(page, offset, width)
    try:
        word.store(value)
    finally:
        word.close()


def load_once(page: Any, offset: int, width: int = 4) -> int:
    """One atomic load of a word read once."""
    word = SharedWord(page, offset, width)
    try:
        return word.load()
    finally:
        word.close()


def index_accessor(page: Any, offset: int) -> tuple[Callable[[], int], Callable[[int], None],
                                                     Callable[[], None]]:
    """``(load, store, close)`` of the u32 ring index at ``offset``: the shape
    :class:`hypervisord.public.io.ring.SharedRing` takes its accessors in."""
    word = SharedWord(page, offset, 4)
    return word.load, word.store, word.close


def shared_ring(buf: Any, entry_size: int, size: int | None = None) -> SharedRing:
    """An ``io/ring.h`` :class:`~hypervisord.public.io.ring.SharedRing` whose
    four indices are atomic words: the one to use for a ring another process
    (a frontend, a backend) works on at the same time. ``close()`` it before
    the buffer is unmapped."""
    return SharedRing(buf, entry_size, size, index_access=index_accessor)
