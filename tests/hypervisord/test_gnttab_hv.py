"""GNTTABOP_* handlers in-process: a real Hypervisor and dispatcher, real memory
files, no sockets (callers are made up; the server gives the real ones)."""

from __future__ import annotations

import mmap
import gc
import os
from collections import Counter

import pytest

from hypervisord import gnttab, memory
from hypervisord.hv import Hypervisor
from hypervisord.hypercall import Caller, Dispatcher
from hypervisord.public.errno import XenErrno as E
from hypervisord.public.grant_table import (
    GNTCOPY_dest_gref,
    GNTCOPY_source_gref,
    GNTMAP_device_map,
    GNTMAP_host_map,
    GNTMAP_readonly,
    GRANT_ENTRY_V1,
    GTF_permit_access,
    GTF_readonly,
    GTF_reading,
    GTF_writing,
    GnttabOp as Op,
    GntSt,
)
from hypervisord.public.xen import DOMID_SELF, PAGE_SIZE, Hypercall

pytestmark = pytest.mark.timeout(60)
G = Hypercall.grant_table_op
HOST, RO = GNTMAP_host_map, GNTMAP_readonly
OK, GENERAL = GntSt.GNTST_okay, GntSt.GNTST_general_error


class Dom:
    """A domain, its process's caller identity and its own view of its grant frames."""

    def __init__(self, hv: Hypervisor, pages: int = 16) -> None:
        self.d = hv.create_domain(None, None, pages)
        assert hv.populate(self.d, list(range(pages))) == pages
        self.domid = self.d.domid
        self.caller = Caller(self.domid, False, f"conn-d{self.domid}")
        self.frames = mmap.mmap(self.d.mem.fd, 4 * PAGE_SIZE, offset=PAGE_SIZE)

    def grant(self, ref: int, domid: int, gfn: int, flags: int = GTF_permit_access) -> None:
        GRANT_ENTRY_V1.pack_into(self.frames, ref * 8, flags, domid, gfn)

    def flags(self, ref: int) -> int:
        return GRANT_ENTRY_V1.unpack_from(self.frames, ref * 8)[0]

    def page(self, gfn: int) -> bytes:
        return os.pread(self.d.mem.fd, PAGE_SIZE, self.d.mem.offset_of_gfn(gfn))

    def poke(self, gfn: int, data: bytes, offset: int = 0) -> None:
        os.pwrite(self.d.mem.fd, data, self.d.mem.offset_of_gfn(gfn) + offset)


@pytest.fixture
def env():
    hv = Hypervisor()
    gnttab.install(hv)
    disp = Dispatcher(hv, [gnttab.HANDLERS, memory.HANDLERS])
    hv.populate(hv.dom0, [0, 1])
    doms = [Dom(hv), Dom(hv)]
    dom0 = Caller(0, True, "conn-dom0")
    fds: list[int] = []

    def call(caller, op, **args):
        rc, r = disp.call(caller, G, op, args)
        for fd in (r or {}).pop("_fds", {}).values():
            fds.append(fd)
        return rc, r

    def ops(caller, op, *items):
        rc, r = call(caller, op, ops=list(items))
        assert rc == 0, r
        return r["ops"]

    yield hv, call, ops, dom0, doms, fds
    for d in doms:
        d.frames.close()
    for dom in list(hv.domains.values()):
        if dom.domid:
            hv.destroy(dom)
    hv.dom0.gnttab.close()
    for fd in fds:
        os.close(fd)


def memfds(domids) -> list[str]:
    """This process's descriptors and mappings of those domains' memory files."""
    names = {f"memfd:pvxen-dom{d} " for d in domids}
    found = [os.readlink(f"/proc/self/fd/{fd}") + " " for fd in os.listdir("/proc/self/fd")
             if os.path.exists(f"/proc/self/fd/{fd}")]
    with open("/proc/self/maps") as f:
        found += [line.split(None, 5)[-1].strip() + " " for line in f]
    return [x for x in found if any(x.startswith("/" + n) or x.startswith(n) for n in names)]


