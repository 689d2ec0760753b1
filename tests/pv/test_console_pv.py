"""A PV kernel's console ring served by backendd's console service: the
kernel (tests/pv/kernels/ring_hello.S) writes into the page start_info names
(console.domU.mfn) and notifies console.domU.evtchn with EVTCHNOP_send;
the text reaches the domain's console log and the kernel sees it consumed."""

from __future__ import annotations

import pytest

from tests.console.conftest import console_log
from tests.pv.test_xl_pv import write_pv
from tests.toolstack.stack import stack, start_backendd  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(60)


def test_pv_kernel_prints_on_its_console_ring(stack, start_backendd, tmp_path):
    backendd = start_backendd()
    stack.xl_ok("create", str(write_pv(tmp_path, "ringhello", "ring_hello")))
    log = console_log(stack, "ringhello")
    stack.wait(lambda: log.exists() and b"hello from a PV kernel on its console ring\r\n"
               in log.read_bytes(), "the text in the console log")
    stack.wait(lambda: "ring hello consumed" in stack.guest_log("ringhello"),
               "the kernel to see its output consumed")
    stack.wait(lambda: stack.domids() == [0], "the domain to power off")
    assert "ring hello: not consumed" not in stack.guest_log("ringhello")
    assert "(ringhello): console on /dev/pts/" in backendd.log()
