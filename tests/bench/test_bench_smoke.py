"""Smoke test of ``python -m bench xenstore --quick``.

Runs the real benchmark (Debian's cxenstored when installed, both xenstored
variants, the echo server, client workers) as a subprocess and checks only the shape of its output: timings
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

OPS = ("read", "write", "directory", "rm", "txn", "rmw", "watch")
XENSTORE_KEYS = {"bench", "cxenstored", "targets_met", "rounds"} | {
    key for op in OPS
    for key in (f"{op}_ratio_vs_echo", f"tput16_{op}_ratio_vs_echo", f"{op}_us",
                f"{op}_16_ops_s", f"{op}_us_nopersist", f"{op}_us_echo")}


def test_registry_lists_xenstore(capsys):
    assert "xenstore" in BENCHMARKS
    assert bench_main([]) == 2
    assert bench_main(["no-such-bench"]) == 2
    assert "xenstore" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("extra", [[], ["--no-cxenstored"]])
def test_xenstore_quick_prints_json_last(extra):
    # Not tmp_path: its path is too long for the sockets inside (107 bytes).
    parent = Path(tempfile.mkdtemp(prefix="pvxen-smoke-"))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench", "xenstore", "--quick", "--tmpdir", str(parent),
             *extra],
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
    assert set(result["targets_met"]) == {"latency_le_1x_cxenstored"}
    if extra:
        assert result["cxenstored"].startswith("left out")
    if result["cxenstored"] == "measured":  # Debian's daemon is installed here
        assert {f"{op}_ratio_vs_cxenstored" for op in OPS} <= result.keys()
        assert {f"tput16_{op}_ratio_vs_cxenstored" for op in OPS} <= result.keys()
        assert any(line.startswith("rmw ") and "cxenstored" in line for line in lines)
    else:
        assert result["targets_met"]["latency_le_1x_cxenstored"] is None
    for op in OPS:
        assert any(line.startswith(op + " ") and "echo" in line for line in lines), op
    # Everything ran in the private directory, which is removed at the end.
    assert leftovers == []