def test_setup_table_and_query_size(env):
    hv, call, _, dom0, (a, b), _ = env
    assert call(a.caller, Op.GNTTABOP_query_size, dom=DOMID_SELF) == \
        (0, {"status": OK, "nr_frames": 1, "max_nr_frames": 4})
    assert call(a.caller, Op.GNTTABOP_setup_table, dom=DOMID_SELF, nr_frames=3) == \
        (0, {"status": OK, "frame_list": [1, 2, 3]})
    assert call(a.caller, Op.GNTTABOP_query_size, dom=a.domid)[1]["nr_frames"] == 3
    rc, r = call(a.caller, Op.GNTTABOP_setup_table, dom=DOMID_SELF, nr_frames=5)
    assert (rc, r["status"]) == (0, GENERAL)
    assert call(a.caller, Op.GNTTABOP_query_size, dom=b.domid)[1]["status"] == \
        GntSt.GNTST_permission_denied
    assert call(a.caller, Op.GNTTABOP_setup_table, dom=b.domid, nr_frames=1)[1]["status"] == \
        GntSt.GNTST_permission_denied
    assert call(dom0, Op.GNTTABOP_query_size, dom=b.domid)[1]["status"] == OK
    assert call(dom0, Op.GNTTABOP_query_size, dom=4000)[1]["status"] == GntSt.GNTST_bad_domain
    assert call(a.caller, Op.GNTTABOP_setup_table, dom=DOMID_SELF)[0] == -E.XEN_EINVAL


def test_versions(env):
    _, call, _, dom0, (a, _), _ = env
    assert call(a.caller, Op.GNTTABOP_set_version, version=1) == (0, {"version": 1})
    assert call(a.caller, Op.GNTTABOP_set_version, version=2)[0] == -E.XEN_ENOSYS
    assert call(a.caller, Op.GNTTABOP_set_version, version=3)[0] == -E.XEN_EINVAL
    assert call(a.caller, Op.GNTTABOP_get_version, dom=DOMID_SELF) == (0, {"version": 1})
    assert call(a.caller, Op.GNTTABOP_get_version, dom=0)[0] == -E.XEN_EPERM
    assert call(dom0, Op.GNTTABOP_get_version, dom=999)[0] == -E.XEN_ESRCH


def test_dom0_maps_a_grant_and_sees_the_page(env):
    _, call, ops, dom0, (a, _), fds = env
    a.grant(9, 0, 3)
    a.poke(3, b"frontend")
    (r,) = ops(dom0, Op.GNTTABOP_map_grant_ref,
               {"dom": a.domid, "ref": 9, "flags": HOST | GNTMAP_device_map})
    assert r["status"] == OK and r["memory"] == f"memory{a.domid}"
    assert r["offset"] == a.d.mem.offset_of_gfn(3)
    assert r["dev_bus_addr"] == a.d.mem.p2m[3] * PAGE_SIZE
    with mmap.mmap(fds[-1], PAGE_SIZE, offset=r["offset"]) as page:
        assert page[:8] == b"frontend"
        page[:7] = b"backend"
    assert a.page(3)[:8] == b"backendd"
    assert a.flags(9) == GTF_permit_access | GTF_reading | GTF_writing
    assert ops(dom0, Op.GNTTABOP_unmap_grant_ref, {"handle": r["handle"]}) == [{"status": OK}]
    assert a.flags(9) == GTF_permit_access


def test_hostile_maps_get_xen_statuses(env):
    _, call, ops, dom0, (a, b), fds = env
    a.grant(10, b.domid, 4)  # granted to b, not dom0
    a.grant(11, 0, 4, GTF_permit_access | GTF_readonly)
    res = ops(dom0, Op.GNTTABOP_map_grant_ref,
              {"dom": a.domid, "ref": 10, "flags": HOST},  # not granted to dom0
              {"dom": a.domid, "ref": 512, "flags": HOST},  # beyond the table
              {"dom": a.domid, "ref": 11, "flags": HOST},  # read-only as writable
              {"dom": a.domid, "ref": 11, "flags": 0},  # no host/device map
              {"dom": 999, "ref": 11, "flags": HOST | RO},  # no such granter
              {"dom": DOMID_SELF, "ref": 11, "flags": HOST | RO})  # no DOMID_SELF here
    assert [r["status"] for r in res] == [GENERAL, GntSt.GNTST_bad_gntref, GENERAL,
                                          GntSt.GNTST_bad_gntref, GntSt.GNTST_bad_domain,
                                          GntSt.GNTST_bad_domain]
    assert "expected d0" in res[0]["reason"] and "read-only" in res[2]["reason"]
    assert fds == [] and a.flags(10) == GTF_permit_access
    assert ops(dom0, Op.GNTTABOP_unmap_grant_ref, {"handle": 0}) == \
        [{"status": GntSt.GNTST_bad_handle, "reason": "d0 has no mapping with handle 0x0"}]
    (r,) = ops(dom0, Op.GNTTABOP_map_grant_ref, {"dom": a.domid, "ref": 11, "flags": HOST | RO})
    res = ops(dom0, Op.GNTTABOP_unmap_grant_ref, {"handle": r["handle"]}, {"handle": r["handle"]})
    assert [x["status"] for x in res] == [OK, GntSt.GNTST_bad_handle]
    assert call(dom0, Op.GNTTABOP_map_grant_ref, ops=[{"dom": "x"}])[0] == -E.XEN_EINVAL
    assert call(dom0, Op.GNTTABOP_map_grant_ref, ops={})[0] == -E.XEN_EINVAL


