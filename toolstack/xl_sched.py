"""``xl vcpu-list``, ``vcpu-pin``, ``sched-credit``, ``sched-credit2``
(``tools/xl/xl_vcpu.c``, ``tools/xl/xl_sched.c``), on the host's scheduler.

A vCPU is a thread of its domain's process (:mod:`toolstack.vcpus`), so
pinning is that thread's ``sched_setaffinity``; a domain's weight and cap
are its cgroup's (:mod:`toolstack.cpucg`). Output formats and messages are
xl's; the host kernel's time slice and rate limit are not xl's to set, so
the pool line says ``[sched params unavailable]`` as xl does where a
scheduler gives none.
"""

from __future__ import annotations

import os
import sys

from libxen import ctrl
from toolstack import cpucg
from toolstack import vcpus as vc
from toolstack.builder import Toolstack, ensure_dom0, read_or_none
from toolstack.hcall import XenError
from toolstack.xl_cmds import XlError, domain_info, domain_infos, find_domain
from toolstack.xsbatch import read_many

VCPU_HEADER = "%-32s %5s %5s %5s %5s %9s %s" % (
    "Name", "ID", "VCPU", "CPU", "State", "Time(s)", "Affinity (Hard / Soft)")
SCHED_HEADER = "%-33s %4s %6s %4s" % ("Name", "ID", "Weight", "Cap")
POOL = "Pool-0"


def host_cpus() -> int:
    """The length of every cpumap (xl's ``max_cpu_id + 1``)."""
    return os.cpu_count() or 1


def _names(ts: Toolstack, domids: list[int]) -> dict[int, str]:
    values = read_many(ts.xs, [f"/local/domain/{d}/name" for d in domids])
    return {d: v if v is not None else "(null)" for d, v in zip(domids, values)}


def _infos(ts: Toolstack, args: list[str]) -> list[ctrl.DomainInfo]:
    ensure_dom0(ts.xs)
    if not args:
        return sorted(domain_infos(ts), key=lambda i: i.domid)
    out = []
    for a in args:
        info = domain_info(ts, find_domain(ts, a))
        if info is not None:
            out.append(info)
    return out


# -- vcpu-list ---------------------------------------------------------------------------

def vcpu_row(name: str, domid: int, v: vc.VcpuInfo, nr_cpus: int) -> str:
    """``print_vcpuinfo``; a stopped (paused) thread shows ``p`` third."""
    row = "%-32s %5u %5u" % (name, domid, v.vcpuid)
    if not v.online:
        row += "%5c %3c%cp " % ("-", "-", "-")
    else:
        row += "%5u %3c%c%c " % (v.cpu, "r" if v.running else "-", "b" if v.blocked else "-",
                                 "p" if v.paused else "-")
    row += "%9.1f  " % (v.time_ns / 1e9)
    hard = vc.format_cpumap(v.hard, nr_cpus) if v.online else "all"
    return row + f"{hard} / all"


