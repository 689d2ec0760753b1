"""The ``xl`` subcommands (``xl_vmcontrol.c``, ``xl_info.c``, ``xl_mem.c``).

Each is ``fn(ts, opts, args, dryrun) -> exit status``; ``ts`` is the
toolstack's lazy connection pair, ``opts`` maps short option letters
(``-p``) to their values. Output formats and messages are xl's; the
pure formatting lives in :mod:`toolstack.xl_format`.
"""

from __future__ import annotations

import json
import os
import sys
import time

from libxen import ctrl
from hypervisord.public.errno import XenErrno
from hypervisord.public.xen import DOMID_FIRST_RESERVED
from toolstack import device_ops
from toolstack import launchctl as launcher_mod
from toolstack import xl_format as fmt
from toolstack.builder import Toolstack, cleanup_domain, create_domain, \
    destroy_domain, ensure_dom0, load_config, read_or_none, remove_stale_configs
from toolstack.xsbatch import domain_names, read_many
from toolstack.domconfig import domain_config, parse_mem_size_kb
from toolstack.hcall import XenError
from toolstack.launchctl import LaunchError
from toolstack.xlcfg import parse_file, parse_overrides

INVALID_DOMAIN_RC = -6  # libxl's ERROR_INVAL
INT64_MAX = (1 << 63) - 1  # xl's parse_mem_size_kb returns an int64_t
DEATH_POLL = 0.05
CLEANUP_WAIT = 5.0
#: how long ``shutdown -w``/``reboot -w`` wait by default: xl itself waits
#: forever, the xendomains script that drives it at host shutdown gives up
#: after XENDOMAINS_STOP_MAXWAIT=300 seconds; -t/--timeout sets it
SHUTDOWN_WAIT = 300.0


