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

Not yet done (deadline): the per-domain driver (mapping, event channel, pty,
log file, XenStore ``~/console/tty``) and the guest/``xl console`` sides.
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
