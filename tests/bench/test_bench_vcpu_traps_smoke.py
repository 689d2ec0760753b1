"""``python -m bench vcpu-traps`` runs (small numbers) and ends with its JSON line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.toolstack.stack import REPO

pytestmark = pytest.mark.skipif(shutil.which("as") is None, reason="binutils not installed")


def test_vcpu_traps_bench_prints_json_last():
    r = subprocess.run([sys.executable, "-m", "bench", "vcpu-traps", "--n", "500"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(last) == {"trap_round_trip_us", "null_hypercall_us", "trap_per_null_hypercall"}
    assert all(v > 0 for v in last.values())
