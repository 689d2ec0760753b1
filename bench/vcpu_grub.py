"""The vcpu bench's last row: ``xl create`` of Debian's PV GRUB to its ``grub>`` prompt.

Real daemons (hypervisord, xenstored, backendd) in a private runtime
directory, a disk image with a partition table and ext2 (as ``make run``
makes it), and for each run: ``xl create``, then the time until GRUB's
"Welcome to GRUB!" and until "grub> " reach backendd's console log (the
console ring, read by our xenconsoled), then ``xl destroy``. In between
GRUB builds its page tables, sets up its grant table, probes XenStore,
connects its blkfront to our blkback and reads the disk's partitions.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import common
from examples.diskimage import make_image

PV_GRUB = Path("/usr/lib/grub-xen/grub-x86_64-xen.bin")
NAME = "benchgrub"


def _xl(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolstack.xl", *args], env=env, cwd=common.REPO,
                          capture_output=True, text=True, check=check, timeout=60)


def _wait(log: Path, start: int, text: bytes, deadline: float) -> float:
    while time.monotonic() < deadline:
        if log.exists():
            with open(log, "rb") as f:
                f.seek(start)
                if text in f.read():
                    return time.monotonic()
        time.sleep(0.01)
    raise TimeoutError(f"{text!r} not on GRUB's console")


def measure_grub(runs: int, tmp: Path) -> dict:
    """Median seconds from ``xl create`` to the welcome and to the prompt."""
    if runs <= 0 or not PV_GRUB.exists():
        common.note(f"grub row skipped ({PV_GRUB} not installed)" if runs > 0 else
                    "grub row skipped (--grub-runs 0)")
        return {}
    rundir = tmp / "grubrun"
    image = tmp / "grub.img"
    make_image(image, {"hello.txt": b"bench\n"}, label="benchgrub")
    cfg = tmp / "benchgrub.cfg"
    cfg.write_text(f'name = "{NAME}"\ntype = "pv"\nmemory = 32\nkernel = "{PV_GRUB}"\n'
                   f"disk = [ 'format=raw, vdev=xvda, access=rw, target={image}' ]\n")
    env = common.child_env({"PVXEN_RUNDIR": str(rundir)})
    log = rundir / "backendd" / "console" / f"guest-{NAME}.log"
    welcome, prompt = [], []
    with contextlib.ExitStack() as stack:
        for name in ("hypervisord", "xenstored", "backendd"):
            svc = common.Service(name, ["-m", name, "--rundir", str(rundir)], tmp)
            stack.callback(svc.stop)
            svc.start()
        stack.callback(lambda: _xl(env, "destroy", NAME, check=False))
        for _ in range(runs):
            start = log.stat().st_size if log.exists() else 0
            t0 = time.monotonic()
            _xl(env, "create", str(cfg))
            deadline = t0 + 60
            welcome.append(_wait(log, start, b"Welcome to GRUB!", deadline) - t0)
            prompt.append(_wait(log, start, b"grub> ", deadline) - t0)
            _xl(env, "destroy", NAME)
            while _xl(env, "domid", NAME, check=False).returncode == 0:
                time.sleep(0.05)
        launcher = rundir / "xl" / "launcher.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(launcher.read_text()), 15)
    return {"grub_welcome_s": common.median(welcome), "grub_prompt_s": common.median(prompt),
            "grub_prompt_s_max": max(prompt)}
