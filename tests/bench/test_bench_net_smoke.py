"""Smoke test of ``python -m bench net`` with tiny counts: the shape of its
output only (figures vary with the machine, none is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import BENCHMARKS

REPO = Path(__file__).resolve().parents[2]


def test_registry_lists_net():
    assert BENCHMARKS["net"][0] == "bench.net"


@pytest.mark.timeout(150)
def test_net_prints_table_then_json():
    r = subprocess.run([sys.executable, "-m", "bench", "net", "--rtt", "5", "--frames", "20"],
                       cwd=REPO, capture_output=True, text=True, timeout=140)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert lines[0].split() == ["size", "metric", "pv", "raw", "ratio", "target"]
    out = json.loads(lines[-1])
    assert out["bench"] == "net" and out["link"] == "switch"
    assert [(row["size"], row["metric"]) for row in out["rows"]] == [
        (1500, "mb_s"), (1500, "rtt_us"), (65535, "mb_s"), (65535, "rtt_us")]
    for row in out["rows"]:
        assert set(row) == {"size", "metric", "pv", "raw", "ratio", "target", "ok", "lost"}
        assert row["pv"] > 0 and row["raw"] > 0
