"""Grant tables and foreign memory against the real hypervisord.

The test process is dom0 (toolstack and backend: it maps grants with
:class:`GrantMapper` and frames with :class:`ForeignMemory`); each domU
is a child process (:mod:`tests.hypervisord.gnttab_agent`) that writes
its grant entries straight into its own grant frames.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio

from libxen import ctrl
from libxen.core import XenCall, XenError
from libxen.foreignmemory import ForeignMemory
from libxen.gnttab import (
    Copy,
    CopyPtr,
    GrantError,
    GrantMapper,
    query_size,
    seed_grant_table,
)
from hypervisord.public.errno import XenErrno as E
from hypervisord.public.grant_table import (
    GNTCOPY_source_gref,
    GNTMAP_host_map,
    GNTMAP_readonly,
    GNTTAB_RESERVED_XENSTORE,
    GTF_permit_access,
    GTF_readonly,
    GTF_reading,
    GTF_writing,
    GnttabOp as Op,
    GntSt,
)
from hypervisord.public.pvxen import HYPERVISOR_pvxen_op, PvxenOp
from hypervisord.public.xen import DOMID_SELF, PAGE_SIZE
from tests.hypervisord.gnttab_guest import Guest

pytestmark = pytest.mark.timeout(60)
OK, GENERAL = GntSt.GNTST_okay, GntSt.GNTST_general_error


@asynccontextmanager
async def guests(hypervisord, n: int, **kw):
    async with XenCall.open(hypervisord.privcmd) as xc:
        started: list[Guest] = []
        try:
            for _ in range(n):
                g = await Guest.start(xc, **kw)
                await g.cmd("setup", nr_frames=1)
                started.append(g)
            yield xc, started
        finally:
            for g in started:
                await g.aclose()


async def test_dom0_maps_a_domu_grant_and_both_see_the_page(hypervisord):
    async with guests(hypervisord, 1) as (xc, (g,)):
        await g.cmd("write", gfn=3, offset=0, data="from the frontend")
        ref = await g.grant(0, 3)
        assert ref >= 8  # refs below GNTTAB_NR_RESERVED_ENTRIES are the toolstack's
        mapper = GrantMapper(xc)
        m = await mapper.map(g.domid, ref)
        assert bytes(m.view[:17]) == b"from the frontend"
        m.view[100:112] = b"from backend"
        assert (await g.cmd("read", gfn=3, offset=100, len=12))["data"] == "from backend"
        assert await g.flags(ref) == GTF_permit_access | GTF_reading | GTF_writing
        assert (await g.cmd("end_access", ref=ref))["ok"] is False  # still mapped
        await mapper.unmap(m)
        assert await g.flags(ref) == GTF_permit_access
        assert (await g.cmd("end_access", ref=ref))["ok"] is True
        with pytest.raises(GrantError) as e:  # revoked: no longer granted
            await mapper.map(g.domid, ref)
        assert e.value.status == GENERAL
        assert await query_size(xc, g.domid) == (1, 4)


async def test_readonly_grant(hypervisord):
    async with guests(hypervisord, 1) as (xc, (g,)):
        await g.cmd("write", gfn=1, offset=0, data="ro")
        ref = await g.grant(0, 1, readonly=True)
        mapper = GrantMapper(xc)
        with pytest.raises(GrantError) as e:
            await mapper.map(g.domid, ref, readonly=False)
        assert e.value.status == GENERAL and "read-only" in e.value.reason
        assert await g.flags(ref) == GTF_permit_access | GTF_readonly
        m = await mapper.map(g.domid, ref, readonly=True)
        assert m.view.readonly and bytes(m.view[:2]) == b"ro"
        assert await g.flags(ref) == GTF_permit_access | GTF_readonly | GTF_reading
        await mapper.unmap(m)
        assert await g.flags(ref) == GTF_permit_access | GTF_readonly


async def test_hostile_domu_mapper(hypervisord):
    async with guests(hypervisord, 2) as (xc, (a, b)):
        to_dom0 = await a.grant(0, 2)
        to_b = await a.grant(b.domid, 2)
        res = await b.gnttab(Op.GNTTABOP_map_grant_ref, ops=[
            {"dom": a.domid, "ref": to_dom0, "flags": GNTMAP_host_map},  # not granted to b
            {"dom": a.domid, "ref": 512, "flags": GNTMAP_host_map},  # beyond the table
            {"dom": a.domid, "ref": to_b, "flags": GNTMAP_host_map},  # valid, but b is a domU
        ])
        assert res["rc"] == 0 and res["fds"] == 0
        statuses = [r["status"] for r in res["result"]["ops"]]
        assert statuses == [GENERAL, GntSt.GNTST_bad_gntref, GENERAL]
        assert "unprivileged" in res["result"]["ops"][2]["reason"]
        assert await a.flags(to_b) == GTF_permit_access  # the pin was undone
        res = await b.gnttab(Op.GNTTABOP_unmap_grant_ref, ops=[{"handle": 0}])
        assert res["result"]["ops"][0]["status"] == GntSt.GNTST_bad_handle
        # ... and a domU reads what was granted to it by copying instead
        await a.cmd("write", gfn=2, offset=8, data="granted bytes")
        res = await b.gnttab(Op.GNTTABOP_copy, ops=[
            {"source": {"u": to_b, "domid": a.domid, "offset": 8},
             "dest": {"u": 5, "domid": DOMID_SELF, "offset": 0}, "len": 13,
             "flags": GNTCOPY_source_gref},
            {"source": {"u": to_dom0, "domid": a.domid, "offset": 8},  # granted to d0
             "dest": {"u": 5, "domid": DOMID_SELF, "offset": 0}, "len": 13,
             "flags": GNTCOPY_source_gref},
            {"source": {"u": 2, "domid": a.domid, "offset": 8},  # a's frame by number
             "dest": {"u": 5, "domid": DOMID_SELF, "offset": 0}, "len": 13, "flags": 0},
        ])
        assert [r["status"] for r in res["result"]["ops"]] == \
            [OK, GENERAL, GntSt.GNTST_permission_denied]
        assert (await b.cmd("read", gfn=5, offset=0, len=13))["data"] == "granted bytes"


async def test_unmap_twice_and_connection_close(hypervisord):
    async with guests(hypervisord, 1) as (xc, (g,)):
        ref = await g.grant(0, 4)
        mapper = GrantMapper(xc)
        m = await mapper.map(g.domid, ref, readonly=True)
        handle = m.handle
        await mapper.unmap(m)
        assert await mapper.unmap_handle(handle) == GntSt.GNTST_bad_handle
        async with XenCall.open(hypervisord.privcmd) as other:  # a second dom0 process
            m2 = await GrantMapper(other).map(g.domid, ref)
            assert await g.flags(ref) & GTF_writing
            m2.view.release()
        # it went away without unmapping: hypervisord released its mapping
        with trio.fail_after(5):
            while await g.flags(ref) != GTF_permit_access:
                await trio.sleep(0.01)


async def test_granter_killed_while_mapped(hypervisord):
    async with guests(hypervisord, 1) as (xc, (g,)):
        ref = await g.grant(0, 6)
        await g.cmd("write", gfn=6, offset=0, data="last words")
        mapper = GrantMapper(xc)
        m = await mapper.map(g.domid, ref)
        await g.aclose()  # SIGKILL mid-mapping
        with trio.fail_after(5):
            while (await ctrl.domain_getinfolist(xc))[1]["domains"][-1]["domain"] == g.domid:
                await trio.sleep(0.01)
        assert bytes(m.view[:10]) == b"last words"  # our own mapping lives on
        await mapper.unmap(m)  # the revoked handle is accepted once
        assert await mapper.unmap_handle(m.handle) == GntSt.GNTST_bad_handle
        with pytest.raises(GrantError) as e:
            await mapper.map(g.domid, ref)
        assert e.value.status == GntSt.GNTST_bad_domain


async def test_batched_maps_and_copies(hypervisord):
    async with guests(hypervisord, 2) as (xc, (a, b)):
        refs = [await a.grant(0, gfn) for gfn in range(4)] + [await b.grant(0, 0)]
        for gfn in range(4):
            await a.cmd("write", gfn=gfn, offset=0, data=f"a{gfn}")
        await b.cmd("write", gfn=0, offset=0, data="b0")
        mapper = GrantMapper(xc)
        maps = await mapper.map_batch([(a.domid, r, True) for r in refs[:4]] +
                                      [(b.domid, refs[4], True), (a.domid, 4000, True)])
        assert [bytes(m.view[:2]) for m in maps[:5]] == [b"a0", b"a1", b"a2", b"a3", b"b0"]
        assert isinstance(maps[5], GrantError) and maps[5].status == GntSt.GNTST_bad_gntref
        for m in maps[:5]:
            await mapper.unmap(m)
        to_dom0 = await a.grant(0, 7)
        statuses = await mapper.copy([
            Copy(CopyPtr(refs[4], b.domid, 0), CopyPtr(to_dom0, a.domid, 10), 2),
            Copy(CopyPtr(50, b.domid, 0, gref=False), CopyPtr(to_dom0, a.domid, 0), 2),
            Copy(CopyPtr(refs[0], a.domid, 4095), CopyPtr(to_dom0, a.domid, 0), 2),
        ])
        assert statuses == [OK, GntSt.GNTST_bad_page, GntSt.GNTST_bad_copy_arg]
        assert (await a.cmd("read", gfn=7, offset=10, len=2))["data"] == "b0"
        assert await a.flags(to_dom0) == GTF_permit_access


async def test_foreign_memory(hypervisord):
    async with guests(hypervisord, 1) as (xc, (g,)):
        for gfn in range(6):
            await g.cmd("write", gfn=gfn, offset=0, data=f"page {gfn}")
        fm = ForeignMemory(xc)
        view = await fm.map(g.domid, [4, 1, 2, 5])
        assert [bytes(view[i * PAGE_SIZE:i * PAGE_SIZE + 6]) for i in range(4)] == \
            [b"page 4", b"page 1", b"page 2", b"page 5"]
        view[PAGE_SIZE + 100:PAGE_SIZE + 105] = b"dom0!"
        assert (await g.cmd("read", gfn=1, offset=100, len=5))["data"] == "dom0!"
        ForeignMemory.unmap(view)
        ro = await fm.map(g.domid, [0], writable=False)
        assert ro.readonly and bytes(ro[:6]) == b"page 0"
        ForeignMemory.unmap(ro)
        with pytest.raises(OSError) as e:
            await fm.map(g.domid, [3, 100])
        assert "0x64" in str(e.value)
        with pytest.raises(XenError) as e:
            await fm.map(999, [0])
        assert e.value.errno == E.XEN_ESRCH
        res = await g.call(HYPERVISOR_pvxen_op, PvxenOp.map_foreign, domid=g.domid)
        assert res["rc"] == -E.XEN_EPERM and res["fds"] == 0  # domU: privcmd is dom0's


async def test_toolstack_seeds_the_reserved_xenstore_entry(hypervisord):
    async with guests(hypervisord, 1) as (xc, (g,)):
        await g.cmd("write", gfn=7, offset=0, data="xenstore ring")
        await seed_grant_table(xc, g.domid, console_gfn=6, xenstore_gfn=7)
        assert await g.flags(GNTTAB_RESERVED_XENSTORE) == GTF_permit_access
        mapper = GrantMapper(xc)
        m = await mapper.map(g.domid, GNTTAB_RESERVED_XENSTORE)
        assert bytes(m.view[:13]) == b"xenstore ring"
        await mapper.unmap(m)
        # the guest's own allocator never hands out the reserved refs
        assert min([await g.grant(0, 1) for _ in range(3)]) >= 8
        res = await g.gnttab(Op.GNTTABOP_map_grant_ref, ops=[
            {"dom": g.domid, "ref": GNTTAB_RESERVED_XENSTORE,
             "flags": GNTMAP_host_map | GNTMAP_readonly}])
        assert res["result"]["ops"][0]["status"] == GENERAL  # granted to d0, not itself