def test_domu_mapper_is_validated_then_refused_without_a_descriptor(env):
    _, call, ops, dom0, (a, b), fds = env
    a.grant(12, b.domid, 5)
    a.grant(13, 0, 5)
    res = ops(b.caller, Op.GNTTABOP_map_grant_ref,
              {"dom": a.domid, "ref": 12, "flags": HOST},  # valid: refused for delivery
              {"dom": a.domid, "ref": 13, "flags": HOST},  # granted to d0: invalid
              {"dom": a.domid, "ref": 4096, "flags": HOST})
    assert [r["status"] for r in res] == [GENERAL, GENERAL, GntSt.GNTST_bad_gntref]
    assert "unprivileged" in res[0]["reason"] and "expected d" in res[1]["reason"]
    assert fds == [] and a.flags(12) == GTF_permit_access  # pins undone
    assert a.d.gnttab.active == {}
    b.grant(8, b.domid, 2)  # a domU may map its own grant: its own file
    (r,) = ops(b.caller, Op.GNTTABOP_map_grant_ref, {"dom": b.domid, "ref": 8, "flags": HOST})
    assert r["status"] == OK and r["memory"] == f"memory{b.domid}"


def test_copy_both_sides_checked(env):
    hv, call, ops, dom0, (a, b), _ = env
    a.grant(20, b.domid, 6)
    a.grant(21, b.domid, 7, GTF_permit_access | GTF_readonly)
    a.poke(6, b"hello grant copy")
    b_self = {"u": 1, "domid": DOMID_SELF, "offset": 0}
    res = ops(b.caller, Op.GNTTABOP_copy,
              {"source": {"u": 20, "domid": a.domid, "offset": 6}, "dest": b_self,
               "len": 10, "flags": GNTCOPY_source_gref},
              {"source": b_self, "dest": {"u": 20, "domid": a.domid, "offset": 100},
               "len": 5, "flags": GNTCOPY_dest_gref},
              {"source": b_self, "dest": {"u": 21, "domid": a.domid}, "len": 5,
               "flags": GNTCOPY_dest_gref},  # read-only grant as destination
              {"source": {"u": 6, "domid": a.domid}, "dest": b_self, "len": 5,
               "flags": 0},  # a frame of another domain
              {"source": {"u": 20, "domid": a.domid, "offset": 4000}, "dest": b_self,
               "len": 200, "flags": GNTCOPY_source_gref},  # crosses the page
              {"source": {"u": 20, "domid": 999}, "dest": b_self, "len": 1,
               "flags": GNTCOPY_source_gref},
              {"source": {"u": 999, "domid": DOMID_SELF}, "dest": b_self, "len": 1,
               "flags": 0},  # own frame, not populated
              {"source": {"u": 999, "domid": 999}, "dest": b_self, "len": 0, "flags": 0})
    assert [r["status"] for r in res] == [
        OK, OK, GENERAL, GntSt.GNTST_permission_denied, GntSt.GNTST_bad_copy_arg,
        GntSt.GNTST_bad_domain, GntSt.GNTST_bad_page, OK]
    assert b.page(1)[:10] == b"grant copy"
    assert a.page(6)[100:105] == b"grant"
    assert a.flags(20) == a.flags(21) & ~GTF_readonly == GTF_permit_access
    # dom0 may name another domain's frame (it can map it anyway)
    res = ops(dom0, Op.GNTTABOP_copy, {"source": {"u": 6, "domid": a.domid},
                                       "dest": {"u": 0, "domid": DOMID_SELF}, "len": 5})
    assert res == [{"status": OK}] and os.pread(hv.dom0.mem.fd, 5, hv.dom0.mem.offset_of_gfn(0)) \
        == b"hello"


