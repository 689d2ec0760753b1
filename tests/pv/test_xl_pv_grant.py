"""A PV kernel's grant table, used for real: ``xl create`` against real daemons.

The kernel (tests/pv/kernels/grant.S) sets up its grant table through
hypercalls from its vCPU (forwarded to hypervisord), maps the frame with
``update_va_mapping``, and grants a page to dom0; the test, as dom0, maps the
grant through libxengnttab (libxen/gnttab.py) as a backend would and reads it.
"""

from __future__ import annotations

import pytest
import trio

from hypervisord.public.grant_table import GntSt
from libxen.core import XenCall
from libxen.gnttab import GrantError, GrantMapper
from tests.pv.test_xl_pv import write_pv
from tests.toolstack.stack import stack  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(60)
TEXT = b"a page granted by a PV kernel on its vCPU"


async def _map_and_read(privcmd, domid: int, ref: int) -> tuple[bytes, int]:
    async with XenCall.open(privcmd) as xc:
        mapper = GrantMapper(xc)
        m = await mapper.map(domid, ref, readonly=True)
        data = bytes(m.view[:len(TEXT) + 8])
        await mapper.unmap(m)
        try:  # granted read-only: a writable mapping is refused
            await mapper.map(domid, ref, readonly=False)
            status = GntSt.GNTST_okay
        except GrantError as e:
            status = e.status
        return data, status


def test_a_page_granted_by_a_pv_kernel_is_read_by_dom0(stack, hypervisord, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "gnt", "grant")))
    stack.wait(lambda: "grant " in stack.guest_log("gnt"), "the kernel's grant")
    line = next(x for x in stack.guest_log("gnt").splitlines() if "grant " in x)
    assert " grant ok " in line, stack.guest_log("gnt")
    ref = int(line.rsplit(" ", 1)[1])
    domid = stack.domid_of("gnt")
    data, rw_status = trio.run(_map_and_read, hypervisord.privcmd, domid, ref)
    assert data == TEXT + bytes(8)
    # Xen's _set_status_v1: "Attempt to write-pin a r/o grant entry"
    assert rw_status == GntSt.GNTST_general_error
    stack.xl_ok("destroy", "gnt")
    stack.wait(lambda: stack.domids() == [0], "the domain to go")

