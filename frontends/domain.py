"""The object a program guest gets: its domain, seen from inside.

``async def main(domain)`` in a guest program receives a :class:`Domain`:

* ``domid``, ``name``, ``args`` (the command line, split), ``start_info``
  (``struct start_info`` of ``xen.h``, read once from the guest's own
  memory: ``nr_pages``, the store and console pages and ports, ``cmd_line``);
* ``xc``: the domain's hypercall connection (``libxen.core.XenCall``),
  bound to this domid by hypervisord; the domid is never in a payload;
* memory by gfn: :meth:`map_gfn` (a shared ``mmap`` of guest frames),
  :meth:`read_gfn` / :meth:`write_gfn` (copies), ``shared_info`` (the
  domain's ``shared_info`` page);
* ``evtchn``: the domain's event channels, a ``XenEvtchn``
  (``libxen.evtchn``) over its notification stream
  (``evtchn_fd``), opened by the runtime before the program starts;
* ``await domain.open_gnttab()``: the domain's grant table
  (``libxen.gnttab.GrantTable``), one per domain, opened on first use;
* :meth:`alloc_gfns`: frames for rings and buffers (the builder leaves every
  frame below the magic pages free; a bump allocator hands them out);
* ``await domain.open_xenbus()``: a XenStore client over the store ring
  (``frontends.xenbus``), opened on first use so that guests that never
  touch the store do not need it;
* ``console``: console 0 (``frontends.console.Console`` over the console
  page and ``start_info.console_evtchn``): ``await domain.console.print(...)``,
  ``await domain.console.readline()``; backendd shows it as a pty;
* ``nursery``: for the guest's background tasks;
* ``shutdown_requested`` (a ``trio.Event``) and ``shutdown_reason``: set
  when the toolstack writes ``control/shutdown``; :meth:`wait_for_shutdown`.

The memory file a domain process holds is its own and nothing else
(``hypervisord/public/memfile.py`` layout: slot 0 shared_info, then grant frames,
then guest frame ``gfn`` at slot ``5 + gfn``).
"""

from __future__ import annotations

import inspect
import mmap
import os
from dataclasses import dataclass, field
from typing import Any

import trio

from hypervisord.public import memfile
from hypervisord.public.memfile import SHARED_INFO_SLOT
from hypervisord.public.sched import ShutdownReason
from hypervisord.public.xen import PAGE_SIZE, START_INFO, START_INFO_FIELDS, \
    XEN_START_INFO_MAGIC

#: control/shutdown values (Linux's drivers/xen/manage.c) -> SHUTDOWN_* reason
SHUTDOWN_REQUESTS = {
    "poweroff": ShutdownReason.SHUTDOWN_poweroff,
    "halt": ShutdownReason.SHUTDOWN_poweroff,
    "reboot": ShutdownReason.SHUTDOWN_reboot,
    "suspend": ShutdownReason.SHUTDOWN_suspend,
    "crash": ShutdownReason.SHUTDOWN_crash,
}


class StartInfoError(ValueError):
    """The start_info page is not what a domain builder writes."""


@dataclass(frozen=True, slots=True)
class StartInfo:
    nr_pages: int
    flags: int
    store_mfn: int  # a gfn: pvxen guests address their own frames by gfn
    store_evtchn: int
    console_mfn: int
    console_evtchn: int
    cmd_line: str

    @classmethod
    def parse(cls, page: bytes) -> "StartInfo":
        """Decode a copy of the page (read once: copy, then validate)."""
        fields = dict(zip(START_INFO_FIELDS, START_INFO.unpack_from(page)))
        magic = fields["magic"].rstrip(b"\0")
        if magic != XEN_START_INFO_MAGIC:
            raise StartInfoError(f"bad start_info magic {magic!r}")
        cmd = fields["cmd_line"].split(b"\0", 1)[0].decode("utf-8", "replace")
        return cls(fields["nr_pages"], fields["flags"], fields["store_mfn"],
                   fields["store_evtchn"], fields["console_mfn"], fields["console_evtchn"], cmd)


