"""SMP PV guests under ``xl create`` (``vcpus = 2``), real daemons.

The kernel (tests/pv/kernels/smp.S) brings vCPU 1 up with VCPUOP_initialise
+ VCPUOP_up (hypervisord/vcpu/smp.py), checks Xen's refusals itself
(``smp FAIL <letter>`` names the check), and the two vCPUs talk through
IPIs (EVTCHNOP_bind_ipi), a per-vCPU VIRQ_TIMER and, with cmdline "b", a
port dom0 notifies after the guest moved it to vCPU 1 (EVTCHNOP_bind_vcpu).
Each vCPU is a thread ``vcpuN`` of the guest's process: ``xl vcpu-list``
shows it with its own state and time, ``xl vcpu-pin`` pins that thread.
"""

from __future__ import annotations

import os
import re

import pytest

from hypervisord.public.event_channel import EvtchnOp
from hypervisord.public.xen import Hypercall
from tests.pv.test_xl_pv import launcher_log, write_pv
from tests.toolstack.stack import stack  # noqa: F401 (fixture)
from tests.toolstack.test_xl_sched import fields, vcpu_rows
from toolstack import vcpus as vc

pytestmark = pytest.mark.timeout(60)

SMP = "vcpus = 2\n"


def _shut_down(stack, name: str) -> str:
    stack.wait(lambda: f"({name}) shut down, reason" in launcher_log(stack), "the shutdown")
    return stack.guest_log(name)


def test_vcpu1_comes_up_sends_an_ipi_and_goes_down(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "smp", "smp", SMP)))
    log = _shut_down(stack, "smp")
    assert ") smp ok" in log and "FAIL" not in log, log
    assert ") vcpu1 up\n" in log and ") vcpu1 up again" in log, log
    assert "(smp) shut down, reason poweroff" in launcher_log(stack)
    stack.wait(lambda: stack.domids() == [0], "the domain to go")


def test_vcpu0_registers_vcpu1s_vcpu_info_and_vcpu1s_events_arrive_there(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "rv", "smp", SMP + 'cmdline = "r"\n')))
    log = _shut_down(stack, "rv")
    assert ") smp ok" in log and "FAIL" not in log, log


def test_a_shutdown_from_vcpu1_ends_the_domain_while_vcpu0_blocks(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "sd", "smp", SMP + 'cmdline = "s"\n')))
    log = _shut_down(stack, "sd")
    assert ") vcpu1 up" in log and "FAIL" not in log and ") smp ok" not in log, log
    assert "(sd) shut down, reason poweroff" in launcher_log(stack)
    stack.wait(lambda: stack.domids() == [0], "the domain to go")


def test_one_vcpu_guests_still_refuse_vcpu1(stack, tmp_path):
    """Without ``vcpus``: max_vcpus 1, vCPU 1 does not exist (-ENOENT)."""
    stack.xl_ok("create", str(write_pv(tmp_path, "one", "smp")))
    log = _shut_down(stack, "one")
    assert ") smp FAIL B" in log, log  # bind_ipi(vcpu 1): -ENOENT, not 0


def test_a_port_moved_to_vcpu1_wakes_vcpu1(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "mv", "smp", SMP + 'cmdline = "b"\n')))
    stack.wait(lambda: re.search(r"upcall port \d+", stack.guest_log("mv")), "the port")
    port = int(re.search(r"upcall port (\d+)", stack.guest_log("mv")).group(1))
    xc = stack.ts.xc
    _, r = xc.call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_bind_interdomain,
                   remote_dom=stack.domid_of("mv"), remote_port=port)
    _, st = xc.call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_status,
                    dom=stack.domid_of("mv"), port=port)
    assert int(st["vcpu"]) == 1  # EVTCHNOP_bind_vcpu reached hypervisord
    xc.call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_send, port=int(r["local_port"]))
    log = _shut_down(stack, "mv")
    assert ") vcpu1 got the moved port" in log and ") smp ok" in log, log


def _waiting(stack, tmp_path, name: str) -> tuple[int, int]:
    stack.xl_ok("create", str(write_pv(tmp_path, name, "smp", SMP + 'cmdline = "w"\n')))
    stack.wait(lambda: ") vcpu1 spinning" in stack.guest_log(name)
               and ") smp waiting" in stack.guest_log(name), "both vCPUs")
    domid = stack.domid_of(name)
    return domid, stack.launcher_guests()[domid]


def test_vcpu_list_shows_two_vcpus_in_their_own_threads(stack, tmp_path):
    domid, pid = _waiting(stack, tmp_path, "vl")
    threads = vc.vcpu_threads(pid, 2)
    assert set(threads) == {0, 1} and threads[0] != threads[1]
    assert pid not in threads.values()  # each vCPU has a thread of its own
    assert all(vc.thread_name(pid, t) == f"vcpu{v}" for v, t in threads.items())
    rows = vcpu_rows(stack, "vl")
    assert [fields(r)[:3] for r in rows] == [["vl", str(domid), "0"], ["vl", str(domid), "1"]]
    # vCPU 0 blocks (SCHEDOP_block), vCPU 1 spins: their states and times differ
    stack.wait(lambda: fields(vcpu_rows(stack, "vl")[1])[4] == "r--", "vCPU 1 running")
    stack.wait(lambda: fields(vcpu_rows(stack, "vl")[0])[4] == "-b-", "vCPU 0 blocked")
    t1 = float(fields(vcpu_rows(stack, "vl")[1])[5])
    stack.wait(lambda: float(fields(vcpu_rows(stack, "vl")[1])[5]) >= t1 + 0.2,
               "vCPU 1's time to grow", timeout=10)
    assert float(fields(vcpu_rows(stack, "vl")[0])[5]) < t1 + 0.2

    def list_state() -> str:
        row = next(r for r in stack.xl_ok("list").out.splitlines() if r.startswith("vl "))
        return row.split()[4]
    # the domain runs while one of its vCPUs does (its main thread only waits)
    stack.wait(lambda: list_state() == "r-----", "xl list's r")
    stack.xl_ok("destroy", "vl")
    stack.wait(lambda: stack.domids() == [0], "the domain to go")


def test_vcpu_pin_of_vcpu1_pins_its_thread_only(stack, tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    domid, pid = _waiting(stack, tmp_path, "vp")
    threads = vc.vcpu_threads(pid, 2)
    before = os.sched_getaffinity(threads[0])
    stack.xl_ok("vcpu-pin", "vp", "1", str(cpus[1]))
    assert os.sched_getaffinity(threads[1]) == {cpus[1]}
    assert os.sched_getaffinity(threads[0]) == before
    stack.wait(lambda: fields(vcpu_rows(stack, "vp")[1])[3] == str(cpus[1]), "the move")
    rows = vcpu_rows(stack, "vp")
    assert fields(rows[1])[6] == str(cpus[1]) and fields(rows[0])[6] != str(cpus[1])
    stack.xl_ok("destroy", "vp")
    stack.wait(lambda: stack.domids() == [0], "the domain to go")
