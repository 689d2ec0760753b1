"""The Unix-socket transport: a trio stream without trio's per-call scheduler trips.

:class:`trio.SocketStream` makes every ``receive_some`` and ``send_all`` a
full checkpoint: each call passes through the scheduler at least once even
when the data is already there or the socket has room (and ``recv`` twice:
a cancellation check before, a shielded checkpoint after). For xenstored's
request pattern, one small request answered by one small reply, those trips
are most of the cost of a round trip: measured with one synchronous client
(`python -m bench xenstore`, read row) they took a trio echo server from
~17 µs to ~48 µs per round trip.

:class:`UnixStream` keeps the stream interface the service uses
(``receive_some``, ``send_all``, ``aclose``) and goes to the scheduler only
when it must wait: a read that would block waits for readability, a write
that would block waits for room; otherwise the bytes move with one
``read()``/``write()`` on the non-blocking descriptor. So a reply is
written straight to the socket when it is writable.

Fairness: a client that keeps its socket full would let the reader loop run
without ever waiting, starving every other connection. After
:data:`YIELD_EVERY` consecutive calls that did not wait, one checkpoint
lets the others run (and delivers a pending cancellation).

Only one task may receive and one may send at a time (the service's reader
and its outbox's single flusher); trio's conflict detection is not repeated.
"""

from __future__ import annotations

import os

import trio

#: calls that did not wait, before one forced checkpoint
YIELD_EVERY = 32


class UnixStream:
    """``receive_some``/``send_all`` over a connected, non-blocking trio socket."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._fd = stream.socket.fileno()
        self._streak = 0

    async def _tick(self) -> None:
        self._streak += 1
        if self._streak >= YIELD_EVERY:
            self._streak = 0
            await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        fd = self._fd
        while True:
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                self._streak = 0
                await trio.lowlevel.wait_readable(fd)
                continue
            except OSError as e:
                raise _broken(e) from e
            await self._tick()
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        fd = self._fd
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            raise _broken(e) from e
        if sent == len(data):
            await self._tick()
            return
        view = memoryview(data)[sent:]
        while view:
            self._streak = 0
            await trio.lowlevel.wait_writable(fd)
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                continue
            except OSError as e:
                raise _broken(e) from e

    async def aclose(self) -> None:
        await self.stream.aclose()


def _broken(e: OSError) -> Exception:
    """A closed descriptor is ours to blame; anything else is the peer's."""
    if e.errno == 9:  # EBADF: aclose() ran
        return trio.ClosedResourceError("the stream was closed")
    return trio.BrokenResourceError(e)
