"""``xl``: the toolstack's command line (``python -m toolstack.xl``).

Follows ``tools/xl/`` (``xl.c``, ``xl_cmdtable.c``, ``xl_info.c``,
``xl_vmcontrol.c``, ``xl_mem.c``): the same subcommands, options, output
formats and messages, exit 2 for usage errors and 1 for failures. Options
are parsed with GNU getopt semantics (``getopt.gnu_getopt``), as xl's
``getopt_long`` does, so ``xl create g.cfg -p memory=64`` works and an
unknown option gives ``option `x' not supported.``.

Commands: create (-c: then the console), console (``xl_console.py``), list,
info, destroy, pause, unpause, shutdown, reboot,
mem-set, mem-max, dmesg, domid, domname, help; block-attach/-list/-detach and
network-attach/-list/-detach (``xl_devcmds.py``); vcpu-list, vcpu-pin,
sched-credit, sched-credit2 (``xl_sched.py``) and top (``xl_top.py``). Domains are named by name
or id. The runtime directory is ``$PVXEN_RUNDIR`` (see ``hcall.py``).
Imports no trio: a command costs one interpreter start and a few calls.
"""

from __future__ import annotations

import getopt
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from toolstack import xl_cmds, xl_console, xl_devcmds, xl_sched, xl_top
from toolstack.builder import BuildError, ConnectError, Toolstack
from toolstack.hcall import XenError
from toolstack.xlcfg import ConfigErrors
from toolstack.xl_cmds import XlError
from libxen.xenstore.sync import XsConnectionLost, XsError


@dataclass(frozen=True)
class Command:
    fn: Callable[..., int]
    usage: str
    desc: str
    options: str = ""
    shortopts: str = ""
    longopts: tuple[str, ...] = ()
    reqargs: int = 0


MEM_USAGE = "<Domain> <MemMB['b'[bytes]|'k'[KB]|'g'[GB]|'m'[MB]|'t'[TB]]>"

COMMANDS: dict[str, Command] = {
    "create": Command(xl_cmds.create, "<ConfigFile> [options] [vars]",
                      "Create a domain from config file <filename>",
                      "-h                      Print this help.\n"
                      "-p                      Leave the domain paused after it is created.\n"
                      "-c                      Connect to the console after the domain is created.\n"
                      "-n, --dryrun            Dry run - prints the resulting configuration\n"
                      "                         (deprecated in favour of global -N option).\n"
                      "-q, --quiet             Quiet.\n"
                      "-f FILE, --defconfig=FILE\n"
                      "                     Use the given configuration file.",
                      "pnqcf:", ("dryrun", "quiet", "defconfig=")),
    "list": Command(xl_cmds.list_, "[options] [Domain]", "List information about all/some domains",
                    "-l, --long              Output all VM details\n"
                    "-v, --verbose           Prints out UUIDs and security context",
                    "lvZcn", ("long", "verbose", "context", "cpupool", "numa")),
    "info": Command(xl_cmds.info, "[-n|--numa]", "Get information about Xen host",
                    "-n, --numa         List host NUMA topology information", "n", ("numa",)),
    "destroy": Command(xl_cmds.destroy, "[options] <Domain>", "Terminate a domain immediately",
                       "-f                      Permit destroying domain 0, which will only "
                       "succeed\n                        when run from disaggregated toolstack "
                       "domain with a\n                        hardware domain distinct from "
                       "domain 0.", "f", (), 1),
    "pause": Command(xl_cmds.pause, "<Domain>", "Pause execution of a domain", reqargs=1),
    "unpause": Command(xl_cmds.unpause, "<Domain>", "Unpause a paused domain", reqargs=1),
    "shutdown": Command(xl_cmds.shutdown, "[options] <-a|Domain>",
                        "Issue a shutdown signal to a domain",
                        "-a, --all               Shutdown all guest domains.\n"
                        "-h                      Print this help.\n"
                        "-F                      Fallback to ACPI power event for HVM guests with\n"
                        "                        no PV drivers.\n"
                        "-w, --wait              Wait for guest(s) to shutdown.\n"
                        "-t SECS, --timeout=SECS Give up waiting after SECS seconds "
                        "(default 300).\n",
                        "awFt:", ("all", "wait", "timeout=")),
    "reboot": Command(xl_cmds.reboot, "[options] <-a|Domain>", "Issue a reboot signal to a domain",
                      "-a, --all               Shutdown all guest domains.\n"
                      "-h                      Print this help.\n"
                      "-F                      Fallback to ACPI reset event for HVM guests with\n"
                      "                        no PV drivers.\n"
                      "-w, --wait              Wait for guest(s) to reboot.\n"
                      "-t SECS, --timeout=SECS Give up waiting after SECS seconds "
                      "(default 300).\n",
                      "awFt:", ("all", "wait", "timeout=")),
    "mem-set": Command(xl_cmds.mem_set, MEM_USAGE, "Set the current memory usage for a domain",
                       reqargs=2),
    "mem-max": Command(xl_cmds.mem_max, MEM_USAGE,
                       "Set the maximum amount reservation for a domain", reqargs=2),
    "dmesg": Command(xl_cmds.dmesg, "[-c]", "Read and/or clear dmesg buffer",
                     "  -c                        Clear dmesg buffer as well as printing "
                     "it",
                     "c", ("clear",)),
    "domid": Command(xl_cmds.domid, "<DomainName>", "Convert a domain name to domain id",
                     reqargs=1),
    "domname": Command(xl_cmds.domname, "<DomainId>", "Convert a domain id to domain name",
                       reqargs=1),
}


