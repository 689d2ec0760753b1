"""Smoke test of ``python -m bench blk --quick``: the real benchmark (the
three daemons, a program guest with blkfront, the direct worker) as a
subprocess; only the shape of its output and its cleanup are checked,
never a figure."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench.__main__ import BENCHMARKS
from tests.bench.test_bench_hypervisor_smoke import _processes_mentioning

REPO = Path(__file__).resolve().parents[2]
ROWS = {f"{p}-{op}-{k}k-qd{qd}" for p, k in (("seq", 64), ("rand", 4))
        for op in ("read", "write") for qd in (1, 32)}
ROW_KEYS = {"pv_mb_s", "direct_mb_s", "ratio", "target", "met", "pv_lat_us_p50",
            "direct_lat_us_p50"}


@pytest.mark.timeout(10)
def test_registry_lists_blk():
    assert BENCHMARKS["blk"][0] == "bench.blk"


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_blk_quick_prints_json_last():
    parent = Path(tempfile.mkdtemp(prefix="pvxen-smoke-blk-"))
    try:
        proc = subprocess.run([sys.executable, "-m", "bench", "blk", "--quick", "--tmpdir",
                               str(parent)], cwd=REPO, capture_output=True, text=True, timeout=120)
        leftovers = list(parent.iterdir())
        survivors = _processes_mentioning(str(parent))
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["bench"] == "blk"
    assert set(result["rows"]) == ROWS
    for name, row in result["rows"].items():
        assert set(row) == ROW_KEYS, name
        assert row["target"] == (0.7 if name.startswith("seq") else 0.5)
        assert isinstance(row["met"], bool)
    assert isinstance(result["targets_met"], bool)
    assert result["guest"] == {"ring": 32, "persistent": True, "indirect": 256}
    assert any(line.startswith("seq-read-64k-qd1 ") for line in lines)
    assert leftovers == []
    assert survivors == []