@dataclass(eq=False)
class Domain:
    domid: int
    name: str
    start_info: StartInfo
    xc: Any  # libxen.core.XenCall
    memory_fd: int
    evtchn_fd: int
    args: list[str] = field(default_factory=list)
    nursery: trio.Nursery | None = None
    shutdown_requested: trio.Event = field(default_factory=trio.Event)
    shutdown_reason: int | None = None
    _xenbus: Any = None
    _open_lock: trio.Lock = field(default_factory=trio.Lock)
    _xenbus_lock: trio.Lock = field(default_factory=trio.Lock)
    _evtchn: Any = None
    _gnttab: Any = None
    _console: Any = None
    _next_free_gfn: int = 0
    _maps: list[mmap.mmap] = field(default_factory=list)
    _shared_info: mmap.mmap | None = None

    # -- memory ------------------------------------------------------------------------
    def _check_range(self, gfn: int, count: int) -> None:
        if count < 1 or gfn < 0 or gfn + count > self.start_info.nr_pages:
            raise ValueError(f"gfns {gfn:#x}+{count} outside the domain's "
                             f"{self.start_info.nr_pages} pages")

    def map_gfn(self, gfn: int, count: int = 1, *, writable: bool = True) -> mmap.mmap:
        """Map ``count`` frames from ``gfn`` (shared: others see writes)."""
        self._check_range(gfn, count)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        m = mmap.mmap(self.memory_fd, count * PAGE_SIZE, mmap.MAP_SHARED, prot,
                      offset=memfile.gfn_offset(gfn))
        self._maps.append(m)
        return m

    def read_gfn(self, gfn: int, offset: int = 0, length: int = PAGE_SIZE) -> bytes:
        self._check_range(gfn, 1)
        if not 0 <= offset <= offset + length <= PAGE_SIZE:
            raise ValueError("read crosses the frame")
        return os.pread(self.memory_fd, length, memfile.gfn_offset(gfn) + offset)

    def write_gfn(self, gfn: int, data: bytes, offset: int = 0) -> None:
        self._check_range(gfn, 1)
        if not 0 <= offset <= offset + len(data) <= PAGE_SIZE:
            raise ValueError("write crosses the frame")
        os.pwrite(self.memory_fd, data, memfile.gfn_offset(gfn) + offset)

    def alloc_gfns(self, count: int = 1) -> int:
        """``count`` consecutive unused frames of this domain; returns the first gfn.

        Frames are never given back (a program guest's devices live as long
        as it does); the magic pages (start_info, console, store) at the end
        of memory are never handed out."""
        limit = min(self.start_info.store_mfn, self.start_info.console_mfn,
                    self.start_info.nr_pages - 3)
        if count < 1 or self._next_free_gfn + count > limit:
            raise MemoryError(f"no {count} free frames left below gfn {limit:#x}")
        gfn = self._next_free_gfn
        self._next_free_gfn += count
        return gfn

    @property
    def shared_info(self) -> mmap.mmap:
        if self._shared_info is None:
            self._shared_info = mmap.mmap(self.memory_fd, PAGE_SIZE, mmap.MAP_SHARED,
                                          offset=SHARED_INFO_SLOT * PAGE_SIZE)
        return self._shared_info

    # -- event channels and the store ----------------------------------------------------
    async def _hold(self, cm: Any, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Keep an async context open in a task of its own until the guest ends."""
        async with cm as value:
            task_status.started(value)
            await trio.sleep_forever()

    async def _open_context(self, cm: Any) -> Any:
        if self.nursery is None:
            raise RuntimeError("the domain is not running (no nursery)")
        return await self.nursery.start(self._hold, cm)

    async def open_evtchn(self) -> Any:
        """The event-channel client over ``evtchn_fd`` (``libxen.evtchn``)."""
        async with self._open_lock:
            if self._evtchn is None:
                from libxen.evtchn import XenEvtchn

                self._evtchn = await self._open_context(
                    XenEvtchn.open(self.xc, self.evtchn_fd, memory_fd=self.memory_fd))
        return self._evtchn

    async def open_gnttab(self) -> Any:
        """The domain's grant table (``libxen.gnttab.GrantTable``)."""
        async with self._open_lock:
            if self._gnttab is None:
                from libxen.gnttab import GrantTable

                self._gnttab = await GrantTable.open(self.xc, self.memory_fd)
        return self._gnttab

    @property
    def console(self) -> Any:
        """Console 0 (``frontends.console.Console``), made on first use."""
        if self._console is None:
            from frontends.console import Console, ConsoleFront

            if self._evtchn is None:
                raise RuntimeError("the console needs the domain's event channels")
            page = memoryview(self.map_gfn(self.start_info.console_mfn))
            self._console = Console(ConsoleFront(page), self._evtchn,
                                    self.start_info.console_evtchn)
        return self._console

    @property
    def evtchn(self) -> Any:
        """The event-channel client once :meth:`open_evtchn` (or xenbus) made it."""
        return self._evtchn

    async def open_xenbus(self) -> Any:
        """A XenStore client over the store ring (``frontends.xenbus.open_xenbus``)."""
        async with self._xenbus_lock:
            if self._xenbus is None:
                from frontends.xenbus import open_xenbus  # type: ignore[import-not-found]

                if len(inspect.signature(open_xenbus).parameters) == 1:
                    opened = open_xenbus(self)
                else:  # open_xenbus(evtchn, page, port)
                    evtchn = await self.open_evtchn()
                    page = memoryview(self.map_gfn(self.start_info.store_mfn))
                    opened = open_xenbus(evtchn, page, self.start_info.store_evtchn)
                if hasattr(opened, "__aenter__"):
                    self._xenbus = await self._open_context(opened)
                else:
                    self._xenbus = await opened
        return self._xenbus

    @property
    def xenbus(self) -> Any:
        """The store client if it has been opened, else None."""
        return self._xenbus

    # -- shutdown -------------------------------------------------------------------------
    def request_shutdown(self, reason: int) -> None:
        if self.shutdown_reason is None:
            self.shutdown_reason = reason
        self.shutdown_requested.set()

    async def wait_for_shutdown(self) -> int:
        """Sleep until the toolstack asks for a shutdown; returns the SHUTDOWN_* reason."""
        await self.shutdown_requested.wait()
        assert self.shutdown_reason is not None
        return self.shutdown_reason

    def close(self) -> None:
        if self._gnttab is not None:
            try:
                self._gnttab.close()
            except BufferError:
                pass
            self._gnttab = None
        for m in self._maps:
            try:
                m.close()
            except BufferError:
                pass  # a memoryview still refers to it; the process is ending anyway
        self._maps.clear()
        if self._shared_info is not None:
            try:
                self._shared_info.close()
            except BufferError:
                pass
            self._shared_info = None
