"""Test-side handle of a domU process running :mod:`tests.hypervisord.gnttab_agent`.

The test is the toolstack: it creates the domain, gives it memory
(``max_mem`` and ``populate_physmap`` for gfns ``0 .. pages-1``), unpauses
it, asks ``connect_domain`` for the process's descriptors and starts the
agent with only those inherited.
"""

from __future__ import annotations

from libxen import ctrl
from libxen.core import XenCall
from hypervisord.public.grant_table import GnttabOp
from hypervisord.public.xen import PAGE_SIZE, Hypercall
from tests.hypervisord.agent import AgentProcess

NOBODY = 65534


class Guest(AgentProcess):
    @classmethod
    async def start(cls, xc: XenCall, pages: int = 8, max_pages: int | None = None,
                    uid: int | None = None) -> "Guest":
        _, r = await ctrl.domain_create(xc)
        domid = r["domain"]
        await ctrl.domain_max_mem(xc, domid, (max_pages or pages) * PAGE_SIZE // 1024)
        rc, _ = await ctrl.populate_physmap(xc, list(range(pages)), domid=domid)
        assert rc == pages
        await ctrl.domain_unpause(xc, domid)
        _, r = await ctrl.connect_domain(xc, domid)
        fds = r["fds"]
        args = [str(fds["hypercall"]), str(fds["memory"])]
        if uid is not None:
            args.append(str(uid))
        proc = await cls.spawn("tests.hypervisord.gnttab_agent", args, fds,
                               ["hypercall", "memory"], PYTHONDONTWRITEBYTECODE="1")
        return cls(domid, proc)

    async def call(self, hypercall: int, sub: int, **args) -> dict:
        return await self.cmd("call", hypercall=int(hypercall), sub=int(sub), args=args)

    async def gnttab(self, sub: GnttabOp, **args) -> dict:
        return await self.call(Hypercall.grant_table_op, sub, **args)

    async def grant(self, domid: int, gfn: int, readonly: bool = False) -> int:
        r = await self.cmd("grant", domid=domid, gfn=gfn, readonly=readonly)
        assert "ref" in r, r
        return r["ref"]

    async def flags(self, ref: int) -> int:
        return (await self.cmd("flags", ref=ref))["flags"]

