"""``xl top``: xentop's table, refreshed (``tools/xentop/xentop.c``).

One row per domain, xentop's fields and widths: NAME STATE CPU(sec)
CPU(%) MEM(k) MEM(%) MAXMEM(k) MAXMEM(%) VCPUS NETS NETTX(k) NETRX(k)
VBDS VBD_OO VBD_RD VBD_WR VBD_RSECT VBD_WSECT SSID. Where the numbers
come from:

* STATE (xentop's order ``d s b c p r``), CPU(sec), MEM, MAXMEM, VCPUS:
  ``getdomaininfo`` (CPU is the domain's consumed CPU time: its cgroup's
  ``usage_usec`` or its process's ``utime + stime``, ``hypervisord/domain.py``);
  CPU(%) is the CPU time between two samples over the wall time between
  them (0 in the first), as xentop's ``get_cpu_pct``; percentages of memory
  are of the machine's (``physinfo``).
* NETS, VBDS: the domain's ``device/vif`` and ``device/vbd`` in XenStore;
  NETTX/NETRX (KiB the guest sent/received) and the VBD_* request and
  sector counts: backendd's counters (``<rundir>/backendd/stats``), as
  xentop reads the vifs' and blkback's ``statistics`` in dom0. A device
  backendd does not serve (or no backendd) counts 0.

``-b`` prints plain lines, header then rows, every ``-d`` seconds, ``-i``
times (xentop's batch mode); without it the terminal is redrawn with ANSI
escapes under xentop's summary lines, until ``-i`` runs out or Ctrl-C.
"""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from libxen import ctrl
from hypervisord.public.domctl import (
    XEN_DOMINF_blocked,
    XEN_DOMINF_dying,
    XEN_DOMINF_paused,
    XEN_DOMINF_running,
    XEN_DOMINF_shutdown,
)
from toolstack.builder import Toolstack, ensure_dom0
from toolstack.hcall import runtime_dir
from toolstack.xl_cmds import XlError, domain_infos
from toolstack.xsbatch import read_many

SHUTDOWN_crash = 3
PAGE_KB = 4
FIELDS = (("NAME", 10), ("STATE", 6), ("CPU(sec)", 10), ("CPU(%)", 6), ("MEM(k)", 10),
          ("MEM(%)", 6), ("MAXMEM(k)", 10), ("MAXMEM(%)", 9), ("VCPUS", 5), ("NETS", 4),
          ("NETTX(k)", 8), ("NETRX(k)", 8), ("VBDS", 4), ("VBD_OO", 8), ("VBD_RD", 8),
          ("VBD_WR", 8), ("VBD_RSECT", 10), ("VBD_WSECT", 10), ("SSID", 4))
VBD_KEYS = ("oo_req", "rd_req", "wr_req", "rd_sect", "wr_sect")


def state_letters(info: ctrl.DomainInfo) -> str:
    """xentop's ``print_state``: d s b c p r."""
    flags = info.flags
    crashed = info.shutdown_reason == SHUTDOWN_crash
    bits = (flags & XEN_DOMINF_dying, flags & XEN_DOMINF_shutdown and not crashed,
            flags & XEN_DOMINF_blocked, crashed, flags & XEN_DOMINF_paused,
            flags & XEN_DOMINF_running)
    return "".join(ch if on else "-" for ch, on in zip("dsbcpr", bits))


@dataclass
class DomainSample:
    domid: int
    name: str
    info: ctrl.DomainInfo
    nets: int = 0
    vbds: int = 0
    net_tx: int = 0  # bytes
    net_rx: int = 0
    vbd: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VBD_KEYS, 0))


@dataclass
class Sample:
    when: float
    total_kb: int
    domains: list[DomainSample]


def read_backend_stats(rundir: Path) -> dict[tuple[str, int, int], dict[str, int]]:
    """backendd's ``stats`` socket: ``<type> <domid> <devid> key=value...``."""
    out: dict[tuple[str, int, int], dict[str, int]] = {}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(rundir / "backendd" / "stats"))
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return out  # no backendd: no counters
    for line in data.decode("ascii", "replace").splitlines():
        words = line.split()
        if len(words) < 3 or not (words[1].isdigit() and words[2].isdigit()):
            continue
        counters = {}
        for w in words[3:]:
            key, _, value = w.partition("=")
            if value.isdigit():
                counters[key] = int(value)
        out[(words[0], int(words[1]), int(words[2]))] = counters
    return out


