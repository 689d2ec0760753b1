"""What ``/proc`` says about the benchmark's processes (stdlib only).

CPU time per operation comes from ``/proc/PID/schedstat`` (nanoseconds on
a CPU, nanoseconds runnable but waiting for one): exact where utime/stime
count 10 ms ticks, and the waiting part shows how much of a latency is the
host's other load. Memory comes from ``/proc/PID/status`` (VmRSS) and
``/proc/PID/smaps_rollup`` (Pss: a page shared by k processes counts 1/k
in each, so the Pss of forked guests adds up to what they really cost).
"""

from __future__ import annotations


def schedstat(pid: int) -> tuple[int, int]:
    """(ns on a CPU, ns waiting for one) of ``pid``; (0, 0) when it is gone."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            run_ns, wait_ns, _ = f.read().split()
        return int(run_ns), int(wait_ns)
    except (OSError, ValueError):
        return 0, 0


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def smaps_rollup_kb(pid: int) -> dict[str, int]:
    """``Pss``, ``Private_Dirty`` and ``Rss`` of ``pid`` in KiB ({} when gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Pss", "Private_Dirty", "Rss"):
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return out


def mem_available_kb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0
