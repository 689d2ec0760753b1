"""blkback: the ``vbd`` driver of backendd (Linux's
``drivers/block/xen-blkback/xenbus.c`` for the keys, ``blkback.c`` for the
ring, see :mod:`backendd.blkback.serve`).

probe (InitWait) opens the image named by the backend's ``params``
(read-only when ``mode`` is ``r``) and publishes what blkback publishes
before the frontend connects: ``feature-max-indirect-segments``,
``max-ring-page-order``, ``feature-persistent``, ``feature-flush-cache``,
``feature-discard`` (with ``discard-granularity``, ``discard-alignment``,
``discard-secure``; unless the toolstack wrote ``discard-enable = 0``).
An image that cannot be opened closes the device with an error naming it.

connect reads the frontend's keys (``connect_ring``): ``ring-page-order``
and ``ring-ref0..N`` or ``ring-ref``, ``event-channel``, ``protocol`` (only
``x86_64-abi``, the native one, is served), ``feature-persistent``; each
guest-written value is checked, then the ring pages are mapped, the port
bound, and the request loop started; Connected carries ``sectors``,
``info``, ``sector-size``, ``physical-sector-size`` and the features.

disconnect stops the loop, unmaps every grant (ring and persistent ones)
and closes the port. The counters of the connection are logged then.
"""

from __future__ import annotations

import errno
import logging

import trio

from backendd.device import DeviceDriver, DeviceError, DeviceInfo, register
from hypervisord.public.io.blkif import BLKIF_SECTOR_SIZE, BLKIF_SRING_ENTRY_SIZE, VDISK_READONLY
from hypervisord.public.io.protocols import XEN_IO_PROTO_ABI_NATIVE
from hypervisord.public.io.ring import BackRing
from libxen.core import XenError
from libxen.gnttab import GrantError
from libxen.ringidx import index_accessor, shared_ring
from libxen.xenstore.aio import XsError

from backendd.blkback.grants import Grants
from backendd.blkback.io import DISCARD_GRANULARITY, Image, ImageError
from backendd.blkback.ring import Limits, PagedSharedRing
from backendd.blkback.serve import Blkif, RingBroken

log = logging.getLogger("backendd.blkback")
#: xen_blkif_max_segments (MAX_INDIRECT_SEGMENTS) and xen_blkif_max_ring_order
MAX_INDIRECT_SEGMENTS = 256
MAX_RING_PAGE_ORDER = 4
NR_EVENT_PORTS = 4096  # 2-level event channels (libxen.shinfo.NR_PORTS_2L)


async def _backend_key(dev: DeviceInfo, key: str) -> str | None:
    try:
        return (await dev.xs.read(f"{dev.nodename}/{key}")).decode("utf-8", "replace")
    except XsError as e:
        if e.name == "ENOENT":
            return None
        raise


@register
class Blkback(DeviceDriver):
    type = "vbd"

    def __init__(self) -> None:
        self.image: Image | None = None
        self.params = ""
        self.readonly = False
        self.discard = True
        self.conn: _Connection | None = None

    async def probe(self, dev: DeviceInfo) -> dict[str, str]:
        self.params = await _backend_key(dev, "params") or ""
        self.readonly = (await _backend_key(dev, "mode") or "w") == "r"
        self.discard = (await _backend_key(dev, "discard-enable") or "1") != "0"
        self._reopen()
        keys = {
            "feature-max-indirect-segments": str(MAX_INDIRECT_SEGMENTS),
            "max-ring-page-order": str(MAX_RING_PAGE_ORDER),
            "feature-persistent": "1",
        }
        return {**keys, **self._features()}

    def _reopen(self) -> None:
        if self.image is not None:
            self.image.close()
            self.image = None
        try:
            self.image = Image.open(self.params, self.readonly)
        except ImageError as e:
            raise DeviceError(e.errno, str(e)) from e

    def _features(self) -> dict[str, str]:
        keys = {"feature-flush-cache": "1", "feature-discard": "1" if self.discard else "0"}
        if self.discard:
            keys |= {"discard-granularity": str(DISCARD_GRANULARITY), "discard-alignment": "0",
                     "discard-secure": "0"}
        return keys

    async def connect(self, dev: DeviceInfo) -> dict[str, str]:
        if self.image is None or self.image.fd < 0:
            self._reopen()
        assert self.image is not None
        persistent = await self._read_frontend_keys(dev)
        conn = _Connection(dev, self.image, persistent)
        await conn.start(self.ring_refs, self.remote_port)
        self.conn = conn
        info = VDISK_READONLY if self.readonly else 0
        return {"sectors": str(self.image.sectors), "info": str(info),
                "sector-size": str(BLKIF_SECTOR_SIZE), "physical-sector-size": "4096",
                "feature-persistent": "1" if persistent else "0", **self._features()}

    async def _read_frontend_keys(self, dev: DeviceInfo) -> bool:
        """``connect_ring``: every key the guest wrote, checked."""
        if await dev.read_frontend("ring-page-order") is not None:
            order = await dev.read_uint("ring-page-order")
            if order > MAX_RING_PAGE_ORDER:
                raise DeviceError(errno.EINVAL, f"reading {dev.otherend}/ring-page-order: "
                                  f"{order} exceeds max-ring-page-order {MAX_RING_PAGE_ORDER}")
            refs = [await dev.read_uint(f"ring-ref{i}") for i in range(1 << order)]
        else:
            refs = [await dev.read_uint("ring-ref")]
        # Any reference may carry the ring: refs 0-7 are "reserved" only by a
        # Linux guest's convention (GNTTAB_NR_RESERVED_ENTRIES), and PV GRUB
        # grants its ring as ref 0. A ref the guest did not grant fails to map.
        self.ring_refs = refs
        self.remote_port = await dev.read_uint("event-channel", limit=NR_EVENT_PORTS - 1)
        protocol = await dev.read_frontend("protocol")
        if protocol is not None and protocol != XEN_IO_PROTO_ABI_NATIVE:
            raise DeviceError(errno.ENOSYS, f"reading {dev.otherend}/protocol: unsupported "
                              f"protocol {protocol[:32]!r} (only {XEN_IO_PROTO_ABI_NATIVE})")
        if await dev.read_frontend("feature-persistent") is None:
            return False
        return await dev.read_uint("feature-persistent", limit=1) == 1

    def counters(self, dev: DeviceInfo) -> dict[str, int]:
        """Linux blkback's ``statistics/``; ``oo_req`` (requests that waited
        for a free pending slot) is 0: every ring slot has its job here."""
        blkif = self.conn.blkif if self.conn is not None else None
        if blkif is None:
            return {}
        s = blkif.stats
        return {"oo_req": 0, "rd_req": s.rd_req, "wr_req": s.wr_req, "f_req": s.f_req,
                "ds_req": s.ds_req, "rd_sect": s.rd_sect, "wr_sect": s.wr_sect}

    async def disconnect(self, dev: DeviceInfo) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            await conn.stop()
        if self.image is not None:
            self.image.close()


