"""netfront: a program guest's network interface (``xen/include/public/io/netif.h``).

After Linux's ``drivers/net/xen-netfront.c``: the tx and rx rings live in
granted pages of the guest, one event channel serves both
(``event-channel``), ``request-rx-copy=1`` and ``feature-sg`` are written
with Initialised; every rx ring slot gets a granted buffer page posted
(``xennet_alloc_rx_buffers``). ``send`` puts a frame on the tx ring over as
many slots as it needs (NETTXF_more_data, the first slot's ``size`` the
whole frame's length; more than one slot only with the backend's
``feature-sg``); ``recv`` returns the next frame (rx responses chained with
NETRXF_more_data reassembled, the buffers reposted).

    async with NetDevice.open(domain) as nic:
        await nic.send(frame)
        frame = await nic.recv()
"""

from __future__ import annotations

import collections
import errno
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import trio

from frontends.xenbus.device import FrontendDevice, FrontendError, find_devices
from hypervisord.public.io.netif import (
    NET_RX_RING_SIZE,
    NET_TX_RING_SIZE,
    NETIF_RX_REQUEST,
    NETIF_RX_RESPONSE,
    NETIF_RX_SRING_ENTRY_SIZE,
    NETIF_TX_REQUEST,
    NETIF_TX_RESPONSE,
    NETIF_TX_SRING_ENTRY_SIZE,
    NETRXF_more_data,
    NETTXF_more_data,
    XEN_NETIF_MAX_TX_SIZE,
    XEN_NETIF_NR_SLOTS_MIN,
)
from hypervisord.public.io.ring import FrontRing, SharedRing
from hypervisord.public.xen import PAGE_SIZE
from libxen.xenbus import XenbusState as S

#: received frames kept for a program that does not call recv (then the oldest go)
RECV_QUEUE_MAX = 1024