# -- the console client (xl_cmdtable.c, tools/xl/xl_console.c) ---------------------------
COMMANDS["console"] = Command(
    xl_console.console, "[options] <Domain>\n"
    "-t <type>       console type, pv, serial or vuart\n"
    "-n <number>     console number\n"
    "-e <escape>     escape character", "Attach to domain's console",
    "", "t:n:e:", (), 1)


# -- device commands (xl_cmdtable.c; tools/xl/xl_block.c, xl_nic.c) --------------------
COMMANDS.update({
    "network-attach": Command(xl_devcmds.network_attach,
                              "<Domain> [type=<type>] [mac=<mac>] [bridge=<bridge>] "
                              "[ip=<ip>] [script=<script>] [backend=<BackDomain>] "
                              "[vifname=<name>] [rate=<rate>] [model=<model>] [accel=<accel>]",
                              "Create a new virtual network device", reqargs=1),
    "network-list": Command(xl_devcmds.network_list, "<Domain(s)>",
                            "List virtual network interfaces for a domain", reqargs=1),
    "network-detach": Command(xl_devcmds.network_detach, "<Domain> <DevId|mac>",
                              "Destroy a domain's virtual network device", reqargs=2),
    "block-attach": Command(xl_devcmds.block_attach, "<Domain> <disk-spec-component(s)>...",
                            "Create a new virtual block device", reqargs=2),
    "block-list": Command(xl_devcmds.block_list, "<Domain(s)>",
                          "List virtual block devices for a domain", reqargs=1),
    "block-detach": Command(xl_devcmds.block_detach, "[-f|--force] <Domain> <VirtualDevice>",
                            "Destroy a domain's virtual block device",
                            "-f, --force             Do not wait for the backend to close the "
                            "device\n                        (it is removed at once).",
                            "f", ("force",), 2),
})

# -- vCPUs and scheduling on the host's scheduler (xl_vcpu.c, xl_sched.c; xentop) -------
COMMANDS.update({
    "vcpu-list": Command(xl_sched.vcpu_list, "[Domain, ...]",
                         "List the VCPUs for all/some domains"),
    "vcpu-pin": Command(xl_sched.vcpu_pin, "[option] <Domain> <VCPU|all> <Hard affinity|-|all> "
                        "<Soft affinity|-|all>",
                        "Set which CPUs a VCPU can use",
                        "-f, --force        undo an override pinning done by the kernel",
                        "fi", ("force", "ignore-global-affinity-masks"), 3),
    "sched-credit": Command(xl_sched.sched_credit, "[-d <Domain> [-w[=WEIGHT]|-c[=CAP]]] "
                            "[-s [-t TSLICE] [-r RATELIMIT]] [-p CPUPOOL]",
                            "Get/set credit scheduler parameters (the domain's cgroup)",
                            "-d DOMAIN, --domain=DOMAIN        Domain to modify\n"
                            "-w WEIGHT, --weight=WEIGHT        Weight (int): cgroup cpu.weight "
                            "= WEIGHT*100/256\n"
                            "-c CAP, --cap=CAP                 Cap (int): percent of one CPU, "
                            "cgroup cpu.max\n"
                            "-s         --schedparam           Query / modify scheduler "
                            "parameters\n"
                            "-p CPUPOOL                        Restrict output to CPUPOOL",
                            "d:w:c:p:t:r:m:s", ("domain=", "weight=", "cap=", "schedparam")),
    "sched-credit2": Command(xl_sched.sched_credit2, "[-d <Domain> [-w[=WEIGHT]]|-c[=CAP]] "
                             "[-p CPUPOOL]",
                             "Get/set credit2 scheduler parameters (the domain's cgroup)",
                             "-d DOMAIN, --domain=DOMAIN     Domain to modify\n"
                             "-w WEIGHT, --weight=WEIGHT     Weight (int): cgroup cpu.weight "
                             "= WEIGHT*100/256\n"
                             "-c CAP, --cap=CAP              Cap (int): percent of one CPU, "
                             "cgroup cpu.max\n"
                             "-s         --schedparam        Query / modify scheduler "
                             "parameters\n"
                             "-p CPUPOOL                     Restrict output to CPUPOOL",
                             "d:w:c:p:r:s", ("domain=", "weight=", "cap=", "schedparam")),
    "top": Command(xl_top.top, "[-b] [-d SECONDS] [-i ITERATIONS]",
                   "Monitor a host and the domains in real time",
                   "-b, --batch             output in batch mode, no user input accepted\n"
                   "-d, --delay=SECONDS     seconds between updates (default 3)\n"
                   "-i, --iterations=N      number of updates before exiting",
                   "bd:i:", ("batch", "delay=", "iterations=")),
})


