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


def _bind_and_notify(stack, name: str, count: int) -> list[float]:
    stack.wait(lambda: re.search(r"upcall port \d+", stack.guest_log(name)), "the port")
    port = int(re.search(r"upcall port (\d+)", stack.guest_log(name)).group(1))
    xc = stack.ts.xc
    _, r = xc.call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_bind_interdomain,
                   remote_dom=stack.domid_of(name), remote_port=port)
    local = int(r["local_port"])
    latencies = []
    for n in range(1, count + 1):
        t0 = time.perf_counter()
        xc.call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_send, port=local)
        stack.wait(lambda: f") upcall {n}\n" in stack.guest_log(name), f"event {n}")
        latencies.append(time.perf_counter() - t0)
    stack.wait(lambda: f"({name}) shut down, reason poweroff" in launcher_log(stack),
               "the poweroff")
    assert ") upcall ok" in stack.guest_log(name)
    return latencies


def test_dom0_notify_runs_the_guests_event_handler(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "up", "upcall", 'cmdline = "3"\n')))
    latencies = _bind_and_notify(stack, "up", 3)
    print("notify -> handler (incl. log polling):",
          ", ".join(f"{t * 1000:.1f} ms" for t in latencies))


def test_a_spinning_guest_with_its_own_vcpu_info_gets_the_events(stack, tmp_path):
    """VCPUOP_register_vcpu_info, and events while the vCPU runs (no block)."""
    stack.xl_ok("create", str(write_pv(tmp_path, "rs", "upcall", 'cmdline = "rs2"\n')))
    _bind_and_notify(stack, "rs", 2)


def test_the_timer_kernel_ticks_under_xl(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "tm", "timer")))
    stack.wait(lambda: "timer " in stack.guest_log("tm"), "the kernel's verdict")
    stack.wait(lambda: "(tm) shut down, reason" in launcher_log(stack), "the shutdown")
    log = stack.guest_log("tm")
    assert log.count(") tick") in (4, 5) and ") timer ok" in log, log  # 5: a late tick
    assert "(tm) shut down, reason poweroff" in launcher_log(stack)


def test_guest_time_is_monotonic_under_xl(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "ti", "time")))
    stack.wait(lambda: "(ti) shut down, reason" in launcher_log(stack), "the shutdown")
    assert ") time ok" in stack.guest_log("ti"), stack.guest_log("ti")
