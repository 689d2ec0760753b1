"""Event channels for a process: libxenevtchn's job, for trio.

Follows ``xen/include/public/event_channel.h`` (the ops) and the 2-level
receive protocol of Xen guests: a notification says "look at this port";
the receiver atomically **tests and clears** the port's pending bit in its
domain's ``shared_info`` and only then handles the event, so an event
that arrives while it is handling the previous one sets the bit again and
is noticed (no lost wakeup). A notification whose bit is already clear is
stale (the port was closed, or a resend) and is dropped.

Where the pieces come from:

* ``xc``: the process's :class:`~libxen.core.XenCall`;
* the event-channel stream (u32 LE port numbers, written by hypervisord
  only when a port's pending bit goes 0 -> 1): from ``pvxen attach`` for a
  dom0 process, from the toolstack (``connect_domain``) for a domU;
* ``shared_info``: slot 0 of the domain's memory file (same sources).

Receiving, two styles (a port is served by one of them)::

    async for port in xe.pending():      # any port with no wait_port() user
        ...
    await xe.wait_port(port)            # one port: rings and backends

``wait_port`` remembers an event that fired while nobody waited, so the
loop "process the ring; await wait_port(port)" never misses one.
"""

from __future__ import annotations

import logging
import mmap
import os
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from libxen.core import XenCall, XenError
from hypervisord.public.memfile import SHARED_INFO_SLOT
from hypervisord.public.event_channel import EvtchnOp as Op
from hypervisord.public.pvxen import EVTCHN_NOTIFY_DOORBELL, HYPERVISOR_pvxen_op, PvxenOp
from libxen.rpc import fds_from_ancillary
from hypervisord.public.xen import DOMID_SELF, PAGE_SIZE, Hypercall
from libxen.shinfo import NR_PORTS_2L, SharedInfoBits

log = logging.getLogger(__name__)
_PORT = struct.Struct("<I")
EVTCHN_OP = Hypercall.event_channel_op


@dataclass(frozen=True, slots=True)
class EvtchnStatus:
    """``struct evtchn_status`` OUT, with the union flattened."""

    status: int  # EvtchnStat
    vcpu: int
    dom: int | None = None  # unbound: who may bind; interdomain: the peer
    port: int | None = None  # interdomain: the peer's port
    virq: int | None = None

    @classmethod
    def from_result(cls, r: dict) -> "EvtchnStatus":
        u = r.get("u") or {}
        peer = u.get("unbound") or u.get("interdomain") or {}
        return cls(r["status"], r["vcpu"], peer.get("dom"), peer.get("port"), u.get("virq"))


def map_shared_info(memory_fd: int) -> mmap.mmap:
    """Map the domain's ``shared_info`` page (slot 0 of its memory file)."""
    return mmap.mmap(memory_fd, PAGE_SIZE, mmap.MAP_SHARED,
                     mmap.PROT_READ | mmap.PROT_WRITE, offset=SHARED_INFO_SLOT * PAGE_SIZE)