def vcpu_list(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    infos = _infos(ts, args)
    names = _names(ts, [i.domid for i in infos])
    nr_cpus = host_cpus()
    lines = [VCPU_HEADER]
    for info in infos:
        for v in vc.vcpu_infos(info.pid, info.vcpus):
            lines.append(vcpu_row(names[info.domid], info.domid, v, nr_cpus))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


# -- vcpu-pin ----------------------------------------------------------------------------

def _vcpu_arg(text: str, force: bool) -> int | None:
    """strtol's reading of the VCPU argument; None for ``all``."""
    digits = len(text) - len(text.lstrip("0123456789"))
    if digits == 0:
        if text != "all":
            raise XlError(f"Error: Invalid argument {text} as VCPU.")
        if force:
            raise XlError("Error: --force and 'all' as VCPU not allowed.")
        return None
    return int(text[:digits][:12])


def _cpumap(text: str, nr_cpus: int) -> set[int] | None:
    if text == "-":
        return None
    try:
        return vc.parse_cpurange(text, nr_cpus)
    except vc.CpumapError as e:
        raise XlError(str(e)) from None


def vcpu_pin(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    domid = find_domain(ts, args[0])
    vcpu = _vcpu_arg(args[1], "-f" in opts)
    nr_cpus = host_cpus()
    hard = _cpumap(args[2], nr_cpus)
    soft = _cpumap(args[3], nr_cpus) if len(args) > 3 else None
    if dryrun:
        shown = "-" if hard is None else vc.format_cpumap(hard, nr_cpus)
        print(f"cpumap: {shown}" + ("" if soft is None else
                                    f" {vc.format_cpumap(soft, nr_cpus)}"))
        return 0
    if soft is not None:
        print("xl: soft affinity: the host scheduler has none; ignored", file=sys.stderr)
    info = domain_info(ts, domid)
    if info is None or hard is None:
        return 0
    targets = list(range(info.vcpus)) if vcpu is None else [vcpu]
    threads = vc.vcpu_threads(info.pid, info.vcpus)
    failed = False
    for v in targets:
        try:
            if v >= info.vcpus:
                raise OSError(22, f"domain {domid} has {info.vcpus} vcpus")
            # hypervisord's record (XEN_DOMCTL_setvcpuaffinity), then the thread
            ctrl.domain_setvcpuaffinity(ts.xc, domid, v, sorted(hard))
            if v in threads:
                os.sched_setaffinity(threads[v], hard)
        except (OSError, XenError) as e:
            why = e.strerror if isinstance(e, XenError) else (e.strerror or str(e))
            print(f"libxl: error: Setting vcpu affinity of vcpu {v} of domain {domid}: {why}",
                  file=sys.stderr)
            if vcpu is not None:
                raise XlError(f"Could not set affinity for vcpu `{v}'.") from None
            failed = True
    if failed:
        print("Could not set affinity.", file=sys.stderr)
    return 0


# -- sched-credit, sched-credit2 ---------------------------------------------------------

def _strtol(text: str) -> int:
    """C's ``strtol(text, NULL, 10)``: leading blanks, a sign, digits; else 0."""
    s = text.lstrip(" \t\n\r\f\v")
    sign = -1 if s.startswith("-") else 1
    s = s[1:] if s[:1] in "+-" else s
    digits = len(s) - len(s.lstrip("0123456789"))
    return sign * int(s[:digits][:20]) if digits else 0


def _weight_memory(ts: Toolstack, domid: int) -> str:
    return f"/libxl/{domid}/sched-weight"


def sched_params(ts: Toolstack, info: ctrl.DomainInfo) -> tuple[int, int]:
    """The domain's (weight, cap); Xen's defaults where nothing is set."""
    cg = cpucg.domain_cgroup(info.pid, create=False)
    if cg is None:
        return cpucg.DEFAULT_WEIGHT, 0
    weight, cap = cg.read()
    if cg.kind == "v2":  # the exact weight xl set, while the cgroup still has it
        remembered = _strtol(read_or_none(ts.xs, _weight_memory(ts, info.domid)) or "0")
        if 0 < remembered <= cpucg.MAX_WEIGHT and \
                cpucg.weight_to_v2(remembered) == cg.raw_weight():
            weight = remembered
    return weight, cap


def set_params(ts: Toolstack, info: ctrl.DomainInfo, weight: int | None,
               cap: int | None) -> None:
    """``sched_credit(2)_domain_set`` (``tools/libs/light/libxl_sched.c``)."""
    if weight is not None and not 1 <= weight <= cpucg.MAX_WEIGHT:
        print("libxl: error: Cpu weight out of range, valid values are within range from 1 "
              "to 65535", file=sys.stderr)
        raise XlError("libxl_domain_sched_params_set failed.")
    if cap is not None and not 0 <= cap <= info.vcpus * 100:
        print("libxl: error: Cpu cap out of range, valid range is from 0 to "
              f"{info.vcpus * 100} for specified number of vcpus", file=sys.stderr)
        raise XlError("libxl_domain_sched_params_set failed.")
    try:
        cg = cpucg.domain_cgroup(info.pid, create=True)
        assert cg is not None
        cg.write(weight, cap)
    except cpucg.NoCpuCgroup as e:
        raise XlError(f"xl: domain {info.domid}: cannot set its CPU weight or cap: {e}") \
            from None
    except OSError as e:
        raise XlError(f"xl: domain {info.domid}: {e.filename}: {e.strerror}") from None
    if weight is not None and cg.kind == "v2":
        ts.xs.write(_weight_memory(ts, info.domid), str(weight))


def _sched_command(ts: Toolstack, opts: dict, args: list[str], credit2: bool) -> int:
    pool_line = f"Cpupool {POOL}: [sched params unavailable]"
    if args:
        raise XlError(f"xl: unexpected argument {args[0]!r}", 2)
    cpupool = opts.get("-p")
    dom = opts.get("-d")
    if cpupool is not None and cpupool not in (POOL, "0"):
        raise XlError(f"unknown cpupool '{cpupool}'")
    setting = "-w" in opts or "-c" in opts
    if cpupool is not None and (dom is not None or setting):
        raise XlError("Specifying a cpupool is not allowed with other options.")
    if dom is None and setting:
        raise XlError("Must specify a domain.")
    if "-s" in opts:
        if any(o in opts for o in ("-t", "-r", "-m")):
            raise XlError("xl: the host kernel's time slice and rate limit are not set "
                          "through xl (see sched(7))")
        print(pool_line)
        return 0
    if dom is None:
        infos = _infos(ts, [])
        names = _names(ts, [i.domid for i in infos])
        lines = [pool_line, SCHED_HEADER]
        for info in infos:
            lines.append(_sched_row(names[info.domid], info.domid, *sched_params(ts, info)))
        sys.stdout.write("\n".join(lines) + "\n")
        return 0
    domid = find_domain(ts, dom)
    info = domain_info(ts, domid)
    if info is None:
        raise XlError(f"{dom} is an invalid domain identifier (rc=-6)")
    if not setting:
        name = _names(ts, [domid])[domid]
        sys.stdout.write(SCHED_HEADER + "\n" + _sched_row(name, domid,
                                                          *sched_params(ts, info)) + "\n")
        return 0
    set_params(ts, info, _strtol(opts["-w"]) if "-w" in opts else None,
               _strtol(opts["-c"]) if "-c" in opts else None)
    return 0


def _sched_row(name: str, domid: int, weight: int, cap: int) -> str:
    return "%-33s %4d %6d %4d" % (name, domid, weight, cap)


def sched_credit(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    return _sched_command(ts, opts, args, credit2=False)


def sched_credit2(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    return _sched_command(ts, opts, args, credit2=True)
