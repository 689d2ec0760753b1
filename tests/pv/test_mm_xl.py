"""memory_op from a PV kernel's vCPU, forwarded to real hypervisord (``xl create``).

The kernel (tests/pv/kernels/mm_memory.S) checks each result against Xen's
(xen/common/memory.c, xen/arch/x86/mm.c arch_memory_op) and prints its verdict.
"""

from __future__ import annotations

import pytest

from tests.pv.test_xl_pv import launcher_log, write_pv
from tests.toolstack.stack import stack  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(60)


def test_memory_op_from_a_pv_kernel_is_forwarded_and_checked(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "mem", "mm_memory")))
    stack.wait(lambda: "mm_memory " in stack.guest_log("mem"), "the kernel's verdict")
    assert "mm_memory ok" in stack.guest_log("mem"), stack.guest_log("mem")
    stack.wait(lambda: "(mem) shut down, reason poweroff" in launcher_log(stack), "the poweroff")
