"""Domain connections: the XenStore ring in a domain's store page.

After ``XS_INTRODUCE domid gfn port`` xenstored (a dom0 process) maps the
domain's store page through the privileged foreign-memory op, binds an
interdomain event channel to the domain's port, and serves the
``xenstore_domain_interface`` rings with the very service code that serves
the Unix socket: only the byte stream differs
(:class:`~libxen.xsring.XsRingStream`). The connection is
unprivileged, so permissions and quotas apply to the domain.

A restarted xenstored re-attaches the rings it served before
(:meth:`DomainRings.restore`): the introductions are kept on disk
(:class:`~xenstored.domain.DomainRecords`, the fields of cxenstored's
live-update connection record, ``tools/xenstored/lu.c``) with the
hypervisor boot they belong to; domains that hypervisord still reports
alive, in that same boot, get their store page mapped and their port bound
again. The queues may hold a packet the dead daemon had half read, so the
ring is not served as it is: xenstored sets the connection error indicator
and waits until the guest resets the ring on a packet boundary
(``docs/misc/xenstore-ring.txt``, ring reconnection), after which the guest
registers its watches again. A guest may ask for that reset at any time.

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
    XENSTORE_ERROR_COMM,
    XENSTORE_SERVER_FEATURE_ERROR,
    XENSTORE_SERVER_FEATURE_RECONNECTION,
    XS_RING_CONNECTION_OFF,
    XS_RING_SERVER_FEATURES_OFF,
)
from hypervisord.public.xen import PAGE_SIZE, Virq
from xenstored.core import SERVER_FEATURES
from xenstored.domain import DomainRecords
from xenstored.service import XenstoreService

log = logging.getLogger("xenstored")
#: what the ring page offers (xenstore-ring.txt): the reconnection and the
#: error indicator, which is how a restarted xenstored makes the guest reset
RING_FEATURES = SERVER_FEATURES | XENSTORE_SERVER_FEATURE_RECONNECTION \
    | XENSTORE_SERVER_FEATURE_ERROR
#: a resumed domain's port may still be bound to the dead daemon for a
#: moment (hypervisord closes its ports when it sees the connection go)
REBIND_ATTEMPTS, REBIND_DELAY = 40, 0.05


class DomainRings:
    """Serves every introduced domain's ring; one task per domain."""

    def __init__(self, service: XenstoreService, xc: XenCall, xe: XenEvtchn,
                 nursery: trio.Nursery, records: DomainRecords | None = None,
                 boot_id: str = "") -> None:
        self.service = service
        self.core = service.core
        self.xc = xc
        self.xe = xe
        self.nursery = nursery
        self.records = records
        self.boot_id = boot_id
        self.scopes: dict[int, trio.CancelScope] = {}
        self.core.on_introduce = self.introduced
        self.core.on_release = self.released

    def detach(self) -> None:
        """hypervisord is gone: introductions from now on have no ring."""
        if self.core.on_introduce == self.introduced:
            self.core.on_introduce = None
            self.core.on_release = None

    # -- hooks called by the core (synchronously) ---------------------------------
    def introduced(self, domid: int, gfn: int, port: int) -> None:
        self._save()  # before the reply: an acknowledged introduction survives a crash
        self._start(domid, gfn, port, resumed=False)

    def released(self, domid: int) -> None:
        self._save()
        scope = self.scopes.pop(domid, None)
        if scope is not None:
            scope.cancel()

    def _start(self, domid: int, gfn: int, port: int, resumed: bool) -> None:
        scope = trio.CancelScope()
        self.scopes[domid] = scope
        self.nursery.start_soon(self._serve_domain, domid, gfn, port, scope, resumed)

    def _save(self) -> None:
        if self.records is None:
            return
        try:
            self.records.save(self.boot_id, self.core.domains)
        except OSError as e:  # the store goes on; only a restart would lose these rings
            log.error("cannot keep the domain introductions in %s: %s", self.records.path, e)

    # -- after a restart of xenstored -------------------------------------------------
    async def restore(self) -> None:
        """Re-attach the rings of the domains kept for this boot that are alive."""
        if self.records is None:
            return
        try:
            kept = self.records.load(self.boot_id)
        except (OSError, ValueError) as e:
            log.error("cannot read the kept domain introductions: %s", e)
            return
        for rec in kept:
            if self.core.domains.get(rec.domid) is None:
                self.core.domains.restore(rec)
        await self.check_domains()  # the dead are released (@releaseDomain fires)
        for rec in kept:
            dom = self.core.domains.get(rec.domid)
            if dom is not None and rec.domid not in self.scopes:
                log.info("d%d: introduced before the restart: re-attaching its ring",
                         rec.domid)
                self._start(dom.domid, dom.mfn, dom.port, resumed=True)

    # -- one domain --------------------------------------------------------------------
    async def _serve_domain(self, domid: int, gfn: int, port: int,
                            scope: trio.CancelScope, resumed: bool = False) -> None:
        with scope:
            try:
                page_map, local = await self._connect(domid, gfn, port, resumed)
            except (XenError, OSError, ValueError) as e:
                log.warning("d%d: cannot connect its xenstore ring (gfn %#x, port %d): %s",
                            domid, gfn, port, e)
                return
            try:
                await self._run(domid, page_map, local, resumed)
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

    async def _connect(self, domid: int, gfn: int, port: int, resumed: bool = False):
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
            local = await self._bind(domid, port, REBIND_ATTEMPTS if resumed else 1)
        except BaseException:
            page_map.close()
            raise
        # The guest may read these while we write them: single atomic stores
        # (docs/misc/xenstore-ring.txt; the features word is published first).
        store_once(page_map, XS_RING_SERVER_FEATURES_OFF, RING_FEATURES)
        if not resumed:  # a resumed ring's state is the guest's until it resets it
            store_once(page_map, XS_RING_CONNECTION_OFF, XENSTORE_CONNECTED)
        log.info("d%d: xenstore ring connected (gfn %#x, port %d -> %d)", domid, gfn, port, local)
        return page_map, local

    async def _bind(self, domid: int, port: int, attempts: int) -> int:
        for attempt in range(1, attempts + 1):
            try:
                return await self.xe.bind_interdomain(domid, port)
            except XenError:
                if attempt == attempts:
                    raise
            await trio.sleep(REBIND_DELAY)
        raise AssertionError("unreachable")

    async def _run(self, domid: int, page_map: mmap.mmap, local: int, resumed: bool) -> None:
        page = memoryview(page_map)

        def new_stream() -> XsRingStream:
            return XsRingStream(page, lambda: self.xe.notify_soon(local), server=True)

        stream: XsRingStream | None = None
        try:
            stream = new_stream()
            if resumed:
                # The queues may end inside a packet the dead daemon had half
                # read: tell the guest to reset the ring, serve nothing till then.
                stream.stop(XENSTORE_ERROR_COMM)
                log.info("d%d: waiting for the guest to reset its xenstore ring", domid)
                while not stream.reconnect_requested:
                    await self.xe.wait_port(local)
            while True:
                if stream.reconnect_requested:
                    stream.reset()
                    log.info("d%d: xenstore ring reset at the guest's request", domid)
                if not await self._serve_connection(domid, local, stream):
                    return
                stream.release()
                stream = new_stream()
        finally:
            if stream is not None:
                stream.release()  # its index views pin the page: before the unmap
            page.release()

    async def _serve_connection(self, domid: int, local: int, stream: XsRingStream) -> bool:
        """One connection on the ring; True when it ended by a reconnection request
        (its watches, transactions and requests go with it, as xenstore-ring.txt says)."""
        conn = self.core.connect(domid, privileged=False, name=f"d{domid}-ring")
        requested = False
        async with trio.open_nursery() as nursery:
            async def pump() -> None:
                nonlocal requested
                stream.kick()  # requests may already be waiting on the ring
                while not stream.reconnect_requested:
                    await self.xe.wait_port(local)
                    stream.kick()
                requested = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(pump)
            await self.service.serve(conn, stream)
            nursery.cancel_scope.cancel()
        return requested

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


