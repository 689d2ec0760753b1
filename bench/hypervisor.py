"""``python -m bench hypervisor``: hypervisord against its yardsticks.

Three measurements, all in one process tree (a private temporary
directory; every process killed at the end):

1. **Null hypercalls/s**: ``XENVER_version`` from a dom0 client to a real
   hypervisord over its privcmd socket, against a trio msgpack echo server
   with the same transport and envelope (:mod:`bench.hv_calls`), driven by
   the same client code, in a blocking (``SyncXenCall``) and a trio
   (``XenCall``) style. Headline: the blocking style (a client that adds
   the least of its own cost shows the servers' difference best).
2. **Interdomain event round trip**: two domU processes ping-pong one
   event (``EVTCHNOP_send`` + ``XenEvtchn.wait_port``) against a raw
   socketpair ping-pong between two processes, plus two diagnostic rows
   (trio socketpair; the event path with blocking clients)
   (:mod:`bench.hv_events`).
3. **Domain create + destroy** with N live domains, each a guest process
   forked from a pre-loaded template (:mod:`bench.hv_domains`), interleaved
   with a bare fork from the same template as the yardstick.

Parts 1 and 2 interleave their targets round by round (A B, then B A ...)
and report medians over rounds and ratios of medians; part 3 alternates
create/destroy with the bare fork at each N and reports p50/p90. The last
line of the output is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import common, hv_proc
from bench.hv_report import CLIENTS, KINDS, print_report

PROFILE_ENV = "PVXEN_BENCH_PROFILE"


def worker_command(cmd: dict[str, Any]) -> dict[str, Any]:
    op = cmd["op"]
    if op == "calls":
        from bench import hv_calls
        return hv_calls.measure(cmd)
    if op == "pingpong":
        from bench import hv_events
        return hv_events.measure(cmd)
    from bench import hv_domains
    return hv_domains.command(cmd)


# ---------------------------------------------------------------------------
# Processes.
# ---------------------------------------------------------------------------

def start_services(tmp: Path, stack: contextlib.ExitStack, args) -> dict[str, Any]:
    hv_argv = ["-m", "hypervisord", "--rundir", str(tmp / "hv"), "--memory", args.memory]
    if args.profile is not None:
        hv_argv = ["-m", "cProfile", "-o", str(args.profile / "hypervisord.prof"), *hv_argv]
    specs = {
        "hypervisord": hv_argv,
        "echo": ["-m", "bench.hv_calls", "echo-server", str(tmp / "echo.sock")],
        "template": ["-m", "bench.hv_domains", "template", str(tmp / "template.sock")],
    }
    out: dict[str, Any] = {"privcmd": str(tmp / "hv" / "hypervisord" / "privcmd"),
                           "echo": str(tmp / "echo.sock"),
                           "template": str(tmp / "template.sock")}
    for name, argv in specs.items():
        svc = common.Service(name, argv, tmp)
        stack.callback(svc.stop)
        out[name + "_svc"] = svc.start()
    return out


def pid_of(paths: dict, name: str) -> int:
    svc = paths[name + "_svc"]
    assert svc.proc is not None
    return svc.proc.pid


# ---------------------------------------------------------------------------
# The three parts.
# ---------------------------------------------------------------------------

def run_calls(w: common.Worker, paths: dict, args) -> dict[tuple[str, str], list[dict]]:
    """{(client, target): [{"calls_s", "cpu_us_server", "cpu_us_client"} per round]}."""
    targets = [("hypervisord", paths["privcmd"]), ("echo", paths["echo"])]
    pids = {"hypervisord": pid_of(paths, "hypervisord"), "echo": pid_of(paths, "echo")}
    base = {"op": "calls", "limit": args.limit, "warmup": 200}
    for client in CLIENTS:  # warm both servers and both client styles
        for _, sock in targets:
            w.send({**base, "client": client, "socket": sock, "duration": 0.02})
            w.result()
    samples: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        common.note(f"hypercalls: round {r + 1}/{args.rounds}")
        for k, client in enumerate(CLIENTS):
            for name, sock in common.rotate(targets, r + k):
                w.send({**base, "client": client, "socket": sock, "duration": args.duration,
                        "server_pid": pids[name]})
                m = w.result()
                samples.setdefault((client, name), []).append(
                    {"calls_s": m["calls"] / m["elapsed"], **m})
    return samples


def run_events(w: common.Worker, paths: dict, args) -> dict[str, list[dict]]:
    """{kind: [{"us_rt", "cpu_us_a", "wait_us_a", ...} per round]}."""
    samples: dict[str, list[dict]] = {}
    base = {"op": "pingpong", "privcmd": paths["privcmd"], "limit": args.limit,
            "warmup": 200, "duration": args.duration, "hv_pid": pid_of(paths, "hypervisord")}
    for r in range(args.rounds):
        common.note(f"event ping-pong: round {r + 1}/{args.rounds}")
        for kind in common.rotate(KINDS, r):
            w.send({**base, "kind": kind})
            samples.setdefault(kind, []).append(w.result())
    return samples


def run_domains(w: common.Worker, paths: dict, args) -> tuple[list[dict], dict]:
    """Per N: create/destroy/bare samples, population and memory figures."""
    w.send({"op": "dom_open", "privcmd": paths["privcmd"], "template": paths["template"]})
    w.result()
    rows = []
    for n in args.ns:
        common.note(f"domains: growing to {n - 1} background domains")
        w.send({"op": "dom_grow", "n": n - 1, "max_procs": args.max_procs - 1,
                "reserve_mb": args.reserve_mb, "time_limit": args.grow_time_limit})
        grown = w.result()
        common.note(f"domains: N={grown['live'] + 1}, {args.repeats} create+destroy")
        w.send({"op": "dom_measure", "repeats": args.repeats, "time_limit": 60.0,
                "hv_pid": pid_of(paths, "hypervisord"), "template_pid": pid_of(paths, "template")})
        m = w.result()
        w.send({"op": "dom_memory"})
        rows.append({"n": grown["live"] + 1, "grown": grown, **m, "memory": w.result(),
                     "hv_rss_mb": hv_proc.rss_mb(pid_of(paths, "hypervisord")),
                     "template_rss_mb": hv_proc.rss_mb(pid_of(paths, "template"))})
    w.send({"op": "dom_close"})
    return rows, w.result()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench hypervisor",
                                description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--duration", type=float, default=0.5,
                   help="seconds per hypercall / ping-pong measurement (default 0.5)")
    p.add_argument("--limit", type=int, default=200000, help="most calls per measurement")
    p.add_argument("--ns", default="1,10,100,1000",
                   help="live-domain counts for part 3 (default 1,10,100,1000)")
    p.add_argument("--repeats", type=int, default=100,
                   help="create+destroy pairs per N (default 100)")
    p.add_argument("--max-procs", type=int, default=1000,
                   help="most live guest processes; further domains get none (default 1000)")
    p.add_argument("--reserve-mb", type=int, default=4096,
                   help="stop forking background guests below this MemAvailable")
    p.add_argument("--grow-time-limit", type=float, default=90.0,
                   help="seconds allowed for building one N's background population")
    p.add_argument("--memory", default="8G", help="hypervisord --memory (sparse)")
    p.add_argument("--tmpdir", help="parent of the private directory (default $TMPDIR)")
    p.add_argument("--keep", action="store_true", help="keep the private directory (logs)")
    p.add_argument("--profile", metavar="DIR", default=os.environ.get(PROFILE_ENV),
                   help=f"run hypervisord under cProfile into DIR (also ${PROFILE_ENV})")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.repeats = 2, 0.05, 10
        args.ns, args.grow_time_limit = "1,10,30", 10.0
    args.ns = sorted({max(1, int(x)) for x in args.ns.split(",")})
    args.profile = Path(args.profile).resolve() if args.profile else None
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    common.terminate_on_sigterm()
    args.loadavg = round(os.getloadavg()[0], 2)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    with common.private_tmpdir(args.tmpdir, args.keep) as tmp, contextlib.ExitStack() as stack:
        common.note(f"daemons and sockets in {tmp}")
        paths = start_services(tmp, stack, args)
        w = common.Worker("bench.hypervisor", "client", tmp)
        stack.callback(w.close)
        t0 = time.monotonic()
        calls_s = run_calls(w, paths, args)
        events_s = run_events(w, paths, args)
        rows, close = run_domains(w, paths, args)
        common.note(f"measured in {time.monotonic() - t0:.1f}s")
        stack.close()  # stop the daemons now (a profile is written at exit)
    print_report(calls_s, events_s, rows, close, args)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        sys.exit(common.worker_loop(worker_command))
    sys.exit("usage: python -m bench.hypervisor worker")
