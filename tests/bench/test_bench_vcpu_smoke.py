"""``python -m bench vcpu`` runs (small numbers) and ends with its JSON line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.toolstack.stack import REPO

pytestmark = pytest.mark.skipif(shutil.which("as") is None, reason="binutils not installed")


def test_vcpu_bench_prints_json_last():
    r = subprocess.run([sys.executable, "-m", "bench", "vcpu", "--iters", "1000000",
                        "--calls", "2000"], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(last) == {"loop_pv_insn_s", "loop_bare_insn_s", "loop_ratio",
                         "null_hypercalls_pv_s", "syscall_hook_bare_s", "hypercall_ratio",
                         "upcall_latency_median_us", "upcall_latency_p90_us",
                         "upcall_spin_latency_median_us", "upcall_spin_latency_p90_us"}
    assert all(v > 0 for v in last.values())
