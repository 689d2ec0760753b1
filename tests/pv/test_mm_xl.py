"""Memory hypercalls of PV guests on their vCPUs, against real daemons (``xl create``).

Our kernel (tests/pv/kernels/mm_memory.S) checks each memory_op result
against Xen's (xen/common/memory.c, xen/arch/x86/mm.c arch_memory_op) and
prints its verdict; Debian's PV GRUB, unmodified, exercises the page-table
half as a real PV kernel does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from hypervisord.public.io.console import XENCONS_OUT_OFF, XENCONS_OUT_SIZE
from libxen.core import XenCall
from libxen.foreignmemory import ForeignMemory
from tests.pv.test_xl_pv import launcher_log, write_pv
from tests.toolstack.stack import stack  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(60)


def test_memory_op_from_a_pv_kernel_is_forwarded_and_checked(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "mem", "mm_memory")))
    stack.wait(lambda: "mm_memory " in stack.guest_log("mem"), "the kernel's verdict")
    assert "mm_memory ok" in stack.guest_log("mem"), stack.guest_log("mem")
    stack.wait(lambda: "(mem) shut down, reason poweroff" in launcher_log(stack), "the poweroff")


PV_GRUB = Path("/usr/lib/grub-xen/grub-x86_64-xen.bin")  # Debian's grub-xen-host


async def _console_out(privcmd, domid: int, gfn: int) -> bytes:
    """The PV console page's ``out`` ring, as dom0 maps it (xenconsoled's view)."""
    async with XenCall.open(privcmd) as xc:
        view = await ForeignMemory(xc).map(domid, [gfn], writable=False)
        try:
            return bytes(view[XENCONS_OUT_OFF:XENCONS_OUT_OFF + XENCONS_OUT_SIZE])
        finally:
            ForeignMemory.unmap(view)


@pytest.mark.skipif(not PV_GRUB.exists(), reason="grub-xen-host is not installed")
def test_debian_pv_grub_builds_its_own_page_tables_and_greets(stack, hypervisord, tmp_path):
    """Unmodified PV GRUB: MACHPHYS_UPDATE, its own tables filled through an
    update_va_mapping window, PIN_L4 + NEW_BASEPTR + UNPIN of the builder's, its
    grant table, then "Welcome to GRUB!" on the PV console ring."""
    cfg = tmp_path / "grub.cfg"
    cfg.write_text(f'name = "grub"\ntype = "pv"\nmemory = 32\nkernel = "{PV_GRUB}"\n')
    stack.xl_ok("create", str(cfg))
    domid = stack.domid_of("grub")
    gfn = int(stack.read(f"/local/domain/{domid}/console/ring-ref"))
    out = b""

    def greeted() -> bool:
        nonlocal out
        out = trio.run(_console_out, hypervisord.privcmd, domid, gfn)
        return b"Welcome to GRUB!" in out

    stack.wait(greeted, "GRUB's welcome on its console", timeout=30)
    stack.xl_ok("destroy", "grub")
    stack.wait(lambda: stack.domids() == [0], "the domain to go")


def test_grant_copy_from_a_pv_kernel_is_done_by_hypervisord_and_checked(stack, tmp_path):
    """GNTTABOP_copy between own frames, refused into a page table, bad ops' statuses."""
    stack.xl_ok("create", str(write_pv(tmp_path, "gcopy", "gntcopy")))
    stack.wait(lambda: "gntcopy " in stack.guest_log("gcopy"), "the kernel's verdict")
    assert "gntcopy ok" in stack.guest_log("gcopy"), stack.guest_log("gcopy")
