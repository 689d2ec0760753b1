"""Smoke test of ``python -m bench xenstore --quick``.

Runs the real benchmark (echo server, both xenstored variants, client
workers) as a subprocess and checks only the shape of its output: timings
vary with the machine, so no figure is ever asserted on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench.__main__ import BENCHMARKS, main as bench_main

REPO = Path(__file__).resolve().parents[2]

XENSTORE_KEYS = {
    "bench", "read_rtt_ratio_vs_echo", "write_rtt_ratio_vs_echo",
    "directory_rtt_ratio_vs_echo", "txn_rtt_ratio_vs_echo", "watch_latency_us",
    "watch_ratio_vs_echo", "scale16_read", "scale16_write", "scale16_watch",
    "read_rtt_ratio_vs_echo_nopersist", "write_rtt_ratio_vs_echo_nopersist",
    "watch_latency_us_nopersist", "scale16_read_nopersist", "echo_rtt_us",
    "targets_met", "rounds",
}


def test_registry_lists_xenstore(capsys):
    assert "xenstore" in BENCHMARKS
    assert bench_main([]) == 2
    assert bench_main(["no-such-bench"]) == 2
    assert "xenstore" in capsys.readouterr().out


@pytest.mark.slow
def test_xenstore_quick_prints_json_last():
    # Not tmp_path: its path is too long for the sockets inside (107 bytes).
    parent = Path(tempfile.mkdtemp(prefix="pvxen-smoke-"))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench", "xenstore", "--quick", "--tmpdir", str(parent)],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )
        leftovers = list(parent.iterdir())
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["bench"] == "xenstore"
    assert XENSTORE_KEYS <= result.keys(), XENSTORE_KEYS - result.keys()
    assert set(result["targets_met"]) == {"rtt_le_1.5x_echo", "scale16_read_ge_2x"}
    assert any(line.startswith("read ") and "echo" in line for line in lines)
    # Everything ran in the private directory, which is removed at the end.
    assert leftovers == []