class NetDevice:
    def __init__(self, domain: Any, dev: FrontendDevice) -> None:
        self.domain = domain
        self.dev = dev
        self.mac = b""
        self.sg = False
        self.port = 0
        self._rxq: collections.deque[bytes] = collections.deque()
        self._rx_ready = trio.Event()
        self._tx_room = trio.Event()
        self.rx_dropped = 0
        self._parts: list[bytes] = []
        self.tx_errors = 0

    @property
    def mac_text(self) -> str:
        return self.mac.hex(":")

    @classmethod
    @asynccontextmanager
    async def open(cls, domain: Any, devid: int | None = None) -> AsyncIterator["NetDevice"]:
        if devid is None:
            devids = await find_devices(domain, "vif")
            if not devids:
                raise FrontendError(errno.ENODEV, "no vif device")
            devid = devids[0]
        dev = await FrontendDevice.open(domain, "vif", devid)
        self = cls(domain, dev)
        await self._connect()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._worker)
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await dev.close()

    async def _connect(self) -> None:
        d, dev = self.domain, self.dev
        mac = (await dev.xs.read(f"{dev.nodename}/mac")).decode()
        self.mac = bytes(int(x, 16) for x in mac.split(":"))
        await dev.wait_backend(S.XenbusStateInitWait)
        self.sg = await dev.read_backend("feature-sg") == "1"
        if await dev.read_backend("feature-rx-copy") != "1":
            raise FrontendError(errno.EOPNOTSUPP, f"{dev.name}: backend without feature-rx-copy")
        gnttab = await d.open_gnttab()
        evtchn = await d.open_evtchn()
        be = dev.backend_id
        first = d.alloc_gfns(2 + NET_TX_RING_SIZE + NET_RX_RING_SIZE)
        self._rings_mm = d.map_gfn(first, 2)
        self._tx_mm = d.map_gfn(first + 2, NET_TX_RING_SIZE)
        self._rx_mm = d.map_gfn(first + 2 + NET_TX_RING_SIZE, NET_RX_RING_SIZE)
        rings = memoryview(self._rings_mm)
        self.tx = FrontRing.init(SharedRing(rings[:PAGE_SIZE], NETIF_TX_SRING_ENTRY_SIZE))
        self.rx = FrontRing.init(SharedRing(rings[PAGE_SIZE:], NETIF_RX_SRING_ENTRY_SIZE))
        tx_ref = gnttab.grant_access(be, first)
        rx_ref = gnttab.grant_access(be, first + 1)
        self._tx_grefs = [gnttab.grant_access(be, first + 2 + i, readonly=True)
                          for i in range(NET_TX_RING_SIZE)]
        self._rx_grefs = [gnttab.grant_access(be, first + 2 + NET_TX_RING_SIZE + i)
                          for i in range(NET_RX_RING_SIZE)]
        self._tx_free = list(range(NET_TX_RING_SIZE - 1, -1, -1))
        self._tx_view = memoryview(self._tx_mm)
        self._rx_view = memoryview(self._rx_mm)
        self.port = await evtchn.bind_unbound_port(be)
        self.evtchn = evtchn
        for i in range(NET_RX_RING_SIZE):
            self.rx.put_request(NETIF_RX_REQUEST.pack(i, self._rx_grefs[i]))
        self.rx.push_requests()
        await dev.switch(S.XenbusStateInitialised, {
            "tx-ring-ref": str(tx_ref), "rx-ring-ref": str(rx_ref),
            "event-channel": str(self.port), "request-rx-copy": "1",
            "feature-rx-notify": "1", "feature-sg": "1" if self.sg else "0",
            "feature-gso-tcpv4": "0"})
        await dev.wait_backend(S.XenbusStateConnected)
        await dev.switch(S.XenbusStateConnected)
        self.evtchn.notify_soon(self.port)

    # -- tx --------------------------------------------------------------------------
    async def send(self, frame: bytes) -> None:
        """Queue one Ethernet frame on the tx ring (waits for room)."""
        n = len(frame)
        if not 14 <= n <= XEN_NETIF_MAX_TX_SIZE:
            raise ValueError(f"frame of {n} bytes")
        need = -(-n // PAGE_SIZE)
        if need > 1 and not self.sg:
            raise ValueError(f"frame of {n} bytes needs scatter-gather, which the backend lacks")
        if need > XEN_NETIF_NR_SLOTS_MIN:
            raise ValueError(f"frame of {n} bytes needs {need} slots")
        while len(self._tx_free) < need or self.tx.free_requests() < need:
            self._reap_tx()
            if len(self._tx_free) >= need and self.tx.free_requests() >= need:
                break
            self._tx_room = trio.Event()
            await self._tx_room.wait()
        view = self._tx_view
        for k in range(need):
            i = self._tx_free.pop()
            chunk = frame[k * PAGE_SIZE:(k + 1) * PAGE_SIZE]
            view[i * PAGE_SIZE:i * PAGE_SIZE + len(chunk)] = chunk
            self.tx.put_request(NETIF_TX_REQUEST.pack(
                self._tx_grefs[i], 0, NETTXF_more_data if k < need - 1 else 0, i,
                n if k == 0 else len(chunk)))
        if self.tx.push_requests_and_check_notify():
            self.evtchn.notify_soon(self.port)

    def _reap_tx(self) -> bool:
        got = False
        while True:
            for r in self.tx.take_responses():
                rid, status = NETIF_TX_RESPONSE.unpack_from(r)
                if status == 1:  # NETIF_RSP_NULL: an extra-info slot
                    continue
                if status < 0:
                    self.tx_errors += 1
                if 0 <= rid < NET_TX_RING_SIZE and rid not in self._tx_free:
                    self._tx_free.append(rid)
                got = True
            if not self.tx.final_check_for_responses():
                return got

    # -- rx --------------------------------------------------------------------------
    def _reap_rx(self) -> bool:
        got = False
        parts = self._parts
        reposted = 0
        while True:
            for r in self.rx.take_responses():
                rid, offset, flags, status = NETIF_RX_RESPONSE.unpack(r)
                if not 0 <= rid < NET_RX_RING_SIZE:
                    continue
                if status > 0 and offset + status <= PAGE_SIZE:
                    base = rid * PAGE_SIZE + offset
                    parts.append(bytes(self._rx_view[base:base + status]))
                self.rx.put_request(NETIF_RX_REQUEST.pack(rid, self._rx_grefs[rid]))
                reposted += 1
                if not flags & NETRXF_more_data:
                    if parts:
                        if len(self._rxq) >= RECV_QUEUE_MAX:
                            self._rxq.popleft()
                            self.rx_dropped += 1
                        self._rxq.append(b"".join(parts) if len(parts) > 1 else parts[0])
                        got = True
                    parts = []
            if not self.rx.final_check_for_responses():
                break
        self._parts = parts  # a frame whose rest is not there yet
        if reposted and self.rx.push_requests_and_check_notify():
            self.evtchn.notify_soon(self.port)
        return got

    async def recv(self) -> bytes:
        """The next frame received."""
        while not self._rxq:
            self._rx_ready = trio.Event()
            await self._rx_ready.wait()
        return self._rxq.popleft()

    def recv_nowait(self) -> bytes | None:
        return self._rxq.popleft() if self._rxq else None

    async def _worker(self) -> None:
        while True:
            if self._reap_tx():
                self._tx_room.set()
            if self._reap_rx():
                self._rx_ready.set()
            await self.evtchn.wait_port(self.port)
