"""Domain connections: the XenStore ring in a domain's store page.

After ``XS_INTRODUCE domid gfn port`` xenstored (a dom0 process) maps the
domain's store page through the privileged foreign-memory op, binds an
interdomain event channel to the domain's port, and serves the
``xenstore_domain_interface`` rings with the very service code that serves
the Unix socket: only the byte stream differs
(:class:`~libxen.xsring.XsRingStream`). The connection is
unprivileged, so permissions and quotas apply to the domain.

``VIRQ_DOM_EXC`` tells us some domain changed state: domains that are gone
or dying are released (their nodes removed, ``@releaseDomain`` fired, as
cxenstored's ``domain_cleanup``); a domain that shut down fires
``@releaseDomain`` once too.
"""

from __future__ import annotations

import logging
import mmap
import os
from pathlib import Path

import trio

from libxen import ctrl
from libxen.core import XenCall, XenError
from libxen.evtchn import XenEvtchn
from libxen.ringidx import store_once
from libxen.xsring import XsRingStream
from hypervisord.public import memfile
from hypervisord.public.io.xs_wire import (
    XENSTORE_CONNECTED,
    XS_RING_CONNECTION_OFF,
    XS_RING_SERVER_FEATURES_OFF,
)
from hypervisord.public.xen import PAGE_SIZE, Virq
from xenstored.core import SERVER_FEATURES
from xenstored.service import XenstoreService

log = logging.getLogger("xenstored")


class DomainRings:
    """Serves every introduced domain's ring; one task per domain."""

    def __init__(self, service: XenstoreService, xc: XenCall, xe: XenEvtchn,
                 nursery: trio.Nursery) -> None:
        self.service = service
        self.core = service.core
        self.xc = xc
        self.xe = xe
        self.nursery = nursery
        self.scopes: dict[int, trio.CancelScope] = {}
        self.core.on_introduce = self.introduced
        self.core.on_release = self.released

    # -- hooks called by the core (synchronously) ---------------------------------
    def introduced(self, domid: int, gfn: int, port: int) -> None:
        scope = trio.CancelScope()
        self.scopes[domid] = scope
        self.nursery.start_soon(self._serve_domain, domid, gfn, port, scope)

    def released(self, domid: int) -> None:
        scope = self.scopes.pop(domid, None)
        if scope is not None:
            scope.cancel()

    # -- one domain --------------------------------------------------------------------
    async def _serve_domain(self, domid: int, gfn: int, port: int,
                            scope: trio.CancelScope) -> None:
        with scope:
            try:
                page_map, local = await self._connect(domid, gfn, port)
            except (XenError, OSError, ValueError) as e:
                log.warning("d%d: cannot connect its xenstore ring (gfn %#x, port %d): %s",
                            domid, gfn, port, e)
                return
            try:
                await self._run(domid, page_map, local)
            finally:
                # Bounded: when the whole daemon stops, the hypercall reader is
                # gone too; hypervisord closes our ports with our connection.
                with trio.move_on_after(0.5) as cleanup:
                    cleanup.shield = True
                    await self._disconnect(domid, page_map, local)
                if cleanup.cancelled_caught:
                    page_map.close()
        if self.scopes.get(domid) is scope:
            del self.scopes[domid]

    async def _connect(self, domid: int, gfn: int, port: int):
        _, r = await ctrl.map_foreign(self.xc, domid, [gfn])
        fd = r["fds"]["memory"]
        try:
            if gfn not in r["populated"]:
                raise ValueError(f"store gfn {gfn:#x} is not populated")
            page_map = mmap.mmap(fd, PAGE_SIZE, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE,
                                 offset=memfile.gfn_offset(gfn))
        finally:
            os.close(fd)
        try:
            local = await self.xe.bind_interdomain(domid, port)
        except BaseException:
            page_map.close()
            raise
        # The guest may read these while we write them: single atomic stores
        # (docs/misc/xenstore-ring.txt; the features word is published first).
        store_once(page_map, XS_RING_SERVER_FEATURES_OFF, SERVER_FEATURES)
        store_once(page_map, XS_RING_CONNECTION_OFF, XENSTORE_CONNECTED)
        log.info("d%d: xenstore ring connected (gfn %#x, port %d -> %d)", domid, gfn, port, local)
        return page_map, local

    async def _run(self, domid: int, page_map: mmap.mmap, local: int) -> None:
        page = memoryview(page_map)
        stream = XsRingStream(page, lambda: self.xe.notify_soon(local), server=True)
        conn = self.core.connect(domid, privileged=False, name=f"d{domid}-ring")
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, local, stream)
                await self.service.serve(conn, stream)
                nursery.cancel_scope.cancel()
        finally:
            stream.release()  # its index views pin the page: before the unmap
            page.release()

    async def _pump(self, local: int, stream: XsRingStream) -> None:
        stream.kick()  # requests may already be waiting on the ring
        while True:
            await self.xe.wait_port(local)
            stream.kick()

    async def _disconnect(self, domid: int, page_map: mmap.mmap, local: int) -> None:
        try:
            await self.xe.unbind(local)
        except (XenError, OSError) as e:
            log.debug("d%d: unbind port %d: %s", domid, local, e)
        page_map.close()
        log.info("d%d: xenstore ring disconnected", domid)

    # -- domain state changes --------------------------------------------------------------
    async def watch_dom_exc(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        port = await self.xe.bind_virq(Virq.VIRQ_DOM_EXC)
        task_status.started()
        while True:
            await self.xe.wait_port(port)
            await self.check_domains()

    async def check_domains(self) -> None:
        for domid, dom in list(self.core.domains.by_id.items()):
            try:
                _, info = await ctrl.domain_getinfo(self.xc, domid)
                gone = info["domain"] != domid
                info_obj = None if gone else ctrl.DomainInfo.from_result(info)
            except XenError:
                gone, info_obj = True, None
            if gone or (info_obj is not None and info_obj.dying):
                log.info("d%d: gone, releasing it", domid)
                if domid in self.core.domains.by_id:
                    self.service.apply(lambda out, d=domid: self.core.release_domain(d, out))
            elif info_obj is not None and info_obj.shutdown and not dom.shutdown:
                dom.shutdown = True
                self.service.apply(
                    lambda out, d=domid: self.core.fire_special("@releaseDomain", d, out))


def forget_previous_boot(service: XenstoreService, boot_id: str, state_dir) -> None:
    """A new hypervisord means a new host boot: no domain of the store's
    past exists any more. Start from the initial tree, as Xen's xenstored
    does at boot (its database is wiped by the init scripts)."""
    if state_dir is None:
        return
    marker = Path(state_dir) / "hypervisor-boot-id"
    previous = marker.read_text().strip() if marker.exists() else None
    if previous is not None and previous != boot_id:
        log.info("hypervisord was restarted (a new boot): starting from an empty store")
        service.apply(lambda out: service.core.reset_store())
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(boot_id + "\n")
    os.replace(tmp, marker)


async def attach_hypervisor(service: XenstoreService, path, state_dir=None,
                            *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Connect to hypervisord as dom0 and serve domain rings until cancelled."""
    async with XenCall.open(path) as xc, XenEvtchn.attach(xc) as xe, \
            trio.open_nursery() as nursery:
        _, info = await ctrl.physinfo(xc)
        forget_previous_boot(service, info.get("boot_id", ""), state_dir)
        rings = DomainRings(service, xc, xe, nursery)
        await nursery.start(rings.watch_dom_exc)
        # Domains introduced before a restart of xenstored come back through
        # their toolstack re-introducing them; nothing is guessed here.
        task_status.started(rings)