def test_connection_close_and_domain_destroy(env):
    hv, call, ops, dom0, (a, b), _ = env
    a.grant(30, 0, 8)
    a.grant(31, 0, 9)
    other0 = Caller(0, True, "conn-dom0-2")
    (m1,) = ops(dom0, Op.GNTTABOP_map_grant_ref, {"dom": a.domid, "ref": 30, "flags": HOST})
    (m2,) = ops(other0, Op.GNTTABOP_map_grant_ref, {"dom": a.domid, "ref": 31, "flags": HOST | RO})
    gnttab.conn_closed(hv, other0.conn)
    assert a.flags(31) == GTF_permit_access and a.flags(30) & GTF_writing
    b.grant(8, b.domid, 2)
    ops(b.caller, Op.GNTTABOP_map_grant_ref, {"dom": b.domid, "ref": 8, "flags": HOST})
    hv.destroy(b.d)  # the mapper goes: its maptrack with it
    assert all(mt.domid != b.domid for mt in hv.gnttab.maptracks.values())
    hv.destroy(a.d)  # the granter goes: dom0's mapping is revoked
    assert a.flags(30) == GTF_permit_access  # (in the file dom0 still maps)
    res = ops(dom0, Op.GNTTABOP_unmap_grant_ref, {"handle": m1["handle"]}, {"handle": m1["handle"]})
    assert [r["status"] for r in res] == [OK, GntSt.GNTST_bad_handle]
    res = ops(dom0, Op.GNTTABOP_map_grant_ref, {"dom": a.domid, "ref": 30, "flags": HOST})
    assert res[0]["status"] == GntSt.GNTST_bad_domain


def test_many_domains_leave_nothing_behind(env):
    hv, call, ops, dom0, _, fds = env
    domids = range(1, 300)
    gc.collect()  # other tests' in-process hypervisors may still be waiting for the collector
    before = Counter(memfds(domids))  # other tests' hypervisors may have left some
    for _ in range(200):
        d = Dom(hv, pages=2)
        d.grant(8, 0, 1)
        ops(dom0, Op.GNTTABOP_map_grant_ref, {"dom": d.domid, "ref": 8, "flags": HOST})
        assert len(memfds([d.domid])) > before[f"/memfd:pvxen-dom{d.domid} (deleted) "]
        d.frames.close()
        hv.destroy(d.d)
    for fd in fds:
        os.close(fd)
    fds.clear()
    gc.collect()
    assert Counter(memfds(domids)) - before == Counter()
    assert hv.mem.free_frames == hv.mem.total_frames - 2 - 2 * 16
    assert sum(len(mt.entries) for mt in hv.gnttab.maptracks.values()) == 200  # revoked handles
    gnttab.conn_closed(hv, dom0.conn)
    assert hv.gnttab.maptracks == {} or all(not mt.entries for mt in hv.gnttab.maptracks.values())


def test_domu_maptrack_is_bounded(env):
    hv, call, ops, dom0, (a, _), _ = env
    for ref in range(8, 17):
        a.grant(ref, a.domid, 1, GTF_permit_access | GTF_readonly)
    batch = [{"dom": a.domid, "ref": ref, "flags": HOST | RO}
             for ref in range(8, 17) for _ in range(128)]
    res = ops(a.caller, Op.GNTTABOP_map_grant_ref, *batch[:1000])
    res += ops(a.caller, Op.GNTTABOP_map_grant_ref, *batch[1000:1100])
    limit = hv.gnttab.limits.max_maptrack_domu
    assert [r["status"] for r in res].count(OK) == limit
    assert {r["status"] for r in res[limit:]} == {GntSt.GNTST_no_space}
    gnttab.conn_closed(hv, a.caller.conn)  # the process dies: everything released
    assert a.d.gnttab.active == {} and all(a.flags(r) & GTF_reading == 0 for r in range(8, 17))


def test_a_mapped_frame_is_not_ballooned_out(env):
    hv, call, ops, dom0, (a, _), _ = env
    a.grant(40, 0, 5)
    a.poke(5, b"still here")
    (m,) = ops(dom0, Op.GNTTABOP_map_grant_ref, {"dom": a.domid, "ref": 40, "flags": HOST})
    assert m["status"] == OK
    # gfns 4, 5, 6: 4 goes, 5 is mapped by dom0 so the call stops there
    assert hv.decrease(a.d, [4, 5, 6]) == 1
    assert 5 in a.d.mem.p2m and 6 in a.d.mem.p2m and 4 not in a.d.mem.p2m
    assert a.page(5).startswith(b"still here")
    ops(dom0, Op.GNTTABOP_unmap_grant_ref, {"handle": m["handle"]})
    assert hv.decrease(a.d, [5, 6]) == 2
