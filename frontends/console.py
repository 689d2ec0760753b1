"""Guest side of the PV console (``xen/include/public/io/console.h``;
Linux's ``drivers/tty/hvc/hvc_xen.c`` is the frontend in Linux).

:class:`ConsoleFront` is the ring half over the guest's own console page
(``domain.map_gfn(domain.start_info.console_mfn)``): the guest produces into
``out`` and consumes ``in``. The backend's indices (``out_cons``,
``in_prod``) are read once per call and not trusted beyond the ring size.

Not yet done (deadline): the ``Console(domain)`` wrapper with the event
channel (``start_info.console_evtchn``), async read()/readline().
"""

from __future__ import annotations

from hypervisord.public.io.console import (
    MASK_XENCONS_IDX, XENCONS_IN_CONS_OFF, XENCONS_IN_OFF, XENCONS_IN_SIZE, XENCONS_INDICES,
    XENCONS_OUT_OFF, XENCONS_OUT_PROD_OFF, XENCONS_OUT_SIZE, XENCONS_RING_IDX)

_U32 = 2**32


class ConsoleFront:
    def __init__(self, page: memoryview) -> None:
        self.page = page

    def write(self, data: bytes) -> int:
        """Put as much of ``data`` as there is room for in ``out``; bytes taken."""
        _ic, _ip, cons, prod = XENCONS_INDICES.unpack_from(self.page, XENCONS_IN_CONS_OFF)
        used = (prod - cons) % _U32
        if used > XENCONS_OUT_SIZE:   # backend's out_cons not believable
            return 0
        n = min(len(data), XENCONS_OUT_SIZE - used)
        for i in range(n):
            self.page[XENCONS_OUT_OFF + MASK_XENCONS_IDX(prod + i, XENCONS_OUT_SIZE)] = data[i]
        XENCONS_RING_IDX.pack_into(self.page, XENCONS_OUT_PROD_OFF, (prod + n) % _U32)
        return n

    def read(self, limit: int = XENCONS_IN_SIZE) -> bytes:
        """Take up to ``limit`` bytes of input from ``in``; advance ``in_cons``."""
        cons, prod, _oc, _op = XENCONS_INDICES.unpack_from(self.page, XENCONS_IN_CONS_OFF)
        size = (prod - cons) % _U32
        if size > XENCONS_IN_SIZE:    # backend's in_prod not believable: drop it
            XENCONS_RING_IDX.pack_into(self.page, XENCONS_IN_CONS_OFF, prod)
            return b""
        size = min(size, max(limit, 0))
        out = bytes(self.page[XENCONS_IN_OFF + MASK_XENCONS_IDX(cons + i, XENCONS_IN_SIZE)]
                    for i in range(size))
        XENCONS_RING_IDX.pack_into(self.page, XENCONS_IN_CONS_OFF, (cons + size) % _U32)
        return out
