"""netback: the ``vif`` backend (``xen/include/public/io/netif.h``).

Behaviour after Linux's ``drivers/net/xen-netback/{xenbus.c,netback.c,
interface.c}``: probe publishes the features Linux's netback does
(``feature-sg``, ``feature-rx-copy``, ``feature-rx-flip=0``,
``feature-split-event-channels``, ``multi-queue-max-queues=1``); connect
reads ``tx-ring-ref``, ``rx-ring-ref``, ``event-channel`` (or
``event-channel-tx``/``-rx``), ``request-rx-copy`` (must be 1) and
``feature-sg``, all guest-written and checked, maps both rings and binds
the channel(s).

tx: every request is copied once out of the ring, packets (chains of
slots linked by NETTXF_more_data, the first slot's ``size`` being the
whole packet's length) are checked as ``xenvif_count_requests`` and
``xenvif_tx_build_gops`` do, their data read through a batch of grant
maps and sent to the link (:mod:`backendd.bridge`); a bad packet gets
NETIF_RSP_ERROR, a frontend breaking the protocol (a slot crossing its
page, more than ``FATAL_SKB_SLOTS`` slots, req_prod beyond the ring) has
its vif disabled as ``xenvif_fatal_tx_err`` does.

rx: frames from the link wait in a bounded per-vif queue; they go into
the guest's posted rx buffers (rx-copy: written through writable grant
maps), one frame over several slots (NETRXF_more_data) when the frontend
said ``feature-sg``; a frame that needs more slots than it may use is
dropped.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import trio

from backendd import bridge
from backendd.device import DeviceDriver, DeviceError, DeviceInfo, register
from hypervisord.public.grant_table import GnttabOp
from hypervisord.public.io.netif import (
    NETIF_RX_REQUEST,
    NETIF_RX_RESPONSE,
    NETIF_RX_SRING_ENTRY_SIZE,
    NETIF_TX_REQUEST,
    NETIF_TX_RESPONSE,
    NETIF_TX_SRING_ENTRY_SIZE,
    NETRXF_more_data,
    NETTXF_extra_info,
    NETTXF_more_data,
    XEN_NETIF_NR_SLOTS_MIN,
    NetifRsp,
)
from hypervisord.public.io.ring import BackRing, RingOverflowError, SharedRing
from hypervisord.public.xen import PAGE_SIZE, Hypercall

log = logging.getLogger("backendd.netback")
ETH_HLEN = 14
#: Linux netback's fatal_skb_slots default: more slots than this is fatal
FATAL_SKB_SLOTS = 20
GNTTAB = Hypercall.grant_table_op
#: grant mappings a vif keeps per direction (a netfront's ring of buffers)
MAP_CACHE_MAX = 512


class VifError(Exception):
    """The frontend broke the protocol: the vif is disabled."""


class Vif:
    """One connected vif: its rings, channel(s), port and worker."""

    def __init__(self, dev: DeviceInfo, port: bridge.Port) -> None:
        self.dev = dev
        self.port = port
        self.tx: BackRing | None = None
        self.rx: BackRing | None = None
        self.maps: list = []
        self.local_ports: list[int] = []
        self.tx_port = self.rx_port = 0
        self.sg = False
        self.pending: list[tuple[int, bytes]] = []  # tx slots of an unfinished packet
        self.kick = trio.Event()
        self.disabled = False
        self.cancel = trio.CancelScope()
        self.done = trio.Event()
        self.tx_packets = self.tx_errors = self.rx_packets = 0
        self.tx_bytes = self.rx_bytes = 0  # the guest's tx (sent) and rx (delivered)
        self.ro_cache: dict = {}
        self.rw_cache: dict = {}

    @property
    def name(self) -> str:
        return f"vif{self.dev.domid}.{self.dev.devid}"

    # -- tx ----------------------------------------------------------------------------
    async def _read_packets(self, packets: list[list[tuple[int, int, int, int]]]) -> list[bytes | None]:
        """Map every slot's grant (read-only) in one batch, gather the data."""
        maps = await self._maps([s[0] for pkt in packets for s in pkt], True)
        out: list[bytes | None] = []
        i = 0
        handles = []
        for pkt in packets:
            parts = []
            ok = True
            for gref, offset, size, _id in pkt:
                m = maps[i]
                i += 1
                if isinstance(m, Exception):
                    ok = False
                    continue
                parts.append(bytes(m.view[offset:offset + size]))
            out.append(b"".join(parts) if ok else None)
        return out

    async def _maps(self, grefs: list[int], readonly: bool) -> list:
        """The mappings of ``grefs`` (kept while the vif is connected: a
        netfront reposts the same granted pages; bounded, oldest unmapped)."""
        cache = self.ro_cache if readonly else self.rw_cache
        missing = list(dict.fromkeys(g for g in grefs if g not in cache))
        if missing:
            got = await self.dev.hypervisor.mapper.map_batch(
                [(self.dev.domid, g, readonly) for g in missing])
            failed = {}
            for g, m in zip(missing, got):
                if isinstance(m, Exception):
                    failed[g] = m
                else:
                    cache[g] = m
            evict = []
            while len(cache) > MAP_CACHE_MAX:
                evict.append(cache.pop(next(iter(cache))))
            await self._unmap(evict)
            return [failed.get(g) or cache.get(g) or failed.get(g) for g in grefs]
        return [cache[g] for g in grefs]

    async def _unmap(self, maps: list) -> None:
        handles = []
        for m in maps:
            handles.append(m.handle)
            m.view.release()
            m._mm.close()
        if handles:
            await self.dev.hypervisor.mapper.xc.call(
                GNTTAB, GnttabOp.GNTTABOP_unmap_grant_ref, ops=[{"handle": h} for h in handles])

    async def unmap_all(self) -> None:
        maps = list(self.ro_cache.values()) + list(self.rw_cache.values())
        self.ro_cache.clear()
        self.rw_cache.clear()
        await self._unmap(maps)

    def _respond_tx(self, ids: list[int], status: int) -> None:
        assert self.tx is not None
        for i in ids:
            self.tx.put_response(NETIF_TX_RESPONSE.pack(i, status))

    async def do_tx(self) -> bool:
        """One batch of tx requests; True if there was any."""
        assert self.tx is not None
        try:
            raw = self.tx.take_requests()
        except RingOverflowError as e:
            raise VifError(f"tx ring: {e}") from None
        if not raw:
            return False
        slots = self.pending + [(0, r) for r in raw]
        self.pending = []
        packets: list[list[tuple[int, int, int, int]]] = []
        bad: list[int] = []  # ids answered NETIF_RSP_ERROR
        extras: list[int] = []
        i = 0
        good_ids: list[list[int]] = []
        while i < len(slots):
            start = i
            chain = []
            while True:
                if i >= len(slots):  # the packet goes on past req_prod: wait for the rest
                    self.pending = slots[start:]
                    if len(self.pending) > FATAL_SKB_SLOTS:
                        raise VifError(f"packet of more than {FATAL_SKB_SLOTS} slots")
                    break
                gref, offset, flags, rid, size = NETIF_TX_REQUEST.unpack(slots[i][1])
                i += 1
                chain.append((gref, offset, flags, rid, size))
                if flags & NETTXF_extra_info and len(chain) == 1:
                    # the netif_extra_info slot(s) follow; we never offered
                    # GSO so its content is ignored (answered NETIF_RSP_NULL)
                    if i < len(slots):
                        extras.append(0)  # its response: NETIF_RSP_NULL (make_tx_response)
                        i += 1
                if not flags & NETTXF_more_data:
                    break
                if len(chain) > FATAL_SKB_SLOTS:
                    raise VifError(f"packet of more than {FATAL_SKB_SLOTS} slots")
            if self.pending:
                break
            if len(chain) > FATAL_SKB_SLOTS:  # xenvif_count_requests: "Malicious frontend"
                raise VifError(f"packet of more than {FATAL_SKB_SLOTS} slots")
            ids = [c[3] for c in chain]
            total = chain[0][4]
            rest = sum(c[4] for c in chain[1:])
            first_len = total - rest
            # xenvif_tx_build_gops / xenvif_count_requests: a slot crossing
            # its page is fatal (the first slot holds total - rest bytes)
            for k, (gref, offset, flags, rid, size) in enumerate(chain):
                n = first_len if k == 0 else size
                if offset + max(n, 0) > PAGE_SIZE:
                    raise VifError(f"tx slot crosses its page: offset {offset} size {n}")
            why = None
            if len(chain) > XEN_NETIF_NR_SLOTS_MIN:
                why = f"{len(chain)} slots, more than {XEN_NETIF_NR_SLOTS_MIN}"
            elif total < ETH_HLEN:
                why = f"packet of {total} bytes"
            elif first_len < 0:
                why = f"first slot size {total} less than the rest's {rest}"
            if why is not None:
                self.tx_errors += 1
                log.info("%s: tx packet dropped: %s", self.name, why)
                bad += ids
                continue
            packets.append([(chain[0][0], chain[0][1], first_len, chain[0][3])] +
                           [(c[0], c[1], c[4], c[3]) for c in chain[1:]])
            good_ids.append(ids)
        frames = await self._read_packets(packets)
        for ids, frame in zip(good_ids, frames):
            if frame is None:
                self.tx_errors += 1
                self._respond_tx(ids, NetifRsp.NETIF_RSP_ERROR)
                continue
            self._respond_tx(ids, NetifRsp.NETIF_RSP_OKAY)
            self.tx_packets += 1
            self.tx_bytes += len(frame)
            self.port.send(frame)
        self._respond_tx(bad, NetifRsp.NETIF_RSP_ERROR)
        self._respond_tx(extras, NetifRsp.NETIF_RSP_NULL)
        if self.tx.push_responses_and_check_notify():
            self.dev.hypervisor.evtchn.notify_soon(self.tx_port)
        return True

    # -- rx ----------------------------------------------------------------------------
    async def do_rx(self) -> bool:
        """Fill posted rx buffers with queued frames; True if any went."""
        assert self.rx is not None
        q = self.port.queue
        batch: list[tuple[bytes, list[tuple[int, int]]]] = []
        while q:
            frame = q[0]
            need = max(1, -(-len(frame) // PAGE_SIZE))
            if need > 1 and not self.sg or need > XEN_NETIF_NR_SLOTS_MIN:
                q.popleft()
                self.port.dropped += 1
                continue
            try:
                if self.rx.nr_unconsumed_requests() < need:
                    break
                reqs = self.rx.take_requests(limit=need)
            except RingOverflowError as e:
                raise VifError(f"rx ring: {e}") from None
            q.popleft()
            batch.append((frame, [NETIF_RX_REQUEST.unpack(r) for r in reqs]))
        if not batch:
            return False
        maps = await self._maps([gref for _, reqs in batch for _, gref in reqs], False)
        i = 0
        for frame, reqs in batch:
            for k, (rid, _gref) in enumerate(reqs):
                m = maps[i]
                i += 1
                chunk = frame[k * PAGE_SIZE:(k + 1) * PAGE_SIZE]
                last = k == len(reqs) - 1
                if isinstance(m, Exception):
                    status, flags = NetifRsp.NETIF_RSP_ERROR, 0
                else:
                    m.view[:len(chunk)] = chunk
                    status, flags = len(chunk), 0 if last else NETRXF_more_data
                self.rx.put_response(NETIF_RX_RESPONSE.pack(rid, 0, flags, status))
            self.rx_packets += 1
            self.rx_bytes += len(frame)
        if self.rx.push_responses_and_check_notify():
            self.dev.hypervisor.evtchn.notify_soon(self.rx_port)
        return True

    # -- the worker --------------------------------------------------------------------
    async def _watch_port(self, port: int) -> None:
        evtchn = self.dev.hypervisor.evtchn
        while True:
            await evtchn.wait_port(port)
            self.kick.set()

    async def _watch_queue(self) -> None:
        while True:
            await self.port.wakeup.wait()
            self.port.wakeup = trio.Event()
            self.kick.set()

    async def run(self) -> None:
        try:
            with self.cancel:
                async with trio.open_nursery() as nursery:
                    for p in set(self.local_ports):
                        nursery.start_soon(self._watch_port, p)
                    nursery.start_soon(self._watch_queue)
                    if isinstance(self.port.link, bridge.Tap):
                        nursery.start_soon(self.port.link.reader)
                    try:
                        while True:
                            busy = await self.do_tx()
                            busy = await self.do_rx() or busy
                            if busy:
                                await trio.lowlevel.checkpoint()
                                continue
                            if self.tx.final_check_for_requests():
                                continue
                            if self.port.queue and self.rx.final_check_for_requests():
                                continue
                            await self.kick.wait()
                            self.kick = trio.Event()
                    except VifError as e:
                        # xenvif_fatal_tx_err: the vif is disabled until reconnected
                        self.disabled = True
                        log.warning("%s: fatal error, vif disabled: %s", self.name, e)
                        nursery.cancel_scope.cancel()
        except Exception:
            log.exception("%s: worker failed", self.name)
        finally:
            self.done.set()


@register
class Netback(DeviceDriver):
    type = "vif"

    async def probe(self, dev: DeviceInfo) -> dict[str, str]:
        # drivers/net/xen-netback/xenbus.c netback_probe
        return {
            "feature-sg": "1",
            "feature-gso-tcpv4": "0",
            "feature-gso-tcpv6": "0",
            "feature-ipv6-csum-offload": "0",
            "feature-rx-copy": "1",
            "feature-rx-flip": "0",
            "feature-multicast-control": "0",
            "feature-dynamic-multicast-control": "0",
            "feature-split-event-channels": "1",
            "multi-queue-max-queues": "1",
            "feature-ctrl-ring": "0",
            "hotplug-status": "connected",
            "pvxen-link": "bridge" if bridge.use_bridge() else "switch",
        }

    async def _backend(self, dev: DeviceInfo, key: str) -> str | None:
        try:
            return (await dev.xs.read(f"{dev.nodename}/{key}")).decode("ascii", "replace")
        except Exception:
            return None

    async def connect(self, dev: DeviceInfo) -> dict[str, str]:
        await dev.hypervisor.ready()
        tx_ref = await dev.read_uint("tx-ring-ref")
        rx_ref = await dev.read_uint("rx-ring-ref")
        if await dev.read_frontend("event-channel") is not None:
            tx_evt = rx_evt = await dev.read_uint("event-channel", limit=4095)
        else:
            tx_evt = await dev.read_uint("event-channel-tx", limit=4095)
            rx_evt = await dev.read_uint("event-channel-rx", limit=4095)
        if await dev.read_frontend("request-rx-copy") is None or await dev.read_uint("request-rx-copy") != 1:
            raise DeviceError(errno.EOPNOTSUPP, f"{dev.otherend}: request-rx-copy is not 1 (rx-flip unsupported)")
        sg = await dev.read_frontend("feature-sg") == "1"
        for q in ("multi-queue-num-queues",):
            n = await dev.read_frontend(q)
            if n is not None and n != "1":
                raise DeviceError(errno.EINVAL, f"{dev.otherend}/{q}: {n[:16]!r}, at most 1 supported")
        mac_text = await self._backend(dev, "mac") or ""
        try:
            mac = bridge.parse_mac(mac_text)
        except ValueError as e:
            raise DeviceError(errno.EINVAL, f"{dev.nodename}/mac: {e}") from None
        brname = await self._backend(dev, "bridge") or "xenbr0"
        mtu_text = await self._backend(dev, "mtu") or "1500"
        mtu = int(mtu_text) if mtu_text.isdigit() and 68 <= int(mtu_text) <= 65521 else 1500
        mapper = dev.hypervisor.mapper
        evtchn = dev.hypervisor.evtchn
        maps = await mapper.map_batch([(dev.domid, tx_ref, False), (dev.domid, rx_ref, False)])
        good = [m for m in maps if not isinstance(m, Exception)]
        bad = [m for m in maps if isinstance(m, Exception)]
        port = bridge.Port(f"vif{dev.domid}.{dev.devid}", mac)
        vif = Vif(dev, port)
        vif.maps = good
        try:
            if bad:
                raise DeviceError(errno.EINVAL, f"mapping tx-ring-ref {tx_ref} / rx-ring-ref {rx_ref}: {bad[0]}")
            for p in dict.fromkeys((tx_evt, rx_evt)):
                try:
                    vif.local_ports.append(await evtchn.bind_interdomain(dev.domid, p))
                except Exception as e:
                    raise DeviceError(errno.EINVAL, f"binding event channel {p} of d{dev.domid}: {e}") from None
            vif.tx_port = vif.local_ports[0]
            vif.rx_port = vif.local_ports[-1]
            tx = SharedRing(maps[0].view, NETIF_TX_SRING_ENTRY_SIZE)
            rx = SharedRing(maps[1].view, NETIF_RX_SRING_ENTRY_SIZE)
            vif.tx = BackRing.attach(tx, tx.rsp_prod)
            vif.rx = BackRing.attach(rx, rx.rsp_prod)
            vif.sg = sg
            if bridge.use_bridge():
                rundir = Path(dev.hypervisor.path).parent.parent
                try:
                    tap = await trio.to_thread.run_sync(bridge.Tap, port.name, brname, rundir, mtu)
                except OSError as e:
                    raise DeviceError(errno.EIO, f"{port.name} on bridge {brname}: {e}") from None
                tap.attach(port)
            else:
                bridge.Switch.get(brname).attach(port)
        except BaseException:
            await self._release(dev, vif)
            raise
        dev.extra["vif"] = vif
        trio.lowlevel.spawn_system_task(vif.run, name=f"netback {port.name}")
        log.info("%s: connected (%s %s, sg=%d)", port.name, "bridge" if bridge.use_bridge() else "switch",
                 brname, sg)
        return {}

    async def _release(self, dev: DeviceInfo, vif: Vif) -> None:
        with trio.CancelScope(shield=True):
            if isinstance(vif.port.link, bridge.Tap):
                vif.port.link.close_fd()
            await trio.to_thread.run_sync(vif.port.close)
            try:
                await vif.unmap_all()
            except Exception as e:
                log.info("%s: unmapping buffers: %s", vif.name, e)
            for ring in (vif.tx, vif.rx):
                if ring is not None:
                    ring.sring.close()
            for p in vif.local_ports:
                try:
                    await dev.hypervisor.evtchn.unbind(p)
                except Exception as e:
                    log.info("%s: unbinding port %d: %s", vif.name, p, e)
            for m in vif.maps:
                try:
                    await dev.hypervisor.mapper.unmap(m)
                except Exception as e:
                    log.info("%s: unmapping ring: %s", vif.name, e)

    def counters(self, dev: DeviceInfo) -> dict[str, int]:
        vif = dev.extra.get("vif")
        if vif is None:
            return {}
        return {"tx_bytes": vif.tx_bytes, "tx_packets": vif.tx_packets,
                "rx_bytes": vif.rx_bytes, "rx_packets": vif.rx_packets}

    async def disconnect(self, dev: DeviceInfo) -> None:
        vif = dev.extra.pop("vif", None)
        if vif is None:
            return
        vif.cancel.cancel()
        with trio.CancelScope(shield=True):
            await vif.done.wait()
        await self._release(dev, vif)
        log.info("%s: disconnected (tx %d packets, %d errors; rx %d, %d dropped, %d spoofed)",
                 vif.name, vif.tx_packets, vif.tx_errors, vif.rx_packets, vif.port.dropped,
                 vif.port.spoofed)
