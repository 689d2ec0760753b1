"""A hand-made blkfront for hostile tests, run inside a program guest.

Independent of ``frontends/blkfront.py`` on purpose: it writes whatever
bytes a test wants into ring slots, moves ``req_prod`` anywhere, grants
pages read-only or not at all, and publishes any XenStore keys. Ring
indices go through ``libxen.ringidx`` words (the backend reads them while
we write); slots are plain bytes.
"""

from __future__ import annotations


import trio

from frontends.xenbus.device import FrontendDevice, find_devices
from hypervisord.public.io.blkif import BLKIF_REQUEST_HDR, BLKIF_REQUEST_SEGMENT, BLKIF_RESPONSE, \
    BLKIF_SRING_ENTRY_SIZE
from hypervisord.public.io.ring import SRING_RING_OFF
from libxen.ringidx import shared_ring
from libxen.xenbus import XenbusState as S

ENTRY = BLKIF_SRING_ENTRY_SIZE


def rw_request(op: int, rid: int, sector: int, segs, nseg: int | None = None) -> bytes:
    raw = BLKIF_REQUEST_HDR.pack(op, len(segs) if nseg is None else nseg, 0, rid, sector)
    return (raw + b"".join(BLKIF_REQUEST_SEGMENT.pack(*s) for s in segs)).ljust(ENTRY, b"\0")


class RawBlk:
    def __init__(self, domain, fe: FrontendDevice) -> None:
        self.domain = domain
        self.fe = fe
        self.req_prod = 0
        self.rsp_cons = 0

    @classmethod
    async def connect(cls, domain, keys: dict[str, str] | None = None, npages_data: int = 8,
                      wait: bool = True) -> "RawBlk":
        (devid,) = (await find_devices(domain, "vbd"))[:1]
        fe = await FrontendDevice.open(domain, "vbd", devid)
        self = cls(domain, fe)
        await fe.wait_backend(S.XenbusStateInitWait)
        self.gnttab = await domain.open_gnttab()
        self.evtchn = domain.evtchn
        gfn = domain.alloc_gfns(1)
        self.page = memoryview(domain.map_gfn(gfn))
        self.sring = shared_ring(self.page, ENTRY)
        self.sring.init()
        self.nr_ents = self.sring.nr_ents
        self.ring_ref = self.gnttab.grant_access(fe.backend_id, gfn)
        self.port = await self.evtchn.bind_unbound_port(fe.backend_id)
        dgfn = domain.alloc_gfns(npages_data)
        self.data = memoryview(domain.map_gfn(dgfn, npages_data))
        self.data_gfn = dgfn
        #: data page i granted read-write to the backend
        self.grefs = [self.gnttab.grant_access(fe.backend_id, dgfn + i) for i in range(npages_data)]
        published = {"ring-ref": str(self.ring_ref), "event-channel": str(self.port),
                     "protocol": "x86_64-abi", **(keys or {})}
        await fe.switch(S.XenbusStateInitialised, {k: v for k, v in published.items() if v is not None})
        if wait:
            await fe.wait_backend(S.XenbusStateConnected)
            await fe.switch(S.XenbusStateConnected)
        return self

    def grant(self, page: int, readonly: bool = False, domid: int | None = None) -> int:
        return self.gnttab.grant_access(self.fe.backend_id if domid is None else domid,
                                        self.data_gfn + page, readonly)

    # -- the ring, by hand -----------------------------------------------------------
    def slot(self, idx: int) -> memoryview:
        off = SRING_RING_OFF + (idx % self.nr_ents) * ENTRY
        return self.page[off:off + ENTRY]

    def put(self, raw: bytes) -> None:
        self.slot(self.req_prod)[:] = raw.ljust(ENTRY, b"\0")
        self.req_prod += 1

    def publish(self, req_prod: int | None = None) -> None:
        self.sring.req_prod = self.req_prod if req_prod is None else req_prod
        self.evtchn.notify_soon(self.port)

    async def responses(self, n: int, timeout: float = 5.0) -> list[tuple[int, int, int, bytes]]:
        """``(id, operation, status, padding)`` of the next ``n`` responses."""
        out = []
        with trio.move_on_after(timeout):
            while len(out) < n:
                prod = self.sring.rsp_prod
                while self.rsp_cons != prod and len(out) < n:
                    raw = bytes(self.slot(self.rsp_cons))[:BLKIF_RESPONSE.size]
                    rid, op, status = BLKIF_RESPONSE.unpack(raw)
                    out.append((rid, op, status, raw[9:10] + raw[12:16]))
                    self.rsp_cons += 1
                if len(out) < n:
                    self.sring.rsp_event = self.rsp_cons + 1
                    if self.sring.rsp_prod != prod:
                        continue
                    with trio.move_on_after(0.2):
                        await self.evtchn.wait_port(self.port)
        return out

    async def backend_state(self) -> int:
        return int(await self.fe.backend_state())


def u32(x: int) -> int:
    return x & 0xFFFFFFFF


