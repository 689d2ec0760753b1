"""Events and timers of a PV kernel under ``xl create``, real hypervisord.

dom0 (this test process, through hypervisord's privcmd socket as any dom0
tool) binds to the port the kernel offered and notifies it; hypervisord
sets the bits in the guest's shared_info and writes the port on the guest
process's event-channel stream, and the guest's vCPU delivers the upcall
(hypervisord/vcpu/events.py). The timer kernel binds VIRQ_TIMER through
hypervisord's real EVTCHNOP_bind_virq.
"""

from __future__ import annotations

import re
import time

import pytest

from hypervisord.public.event_channel import EvtchnOp
from hypervisord.public.xen import Hypercall
from tests.pv.test_xl_pv import launcher_log, write_pv
from tests.toolstack.stack import stack  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(60)


def test_dom0_notify_runs_the_guests_event_handler(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "up", "upcall", 'cmdline = "3"\n')))
    stack.wait(lambda: re.search(r"upcall port \d+", stack.guest_log("up")), "the port")
    port = int(re.search(r"upcall port (\d+)", stack.guest_log("up")).group(1))
    domid = stack.domid_of("up")
    xc = stack.ts.xc
    _, r = xc.call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_bind_interdomain,
                   remote_dom=domid, remote_port=port)
    local = int(r["local_port"])
    latencies = []
    for n in (1, 2, 3):
        t0 = time.perf_counter()
        xc.call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_send, port=local)
        stack.wait(lambda: f") upcall {n}\n" in stack.guest_log("up"), f"event {n}")
        latencies.append(time.perf_counter() - t0)
    stack.wait(lambda: "(up) shut down, reason poweroff" in launcher_log(stack), "the poweroff")
    assert ") upcall ok" in stack.guest_log("up")
    print("notify -> handler (incl. log polling):",
          ", ".join(f"{t * 1000:.1f} ms" for t in latencies))


def test_the_timer_kernel_ticks_under_xl(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "tm", "timer")))
    stack.wait(lambda: "timer " in stack.guest_log("tm"), "the kernel's verdict")
    stack.wait(lambda: "(tm) shut down, reason" in launcher_log(stack), "the shutdown")
    log = stack.guest_log("tm")
    assert log.count(") tick") == 4 and ") timer ok" in log, log
    assert "(tm) shut down, reason poweroff" in launcher_log(stack)


def test_guest_time_is_monotonic_under_xl(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "ti", "time")))
    stack.wait(lambda: "(ti) shut down, reason" in launcher_log(stack), "the shutdown")
    assert ") time ok" in stack.guest_log("ti"), stack.guest_log("ti")