class _Connection:
    """The mapped ring, the bound port and the loop of one Connected period."""

    def __init__(self, dev: DeviceInfo, image: Image, persistent: bool) -> None:
        self.dev = dev
        self.image = image
        self.persistent = persistent
        self.name = f"vbd/{dev.domid}/{dev.devid}"
        self.ring_maps: list = []
        self.sring = None
        self.port: int | None = None
        self.blkif: Blkif | None = None
        self.scope = trio.CancelScope()
        self.done = trio.Event()

    async def start(self, refs: list[int], remote_port: int) -> None:
        hv = self.dev.hypervisor
        await hv.ready()
        self.mapper, self.evtchn = hv.mapper, hv.evtchn
        try:
            await self._map_ring(refs)
            try:
                self.port = await self.evtchn.bind_interdomain(self.dev.domid, remote_port)
            except XenError as e:
                raise DeviceError(errno.EINVAL, f"reading {self.dev.otherend}/event-channel: "
                                  f"cannot bind port {remote_port} of d{self.dev.domid}: {e}") from e
        except BaseException:
            await self._release()
            raise
        lim = Limits(self.image.sectors, self.image.readonly, MAX_INDIRECT_SEGMENTS)
        back = BackRing.attach(self.sring, self.sring.rsp_prod)
        grants = Grants(self.mapper, self.dev.domid, self.persistent)
        self.blkif = Blkif(self.name, self.image, lim, back, grants, self.evtchn, self.port)
        # The loop outlives connect(): a system task, cancelled by stop().
        trio.lowlevel.spawn_system_task(self._run, name=f"blkif {self.name}")

    async def _map_ring(self, refs: list[int]) -> None:
        maps = await self.mapper.map_batch([(self.dev.domid, ref, False) for ref in refs])
        self.ring_maps = [m for m in maps if not isinstance(m, GrantError)]
        bad = next((m for m in maps if isinstance(m, GrantError)), None)
        if bad is not None:
            raise DeviceError(errno.EINVAL, f"reading {self.dev.otherend}/ring-ref: cannot map "
                              f"the ring: {bad}")
        views = [m.view for m in self.ring_maps]
        if len(views) == 1:
            self.sring = shared_ring(views[0], BLKIF_SRING_ENTRY_SIZE)
        else:
            self.sring = PagedSharedRing(views, BLKIF_SRING_ENTRY_SIZE, index_access=index_accessor)

    async def _run(self) -> None:
        try:
            with self.scope:
                assert self.blkif is not None
                await self.blkif.run()
        except RingBroken as e:
            await self._fatal(str(e))
        except Exception as e:  # one device's bug costs that device alone
            log.exception("%s: request loop failed", self.name)
            await self._fatal(f"internal error: {e!r}")
        finally:
            self.done.set()

    async def _fatal(self, message: str) -> None:
        """``xenbus_dev_fatal`` from the loop: the error node, then Closing."""
        log.warning("%s: %s: closing the device", self.name, message)
        dev = self.dev
        home, _, rest = dev.nodename.partition("/backend/")

        async def tx(t) -> None:
            try:
                await t.read(f"{dev.nodename}/state")
            except XsError as e:
                if e.name == "ENOENT":
                    return
                raise
            await t.write(f"{home}/error/backend/{rest}/error", f"{errno.EPROTO} {message}")
            await t.write(f"{dev.nodename}/state", "5")  # XenbusStateClosing

        try:
            await dev.xs.run_transaction(tx)
        except (XsError, OSError) as e:
            log.warning("%s: cannot record the error: %s", self.name, e)

    async def stop(self) -> None:
        self.scope.cancel()
        await self.done.wait()
        if self.blkif is not None:
            log.info("%s: disconnected: %s", self.name, self.blkif.stats.line(self.blkif.grants))
            await self.blkif.grants.close()
        await self._release()

    async def _release(self) -> None:
        if self.port is not None:
            try:
                await self.evtchn.unbind(self.port)
            except (XenError, OSError) as e:
                log.debug("%s: unbind port %d: %s", self.name, self.port, e)
            self.port = None
        if self.sring is not None:
            self.sring.close()
            self.sring = None
        for m in self.ring_maps:
            try:
                await self.mapper.unmap(m)
            except (GrantError, XenError, OSError) as e:
                log.debug("%s: unmap ring ref %d: %s", self.name, m.ref, e)
        self.ring_maps = []
