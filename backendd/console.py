"""The console ring logic of backendd's console backend (xenconsoled's part).

Mirrors what ``tools/console/daemon/io.c`` (``buffer_append``,
``handle_tty_read``) does with ``struct xencons_interface``
(``xen/include/public/io/console.h``, layout in
:mod:`hypervisord.public.io.console`): the guest writes ``out`` and
``out_prod``; the backend consumes into a bounded buffer and advances
``out_cons``; keyboard input goes into ``in`` up to the space the guest left
(``in_prod - in_cons`` never exceeds sizeof(in)).

The indices are guest-written, hence hostile: they are read once per pass,
and a producer more than a ring ahead of the consumer (or behind it) is not
trusted. Like xenconsoled (which discards such data: "Warning, illegal
out-ring"), the backend then drops what is in the ring by setting ``out_cons``
to the producer, logs it, and carries on; it never reads outside the ring.

Beside the ring, the two other pure pieces of xenconsoled's per-console
state: :class:`OutputBuffer` (``struct buffer`` with ``buffer_append`` /
``buffer_advance``: output waiting for the pty, bounded by ``~/console/limit``)
and :class:`RateLimit` (``RATE_LIMIT_ALLOWANCE`` events per
``RATE_LIMIT_PERIOD``). The service that drives them is
:mod:`backendd.consoled`.
"""

from __future__ import annotations

import logging

from hypervisord.public.io.console import (
    MASK_XENCONS_IDX, XENCONS_IN_CONS_OFF, XENCONS_IN_OFF, XENCONS_IN_PROD_OFF,
    XENCONS_IN_SIZE, XENCONS_INDICES, XENCONS_OUT_CONS_OFF, XENCONS_OUT_OFF, XENCONS_OUT_SIZE,
    XENCONS_RING_IDX)

log = logging.getLogger("backendd.console")
_U32 = 2**32


class ConsoleRing:
    """One mapped console page (any writable buffer of at least 3092 bytes).

    ``illegal`` counts passes where the guest's out indices were not
    believable (each one discarded the ring's contents)."""

    def __init__(self, page: memoryview, name: str = "console") -> None:
        self.page = page
        self.name = name
        self.illegal = 0

    def _indices(self) -> tuple[int, int, int, int]:
        return XENCONS_INDICES.unpack_from(self.page, XENCONS_IN_CONS_OFF)

    def read_output(self, limit: int = XENCONS_OUT_SIZE) -> bytes:
        """Take up to ``limit`` bytes the guest printed; advance ``out_cons``."""
        _in_cons, _in_prod, cons, prod = self._indices()   # one copy of the indices
        size = (prod - cons) % _U32
        if size > XENCONS_OUT_SIZE:
            # a producer ahead by more than the ring, or behind the consumer
            self.illegal += 1
            log.warning("%s: illegal out ring (cons %d prod %d): discarded",
                        self.name, cons, prod)
            XENCONS_RING_IDX.pack_into(self.page, XENCONS_OUT_CONS_OFF, prod)
            return b""
        size = min(size, max(limit, 0))
        out = bytearray()
        for i in range(size):   # byte-wise through the mask: never outside out[]
            out.append(self.page[XENCONS_OUT_OFF + MASK_XENCONS_IDX(cons + i, XENCONS_OUT_SIZE)])
        XENCONS_RING_IDX.pack_into(self.page, XENCONS_OUT_CONS_OFF, (cons + size) % _U32)
        return bytes(out)

    def in_space(self) -> int:
        """Room for input the guest left in ``in`` (0 when the guest does not read)."""
        cons, prod, _oc, _op = self._indices()
        used = (prod - cons) % _U32
        return 0 if used > XENCONS_IN_SIZE else XENCONS_IN_SIZE - used

    def write_input(self, data: bytes) -> int:
        """Put as much of ``data`` as fits into ``in``; returns bytes taken."""
        cons, prod, _oc, _op = self._indices()
        used = (prod - cons) % _U32
        if used > XENCONS_IN_SIZE:   # the guest's in_cons is not believable
            self.illegal += 1
            return 0
        n = min(len(data), XENCONS_IN_SIZE - used)
        for i in range(n):
            self.page[XENCONS_IN_OFF + MASK_XENCONS_IDX(prod + i, XENCONS_IN_SIZE)] = data[i]
        XENCONS_RING_IDX.pack_into(self.page, XENCONS_IN_PROD_OFF, (prod + n) % _U32)
        return n


# -- output waiting for the pty (io.c struct buffer) -----------------------------------

class OutputBuffer:
    """What the guest printed and the pty has not taken yet.

    As xenconsoled with ``discard_overflowed_data`` (its default): the
    buffer may grow to 5/4 of ``max_capacity``; past that, if more than a
    quarter was already written out, the written part is dropped, else the
    middle goes (the first half of the capacity and the newest data stay).
    So a pty nobody reads costs at most 5/4 of the limit, whatever the
    guest prints. ``discarded`` counts the bytes thrown away.

    Worked example, ``max_capacity`` 8: 11 bytes ``abcdefghijk`` arrive,
    none written out: 11 > 10, so ``over`` = 3, and the buffer becomes
    ``abcd`` + ``ijk`` (first half kept, then the newest bytes)."""

    def __init__(self, max_capacity: int) -> None:
        self.max_capacity = max(max_capacity, 0)
        self._data = bytearray()
        self._consumed = 0
        self.discarded = 0

    def __len__(self) -> int:
        return len(self._data) - self._consumed

    def append(self, data: bytes) -> None:
        self._data += data
        cap = self.max_capacity
        if cap and len(self._data) > 5 * cap // 4:
            if self._consumed > cap // 4:
                del self._data[:self._consumed]
                self._consumed = 0
            else:
                over = len(self._data) - cap
                self.discarded += len(self._data) - (cap // 2 + over)
                del self._data[cap // 2:cap]
                self._consumed = min(self._consumed, cap // 2)

    def peek(self, limit: int) -> bytes:
        return bytes(self._data[self._consumed:self._consumed + limit])

    def advance(self, n: int) -> None:
        self._consumed += n
        if self._consumed >= len(self._data):
            self._data = bytearray()
            self._consumed = 0


# -- per-domain rate limit (io.c RATE_LIMIT_*) ------------------------------------------

RATE_LIMIT_ALLOWANCE = 30   # events allowed in each period (tools/console/daemon/io.c)
RATE_LIMIT_PERIOD = 0.200   # seconds (io.c: 200 ms)


class RateLimit:
    """xenconsoled's event budget: each event channel notification counts
    one; a domain that used ``allowance`` events in the current period is
    not served again until the period ends (its notifications coalesce in
    the pending bit meanwhile). Each event drains at most a ring's worth
    (2048 bytes), so a flooding guest gets ``allowance * 2048`` bytes per
    period (300 KiB/s with Xen's numbers) and costs no more."""

    def __init__(self, allowance: int = RATE_LIMIT_ALLOWANCE,
                 period: float = RATE_LIMIT_PERIOD) -> None:
        self.allowance = allowance
        self.period = period
        self.count = 0
        self.next_period: float | None = None
        self.throttled = 0  # periods cut short

    def event(self, now: float) -> float:
        """Count one event at ``now``; the seconds to pause before the next
        one is served (0 while under the allowance)."""
        if self.next_period is None or now >= self.next_period:
            self.next_period = now + self.period
            self.count = 0
        self.count += 1
        if self.count >= self.allowance:
            self.throttled += 1
            return self.next_period - now
        return 0.0
