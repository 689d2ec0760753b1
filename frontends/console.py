"""Guest side of the PV console (``xen/include/public/io/console.h``;
Linux's ``drivers/tty/hvc/hvc_xen.c`` is the frontend in Linux).

:class:`ConsoleFront` is the ring half over the guest's own console page
(``domain.map_gfn(domain.start_info.console_mfn)``): the guest produces into
``out`` and consumes ``in``. The backend's indices (``out_cons``,
``in_prod``) are read once per call and not trusted beyond the ring size.

:class:`Console` is what a program guest uses (``domain.console``): the ring
plus the event channel ``start_info.console_evtchn``, notified after each
write (as ``hvc_xen``'s ``notify_daemon``) and waited on for room and for
input. :meth:`Console.print` turns ``\n`` into ``\r\n`` as a Linux
guest's tty does (``ONLCR``): the pty on the backend side is raw.
"""

from __future__ import annotations

import trio

from hypervisord.public.io.console import (
    MASK_XENCONS_IDX, XENCONS_IN_CONS_OFF, XENCONS_IN_OFF, XENCONS_IN_SIZE, XENCONS_INDICES,
    XENCONS_OUT_OFF, XENCONS_OUT_PROD_OFF, XENCONS_OUT_SIZE, XENCONS_RING_IDX)

_U32 = 2**32
#: a waiter looks at the ring again after this long even without an event
#: (a notification the backend dropped costs a delay, never a hang)
WAIT_SLICE = 0.5


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


class Console:
    """Console 0 of a program guest: ``await console.print("hello")``,
    ``await console.read()``, ``await console.readline()``."""

    def __init__(self, ring: ConsoleFront, evtchn, port: int) -> None:
        self.ring = ring
        self.evtchn = evtchn
        self.port = port
        self._pending = bytearray()  # input read from the ring, not yet returned

    async def _wait(self) -> None:
        with trio.move_on_after(WAIT_SLICE):
            await self.evtchn.wait_port(self.port)

    async def write(self, data: bytes) -> None:
        """All of ``data``, waiting for the backend to make room."""
        view = memoryview(data)
        while view:
            n = self.ring.write(view)
            if n:
                self.evtchn.notify_soon(self.port)
                view = view[n:]
            else:
                await self._wait()

    async def print(self, *values: object, sep: str = " ", end: str = "\n") -> None:
        text = sep.join(str(v) for v in values) + end
        await self.write(text.replace("\r\n", "\n").replace("\n", "\r\n").encode())

    async def read(self, limit: int = XENCONS_IN_SIZE) -> bytes:
        """At least one byte of input (at most ``limit``); waits for it."""
        while not self._pending:
            data = self.ring.read()
            if data:
                self.evtchn.notify_soon(self.port)  # room in in[] again
                self._pending += data
            else:
                await self._wait()
        out = bytes(self._pending[:limit])
        del self._pending[:limit]
        return out

    async def readline(self) -> bytes:
        """Input up to and including a ``\r`` or ``\n`` (a terminal sends ``\r``)."""
        line = bytearray()
        while True:
            while not self._pending:
                self._pending += await self.read()
            for i, b in enumerate(self._pending):
                if b in b"\r\n":
                    line += self._pending[:i + 1]
                    del self._pending[:i + 1]
                    return bytes(line)
            line += self._pending
            self._pending.clear()
