"""``python -m bench xenstore``: our xenstored against a trio echo server.

Three servers run side by side in one process tree, each in its own
process: the **echo** yardstick (below), **xenstored** as deployed (state
journalled and fsync'd before each reply to a write) and **xenstored
--no-persist** (the same daemon without the journal, so the cost of
durability shows as the difference of two rows). The same trio client code
drives all three from worker processes (``python -m bench.xenstore
worker``). Each client is a trio task with its own connection; 16 clients
are measured twice: as 16 tasks in one process, and split over ``--procs``
processes (default 4), since one trio process is itself the bottleneck.

Measured, with 1 and with 16 concurrent clients, each client waiting for
its reply before sending again (as libxenstore does):

``read``       XS_READ of a 16-byte node
``write``      XS_WRITE of 16 bytes to the client's own node
``directory``  XS_DIRECTORY of a node with 8 children
``txn``        an empty transaction: XS_TRANSACTION_START, then _END "T"
``watch``      client A sends XS_WRITE; the time until client B (a second
               connection, watching that node) has the XS_WATCH_EVENT

The echo server parses each 16-byte ``xsd_sockmsg`` header with the same
:class:`FrameParser` and answers with a header and payload of the request's
size. To be a yardstick for ``watch`` it also relays: a message of type
XS_WATCH registers its path, and an XS_WRITE to that path is copied as an
XS_WATCH_EVENT to the registered connections. It never looks at a store.

Rounds interleave the three servers measurement by measurement (A B C,
then B C A, ...); the table shows medians over rounds and each row's cost
per operation relative to the echo server's (``x echo``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import common
from hypervisord.public.io.xs_wire import XsdSockmsgType as T
from libxen.xenstore.wire import FrameParser, Message, encode

OPS = ("read", "write", "directory", "txn", "watch")
#: (clients, client processes); the process count 0 stands for ``--procs``.
CONFIGS = ((1, 1), (16, 1), (16, 0))
MAX_CLIENTS = 16
VALUE = b"0123456789abcdef"  # 16 bytes: read, written and echoed
DIR_CHILDREN = 8
PROFILE_ENV = "PVXEN_BENCH_PROFILE"  # a directory: run the daemons under cProfile


# ---------------------------------------------------------------------------
# The client (runs in worker processes; the same code for every server).
# ---------------------------------------------------------------------------

class XsClient:
    """One connection; one request outstanding at a time, like libxenstore."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.parser = FrameParser()
        self.replies: deque[Message] = deque()
        self.events: deque[Message] = deque()
        self.req_id = 0

    async def send(self, mtype: int, payload: bytes, tx_id: int = 0) -> None:
        self.req_id += 1
        await self.stream.send_all(encode(mtype, self.req_id, tx_id, payload))

    async def _receive(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        for msg in self.parser.feed(data):
            (self.events if msg.type == T.XS_WATCH_EVENT else self.replies).append(msg)

    async def reply(self, mtype: int) -> Message:
        while not self.replies:
            await self._receive()
        msg = self.replies.popleft()
        if msg.type != mtype or msg.req_id != self.req_id:
            raise RuntimeError(f"expected {T(mtype).name} #{self.req_id}, got "
                               f"{msg.type_name} #{msg.req_id}: {msg.payload[:60]!r}")
        return msg

    async def call(self, mtype: int, payload: bytes, tx_id: int = 0) -> Message:
        await self.send(mtype, payload, tx_id)
        return await self.reply(mtype)

    async def event(self) -> Message:
        while not self.events:
            await self._receive()
        return self.events.popleft()


def make_op(op: str, i: int, a: XsClient, b: XsClient | None):
    """Client ``i``'s operation: an async function returning its latency (s)."""
    pc = time.perf_counter
    if op in ("read", "directory"):
        mtype = T.XS_READ if op == "read" else T.XS_DIRECTORY
        payload = b"/bench/r/%d\0" % i if op == "read" else b"/bench/d\0"

        async def simple() -> float:
            t0 = pc()
            await a.call(mtype, payload)
            return pc() - t0
        return simple
    if op == "write":
        wpayload = b"/bench/w/%d\0" % i + VALUE

        async def write() -> float:
            t0 = pc()
            await a.call(T.XS_WRITE, wpayload)
            return pc() - t0
        return write
    if op == "txn":
        async def txn() -> float:
            t0 = pc()
            started = await a.call(T.XS_TRANSACTION_START, b"\0")
            tx_id = int(started.payload.rstrip(b"\0") or b"0")  # the echo sends no id
            await a.call(T.XS_TRANSACTION_END, b"T\0", tx_id)
            return pc() - t0
        return txn
    assert op == "watch" and b is not None
    wpayload = b"/bench/watch/%d\0" % i + VALUE

    async def watch() -> float:
        t0 = pc()
        await a.send(T.XS_WRITE, wpayload)
        await b.event()
        t1 = pc()
        await a.reply(T.XS_WRITE)
        return t1 - t0
    return watch


async def _connect(path: str) -> XsClient:
    import trio
    return XsClient(await trio.open_unix_socket(path))


async def _setup(path: str) -> dict[str, Any]:
    """The nodes every measurement uses (the echo server just echoes)."""
    c = await _connect(path)
    names = [b"/bench/d/c%d" % k for k in range(DIR_CHILDREN)]
    for i in range(MAX_CLIENTS):
        names += [b"/bench/r/%d" % i, b"/bench/w/%d" % i, b"/bench/watch/%d" % i]
    for name in names:
        await c.call(T.XS_WRITE, name + b"\0" + VALUE)
    await c.stream.aclose()
    return {"nodes": len(names)}


async def _measure(cmd: dict[str, Any]) -> dict[str, Any]:
    import trio
    op, n, base = cmd["op"], cmd["clients"], cmd["base"]
    clients = []
    for i in range(n):
        a = await _connect(cmd["socket"])
        b = await _connect(cmd["socket"]) if op == "watch" else None
        if b is not None:  # register, then take the reply and the initial event
            await b.call(T.XS_WATCH, b"/bench/watch/%d\0tok%d\0" % (base + i, base + i))
            await b.event()
        clients.append((a, b, make_op(op, base + i, a, b)))
    pc = time.perf_counter
    late = pc() - cmd["start_at"]
    await trio.sleep(max(0.0, cmd["start_at"] - pc()))
    start = pc()
    end = start + cmd["duration"]
    limit = max(1, cmd["limit"] // n)
    lats: list[float] = []
    last = [start]

    async def run_client(fn) -> None:
        for _ in range(limit):
            if pc() >= end:
                break
            lats.append(await fn())
        last.append(pc())

    async with trio.open_nursery() as nursery:
        for _, _, fn in clients:
            nursery.start_soon(run_client, fn)
    for a, b, _ in clients:
        await a.stream.aclose()
        if b is not None:
            await b.stream.aclose()
    return {"ops": len(lats), "elapsed": max(last) - start, "late_ms": late * 1e3,
            "lat_us": [x * 1e6 for x in common.quantile_sample(lats)]}


def worker_command(cmd: dict[str, Any]) -> dict[str, Any]:
    import trio
    if cmd["op"] == "setup":
        return trio.run(_setup, cmd["socket"])
    return trio.run(_measure, cmd)


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
# The controller (``python -m bench xenstore``).
# ---------------------------------------------------------------------------

@dataclass
class Target:
    name: str
    service: common.Service
    socket: str


def start_targets(tmp: Path, stack: contextlib.ExitStack, profile: Path | None) -> list[Target]:
    targets = []
    echo_sock = tmp / "echo.sock"
    specs = [("echo", ["-m", "bench.xenstore", "echo-server", str(echo_sock)], echo_sock)]
    for name, extra, sub in (("xenstored", [], "p"),
                             ("xenstored-nopersist", ["--no-persist"], "np")):
        rundir = tmp / sub  # short: a socket path has at most 107 bytes
        argv = ["-m", "xenstored", "--rundir", str(rundir), *extra]
        if profile is not None:
            argv = ["-m", "cProfile", "-o", str(profile / f"{name}.prof"), *argv]
        specs.append((name, argv, rundir / "xenstored" / "socket"))
    for name, argv, sock in specs:
        svc = common.Service(name, argv, tmp)
        stack.callback(svc.stop)
        targets.append(Target(name, svc.start(), str(sock)))
    return targets


def measure(workers: list[common.Worker], target: Target, op: str, n: int,
            duration: float, limit: int) -> dict[str, float]:
    """``n`` clients, split over ``workers``, against ``target``."""
    shares = common.split(n, len(workers))
    # Workers need about 0.3 ms per connection to connect (and watch) first.
    start_at = time.perf_counter() + 0.01 + 0.0005 * n * (2 if op == "watch" else 1)
    base = 0
    for w, share in zip(workers, shares):
        w.send({"op": op, "socket": target.socket, "clients": share, "base": base,
                "start_at": start_at, "duration": duration, "limit": limit * share // n})
        base += share
    results = [w.result() for w in workers[:len(shares)]]
    ops = sum(r["ops"] for r in results)
    elapsed = max(r["elapsed"] for r in results)
    lats = sorted(x for r in results for x in r["lat_us"])
    return {"ops_s": ops / elapsed, "lat_p50_us": common.median(lats),
            "late": float(max(r["late_ms"] for r in results) > 0)}


def run_rounds(workers, targets, rounds: int, duration: float, limit: int,
               warmup: float, configs) -> dict[tuple, list[dict[str, float]]]:
    plan = [(op, n, p) for op in OPS for n, p in configs]
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
                samples.setdefault((t.name, op, n, p), []).append(m)
    return samples


def summarise(samples, targets: list[Target], configs) -> tuple[list[list[Any]], dict]:
    """Table rows and per-(target, op, clients, procs) medians: ops/s, µs per op."""
    med: dict[tuple, tuple[float, float]] = {}
    spread: dict[tuple, float] = {}
    for key, ms in samples.items():
        rates = [m["ops_s"] for m in ms]
        ops_s = common.median(rates)
        # µs per op as one client sees it; for watch, the write->event latency.
        us = (common.median([m["lat_p50_us"] for m in ms]) if key[1] == "watch"
              else key[2] / ops_s * 1e6)
        med[key] = (ops_s, us)
        spread[key] = (max(rates) - min(rates)) / ops_s * 100
    rows = []
    for op in OPS:
        for n, p in configs:
            echo_us = med[("echo", op, n, p)][1]
            for t in targets:
                key = (t.name, op, n, p)
                rows.append([op, f"{n}/{p}p", t.name, med[key][0], med[key][1],
                             med[key][1] / echo_us, f"{spread[key]:.0f}%"])
    return rows, med


def result_json(med, args) -> dict[str, Any]:
    """The last line: ratios first (they carry over between machines)."""
    r = common.rounded
    procs = f"_{args.procs}p"
    one = lambda t, op: med[(t, op, 1, 1)]  # noqa: E731
    out: dict[str, Any] = {"bench": "xenstore"}
    for suffix, name in (("", "xenstored"), ("_nopersist", "xenstored-nopersist")):
        for op in OPS[:4]:
            out[f"{op}_rtt_ratio_vs_echo{suffix}"] = r(one(name, op)[1] / one("echo", op)[1])
        watch_us = one(name, "watch")[1]
        out[f"watch_latency_us{suffix}"] = r(watch_us, 1)
        out[f"watch_ratio_vs_echo{suffix}"] = r(watch_us / one("echo", "watch")[1])
        out[f"watch_ratio_vs_echo_rtt{suffix}"] = r(watch_us / one("echo", "read")[1])
        for op in OPS:
            base = one(name, op)[0]
            out[f"scale16_{op}{suffix}"] = r(med[(name, op, 16, 1)][0] / base)
            out[f"scale16_{op}{procs}{suffix}"] = r(med[(name, op, 16, args.procs)][0] / base)
        out[f"read_ops_s{suffix}"] = r(one(name, "read")[0], 0)
        out[f"write_ops_s{suffix}"] = r(one(name, "write")[0], 0)
    out["echo_rtt_us"] = r(one("echo", "read")[1], 1)
    out["echo_watch_latency_us"] = r(one("echo", "watch")[1], 1)
    out["echo_scale16_read"] = r(med[("echo", "read", 16, 1)][0] / one("echo", "read")[0])
    out[f"echo_scale16_read{procs}"] = r(med[("echo", "read", 16, args.procs)][0]
                                         / one("echo", "read")[0])
    rtt = [out[f"{op}_rtt_ratio_vs_echo"] for op in ("read", "write")]
    scale = [out["scale16_read"], out[f"scale16_read{procs}"]]
    out["targets_met"] = {
        "rtt_le_1.5x_echo": all(x is not None and x <= 1.5 for x in rtt),
        "scale16_read_ge_2x": any(x is not None and x >= 2 for x in scale),
    }
    out.update(loadavg_before=args.loadavg, rounds=args.rounds, duration_s=args.duration,
               cpus=os.cpu_count(),
               clients16=f"16 trio tasks in 1 process, and in {args.procs} processes")
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench xenstore",
                                description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a few-second smoke run")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--duration", type=float, default=0.15,
                   help="seconds per measurement (default 0.15)")
    p.add_argument("--limit", type=int, default=50000, help="most ops per measurement")
    p.add_argument("--procs", type=int, default=4,
                   help="client processes for the second 16-client row (default 4)")
    p.add_argument("--tmpdir", help="parent of the private directory (default $TMPDIR)")
    p.add_argument("--keep", action="store_true",
                   help="keep the private directory (server and client logs)")
    p.add_argument("--profile", metavar="DIR", default=os.environ.get(PROFILE_ENV),
                   help=f"run both daemons under cProfile, writing DIR/<name>.prof "
                        f"(also ${PROFILE_ENV}); timings then include its overhead")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.limit = 2, 0.03, 5000
    args.procs = max(2, min(args.procs, MAX_CLIENTS))
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    common.terminate_on_sigterm()
    # Other processes' load at the start: runs on a busy host are noisy.
    args.loadavg = round(os.getloadavg()[0], 2)
    configs = [(n, p or args.procs) for n, p in CONFIGS]
    profile = Path(args.profile).resolve() if args.profile else None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    with common.private_tmpdir(args.tmpdir, args.keep) as tmp, contextlib.ExitStack() as stack:
        common.note(f"servers and state in {tmp} ({common.filesystem_of(tmp)})")
        targets = start_targets(tmp, stack, profile)
        workers = [common.Worker("bench.xenstore", f"client{k}", tmp)
                   for k in range(args.procs)]
        for w in workers:
            stack.callback(w.close)
        t0 = time.monotonic()
        samples = run_rounds(workers, targets, args.rounds, args.duration, args.limit,
                             0.0 if args.quick else 0.02, configs)
        late = sum(m["late"] for ms in samples.values() for m in ms)
        common.note(f"measured in {time.monotonic() - t0:.1f}s"
                    + (f"; {late:.0f} measurements started late" if late else ""))
        rows, med = summarise(samples, targets, configs)
        stack.close()  # stop the daemons now, so that profiles get written
    print(f"xenstore: {args.rounds} interleaved rounds x {args.duration}s per measurement, "
          f"medians; {os.cpu_count()} CPUs. clients 'N/Pp': N client connections (trio "
          f"tasks) in P client processes. us/op: one client's time per op; for watch, "
          f"the write -> event latency. x echo: us/op over the echo server's. "
          f"spread: (max-min)/median of ops/s over the rounds.")
    print(common.table(
        ["op", "clients", "server", "ops/s", "us/op", "x echo", "spread"], rows))
    if profile is not None:
        print(f"(daemon profiles in {profile}; timings include cProfile's overhead)")
    print(json.dumps(result_json(med, args)))
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