class XlError(Exception):
    """A failure to report on stderr; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# -- numbers from the command line and from XenStore ---------------------------------------

def ascii_uint(text: str) -> int | None:
    """A decimal number of ASCII digits only, as C's ``isdigit`` in the C locale
    takes them (``str.isdigit`` also takes "²" and "１"). More than 20
    significant digits read as ``2**64``, beyond every range here (and
    beyond what ``int()`` converts: ``sys.int_info.default_max_str_digits``)."""
    if not (text and text.isascii() and text.isdigit()):
        return None
    significant = text.lstrip("0")
    return 1 << 64 if len(significant) > 20 else int(significant or "0")


def valid_domid(value: int | None) -> bool:
    """A domain a toolstack may name: ``0 .. DOMID_FIRST_RESERVED - 1``
    (``xen/include/public/xen.h``); larger ids are reserved or not 16-bit."""
    return value is not None and 0 <= value < DOMID_FIRST_RESERVED


# -- domains by name or id -------------------------------------------------------------

def domain_infos(ts: Toolstack) -> list[ctrl.DomainInfo]:
    _, result = ctrl.domain_getinfolist(ts.xc)
    return [ctrl.DomainInfo.from_result(r) for r in result["domains"]]


def domain_info(ts: Toolstack, domid: int) -> ctrl.DomainInfo | None:
    try:
        _, result = ctrl.domain_getinfo(ts.xc, domid)
    except XenError as e:
        if e.rc == -XenErrno.XEN_ESRCH:
            return None
        raise
    info = ctrl.DomainInfo.from_result(result)
    return info if info.domid == domid else None  # getdomaininfo answers the next one up


def find_domain(ts: Toolstack, qualifier: str) -> int:
    """xl's ``find_domain`` (``libxl_domain_qualifier_to_domid``): a string of
    ASCII digits is an id, anything else a name."""
    number = ascii_uint(qualifier)
    if number is not None:
        if valid_domid(number) and domain_info(ts, number) is not None:
            return number
    else:
        live = {i.domid for i in domain_infos(ts)}
        for domid, name in sorted(domain_names(ts.xs).items()):
            if name == qualifier and domid in live:
                return domid
    raise XlError(f"{qualifier} is an invalid domain identifier (rc={INVALID_DOMAIN_RC})")


def domain_name(ts: Toolstack, domid: int) -> str | None:
    return read_or_none(ts.xs, f"/local/domain/{domid}/name")


# -- create ----------------------------------------------------------------------------

def create(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    filename = opts.get("-f")
    if filename is None and args and "=" not in args[0]:
        filename, args = args[0], args[1:]
    if filename is None:
        raise XlError("Config file not specified", 1)
    if "-q" not in opts:
        print(f"Parsing config from {filename}", file=sys.stderr)
    try:
        cfg = parse_file(filename)
    except OSError as e:
        raise XlError(f"Failed to read config file: {filename}: {e.strerror}") from None
    if args:
        cfg.update(parse_overrides(args))
    dc = domain_config(cfg)
    cpus = _cfg_cpus(dc)
    sched = _cfg_sched(dc)
    if dryrun or "-n" in opts:
        print(json.dumps(fmt.config_json(dc), indent=4))
        return 0
    ensure_dom0(ts.xs)
    remove_stale_configs(ts)  # of domains that died with an earlier hypervisord
    try:
        client = launcher_mod.connect(ts.rundir)
    except (LaunchError, OSError) as e:
        raise XlError(f"xl: cannot start the guest launcher: {e}") from None
    with client:
        built = create_domain(ts, dc)
        _wait_devices(ts, built, dc)
        try:
            req = {"op": "launch", "domid": built.domid, "config": dc.to_dict(),
                   "start_info_gfn": built.layout.start_info_gfn}
            if built.boot is not None:
                req["boot"] = built.boot  # a PV kernel's vCPU 0 entry state
            reply = client.request(req, built.fds)
            if cpus is not None:
                _pin_process(ts, built.domid, int(reply.get("pid", 0)), cpus)
            if sched != (None, None):
                _apply_sched(ts, built.domid, dc, int(reply.get("pid", 0)), *sched)
        except (LaunchError, OSError) as e:
            destroy_domain(ts, built.domid, dc.uuid, quiet=True)
            raise XlError(f"xl: cannot start the domain's process: {e}") from None
        finally:
            built.close_fds()
    if "-p" not in opts:
        ctrl.domain_unpause(ts.xc, built.domid)
    if "-c" in opts:  # xl's console_autoconnect: the console client, as xl console
        from toolstack.xl_console import attach

        return attach(ts, built.domid, name=dc.name)
    return 0


def _cfg_cpus(dc) -> set[int] | None:
    """xl.cfg's ``cpus="0-3"``: every vCPU's hard affinity (``xl_parse.c``)."""
    text = dc.extra.get("cpus")
    if text is None:
        return None
    from toolstack import vcpus

    try:
        cpus = vcpus.parse_cpurange(str(text), os.cpu_count() or 1)
    except vcpus.CpumapError as e:
        raise XlError(f"{e}\nFailed to parse cpus= (a cpu list such as \"0-3,^1\")") from None
    if not cpus & set(range(os.cpu_count() or 1)):
        raise XlError(f"cpus=\"{text}\": no CPU of this host (it has {os.cpu_count()})")
    return cpus


def _cfg_sched(dc) -> tuple[int | None, int | None]:
    """xl.cfg's ``cpu_weight=`` and ``cap=`` (``xl_parse.c``, through
    ``xlu_cfg_get_long``: a number, quoted or not; anything else is a warning
    and the setting is ignored). The ranges are libxl's, checked when set."""
    from toolstack.xlcfg import parse_c_long

    out: list[int | None] = []
    for key in ("cpu_weight", "cap"):
        value = dc.extra.get(key)
        number = None if value is None else parse_c_long(str(value))
        if value is not None and number is None:
            print(f"warning: parameter `{key}' is not a valid number", file=sys.stderr)
        out.append(number)
    return out[0], out[1]


def _apply_sched(ts: Toolstack, domid: int, dc, pid: int, weight: int | None,
                 cap: int | None) -> None:
    """``libxl__sched_set_params`` at build time: the domain's cgroup gets
    ``cpu.weight``/``cpu.max`` as ``xl sched-credit2 -w`` / ``sched-credit -c``
    would set them; failing to, the creation fails and the domain goes."""
    from toolstack import xl_sched

    # The cgroup is the one of the process hypervisord knows as the domain's
    # (it learns the pid at the guest's first hypercall, made at once, paused
    # or not); the launcher's pid for it can be its PID namespace's parent.
    deadline = time.monotonic() + 10
    info = domain_info(ts, domid)
    while info is not None and info.pid <= 0 and time.monotonic() < deadline:
        time.sleep(0.01)
        info = domain_info(ts, domid)
    try:
        if info is None or info.pid <= 0:
            raise XlError(f"xl: domain {domid}: its process did not start (pid {pid})")
        xl_sched.set_params(ts, info, weight, cap)
    except XlError:
        destroy_domain(ts, domid, dc.uuid, quiet=True)
        raise


def _pin_process(ts: Toolstack, domid: int, pid: int, cpus: set[int]) -> None:
    """Every thread of the new domain's process (its vCPUs, and what they start later)."""
    info = domain_info(ts, domid)
    for vcpu in range(info.vcpus if info is not None else 1):
        ctrl.domain_setvcpuaffinity(ts.xc, domid, vcpu, sorted(cpus))
    for tid in os.listdir(f"/proc/{pid}/task") if pid > 0 else []:
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:
            pass