def sample(ts: Toolstack) -> Sample:
    ensure_dom0(ts.xs)
    infos = sorted(domain_infos(ts), key=lambda i: i.domid)
    _, phys = ctrl.physinfo(ts.xc)
    names = read_many(ts.xs, [f"/local/domain/{i.domid}/name" for i in infos])
    stats = read_backend_stats(runtime_dir(ts.rundir))
    out = []
    for info, name in zip(infos, names):
        d = DomainSample(info.domid, name if name is not None else "(null)", info)
        for kind in ("vif", "vbd"):
            devids = _directory(ts, f"/local/domain/{info.domid}/device/{kind}")
            if kind == "vif":
                d.nets = len(devids)
            else:
                d.vbds = len(devids)
            for devid in devids:
                counters = stats.get((kind, info.domid, devid), {})
                if kind == "vif":
                    d.net_tx += counters.get("tx_bytes", 0)
                    d.net_rx += counters.get("rx_bytes", 0)
                else:
                    for key in VBD_KEYS:
                        d.vbd[key] += counters.get(key, 0)
        out.append(d)
    return Sample(time.monotonic(), phys.get("total_pages", 0) * PAGE_KB, out)


def _directory(ts: Toolstack, path: str) -> list[int]:
    from libxen.xenstore.sync import XsError

    try:
        return sorted(int(n) for n in ts.xs.directory(path) if n.isdigit())
    except XsError:
        return []


def cpu_pct(now: DomainSample, prev: Sample | None, elapsed: float) -> float:
    if prev is None or elapsed <= 0:
        return 0.0
    old = next((d for d in prev.domains if d.domid == now.domid), None)
    if old is None:
        return 0.0
    return (now.info.cpu_time - old.info.cpu_time) / 1e9 / elapsed * 100.0


def row(d: DomainSample, pct: float, total_kb: int) -> str:
    mem_kb = d.info.tot_pages * PAGE_KB
    max_kb = d.info.max_pages * PAGE_KB
    cells = ["%10.10s" % d.name, "%6s" % state_letters(d.info),
             "%10d" % (d.info.cpu_time // 1_000_000_000), "%6.1f" % pct, "%10d" % mem_kb,
             "%6.1f" % (100.0 * mem_kb / total_kb if total_kb else 0.0), "%10d" % max_kb,
             "%9.1f" % (100.0 * max_kb / total_kb if total_kb else 0.0),
             "%5d" % d.info.vcpus, "%4d" % d.nets, "%8d" % (d.net_tx // 1024),
             "%8d" % (d.net_rx // 1024), "%4d" % d.vbds]
    cells += ["%8d" % d.vbd[k] for k in VBD_KEYS[:3]] + ["%10d" % d.vbd[k] for k in VBD_KEYS[3:]]
    cells.append("%4d" % 0)  # SSID: no XSM/FLASK label
    return " ".join(cells)


def header() -> str:
    return " ".join("%*s" % (width, name) for name, width in FIELDS)


def summary(now: Sample, version: str) -> str:
    """xentop's ``do_summary`` lines (the clock, the states, the memory)."""
    counts = dict.fromkeys(("running", "blocked", "paused", "crashed", "dying", "shutdown"), 0)
    for d in now.domains:
        letters = state_letters(d.info)
        for key, ch in (("running", "r"), ("blocked", "b"), ("paused", "p"), ("shutdown", "s"),
                        ("crashed", "c"), ("dying", "d")):
            if ch in letters:
                counts[key] += 1
                break
    used = sum(d.info.tot_pages * PAGE_KB for d in now.domains)
    return (f"xentop - {time.strftime('%H:%M:%S')}   Xen {version}\n"
            f"{len(now.domains)} domains: {counts['running']} running, {counts['blocked']} "
            f"blocked, {counts['paused']} paused, {counts['crashed']} crashed, "
            f"{counts['dying']} dying, {counts['shutdown']} shutdown \n"
            f"Mem: {now.total_kb}k total, {used}k used, {now.total_kb - used}k free    "
            f"CPUs: {_ncpus()} @ 0MHz\n")


def _ncpus() -> int:
    import os

    return os.cpu_count() or 1


def _number(opts: dict, key: str, default: float, what: str) -> float:
    if key not in opts:
        return default
    try:
        value = float(opts[key])
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e9:
        raise XlError(f"xl top: {what} must be a non-negative number: {opts[key]}", 2)
    return value


def top(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    delay = _number(opts, "-d", 3.0, "delay (-d)")
    iterations = int(_number(opts, "-i", 0, "iterations (-i)")) if "-i" in opts else None
    batch = "-b" in opts
    prev: Sample | None = None
    version = ""
    if not batch:
        word, _ = ctrl.xen_version(ts.xc)
        version = f"{word >> 16}.{word & 0xFFFF}"
    done = 0
    try:
        while iterations is None or done < iterations:
            if done:
                time.sleep(delay)
            now = sample(ts)
            elapsed = now.when - prev.when if prev is not None else 0.0
            lines = [header()] + [row(d, cpu_pct(d, prev, elapsed), now.total_kb)
                                  for d in now.domains]
            if batch:
                sys.stdout.write("\n".join(lines) + "\n")
            else:
                sys.stdout.write("\x1b[H\x1b[2J" + summary(now, version) + "\n".join(lines)
                                 + "\n")
            sys.stdout.flush()
            prev = now
            done += 1
    except KeyboardInterrupt:
        pass
    return 0
