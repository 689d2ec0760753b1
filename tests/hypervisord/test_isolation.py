"""Isolation: a domU process reaches no frame it neither owns nor was granted.

Each domU runs as a child process holding only what ``connect_domain``
gave it (its hypercall connection and its own memory file); when the test
runs as root the child also drops to ``nobody``, as a jailed guest does.
The proof inspects the child from outside (``/proc/<pid>/fd`` link targets
and ``/proc/<pid>/maps``: memory files are memfds named ``pvxen-dom<N>``)
after it has tried every route to another domain's memory we know of.
"""

from __future__ import annotations

import os
import re
from contextlib import asynccontextmanager

import pytest

from libxen.core import XenCall
from libxen.gnttab import GrantMapper
from hypervisord.public.domctl import DomctlCmd
from hypervisord.public.errno import XenErrno as E
from hypervisord.public.grant_table import (
    GNTCOPY_source_gref,
    GNTMAP_host_map,
    GNTMAP_readonly,
    GnttabOp as Op,
    GntSt,
)
from hypervisord.public.memory import XenMemOp
from hypervisord.public.pvxen import HYPERVISOR_pvxen_op, PvxenOp
from hypervisord.public.xen import DOMID_SELF, Hypercall
from tests.hypervisord.gnttab_guest import NOBODY, Guest

pytestmark = pytest.mark.timeout(60)
ROOT = os.geteuid() == 0
EPERM = -int(E.XEN_EPERM)
MEMFD = re.compile(r"memfd:pvxen-dom(\d+)\b")


@asynccontextmanager
async def guests(hypervisord, n: int, **kw):
    async with XenCall.open(hypervisord.privcmd) as xc:
        started: list[Guest] = []
        try:
            for _ in range(n):
                g = await Guest.start(xc, uid=NOBODY if ROOT else None, **kw)
                await g.cmd("setup", nr_frames=1)
                started.append(g)
            yield xc, started
        finally:
            for g in started:
                await g.aclose()


def reachable(pid: int) -> tuple[set[int], list[str]]:
    """Domains whose memory files the process holds or maps, and its paths."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    with open(f"/proc/{pid}/maps") as f:
        targets += [line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) > 5]
    domids = {int(m.group(1)) for t in targets for m in [MEMFD.search(t)] if m}
    return domids, targets


def assert_isolated(g: Guest, rundir) -> None:
    domids, targets = reachable(g.proc.pid)
    assert domids == {g.domid}, f"d{g.domid} reaches the memory of {domids - {g.domid}}"
    assert not [t for t in targets if t.startswith(str(rundir))]
    for link in ("cwd", "root"):
        assert not os.readlink(f"/proc/{g.proc.pid}/{link}").startswith(str(rundir))


async def test_domu_reaches_no_other_domains_memory(hypervisord):
    async with guests(hypervisord, 2) as (xc, (a, b)):
        await a.cmd("write", gfn=1, offset=0, data="secret of a")
        to_b = await a.grant(b.domid, 1, readonly=True)
        to_dom0 = await a.grant(0, 1)
        m = await GrantMapper(xc).map(a.domid, to_dom0)  # dom0 legitimately maps a's page
        assert bytes(m.view[:11]) == b"secret of a"
        if ROOT:
            with open(f"/proc/{b.proc.pid}/status") as f:
                assert re.search(rf"^Uid:\s+{NOBODY}\s", f.read(), re.M)
        assert_isolated(a, hypervisord.rundir)
        assert_isolated(b, hypervisord.rundir)

        # every route b might take to a's (or dom0's) memory
        r = await b.gnttab(Op.GNTTABOP_map_grant_ref, ops=[
            {"dom": a.domid, "ref": to_b, "flags": GNTMAP_host_map | GNTMAP_readonly},  # to b
            {"dom": a.domid, "ref": to_dom0, "flags": GNTMAP_host_map},  # granted to dom0
            {"dom": 0, "ref": 8, "flags": GNTMAP_host_map}])
        assert [x["status"] for x in r["result"]["ops"]] == [GntSt.GNTST_general_error] * 3
        assert r["fds"] == 0
        own = {"u": 0, "domid": DOMID_SELF, "offset": 0}
        r = await b.gnttab(Op.GNTTABOP_copy, ops=[
            {"source": {"u": 1, "domid": a.domid}, "dest": own, "len": 11},
            {"source": {"u": 0, "domid": 0}, "dest": own, "len": 11},
            {"source": own, "dest": {"u": 1, "domid": a.domid}, "len": 11},
            {"source": {"u": to_dom0, "domid": a.domid}, "dest": own, "len": 11,
             "flags": GNTCOPY_source_gref}])
        assert [x["status"] for x in r["result"]["ops"]] == [GntSt.GNTST_permission_denied] * 3 \
            + [GntSt.GNTST_general_error]
        for call in [(HYPERVISOR_pvxen_op, PvxenOp.map_foreign, {"domid": a.domid}),
                     (HYPERVISOR_pvxen_op, PvxenOp.map_foreign, {"domid": 0}),
                     (HYPERVISOR_pvxen_op, PvxenOp.connect_domain, {"domid": a.domid}),
                     (Hypercall.domctl, DomctlCmd.XEN_DOMCTL_pausedomain, {"domain": a.domid}),
                     (Hypercall.memory_op, XenMemOp.XENMEM_populate_physmap,
                      {"domid": a.domid, "extent_start": [7], "extent_order": 0})]:
            r = await b.call(call[0], call[1], **call[2])
            assert (r["rc"], r["fds"]) == (EPERM, 0), call
        if ROOT:  # dom0's endpoint and the runtime directory are closed to the guest's user
            for path in (hypervisord.privcmd, hypervisord.privcmd.parent, hypervisord.rundir):
                assert (await b.cmd("open", path=str(path)))["errno"] == 13, path  # EACCES
        assert (await b.cmd("read", gfn=0, offset=0, len=11))["data"] == "\0" * 11
        assert_isolated(b, hypervisord.rundir)  # still nothing of a's after all that

        # what a granted to b, b can read, by copy
        r = await b.gnttab(Op.GNTTABOP_copy, ops=[
            {"source": {"u": to_b, "domid": a.domid}, "dest": own, "len": 11,
             "flags": GNTCOPY_source_gref}])
        assert r["result"]["ops"][0]["status"] == GntSt.GNTST_okay
        assert (await b.cmd("read", gfn=0, offset=0, len=11))["data"] == "secret of a"
        assert_isolated(b, hypervisord.rundir)
        m.view.release()


async def test_populate_beyond_max_mem_returns_fewer(hypervisord):
    async with guests(hypervisord, 1, pages=4, max_pages=6) as (xc, (g,)):
        r = await g.call(Hypercall.memory_op, XenMemOp.XENMEM_populate_physmap,
                         domid=DOMID_SELF, extent_start=[4, 5, 6, 7], extent_order=0)
        assert r["rc"] == 2  # Xen's rc: the number of extents done
        r = await g.call(Hypercall.memory_op, XenMemOp.XENMEM_current_reservation,
                         domid=DOMID_SELF)
        assert r["rc"] == 6
        assert_isolated(g, hypervisord.rundir)
