"""The event-channel stream of a guest process, read in a thread.

hypervisord writes a u32 entry on the process's stream when one of its
ports goes pending (``hypervisord/server.py``, ``Connection.notify``).
Each notification ends the running slice (``VCpu.request_stop``, between
two guest instructions: :mod:`.stopreq`; as the slice ticker does) and
wakes a vCPU blocked in SCHEDOP_block/poll. Measured effect: bench/vcpu.py's
upcall latency.

The entries are kept too (``port | vcpu << EVTCHN_NOTIFY_VCPU_SHIFT``,
deduplicated, in arrival order) for :meth:`EventWaker.take`: a vCPU
process that owns its event bits (``pvxen_op.evtchn_vcpu_bits``) applies
them between slices (:mod:`.events`). :meth:`EventWaker.take` also reads
what the socket holds at that moment, so an event hypervisord queued while
serving the vCPU's own hypercall is seen right after that hypercall, as in
Xen. The reader never blocks hypervisord: it drains the socket into a set
of at most one entry per port and vCPU.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
from collections.abc import Callable

_ENTRY = struct.Struct("<I")
_READ = 65536


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
        self._lock = threading.Lock()  # the socket's reads and the entries
        self._entries: dict[int, None] = {}
        self._partial = b""
        #: entries wait for :meth:`take` (read without the lock: a hint)
        self.queued = False
        self._sock: socket.socket | None = None
        if fd is not None:
            self._fd = fd
            # our own handle, for MSG_DONTWAIT reads (the fd's flags stay as they are)
            self._sock = socket.socket(fileno=os.dup(fd))
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
            with self._lock:
                got = self._read_some()
            if got is None:  # hypervisord went away: nothing will ever wake us
                self.closed = True
                self.kick()
                return
            if got:
                self.notifications += 1
                self.kick()

    def _read_some(self) -> bool | None:
        """Read what the socket holds now (lock held); None at EOF."""
        assert self._sock is not None
        got = False
        while True:
            try:
                data = self._sock.recv(_READ, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return got
            except OSError:
                data = b""
            if not data:
                return None if not got else got
            got = True
            data = self._partial + data
            whole = len(data) - len(data) % _ENTRY.size
            self._partial = data[whole:]
            for (entry,) in _ENTRY.iter_unpack(data[:whole]):
                self._entries[entry] = None
            if self._entries:
                self.queued = True
            if len(data) < _READ:
                return got

    def take(self) -> list[int]:
        """The entries received so far, the socket's too; forgotten here."""
        with self._lock:
            if self._sock is not None and not self.closed:
                if self._read_some() is None:
                    self.closed = True
            entries = list(self._entries)
            self._entries.clear()
            self.queued = False
        return entries

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
        if self._sock is not None:
            self._sock.close()
            self._sock = None
