"""Test-side handle of a domU process running :mod:`tests.hypervisord.evtchn_agent`.

The test is the toolstack: it creates the domain (dom0 hypercalls),
unpauses it (a paused domain's process is stopped as soon as it speaks),
asks ``connect_domain`` for the domain's descriptors and starts the agent
with them inherited, then drives it with :meth:`Guest.cmd`.
"""

from __future__ import annotations

from libxen import ctrl
from libxen.core import XenCall
from tests.hypervisord.agent import AgentProcess


class Guest(AgentProcess):
    @classmethod
    async def start(cls, xc: XenCall) -> "Guest":
        _, r = await ctrl.domain_create(xc)
        domid = r["domain"]
        await ctrl.domain_unpause(xc, domid)
        _, r = await ctrl.connect_domain(xc, domid)
        fds = r["fds"]
        names = ["hypercall", "evtchn", "memory"]
        proc = await cls.spawn("tests.hypervisord.evtchn_agent",
                               [str(fds[n]) for n in names], fds, names)
        return cls(domid, proc)

    async def call(self, sub: int, **args) -> tuple[int, dict]:
        r = await self.cmd("call", sub=int(sub), args=args)
        return r["rc"], r["result"]