class XenEvtchn:
    """One process's event channels (``xenevtchn_handle``)."""

    def __init__(self, xc: XenCall, sock: trio.socket.SocketType, shared_info: Any) -> None:
        self.xc = xc
        self.bits = SharedInfoBits(shared_info)
        self._sock = sock
        self._ready: dict[int, None] = {}  # fired, unclaimed ports, oldest first
        self._ready_event = trio.Event()
        self._claimed: set[int] = set()  # ports served by wait_port()
        self._fired: set[int] = set()  # claimed ports that fired with no waiter
        self._waiters: dict[int, trio.Event] = {}
        self._nwaiting: dict[int, int] = {}  # tasks in wait_port(), per port
        self._broken: BaseException | None = None
        self._nursery: trio.Nursery | None = None
        self._doorbells: dict[int, Any] = {}  # port -> the channel's doorbell socket
        #: notifications read from the stream (stale ones included)
        self.received = 0

    # -- opening ----------------------------------------------------------------------
    @classmethod
    @asynccontextmanager
    async def open(cls, xc: XenCall, evtchn_fd: int, memory_fd: int | None = None,
                   shared_info: Any = None) -> AsyncIterator["XenEvtchn"]:
        """Serve the stream ``evtchn_fd`` (owned from now on) with this domain's bits.

        Give either ``memory_fd`` (mapped here; the fd stays the caller's)
        or an already mapped ``shared_info``.
        """
        sock = trio.socket.from_stdlib_socket(socket.socket(fileno=evtchn_fd))
        own_map = shared_info is None
        try:
            if own_map:
                if memory_fd is None:
                    raise ValueError("need memory_fd or shared_info")
                shared_info = map_shared_info(memory_fd)
        except BaseException:
            sock.close()
            raise
        xe = cls(xc, sock, shared_info)
        try:
            async with trio.open_nursery() as nursery:
                xe._nursery = nursery
                nursery.start_soon(xe._reader)
                await xe._ask_for_doorbells()
                try:
                    yield xe
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            xe._nursery = None
            for port in list(xe._doorbells):
                xe._drop_doorbell(port)
            sock.close()
            xe.bits.close()
            if own_map:
                shared_info.close()

    @classmethod
    @asynccontextmanager
    async def attach(cls, xc: XenCall) -> AsyncIterator["XenEvtchn"]:
        """dom0: ``pvxen attach`` and serve its stream (one attach per connection)."""
        _, r = await xc.call(HYPERVISOR_pvxen_op, PvxenOp.attach)
        fds = r["fds"]
        try:
            async with cls.open(xc, fds.pop("evtchn"), memory_fd=fds["memory"]) as xe:
                yield xe
        finally:
            for fd in fds.values():
                os.close(fd)

    # -- ops (event_channel.h) -----------------------------------------------------------
    async def _op(self, op: Op, **args: Any) -> dict:
        _, r = await self.xc.call(EVTCHN_OP, op, **args)
        return r

    async def bind_unbound_port(self, remote_domid: int, dom: int = DOMID_SELF) -> int:
        """EVTCHNOP_alloc_unbound: a port ``remote_domid`` may bind."""
        return (await self._op(Op.EVTCHNOP_alloc_unbound, dom=dom,
                               remote_dom=remote_domid))["port"]

    async def bind_interdomain(self, remote_domid: int, remote_port: int) -> int:
        """EVTCHNOP_bind_interdomain; the new local port starts pending (Xen)."""
        r = await self._op(Op.EVTCHNOP_bind_interdomain, remote_dom=remote_domid,
                           remote_port=remote_port)
        return r["local_port"]  # a doorbell, if any, comes on the event stream

    async def bind_virq(self, virq: int, vcpu: int = 0) -> int:
        return (await self._op(Op.EVTCHNOP_bind_virq, virq=virq, vcpu=vcpu))["port"]

    async def bind_ipi(self, vcpu: int = 0) -> int:
        return (await self._op(Op.EVTCHNOP_bind_ipi, vcpu=vcpu))["port"]

    async def notify(self, port: int) -> None:
        """EVTCHNOP_send (a byte on the channel's doorbell when there is one)."""
        if self._ring_doorbell(port):
            return
        await self.xc.call(EVTCHN_OP, Op.EVTCHNOP_send, port=port)

    def _ring_doorbell(self, port: int) -> bool:
        sock = self._doorbells.get(port)
        if sock is None:
            return False
        try:
            os.write(sock.fileno(), b"\1")
        except BlockingIOError:
            pass  # the peer has unread rings: this one coalesces with them
        except OSError:  # the peer closed its end: hypercalls from now on
            self._drop_doorbell(port)
            return False
        return True

    def notify_soon(self, port: int) -> None:
        """EVTCHNOP_send from synchronous code (a ring's notify callback).

        Sends are issued in order by background tasks; a refusal is logged,
        as a kernel would drop a notification on a dead port.
        """
        if self._nursery is None:
            raise RuntimeError("XenEvtchn is not open")
        if self._ring_doorbell(port):
            return
        try:  # no reply needed: no task, no scheduler pass (Linux ignores it too)
            self.xc.post(EVTCHN_OP, Op.EVTCHNOP_send, port=port)
        except BlockingIOError:  # socket full: wait for room in a task, keep order
            self._nursery.start_soon(self._notify_logged, port)

    async def _notify_logged(self, port: int) -> None:
        try:
            await self.notify(port)
        except (XenError, ConnectionError) as e:
            log.warning("notify on port %d failed: %s", port, e)

    async def unbind(self, port: int) -> None:
        """EVTCHNOP_close; waiters on the port wake up (a spurious wakeup)."""
        self._drop_doorbell(port)
        await self.xc.call(EVTCHN_OP, Op.EVTCHNOP_close, port=port)
        self._forget(port)

    async def unmask(self, port: int) -> None:
        """EVTCHNOP_unmask: an event that came while masked is delivered now."""
        await self.xc.call(EVTCHN_OP, Op.EVTCHNOP_unmask, port=port)

    def mask(self, port: int) -> None:
        """Set the port's mask bit (the guest's side, in shared memory)."""
        self.bits.mask(port)

    async def status(self, port: int, dom: int = DOMID_SELF) -> EvtchnStatus:
        return EvtchnStatus.from_result(await self._op(Op.EVTCHNOP_status, dom=dom, port=port))

    async def reset(self, dom: int = DOMID_SELF) -> None:
        await self.xc.call(EVTCHN_OP, Op.EVTCHNOP_reset, dom=dom)

    # -- receiving ----------------------------------------------------------------------------
    async def _reader(self) -> None:
        partial = b""
        fds: list[int] = []
        anc = socket.CMSG_SPACE(16 * 4)
        try:
            while True:
                data, ancdata, _, _ = await self._sock.recvmsg(65536, anc)
                if not data:
                    raise ConnectionResetError("hypervisord closed the event-channel stream")
                fds.extend(fds_from_ancillary(ancdata))
                data = partial + data
                end = len(data) & ~3
                for (entry,) in _PORT.iter_unpack(data[:end]):
                    if entry & EVTCHN_NOTIFY_DOORBELL and fds:
                        self._add_doorbell(entry & ~EVTCHN_NOTIFY_DOORBELL, fds.pop(0))
                    else:
                        self.received += 1
                        self._arrived(entry)
                partial = data[end:]
        except OSError as e:
            self._broken = e
            self._ready_event.set()
            for ev in self._waiters.values():
                ev.set()
            self._waiters.clear()

    def _arrived(self, port: int) -> None:
        # Test-and-clear first, then handle: a later send sets the bit again.
        if not 0 < port < NR_PORTS_2L or not self.bits.clear_pending(port):
            return  # stale: closed since, or a duplicate of a handled event
        self._fire(port)

    # -- doorbells (pvxen.EVTCHN_NOTIFY_DOORBELL) -----------------------------------------
    async def _ask_for_doorbells(self) -> None:
        try:
            await self.xc.call(HYPERVISOR_pvxen_op, PvxenOp.evtchn_doorbells)
        except XenError as e:  # an older hypervisord: hypercall sends only
            log.debug("no doorbells: %s", e)

    def _add_doorbell(self, port: int, fd: int) -> None:
        sock = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))
        if not 0 < port < NR_PORTS_2L or self._nursery is None:
            sock.close()
            return
        self._drop_doorbell(port)
        self._doorbells[port] = sock
        self._nursery.start_soon(self._doorbell_reader, port, sock)

    def _drop_doorbell(self, port: int) -> None:
        sock = self._doorbells.pop(port, None)
        if sock is not None:
            sock.close()

    async def _doorbell_reader(self, port: int, sock) -> None:
        """Rings from the peer: drained, then one event (they coalesce)."""
        try:
            while True:
                if not await sock.recv(64):
                    break  # the peer's end is closed
                try:
                    while os.read(sock.fileno(), 64):
                        pass
                except BlockingIOError:
                    pass
                if self.bits.is_masked(port):
                    # Delivered by hypervisord on EVTCHNOP_unmask, as any
                    # event that came while masked.
                    self.bits.set_pending(port)
                else:
                    self._fire(port)
        except (OSError, trio.ClosedResourceError):
            pass  # the peer went, or we closed it (unbind): hypercalls from now on
        finally:
            if self._doorbells.get(port) is sock:
                self._drop_doorbell(port)

    def _fire(self, port: int) -> None:
        waiter = self._waiters.pop(port, None)
        if waiter is not None:
            waiter.set()
        elif port in self._claimed:
            self._fired.add(port)
        else:
            self._ready[port] = None
            self._ready_event.set()

    def _check(self) -> None:
        if self._broken is not None:
            raise ConnectionResetError(f"event-channel stream broken: {self._broken}")

    async def wait(self) -> int:
        """The next port that fired (and has no wait_port() user)."""
        while not self._ready:
            self._check()
            if self._ready_event.is_set():  # shared by every task in wait()
                self._ready_event = trio.Event()
            await self._ready_event.wait()
        port = next(iter(self._ready))
        del self._ready[port]
        return port

    async def pending(self) -> AsyncIterator[int]:
        """``async for port in xe.pending()``: ports as they fire."""
        while True:
            yield await self.wait()

    async def wait_port(self, port: int) -> None:
        """Return once ``port`` fired since the last return (or now, if it had)."""
        self._claimed.add(port)
        if port in self._fired or port in self._ready:
            self._fired.discard(port)
            self._ready.pop(port, None)
            return
        # An event nobody was told about (it fired before this process had
        # its stream, or while the port was masked here): the bit is the truth.
        if 0 < port < NR_PORTS_2L and self.bits.clear_pending(port):
            return
        self._check()
        ev = self._waiters.get(port)
        if ev is None:
            ev = self._waiters[port] = trio.Event()
        self._nwaiting[port] = self._nwaiting.get(port, 0) + 1
        try:
            await ev.wait()
        except trio.Cancelled:
            # A waiter that gives up must not swallow the next event: the
            # last one leaves no stale Event behind, and an event that came
            # just as it was cancelled is kept for the next wait.
            if self._nwaiting[port] == 1:
                if self._waiters.get(port) is ev:
                    del self._waiters[port]
                if ev.is_set():
                    self._fired.add(port)
            raise
        finally:
            n = self._nwaiting.pop(port) - 1
            if n:
                self._nwaiting[port] = n
        self._check()

    def _forget(self, port: int) -> None:
        self._claimed.discard(port)
        self._fired.discard(port)
        self._ready.pop(port, None)
        waiter = self._waiters.pop(port, None)
        if waiter is not None:
            waiter.set()
