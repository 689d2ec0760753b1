"""A domain's vCPUs as the host kernel schedules them: threads of its process.

Every pvxen domain is a process (its pid: ``getdomaininfo``'s pvxen field
``pid``, learnt by hypervisord from the kernel's credentials), and each of
its vCPUs is a thread of that process that the host kernel schedules:

* vCPU *N* is the thread named ``vcpuN`` (``/proc/<pid>/task/<tid>/comm``,
  set with ``prctl(PR_SET_NAME)``);
* vCPU 0 without such a thread is the process's main thread (``tid ==
  pid``): a one-vCPU PV guest runs vCPU 0 there (``hypervisord/vcpu/guest.py``),
  and so does a program guest (its Python program is its vCPU 0); a PV
  guest of several vCPUs runs each, vCPU 0 too, in a ``vcpuN`` thread
  (``hypervisord/vcpu/smp.py``), from VCPUOP_up to VCPUOP_down;
* Domain-0's vCPU 0 is hypervisord's main thread (hypervisord reports its
  own pid for dom0: ``hypervisord/domain.py``);
* a vCPU with no thread (not started, or beyond what the guest runs) is
  *offline*, as Xen shows a vCPU that is down: CPU ``-``, state ``--p``.

A thread's name is the guest's to choose (it is the guest's process), so a
hostile guest can at most make ``xl`` report or pin another thread of its
own: every thread is in its process and its cgroup, which is what the
weight and the cap limit (:mod:`toolstack.cpucg`).

What ``xl vcpu-list`` shows (``tools/xl/xl_vcpu.c``'s ``print_vcpuinfo``),
from ``/proc/<pid>/task/<tid>/stat`` (proc(5)): CPU = field 39
``processor``, the CPU it last ran on; State ``r`` for ``R`` (running or
runnable), ``b`` for a sleeping thread, ``p`` for a stopped one (a paused
domain's process is SIGSTOPped: Xen itself never prints ``p`` for an
online vCPU); Time(s) = ``utime + stime`` (fields 14, 15) of that thread;
hard affinity = ``sched_getaffinity(tid)``; soft = ``all`` (Linux has no
soft affinity).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_VCPU_NAME = re.compile(r"vcpu(0|[1-9][0-9]{0,3})")


@dataclass(frozen=True)
class ThreadStat:
    tid: int
    state: str  # proc(5)'s letter: R S D T t Z ...
    processor: int
    cpu_ns: int  # utime + stime


def thread_ids(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if t.isdigit())
    except OSError:
        return []


def thread_name(pid: int, tid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm", "rb") as f:
            return f.read().decode("ascii", "replace").rstrip("\n")
    except OSError:
        return None


def parse_stat(tid: int, stat: bytes) -> ThreadStat:
    """One ``/proc/.../stat`` line; ``comm`` may hold spaces and parentheses,
    so the fields are counted from the last ``)``."""
    fields = stat[stat.rindex(b")") + 2:].split()
    # fields[0] is field 3 (state): field n is fields[n - 3]
    return ThreadStat(tid, fields[0].decode("ascii", "replace"), int(fields[39 - 3]),
                      (int(fields[14 - 3]) + int(fields[15 - 3])) * 1_000_000_000 // _CLK_TCK)


def thread_stat(pid: int, tid: int) -> ThreadStat | None:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            return parse_stat(tid, f.read())
    except (OSError, ValueError, IndexError):
        return None


def vcpu_threads(pid: int, nr_vcpus: int) -> dict[int, int]:
    """vCPU id -> tid, for the vCPUs below ``nr_vcpus`` that have a thread."""
    out: dict[int, int] = {}
    if pid <= 0:
        return out
    tids = thread_ids(pid)
    for tid in tids:
        m = _VCPU_NAME.fullmatch(thread_name(pid, tid) or "")
        if m is not None and int(m.group(1)) < nr_vcpus:
            out.setdefault(int(m.group(1)), tid)  # the first one only
    if 0 not in out and pid in tids and nr_vcpus > 0:
        out[0] = pid
    return out


@dataclass(frozen=True)
class VcpuInfo:
    """``libxl_vcpuinfo`` as pvxen knows it."""

    vcpuid: int
    online: bool
    cpu: int = 0
    running: bool = False
    blocked: bool = False
    paused: bool = False
    time_ns: int = 0
    hard: frozenset[int] = frozenset()
    tid: int = 0


def vcpu_infos(pid: int, nr_vcpus: int) -> list[VcpuInfo]:
    threads = vcpu_threads(pid, nr_vcpus)
    out = []
    for v in range(nr_vcpus):
        tid = threads.get(v)
        st = None if tid is None else thread_stat(pid, tid)
        try:
            hard = frozenset(os.sched_getaffinity(tid)) if st is not None else frozenset()
        except OSError:  # gone meanwhile
            st = None
        if st is None or st.state in ("Z", "X", "x"):
            out.append(VcpuInfo(v, online=False))
            continue
        out.append(VcpuInfo(v, True, st.processor, running=st.state == "R",
                            blocked=st.state in ("S", "D", "I"),
                            paused=st.state in ("T", "t"), time_ns=st.cpu_ns,
                            hard=hard, tid=st.tid))
    return out


# -- cpumaps as xl prints and parses them ------------------------------------------------

def format_cpumap(cpus: frozenset[int] | set[int], nr_cpus: int) -> str:
    """``print_bitmap`` (``tools/xl/xl_utils.c``): ``all`` when every one of
    the ``nr_cpus`` is set, ``none`` when none is, else ranges ``0-2,5``."""
    bits = sorted(c for c in cpus if 0 <= c < nr_cpus)
    if not bits:
        return "none"
    if len(bits) == nr_cpus:
        return "all"
    parts, start, prev = [], bits[0], bits[0]
    for c in bits[1:] + [None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(f"{start}-{prev}" if prev > start else f"{start}")
        if c is not None:
            start = prev = c
    return ",".join(parts)


class CpumapError(ValueError):
    """A cpu list xl refuses; the message is xl's."""


