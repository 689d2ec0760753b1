"""Smoke test of ``python -m bench hypervisor --quick``.

Runs the real benchmark (hypervisord, the echo server, the fork template,
domU processes, a client worker) as a subprocess and checks only the shape
of its output and that it cleaned up: timings vary with the machine, so
no figure is ever asserted on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bench.__main__ import BENCHMARKS

REPO = Path(__file__).resolve().parents[2]

KEYS = {
    "bench", "hypercall_ratio_vs_echo", "hypercall_ratio_vs_echo_trio", "hypercall_ops_s",
    "echo_ops_s", "hypercall_server_cpu_us", "evtchn_rtt_us", "evtchn_ratio_vs_raw",
    "evtchn_ratio_vs_trio_socket", "evtchn_sync_rtt_us", "raw_rtt_us", "trio_socket_rtt_us",
    "evtchn_cpu_us_per_rt", "create_ms_p50", "create_ms_p50_by_n", "create_ms_p90_by_n",
    "destroy_ms_p50_by_n", "destroy_ms_p90_by_n", "bare_fork_ms_p50_by_n",
    "create_growth_ratio", "create_growth_ratio_vs_fork", "growth_ns",
    "live_guest_processes_max", "background_domains_without_process", "guests_pss_mb_by_n",
    "targets_met", "rounds", "ns",
}
TARGETS = {"hypercall_ge_0.7x_echo", "evtchn_rtt_le_2x_raw", "create_p50_le_10ms",
           "create_growth_le_1.2"}


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


@pytest.mark.timeout(10)
def test_registry_lists_hypervisor():
    assert BENCHMARKS["hypervisor"][0] == "bench.hypervisor"


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_hypervisor_quick_prints_json_last():
    # Not tmp_path: its path is too long for the sockets inside (107 bytes).
    parent = Path(tempfile.mkdtemp(prefix="pvxen-smoke-hv-"))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench", "hypervisor", "--quick", "--tmpdir", str(parent)],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )
        leftovers = list(parent.iterdir())
        survivors = _processes_mentioning(str(parent))
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["bench"] == "hypervisor"
    assert KEYS <= result.keys(), KEYS - result.keys()
    assert set(result["targets_met"]) == TARGETS
    assert all(isinstance(v, bool) for v in result["targets_met"].values())
    assert set(result["create_ms_p50_by_n"]) == {str(n) for n in result["ns"]}
    assert set(result["evtchn_cpu_us_per_rt"]) == {"a", "b", "hv"}
    # The three tables, each with its rows.
    assert any(line.startswith("sync ") and "hypervisord" in line for line in lines)
    assert any(line.startswith("evtchn ") for line in lines)
    assert any(line.split()[:1] == [str(result["ns"][-1])] for line in lines)
    # Everything ran in the private directory, which is gone, and no process
    # started for the run (daemons, template, guests, workers) is left.
    assert leftovers == []
    assert survivors == []
