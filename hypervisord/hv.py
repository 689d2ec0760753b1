"""The hypervisor's global state: machine memory, the domain table, limits.

Synchronous and free of sockets: the trio shell (:mod:`hypervisord.server`)
feeds it requests through :mod:`hypervisord.hypercall` and delivers what it
queues (event notifications) to processes. Domain lifecycle lives here:
create, pause/unpause (the domain's process is stopped and continued, as
vCPUs are descheduled in Xen), shutdown, destroy with full cleanup (ports
closed so peers see it, grant mappings of it revoked, memory returned,
``VIRQ_DOM_EXC`` raised to dom0).
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from daemonkit import procgroup
from hypervisord.domain import Domain
from hypervisord.errors import E, fail
from hypervisord.machmem import MachineMemory
from hypervisord.public.xen import DOMID_FIRST_RESERVED, PAGE_SIZE, Virq

if TYPE_CHECKING:
    from hypervisord.gnttab import GnttabState

log = logging.getLogger("hypervisord")


@dataclass(frozen=True)
class HvConfig:
    memory_bytes: int = 1 << 30  # total machine memory (sparse)
    max_domains: int = 4096
    max_ports: int = 1024  # per domain (event channels)
    max_grant_frames: int = 4  # per domain (v1: 512 entries each)
    dom0_pages: int = 256  # dom0's own frames (shared rings it grants)
    version: tuple[int, int] = (4, 17)
    extraversion: str = "-pvxen"


class Hypervisor:
    def __init__(self, config: HvConfig | None = None) -> None:
        self.config = config or HvConfig()
        self.boot_id = uuid.uuid4().hex  # a new "host boot" each start
        self.mem = MachineMemory(self.config.memory_bytes)
        self.domains: dict[int, Domain] = {}
        self._next_domid = 1
        self.console: list[str] = []  # xl dmesg
        # Collaborators: every one is declared here with what it means
        # before its owner installs it (the families' install() in main.py,
        # the trio shell), so no reader needs a getattr fallback.
        #: set by the shell: deliver a notification for ``port`` to ``conn``
        self.notify: Callable[[object, int], None] = lambda conn, port: None
        #: set by evtchn.install: raise a VIRQ on a domain's bound port; until
        #: then no domain can have bound one, so nothing is raised
        self.raise_virq: Callable[[Domain, int], None] = lambda dom, virq: None
        #: set by gnttab.install: grant limits and each connection's maptrack;
        #: None: no grant tables (``GNTTABOP_*`` answer ENOSYS)
        self.gnttab: GnttabState | None = None
        #: extra per-domain setup/teardown hooks (evtchn, gnttab register here)
        self.on_create: list[Callable[[Domain], None]] = []
        self.on_destroy: list[Callable[[Domain], None]] = []
        #: ``(domain, gfn) -> bool``: is the frame in use by someone else (a
        #: grant mapping)? Such a frame is not released (gnttab registers one).
        self.frame_in_use: list[Callable[[Domain, int], bool]] = []
        self.dom0 = self._make_domain(0, self.config.dom0_pages, privileged=True)
        self.dom0.pause_count = 0

    # -- logging the hypervisor console (xl dmesg) -----------------------------
    def printk(self, msg: str) -> None:
        log.info("%s", msg)
        self.console.append(msg)
        del self.console[:-2000]

    # -- lookup -----------------------------------------------------------------
    def domain(self, domid: int) -> Domain:
        dom = self.domains.get(domid)
        if dom is None:
            raise fail(E.XEN_ESRCH, f"no domain {domid}")
        return dom

    def _make_domain(self, domid: int, max_pages: int, privileged: bool = False,
                     handle: bytes | None = None) -> Domain:
        dm = self.mem.create(domid, max_pages)
        dom = Domain(domid, handle or uuid.uuid4().bytes, dm, max_pages, privileged)
        dom.map_shared_info()
        self.domains[domid] = dom
        for hook in self.on_create:
            hook(dom)
        return dom

    # -- lifecycle ----------------------------------------------------------------
    def create_domain(self, domid: int | None, handle: bytes | None, max_pages: int) -> Domain:
        if len(self.domains) >= self.config.max_domains:
            raise fail(E.XEN_ENOSPC, "too many domains")
        if domid is None or domid == 0:
            domid = self._free_domid()
        elif not 0 < domid < DOMID_FIRST_RESERVED:
            raise fail(E.XEN_EINVAL, f"domid {domid} out of range")
        elif domid in self.domains:
            raise fail(E.XEN_EEXIST, f"domain {domid} exists")
        dom = self._make_domain(domid, max_pages, handle=handle)
        self.printk(f"(d{domid}) created, max {max_pages} pages")
        return dom

    def _free_domid(self) -> int:
        for _ in range(DOMID_FIRST_RESERVED):
            domid = self._next_domid
            self._next_domid = domid + 1 if domid + 1 < DOMID_FIRST_RESERVED else 1
            if domid not in self.domains:
                return domid
        raise fail(E.XEN_ENOSPC, "no free domid")

    def _signal(self, dom: Domain, sig: int) -> None:
        if dom.pid is not None:
            try:
                os.kill(dom.pid, sig)
            except ProcessLookupError:
                pass

    def pause(self, dom: Domain) -> None:
        if dom.domid == 0:
            raise fail(E.XEN_EINVAL, "dom0 cannot be paused")
        dom.pause_count += 1
        if dom.pause_count == 1:
            self._signal(dom, signal.SIGSTOP)

    def unpause(self, dom: Domain) -> None:
        if dom.pause_count == 0:
            raise fail(E.XEN_EINVAL, "domain is not paused")
        dom.pause_count -= 1
        if dom.pause_count == 0:
            self._signal(dom, signal.SIGCONT)

    def attached(self, dom: Domain, pid: int) -> None:
        """The domain's process spoke for the first time (kernel-checked pid)."""
        dom.pid = pid
        if dom.paused:
            self._signal(dom, signal.SIGSTOP)

    def shutdown(self, dom: Domain, reason: int) -> None:
        if dom.shutdown_code is None:
            dom.shutdown_code = reason
            self.printk(f"(d{dom.domid}) shutdown, reason {reason}")
            self.raise_dom_exc()

    def destroy(self, dom: Domain) -> None:
        """Tear a domain down: everything it held goes, dom0 is told."""
        if dom.domid == 0:
            raise fail(E.XEN_EINVAL, "dom0 cannot be destroyed")
        if dom.dying:
            return  # idempotent: a second teardown trigger is harmless (XSA-233)
        dom.dying = True
        for hook in self.on_destroy:
            hook(dom)
        if dom.pid is not None:
            self._signal(dom, signal.SIGCONT)
            procgroup.kill_cgroup_of(dom.pid)  # its forked processes too
            self._signal(dom, signal.SIGKILL)
        dom.close()
        self.mem.destroy(dom.domid)
        del self.domains[dom.domid]
        self.printk(f"(d{dom.domid}) destroyed")
        self.raise_dom_exc()

    def raise_dom_exc(self) -> None:
        self.raise_virq(self.dom0, Virq.VIRQ_DOM_EXC)

    # -- memory accounting -----------------------------------------------------------
    def set_max_mem(self, dom: Domain, max_kb: int) -> None:
        pages = max_kb * 1024 // PAGE_SIZE
        dom.max_pages = pages
        self.mem.set_max(dom.mem, max(pages, dom.mem.max_gfns))

    def populate(self, dom: Domain, gfns: list[int]) -> int:
        """Back each gfn with a frame; returns how many were done (Xen's rc)."""
        done = 0
        for gfn in gfns:
            if gfn in dom.mem.p2m:
                done += 1
                continue
            if dom.mem.tot_pages >= dom.max_pages:
                break
            if not 0 <= gfn < dom.mem.max_gfns or self.mem.free_frames == 0:
                break
            self.mem.populate(dom.mem, gfn)
            done += 1
        return done

    def decrease(self, dom: Domain, gfns: list[int]) -> int:
        done = 0
        for gfn in gfns:
            if gfn not in dom.mem.p2m:
                break
            if any(check(dom, gfn) for check in self.frame_in_use):
                # Mapped by another domain through a grant: its contents must
                # stay; the guest learns it from the short count, as from Xen.
                self.printk(f"(d{dom.domid}) gfn {gfn:#x} is granted and mapped: not released")
                break
            self.mem.release(dom.mem, gfn)
            done += 1
        return done
