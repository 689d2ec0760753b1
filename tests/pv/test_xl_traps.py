"""Traps in real guest processes under ``xl create`` (hypervisord, xenstored,
the launcher): a kernel that takes every kind of trap runs to poweroff; one
whose fault has no handler crashes its domain only, with ``on_crash``
honoured (Xen's ``domain_crash`` -> SHUTDOWN_crash -> libxl's action)."""

from __future__ import annotations

import time

import pytest

from tests.pv.test_xl_pv import launcher_log, proc_state, write_pv
from tests.toolstack.stack import stack  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(60)


def test_a_kernel_taking_every_trap_runs_to_poweroff(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "traps", "traps_all")))
    stack.wait(lambda: "(traps) shut down, reason poweroff" in launcher_log(stack),
               "the poweroff")
    stack.wait(lambda: stack.domids() == [0], "the domain to go")


def test_an_unhandled_fault_crashes_only_its_domain(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "spin", "spin")))
    stack.wait(lambda: "spinning" in stack.guest_log("spin"), "the kernel to spin")
    spin_pid = stack.launcher_guests()[stack.domid_of("spin")]
    stack.xl_ok("create", str(write_pv(tmp_path, "bad", "fault", 'on_crash = "destroy"\n')))
    stack.wait(lambda: "(bad) shut down, reason crash" in launcher_log(stack), "the crash")
    stack.wait(lambda: stack.domids() == [0, stack.domid_of("spin")], "the crashed domain to go")
    assert "unhandled trap 14" in stack.guest_log("bad")
    assert proc_state(spin_pid) == "R"  # the other guest never noticed
    stack.xl_ok("destroy", "spin")


def test_on_crash_restart_rebuilds_the_domain(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "again", "cli", 'on_crash = "restart"\n')))
    first = stack.domid_of("again")
    stack.wait(lambda: "again restarted as d" in launcher_log(stack), "the restart")
    stack.wait(lambda: stack.xl("domid", "again").rc == 0
               and stack.domid_of("again") != first, "the new domain")
    stack.wait(lambda: "not restarting" in launcher_log(stack), "the restart limit", timeout=30)
    stack.wait(lambda: stack.domids() == [0], "the domain to go")


def test_on_crash_preserve_keeps_the_crashed_domain_until_destroy(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "kept", "fault", 'on_crash = "preserve"\n')))
    domid = stack.domid_of("kept")

    def state() -> str:
        row = next((x.split() for x in stack.xl_ok("list").out.splitlines()[1:]
                    if x.split()[:2] == ["kept", str(domid)]), None)
        return row[4] if row else "gone"

    # Xen's "---sc-": shut down, crashed; its vCPUs paused by the shutdown, so
    # neither running nor blocked (getdomaininfo in xen/common/domctl.c)
    stack.wait(lambda: state() == "---sc-", "xl list state c")
    time.sleep(0.5)
    assert state() == "---sc-"  # kept: nothing acted on the crash
    assert "unhandled trap 14" in stack.guest_log("kept")
    stack.xl_ok("destroy", "kept")
    stack.wait(lambda: stack.domids() == [0], "the domain to go")
    stack.wait(lambda: "(kept) destroyed" in launcher_log(stack), "the launcher's cleanup")