def _wait_devices(ts: Toolstack, built, dc) -> None:
    """libxl waits for each device's backend before the domain may run."""
    try:
        device_ops.wait_created(ts.xs, built.domid, dc.disks, dc.nics)
    except device_ops.DeviceError as e:
        built.close_fds()
        destroy_domain(ts, built.domid, dc.uuid, quiet=True)
        raise XlError(device_ops.creation_error(built.domid, e)) from None


# -- list / info -----------------------------------------------------------------------

def list_(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    if len(args) > 1:
        raise UsageError("list")
    ensure_dom0(ts.xs)
    if args:
        domid = find_domain(ts, args[0])
        info = domain_info(ts, domid)
        if info is None:
            raise XlError(f"Error: Domain '{args[0]}' does not exist.")
        infos = [info]
    else:
        infos = domain_infos(ts)
    names = dict(zip((i.domid for i in infos),
                     read_many(ts.xs, [f"/local/domain/{i.domid}/name" for i in infos])))
    if "-l" in opts:
        out = [fmt.list_long_entry(i, names[i.domid], load_config(ts.xl_dir, i.domid))
               for i in infos]
        print(json.dumps(out, indent=4))
        return 0
    sys.stdout.write(fmt.list_table(infos, names, verbose="-v" in opts))
    return 0


def info(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    _, phys = ctrl.physinfo(ts.xc)
    version = fmt.VersionInfo.query(ts.xc)
    text = fmt.info_text(os.uname(), phys, version)
    if args and "-n" not in opts:
        text = fmt.info_filter(text, args[0])
    sys.stdout.write(text)
    return 0


# -- lifecycle -------------------------------------------------------------------------

def destroy(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    domid = find_domain(ts, args[0])
    if domid == 0 and "-f" not in opts:
        raise XlError("Not destroying domain 0; use -f to force.\n"
                      "This can only be done when using a disaggregated "
                      "hardware domain and toolstack.\n")
    _tell_launcher(ts, {"op": "destroying", "domid": domid})
    try:
        destroy_domain(ts, domid)
    except XenError as e:
        raise XlError(f"destroy failed (rc={e.rc})") from None
    return 0


def _tell_launcher(ts: Toolstack, req: dict) -> None:
    """Best effort: a launcher that is not running has nothing to forget."""
    try:
        with launcher_mod.connect(ts.rundir, start=False) as client:
            client.request(req)
    except (OSError, LaunchError):
        pass


def pause(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    domid = find_domain(ts, args[0])
    try:
        ctrl.domain_pause(ts.xc, domid)
    except XenError as e:
        raise XlError(f"libxl: error: Pausing domain {domid}: {e.strerror}") from None
    return 0


def unpause(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    domid = find_domain(ts, args[0])
    try:
        ctrl.domain_unpause(ts.xc, domid)
    except XenError as e:
        raise XlError(f"libxl: error: Unpausing domain {domid}: {e.strerror}") from None
    return 0


def _request_shutdown(ts: Toolstack, domid: int, request: str, verb: str) -> None:
    """``libxl_domain_shutdown``/``reboot``: the PV control node."""
    print(f"{verb} domain {domid}", file=sys.stderr)
    home = f"/local/domain/{domid}/control"
    feature = "feature-reboot" if request == "reboot" else "feature-poweroff"
    if read_or_none(ts.xs, f"{home}/{feature}") != "1":
        what = "reboot" if request == "reboot" else "shutdown"
        event = "reset" if request == "reboot" else "power"
        raise XlError(f"PV control interface not available: external graceful {what} not "
                      f"possible.\nUse \"-F\" to fallback to ACPI {event} event.\n"
                      f"{what} failed (rc=-12)")
    ts.xs.write(f"{home}/shutdown", request)


def wait_for_death(ts: Toolstack, domids: list[int], timeout: float | None = None,
                   names: dict[int, str] | None = None) -> None:
    """``wait_for_domain_deaths``, then for the monitor's XenStore cleanup;
    XlError when a domain is still there after ``timeout`` seconds."""
    print(f"Waiting for {len(domids)} domains", file=sys.stderr)
    pending = set(domids)
    deadline = None if timeout is None else time.monotonic() + timeout
    while pending:
        if deadline is not None and time.monotonic() > deadline:
            late = ", ".join(f"{(names or {}).get(d) or '?'} (id {d})" for d in sorted(pending))
            raise XlError(f"timed out after {timeout:g}s waiting for domain {late} to shut "
                          "down and be destroyed")
        for domid in sorted(pending):
            if domain_info(ts, domid) is None:
                print(f"Domain {domid} has been destroyed", file=sys.stderr)
                pending.discard(domid)
                _wait_cleanup(ts, domid)
        if pending:
            time.sleep(DEATH_POLL)


def _wait_cleanup(ts: Toolstack, domid: int) -> None:
    deadline = time.monotonic() + CLEANUP_WAIT
    while read_or_none(ts.xs, f"/local/domain/{domid}/domid") is not None:
        if time.monotonic() > deadline:
            cleanup_domain(ts, domid)  # no monitor did it: do it ourselves
            return
        time.sleep(DEATH_POLL)


def _shutdown_or_reboot(ts: Toolstack, opts: dict, args: list[str], reboot: bool) -> int:
    request, verb = ("reboot", "Rebooting") if reboot else ("poweroff", "Shutting down")
    if "-F" in opts:
        raise XlError("-F: pvxen guests have no ACPI; use xl destroy")
    if "-a" in opts:
        domids = [i.domid for i in domain_infos(ts) if i.domid != 0]
    elif args:
        domids = [find_domain(ts, args[0])]
    else:
        raise XlError("You must specify -a or a domain id.\n")
    timeout = SHUTDOWN_WAIT
    if "-t" in opts:
        try:
            timeout = float(opts["-t"])
        except ValueError:
            timeout = -1.0
        if not 0 < timeout < float("inf"):
            raise XlError(f"invalid timeout: {opts['-t']} (seconds, a positive number)")
    names = {d: domain_name(ts, d) or "" for d in domids}
    for domid in domids:
        _request_shutdown(ts, domid, request, verb)
    if "-w" in opts:
        wait_for_death(ts, domids, timeout, names)
    return 0


def shutdown(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    return _shutdown_or_reboot(ts, opts, args, reboot=False)


def reboot(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    return _shutdown_or_reboot(ts, opts, args, reboot=True)


# -- memory ----------------------------------------------------------------------------

def _mem_arg(text: str) -> int:
    kb = parse_mem_size_kb(text)
    if kb is None or kb > INT64_MAX:
        raise XlError(f"invalid memory size: {text}")
    return kb


def mem_set(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    """``libxl_set_memory_target``: the balloon target, in KiB."""
    domid, kb = find_domain(ts, args[0]), _mem_arg(args[1])
    base = f"/local/domain/{domid}/memory"
    static_max = read_or_none(ts.xs, f"{base}/static-max")
    static_max_kb = ascii_uint(static_max or "")
    if static_max_kb is not None and kb > static_max_kb:
        raise XlError("libxl: error: memory_dynamic_max must be less than or equal to "
                      "memory_static_max")
    ts.xs.write(f"{base}/target", str(kb))
    return 0


def mem_max(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    """``libxl_domain_setmaxmem``: XEN_DOMCTL_max_mem and ``memory/static-max``."""
    domid, kb = find_domain(ts, args[0]), _mem_arg(args[1])
    base = f"/local/domain/{domid}/memory"
    target = read_or_none(ts.xs, f"{base}/target")
    target_kb = ascii_uint(target or "")
    if target_kb is not None and kb < target_kb:
        raise XlError("libxl: error: memory_static_max must be greater than or equal to "
                      "memory_dynamic_max")
    try:
        ctrl.domain_max_mem(ts.xc, domid, kb)
    except XenError as e:
        raise XlError(f"cannot set domid {domid} static max memory to : {args[1]}\n"
                      f"libxl: error: {e.strerror}") from None
    if domid != 0 or read_or_none(ts.xs, f"{base}/static-max") is not None:
        ts.xs.write(f"{base}/static-max", str(kb))
    return 0


# -- the rest --------------------------------------------------------------------------

def dmesg(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    _, result = ctrl.readconsole(ts.xc, clear="-c" in opts)
    sys.stdout.write("".join(f"(XEN) {line}\n" for line in result.get("lines", [])))
    return 0


def domid(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    live = {i.domid for i in domain_infos(ts)}
    for d, name in sorted(domain_names(ts.xs).items()):
        if name == args[0] and d in live:
            print(d)
            return 0
    raise XlError(f"Can't get domid of domain name '{args[0]}', maybe this domain does not "
                  "exist.")


def domname(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    text = args[0]
    digits = len(text) - len(text.lstrip("0123456789"))
    if digits == 0:
        raise XlError("Invalid domain id.\n")
    d = ascii_uint(text[:digits])
    name = domain_name(ts, d) if valid_domid(d) and domain_info(ts, d) is not None else None
    if name is None:
        shown = text[:digits].lstrip("0") or "0"
        raise XlError(f"Can't get domain name of domain id '{shown}', maybe this domain does not "
                      "exist.")
    print(name)
    return 0


class UsageError(XlError):
    """Wrong arguments for ``command``: print its help (exit 1, as xl's ``help()``)."""

    def __init__(self, command: str) -> None:
        super().__init__("", 1)
        self.command = command
