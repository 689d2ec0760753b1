"""``python -m bench xenstore``: our xenstored against Debian's C xenstored.

Servers run side by side in one run, each in its own process, measured in
interleaved rounds: **cxenstored** (Debian's ``xen-utils-4.17`` daemon,
started without a hypervisor by the shim in
``shared/tools/cxenstored/``; skipped with a reason when it is missing),
**xenstored** as deployed (each write's journal record written before the
reply), **xenstored-nopersist** (the same daemon without a journal: the
cost of the journal is the difference of two rows) and **echo**, a trio
server that frames and answers without a store: the floor of a Python trio
socket server.

Rows, each client waiting for its reply before sending again, requests
framed as libxenstore frames them (:mod:`bench.xs_sync`):

``read``       XS_READ of a 16-byte node
``write``      XS_WRITE of 16 bytes to the client's own node
``directory``  XS_DIRECTORY of a node with 8 children
``rm``         XS_RM of a node (an untimed XS_WRITE creates it first)
``txn``        an empty transaction: XS_TRANSACTION_START, then _END "T"
``rmw``        a transaction that reads a node, writes it back, and ends
``watch``      client A sends XS_WRITE; the time until client B (a second
               connection, watching that node) has the XS_WATCH_EVENT

each with **one** client (µs per op: the median latency), and with **16**
clients spread over ``--procs`` client processes (ops/s of all of them).
The table shows medians over rounds; the JSON line (last) carries each
row's ratio to cxenstored (µs/op ours over theirs, and ops/s ours over
theirs for 16 clients) and to echo.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import common
from hypervisord.public.io.xs_wire import XsdSockmsgType as T
from libxen.xenstore.wire import FrameParser, encode

OPS = ("read", "write", "directory", "rm", "txn", "rmw", "watch")
MAX_CLIENTS = 16
VALUE = b"0123456789abcdef"  # 16 bytes: read, written and echoed
DIR_CHILDREN = 8
PROFILE_ENV = "PVXEN_BENCH_PROFILE"  # a directory: run the daemons under cProfile
CXENSTORED_BIN = Path("/usr/lib/xen-4.17/bin/xenstored")


def _setup(path: str) -> dict[str, Any]:
    """The nodes every measurement uses (the echo server just echoes)."""
    from bench.xs_sync import SyncClient

    c = SyncClient(path)
    names = [b"/bench/d/c%d" % k for k in range(DIR_CHILDREN)]
    for i in range(MAX_CLIENTS):
        names += [b"/bench/%s/%d" % (kind, i) for kind in (b"r", b"w", b"watch", b"t")]
    for name in names:
        c.call(T.XS_WRITE, name + b"\0", VALUE)
    c.close()
    return {"nodes": len(names)}


def worker_command(cmd: dict[str, Any]) -> dict[str, Any]:
    from bench import xs_sync
    if cmd["op"] == "setup":
        return _setup(cmd["socket"])
    if cmd["clients"] == 1:
        return xs_sync.measure(cmd)
    return xs_sync.measure_many(cmd)


# ---------------------------------------------------------------------------
# The echo server (``python -m bench.xenstore echo-server SOCKET``).
# ---------------------------------------------------------------------------

async def echo_server(path: str) -> None:
    import trio

    from daemonkit.daemon import sd_notify

    watchers: dict[bytes, list] = {}

    async def send(peer, data: bytes) -> None:
        async with peer[1]:
            await peer[0].send_all(data)

    async def handle(stream) -> None:
        peer = (stream, trio.StrictFIFOLock())
        parser = FrameParser()
        try:
            while data := await stream.receive_some(65536):
                out = []
                for m in parser.feed(data):
                    out.append(encode(m.type, m.req_id, m.tx_id, m.payload))
                    node = m.payload.partition(b"\0")[0]
                    if m.type == T.XS_WATCH:
                        watchers.setdefault(node, []).append(peer)
                        out.append(encode(T.XS_WATCH_EVENT, 0, 0, m.payload))
                    elif m.type == T.XS_WRITE:
                        for w in watchers.get(node, ()):
                            await send(w, encode(T.XS_WATCH_EVENT, 0, 0, m.payload))
                await send(peer, b"".join(out))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away mid-send
        finally:
            for peers in watchers.values():
                if peer in peers:
                    peers.remove(peer)
            await trio.aclose_forcefully(stream)

    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(128)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, [trio.SocketListener(sock)])
        sd_notify("READY=1")


# ---------------------------------------------------------------------------
# The servers.
# ---------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    socket: str
    pid: int


def cxenstored_script() -> Path | None:
    """``shared/tools/cxenstored/start-cxenstored`` beside the repository (or above it)."""
    for parent in common.REPO.parents:
        script = parent / "shared" / "tools" / "cxenstored" / "start-cxenstored"
        if script.exists():
            return script
    return None


def cxenstored_missing() -> str | None:
    """Why cxenstored cannot run here, or None."""
    if not CXENSTORED_BIN.exists():
        return f"{CXENSTORED_BIN} missing (apt-get install xen-utils-4.17)"
    if shutil.which("gcc") is None:
        return "gcc missing (the shim is built at start)"
    if cxenstored_script() is None:
        return "shared/tools/cxenstored/start-cxenstored not found"
    return None


def start_cxenstored(tmp: Path, stack: contextlib.ExitStack) -> Target:
    directory = tmp / "cx"
    out = subprocess.run([str(cxenstored_script()), str(directory)], capture_output=True,
                         text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"start-cxenstored failed: {out.stderr.strip()}")
    pid = int(out.stdout.split()[-1])

    def stop() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    stack.callback(stop)
    return Target("cxenstored", str(directory / "socket"), pid)


def start_targets(tmp: Path, stack: contextlib.ExitStack, profile: Path | None,
                  with_cx: bool) -> list[Target]:
    targets = [start_cxenstored(tmp, stack)] if with_cx else []
    specs = []
    for name, extra, sub in (("xenstored", [], "p"),
                             ("xenstored-nopersist", ["--no-persist"], "np")):
        rundir = tmp / sub  # short: a socket path has at most 107 bytes
        argv = ["-m", "xenstored", "--rundir", str(rundir), "--no-hypervisor", *extra]
        if profile is not None:
            argv = ["-m", "cProfile", "-o", str(profile / f"{name}.prof"), *argv]
        specs.append((name, argv, rundir / "xenstored" / "socket"))
    echo_sock = tmp / "echo.sock"
    specs.append(("echo", ["-m", "bench.xenstore", "echo-server", str(echo_sock)], echo_sock))
    for name, argv, sock in specs:
        svc = common.Service(name, argv, tmp)
        stack.callback(svc.stop)
        svc.start()
        assert svc.proc is not None
        targets.append(Target(name, str(sock), svc.proc.pid))
    return targets


# ---------------------------------------------------------------------------
# Measurements.
# ---------------------------------------------------------------------------

def measure(workers: list[common.Worker], target: Target, op: str, n: int,
            duration: float, limit: int) -> dict[str, float]:
    """``n`` clients, split over ``workers``, against ``target``."""
    shares = common.split(n, len(workers))
    # Workers need about 0.3 ms per connection to connect (and watch) first.
    start_at = time.perf_counter() + 0.01 + 0.0005 * n * (2 if op == "watch" else 1)
    base = 0
    for w, share in zip(workers, shares):
        w.send({"op": op, "socket": target.socket, "clients": share, "base": base,
                "start_at": start_at, "duration": duration,
                "limit": max(1, limit * share // n)})
        base += share
    results = [w.result() for w in workers[:len(shares)]]
    ops = sum(r["ops"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    lats = sorted(x for r in results for x in r["lat_us"])
    return {"ops_s": ops / elapsed, "lat_p50_us": common.median(lats)}


def run_rounds(workers, targets, rounds: int, duration: float, limit: int,
               warmup: float, procs: int) -> dict[tuple, list[dict[str, float]]]:
    plan = [(op, 1, 1) for op in OPS] + [(op, MAX_CLIENTS, procs) for op in OPS]
    for t in targets:
        workers[0].send({"op": "setup", "socket": t.socket})
        workers[0].result()
        if warmup:
            for op, n, p in plan:
                measure(workers[:p], t, op, n, warmup, limit)
    samples: dict[tuple, list[dict[str, float]]] = {}
    for r in range(rounds):
        common.note(f"round {r + 1}/{rounds}")
        for k, (op, n, p) in enumerate(plan):
            for t in common.rotate(targets, r + k):
                m = measure(workers[:p], t, op, n, duration, limit)
                samples.setdefault((t.name, op, n), []).append(m)
    return samples


def summarise(samples, targets: list[Target]) -> tuple[list[list[Any]], dict]:
    """Table rows, and per (target, op, clients) medians: (ops/s, µs per op)."""
    med: dict[tuple, tuple[float, float]] = {}
    spread: dict[tuple, float] = {}
    for key, ms in samples.items():
        rates = [m["ops_s"] for m in ms]
        ops_s = common.median(rates)
        # one client: its median latency; 16: each client's time per op
        us = (common.median([m["lat_p50_us"] for m in ms]) if key[2] == 1
              else key[2] / ops_s * 1e6)
        med[key] = (ops_s, us)
        spread[key] = (max(rates) - min(rates)) / ops_s * 100
    base = "cxenstored" if any(t.name == "cxenstored" for t in targets) else "echo"
    rows = []
    for n in (1, MAX_CLIENTS):
        for op in OPS:
            for t in targets:
                key = (t.name, op, n)
                ref = med[(base, op, n)]
                ratio = med[key][1] / ref[1] if n == 1 else med[key][0] / ref[0]
                rows.append([op, n, t.name, med[key][0], med[key][1], ratio,
                             f"{spread[key]:.0f}%"])
    return rows, med


def result_json(med, args, missing: str | None) -> dict[str, Any]:
    """The last line: ratios first (they carry over between machines)."""
    r = common.rounded
    out: dict[str, Any] = {"bench": "xenstore", "cxenstored": missing or "measured"}
    for ref in ("cxenstored", "echo"):
        if ref == "cxenstored" and missing:
            continue
        for op in OPS:  # one client: µs/op ours / theirs (lower is better)
            out[f"{op}_ratio_vs_{ref}"] = r(med[("xenstored", op, 1)][1]
                                             / med[(ref, op, 1)][1])
        for op in OPS:  # 16 clients: ops/s ours / theirs (higher is better)
            out[f"tput16_{op}_ratio_vs_{ref}"] = r(med[("xenstored", op, MAX_CLIENTS)][0]
                                                    / med[(ref, op, MAX_CLIENTS)][0])
    for op in OPS:
        for name in ("xenstored", "xenstored-nopersist", "echo", "cxenstored"):
            if (name, op, 1) in med:
                suffix = "" if name == "xenstored" else "_" + name.replace("xenstored-", "")
                out[f"{op}_us{suffix}"] = r(med[(name, op, 1)][1], 1)
                out[f"{op}_16_ops_s{suffix}"] = r(med[(name, op, MAX_CLIENTS)][0], 0)
    ratios = [out.get(f"{op}_ratio_vs_cxenstored") for op in OPS]
    out["targets_met"] = {
        "latency_le_1x_cxenstored": None if missing
        else all(x is not None and x <= 1.0 for x in ratios)}
    out.update(loadavg_before=args.loadavg, rounds=args.rounds, duration_s=args.duration,
               cpus=os.cpu_count(), clients16=f"16 threads in {args.procs} processes")
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench xenstore",
                                description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a few-second smoke run")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--duration", type=float, default=0.2,
                   help="seconds per measurement (default 0.2)")
    p.add_argument("--limit", type=int, default=50000, help="most ops per measurement")
    p.add_argument("--procs", type=int, default=4,
                   help="client processes for the 16-client rows (default 4)")
    p.add_argument("--no-cxenstored", action="store_true",
                   help="leave Debian's cxenstored out even when it is installed")
    p.add_argument("--tmpdir", help="parent of the private directory (default $TMPDIR)")
    p.add_argument("--keep", action="store_true",
                   help="keep the private directory (server and client logs)")
    p.add_argument("--profile", metavar="DIR", default=os.environ.get(PROFILE_ENV),
                   help=f"run both daemons under cProfile, writing DIR/<name>.prof "
                        f"(also ${PROFILE_ENV}); timings then include its overhead")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.limit = 1, 0.02, 2000
    args.procs = max(2, min(args.procs, MAX_CLIENTS))
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    common.terminate_on_sigterm()
    # Other processes' load at the start: runs on a busy host are noisy.
    args.loadavg = round(os.getloadavg()[0], 2)
    missing = "left out (--no-cxenstored)" if args.no_cxenstored else cxenstored_missing()
    if missing:
        common.note(f"no cxenstored baseline: {missing}")
    profile = Path(args.profile).resolve() if args.profile else None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    with common.private_tmpdir(args.tmpdir, args.keep) as tmp, contextlib.ExitStack() as stack:
        common.note(f"servers and state in {tmp} ({common.filesystem_of(tmp)})")
        targets = start_targets(tmp, stack, profile, not missing)
        workers = [common.Worker("bench.xenstore", f"client{k}", tmp)
                   for k in range(args.procs)]
        for w in workers:
            stack.callback(w.close)
        t0 = time.monotonic()
        samples = run_rounds(workers, targets, args.rounds, args.duration, args.limit,
                             0.0 if args.quick else 0.02, args.procs)
        common.note(f"measured in {time.monotonic() - t0:.1f}s")
        rows, med = summarise(samples, targets)
        stack.close()  # stop the daemons now, so that profiles get written
    ref = "cxenstored" if not missing else "echo"
    print(f"xenstore: {args.rounds} interleaved rounds x {args.duration}s per measurement, "
          f"medians; {os.cpu_count()} CPUs, load {args.loadavg} before. clients: 1, or 16 "
          f"in {args.procs} processes. us/op: with 1 client its median latency (watch: "
          f"write -> event), with 16 each client's time per op. x {ref}: with 1 client "
          f"us/op over {ref}'s (lower is better), with 16 ops/s over {ref}'s (higher is "
          f"better). spread: (max-min)/median of ops/s over the rounds.")
    print(common.table(["op", "clients", "server", "ops/s", "us/op", f"x {ref}", "spread"],
                       rows))
    if profile is not None:
        print(f"(daemon profiles in {profile}; timings include cProfile's overhead)")
    print(json.dumps(result_json(med, args, missing)))
    return 0


if __name__ == "__main__":
    role = sys.argv[1:2]
    if role == ["worker"]:
        sys.exit(common.worker_loop(worker_command))
    if role == ["echo-server"] and len(sys.argv) == 3:
        import trio
        trio.run(echo_server, sys.argv[2])
        sys.exit(0)
    sys.exit("usage: python -m bench.xenstore worker | echo-server SOCKET")
