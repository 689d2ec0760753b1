"""``python -m bench vcpu`` runs (small numbers) and ends with its JSON line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from bench.vcpu_grub import PV_GRUB
from tests.toolstack.stack import REPO

pytestmark = [pytest.mark.skipif(shutil.which("as") is None, reason="binutils not installed"),
              pytest.mark.timeout(120)]


def test_vcpu_bench_prints_json_last():
    r = subprocess.run([sys.executable, "-m", "bench", "vcpu", "--iters", "1000000",
                        "--calls", "2000", "--grub-runs", "1"], cwd=REPO, capture_output=True,
                       text=True, timeout=100)
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(last) == {"loop_pv_insn_s", "loop_bare_insn_s", "loop_ratio",
                         "null_hypercalls_pv_s", "syscall_hook_bare_s", "hypercall_ratio",
                         "upcall_latency_median_us", "upcall_latency_p90_us",
                         "upcall_spin_latency_median_us", "upcall_spin_latency_p90_us"} | (
        {"grub_welcome_s", "grub_prompt_s", "grub_prompt_s_max"} if PV_GRUB.exists() else set())
    assert all(v > 0 for v in last.values())
