"""``xl create`` of our PV test kernels against real hypervisord + xenstored.

The kernels (tests/pv/kernels/*.S) are assembled here, loaded by the PV
domain builder (toolstack/pvbuilder.py) and run by the guest process's
vCPU (hypervisord/vcpu) under the launcher, confined as every domU.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hypervisord.public.sched import ShutdownReason
from tests.pv.kernels import assemble
from tests.toolstack.stack import stack  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(60)


def write_pv(tmp_path: Path, name: str, kernel: str, extra_cfg: str = "") -> Path:
    elf = assemble(kernel, tmp_path)
    cfg = tmp_path / f"{name}.cfg"
    cfg.write_text(f'name = "{name}"\ntype = "pv"\nmemory = 4\nkernel = "{elf}"\n{extra_cfg}')
    return cfg


def proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return "gone"


def launcher_log(stack) -> str:
    p = stack.xl_dir / "log" / "launcher.log"
    return p.read_text(errors="replace") if p.exists() else ""


def test_hello_prints_on_console_io_and_powers_off(stack, tmp_path):
    cfg = write_pv(tmp_path, "hello", "hello")
    stack.xl_ok("create", str(cfg))
    stack.wait(lambda: "Hello from a PV kernel" in stack.guest_log("hello"), "the greeting")
    stack.wait(lambda: "reason poweroff" in launcher_log(stack), "the poweroff")
    stack.wait(lambda: stack.domids() == [0], "the domain to go")
    line = next(x for x in stack.guest_log("hello").splitlines() if "Hello" in x)
    assert line.startswith("(d") and line.endswith(") Hello from a PV kernel")


def test_every_shutdown_reason_reaches_the_toolstack(stack, tmp_path):
    actions = "".join(f'{k} = "destroy"\n' for k in
                      ("on_poweroff", "on_reboot", "on_crash", "on_watchdog"))
    for reason in ShutdownReason:
        cfg = write_pv(tmp_path, f"r{int(reason)}", "hello",
                       actions + f'cmdline = "{int(reason)}"\n')
        stack.xl_ok("create", str(cfg))
    for reason in ShutdownReason:
        name = reason.name.removeprefix("SHUTDOWN_")
        stack.wait(lambda: f"(r{int(reason)}) shut down, reason {name}" in launcher_log(stack),
                   f"reason {name}")
    # soft_reset restarts the domain (Xen keeps it); the rest are gone
    stack.wait(lambda: len(stack.domids()) <= 2, "the domains to go")
    if stack.xl("domid", "r5").rc == 0:
        stack.xl_ok("destroy", "r5")
    stack.wait(lambda: stack.domids() == [0], "every domain to go")


def test_version_kernel_sees_hypervisords_version(stack, tmp_path):
    from libxen import ctrl

    word, _ = ctrl.xen_version(stack.ts.xc)  # dom0's view: the same hypervisor
    stack.xl_ok("create", str(write_pv(tmp_path, "ver", "version")))
    stack.wait(lambda: "XEN " in stack.guest_log("ver"), "the version line")
    line = next(x for x in stack.guest_log("ver").splitlines() if "XEN " in x)
    assert line.endswith(f") XEN {word >> 16}.{word & 0xFFFF:02d}")


def test_a_spinning_kernel_is_paused_and_destroyed_within_milliseconds(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "spin", "spin")))
    stack.wait(lambda: "spinning" in stack.guest_log("spin"), "the kernel to spin")
    domid = stack.domid_of("spin")
    pid = stack.launcher_guests()[domid]
    assert proc_state(pid) == "R"
    t0 = time.perf_counter()
    stack.xl_ok("pause", "spin")
    stack.wait(lambda: proc_state(pid) == "T", "the vCPU to stop", timeout=1)
    paused = time.perf_counter() - t0
    stack.xl_ok("unpause", "spin")
    stack.wait(lambda: proc_state(pid) in ("R", "S"), "the vCPU to run again", timeout=1)
    t0 = time.perf_counter()
    stack.xl_ok("destroy", "spin")
    stack.wait(lambda: proc_state(pid) in ("Z", "gone"), "the process to die", timeout=1)
    destroyed = time.perf_counter() - t0
    assert stack.domids() == [0]
    print(f"pause {paused * 1000:.1f} ms, destroy {destroyed * 1000:.1f} ms")
    assert paused < 0.5 and destroyed < 0.5


def test_a_kernel_without_xen_notes_is_refused(stack, tmp_path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text('name = "bad"\ntype = "pv"\nmemory = 4\nkernel = "/bin/true"\n')
    r = stack.xl("create", str(cfg))
    assert r.rc != 0
    assert "no Xen ELF notes: not a PV kernel" in r.err
    assert stack.domids() == [0]


def test_event_channel_ops_are_forwarded_to_hypervisord(stack, tmp_path):
    stack.xl_ok("create", str(write_pv(tmp_path, "ev", "evtchn")))
    stack.wait(lambda: "evtchn " in stack.guest_log("ev"), "the kernel's verdict")
    line = next(x for x in stack.guest_log("ev").splitlines() if "evtchn " in x)
    assert " evtchn ok " in line, stack.guest_log("ev")
    port = int(line.rsplit(" ", 1)[1])
    assert port > 2  # the builder's store and console ports come first
    stack.wait(lambda: "(ev) shut down, reason poweroff" in launcher_log(stack), "the poweroff")
