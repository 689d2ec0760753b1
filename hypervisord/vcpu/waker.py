"""The event-channel stream of a guest process, read in a thread.

hypervisord writes a u32 port number on the process's stream when one of
its ports goes pending (``hypervisord/server.py``, ``Connection.notify``);
the bits in ``shared_info`` are the truth, so for a PV vCPU the stream is a
doorbell only: each notification ends the running slice (``emu_stop``, as
the slice ticker does) and wakes a vCPU blocked in SCHEDOP_block/poll.
Measured effect: bench/vcpu.py's upcall latency.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable


class EventWaker:
    """The event-channel stream, read in a thread: each notification ends
    the running slice and wakes a blocked vCPU. ``fd`` None: no stream
    (in-process tests call :meth:`kick`)."""

    def __init__(self, fd: int | None, stop_engine: Callable[[], None]) -> None:
        self._event = threading.Event()
        self._stop_engine = stop_engine
        self.notifications = 0
        self.closed = fd is None
        self._thread: threading.Thread | None = None
        if fd is not None:
            self._fd = fd
            self._quit_r, self._quit_w = os.pipe()
            self._thread = threading.Thread(target=self._read, name="evtchn-waker", daemon=True)
            self._thread.start()

    def _read(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._quit_r, select.POLLIN)
        while True:
            ready = dict(poller.poll())
            if self._quit_r in ready:
                return
            try:
                data = os.read(self._fd, 4096)  # u32 ports: only a doorbell here
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # hypervisord went away: nothing will ever wake us
                self.closed = True
                self.kick()
                return
            self.notifications += 1
            self.kick()

    def kick(self) -> None:
        self._event.set()
        self._stop_engine()

    def arm(self) -> None:
        """Forget earlier kicks; the caller checks its condition next, then waits."""
        self._event.clear()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(max(timeout, 0.0))

    def close(self) -> None:
        if self._thread is None:
            return
        os.write(self._quit_w, b"q")
        self._thread.join()
        self._thread = None
        os.close(self._quit_r)
        os.close(self._quit_w)
