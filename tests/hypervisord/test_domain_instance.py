"""A domU connection belongs to one domain instance, never to a domid number
(hypervisord's half of guest containment).

The scenario of the issue with real processes: a domain's process and a
second process holding the same hypercall connection (as a double-forked
child of the guest inherits it). ``destroydomain`` kills the domain's
process; the leftover survives. A new domain is then created with the same
domid (explicitly, so the allocator's round-robin cannot avoid the reuse).
Before the fix, the leftover connection acted as the new domain and its
exit destroyed it (the new domain had no process of its own yet).
"""

from __future__ import annotations

import os

import pytest
import trio

from libxen import ctrl
from libxen.core import XenCall
from hypervisord.public.xen import PAGE_SIZE
from tests.hypervisord.agent import AgentProcess

pytestmark = pytest.mark.timeout(60)
DOMID = 7
CLOSED = ({"closed": "EOF"}, {"closed": "EPIPE"}, {"closed": "ECONNRESET"})


async def build(xc: XenCall, pages: int) -> None:
    _, r = await ctrl.domain_create(xc, domid=DOMID)
    assert r["domain"] == DOMID
    await ctrl.domain_max_mem(xc, DOMID, 16 * PAGE_SIZE // 1024)
    assert (await ctrl.populate_physmap(xc, list(range(pages)), domid=DOMID))[0] == pages
    await ctrl.domain_unpause(xc, DOMID)


async def processes(xc: XenCall, n: int) -> list[AgentProcess]:
    """``n`` processes sharing the domain's one hypercall connection."""
    _, r = await ctrl.connect_domain(xc, DOMID)
    fds = r["fds"]
    procs = []
    try:
        for _ in range(n):
            mine = {"hypercall": os.dup(fds["hypercall"])}
            proc = await AgentProcess.spawn("tests.hypervisord.holder", [str(mine["hypercall"])],
                                            mine, ["hypercall"], PYTHONDONTWRITEBYTECODE="1")
            procs.append(AgentProcess(DOMID, proc))
    finally:
        for fd in fds.values():
            os.close(fd)
    return procs


async def reservation(p: AgentProcess) -> dict:
    return await p.cmd("reservation")


def destroyed_count(lines: list[str]) -> int:
    return sum(line == f"(d{DOMID}) destroyed" for line in lines)


async def test_leftover_connection_is_dead_and_spares_a_domain_reusing_its_domid(hypervisord):
    async with XenCall.open(hypervisord.privcmd) as xc:
        await build(xc, pages=8)
        owner, leftover = await processes(xc, 2)
        try:
            assert (await reservation(owner))["rc"] == 8  # hypervisord learns this pid
            assert (await reservation(leftover))["rc"] == 8  # same connection, same domain
            await ctrl.domain_destroy(xc, DOMID)
            with trio.fail_after(5):
                await owner.proc.wait()  # killed with its domain
            assert await reservation(leftover) in CLOSED

            await build(xc, pages=3)  # the same domid, a new instance, no process yet
            assert await reservation(leftover) in CLOSED  # not the new domain's
            assert leftover.proc.stdin is not None
            await leftover.proc.stdin.aclose()  # the leftover ends: its fds close
            with trio.fail_after(5):
                await leftover.proc.wait()
            await trio.sleep(0.3)  # time for hypervisord to see any close

            _, info = await ctrl.domain_getinfo(xc, DOMID)
            assert (info["domain"], info["tot_pages"]) == (DOMID, 3)
            _, console = await ctrl.readconsole(xc)
            assert destroyed_count(console["lines"]) == 1, console["lines"]
            (fresh,) = await processes(xc, 1)  # the new domain gets its own process
            try:
                assert (await reservation(fresh))["rc"] == 3
            finally:
                await fresh.aclose()
        finally:
            await owner.aclose()
            await leftover.aclose()