def help_text(command: str | None) -> str:
    spec = COMMANDS.get(command or "")
    if spec is None:
        lines = ["Usage xl [-vfNtT] <subcommand> [args]", "",
                 "xl full list of subcommands:", ""]
        lines += [f" {name:<21} {c.desc}" for name, c in COMMANDS.items()]
        return "\n".join(lines) + "\n"
    text = f"Usage: xl [-vtT] {command} {spec.usage}\n\n{spec.desc}.\n\n"
    if spec.options:
        text += f"Options:\n\n{spec.options}\n"
    return text


def parse_options(name: str, spec: Command, argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """xl's ``def_getopt``: options (by long name when there is one), then arguments."""
    longs = [lo for lo in spec.longopts] + ["help"]
    try:
        pairs, args = getopt.gnu_getopt(argv, spec.shortopts + "h", longs)
    except getopt.GetoptError as e:
        shown = e.opt if len(e.opt) == 1 else f"--{e.opt}"
        raise XlError(f"option `{shown}' not supported.", 2) from None
    opts: dict[str, str] = {}
    for opt, value in pairs:
        if opt in ("-h", "--help"):
            sys.stdout.write(help_text(name))
            raise XlError("", 0)
        opts[_canonical(spec, opt)] = value
    if len(args) < spec.reqargs:
        sys.stderr.write(f"'xl {name}' requires at least {spec.reqargs} "
                         f"argument{'s' if spec.reqargs > 1 else ''}.\n\n")
        sys.stdout.write(help_text(name))
        raise XlError("", 2)
    return opts, args


def _canonical(spec: Command, opt: str) -> str:
    """``-n`` and ``--dryrun`` are the same option: keep the short letter."""
    if opt.startswith("--"):
        long = opt[2:]
        for lo in spec.longopts:
            if lo.rstrip("=") == long:
                letter = _LONG_TO_SHORT.get(long)
                return f"-{letter}" if letter else opt
    return opt


_LONG_TO_SHORT = {"dryrun": "n", "quiet": "q", "defconfig": "f", "long": "l", "verbose": "v",
                  "context": "Z", "cpupool": "c", "numa": "n", "all": "a", "wait": "w",
                  "clear": "c", "timeout": "t", "force": "f", "domain": "d", "weight": "w",
                  "cap": "c", "schedparam": "s", "batch": "b", "delay": "d",
                  "iterations": "i", "ignore-global-affinity-masks": "i"}


def run(argv: list[str]) -> int:
    try:
        globals_, rest = getopt.getopt(argv, "vfNtT")
    except getopt.GetoptError as e:
        raise XlError(f"option `{e.opt}' not supported.", 2) from None
    if not rest:
        sys.stdout.write(help_text(None))
        return 1
    name, args = rest[0], rest[1:]
    if name == "help":
        sys.stdout.write(help_text(args[0] if args else None))
        return 0
    spec = COMMANDS.get(name)
    if spec is None:
        raise XlError("command not implemented")
    opts, args = parse_options(name, spec, args)
    dryrun = any(o == "-N" for o, _ in globals_)
    with Toolstack(os.environ.get("PVXEN_RUNDIR") or None) as ts:
        return spec.fn(ts, opts, args, dryrun=dryrun)


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except XlError as e:
        if str(e):
            print(e, file=sys.stderr)
        if isinstance(e, xl_cmds.UsageError):
            sys.stdout.write(help_text(e.command))
        return e.code
    except ConfigErrors as e:
        print(e, file=sys.stderr)
        return 1
    except (ConnectError, BuildError) as e:
        print(f"xl: {e}", file=sys.stderr)
        return 1
    except XenError as e:
        print(f"libxl: error: {e.strerror}", file=sys.stderr)
        return 1
    except (XsError, XsConnectionLost) as e:
        print(f"libxl: error: xenstore: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