def forget_previous_boot(service: XenstoreService, boot_id: str, state_dir,
                         known_boot: str | None = None) -> None:
    """A new hypervisord means a new host boot: no domain of the store's
    past exists any more. Start from the initial tree, as Xen's xenstored
    does at boot (its database is wiped by the init scripts).

    ``known_boot``: the boot this process served last, if any (a
    hypervisord that came back while we ran); else the state directory's
    marker says which boot the kept store belongs to."""
    previous = known_boot
    marker = Path(state_dir) / "hypervisor-boot-id" if state_dir is not None else None
    if previous is None and marker is not None and marker.exists():
        previous = marker.read_text().strip()
    if previous is not None and previous != boot_id:
        log.info("hypervisord was restarted (a new boot): starting from an empty store")
        service.apply(lambda out: service.core.reset_store())
    if marker is not None:
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(boot_id + "\n")
        os.replace(tmp, marker)


async def attach_hypervisor(service: XenstoreService, path, state_dir=None,
                            known_boot: str | None = None,
                            *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Connect to hypervisord as dom0 and serve domain rings until it goes
    (the error propagates: the caller decides) or we are cancelled."""
    rings = None
    try:
        async with XenCall.open(path) as xc, XenEvtchn.attach(xc) as xe, \
                trio.open_nursery() as nursery:
            _, info = await ctrl.physinfo(xc)
            boot_id = info.get("boot_id", "")
            forget_previous_boot(service, boot_id, state_dir, known_boot)
            records = DomainRecords(state_dir) if state_dir is not None else None
            rings = DomainRings(service, xc, xe, nursery, records, boot_id)
            await nursery.start(rings.watch_dom_exc)
            await rings.restore()
            task_status.started(rings)
    finally:
        if rings is not None:
            rings.detach()