def parse_cpurange(text: str, nr_cpus: int) -> set[int]:
    """``parse_cpurange`` (``tools/xl/xl_parse.c``): comma-separated ``all``,
    ``N``, ``N-M``, each may be ``^``-prefixed (removed) or ``node:``/``nodes:``
    (one NUMA node here, node 0: all the CPUs)."""
    cpus: set[int] = set()
    for item in text.split(","):
        if not item:
            continue
        word, remove = (item[1:], True) if item.startswith("^") else (item, False)
        nodes = False
        for prefix in ("node:", "nodes:"):
            if word.startswith(prefix):
                word, nodes = word[len(prefix):], True
                break
        if word == "all":
            if remove:
                raise CpumapError('Can\'t combine "^" and "all".')
            cpus |= set(range(nr_cpus))
            continue
        lo, hi = _parse_range(word, item)
        if nodes and hi > 0:
            raise CpumapError(f"Invalid pcpu range: {item}.")  # one node: node 0
        chosen = set(range(nr_cpus)) if nodes else set(range(lo, hi + 1))
        cpus = cpus - chosen if remove else cpus | chosen
    return cpus


def _parse_range(word: str, item: str) -> tuple[int, int]:
    """``parse_range``: ``A`` or ``A-B`` with ``A <= B``, decimal."""
    lo_s, sep, hi_s = word.partition("-")
    ok = lo_s.isascii() and lo_s.isdigit() and (not sep or (hi_s.isascii() and hi_s.isdigit()))
    if not ok or len(lo_s) > 9 or len(hi_s) > 9:
        raise CpumapError(f"Invalid pcpu range: {item}.")
    lo = int(lo_s)
    hi = int(hi_s) if sep else lo
    if hi < lo:
        raise CpumapError(f"Invalid pcpu range: {item}.")
    return lo, hi
