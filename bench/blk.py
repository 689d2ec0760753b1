"""``python -m bench blk``: a PV disk (guest blkfront -> backendd's
blkback -> image file) against direct ``preadv``/``pwritev`` on the same
image file from a process of the same kind (a trio program).

One run starts hypervisord, xenstored and backendd, creates one program
guest (``bench/blk_guest.py``) with the image as its disk, and starts the
direct worker (``python -m bench.blk worker``). Rows: sequential 64 KiB
and random 4 KiB, reads and writes, at queue depth 1 and 32
(``bench/blk_work.py``). Each round runs every row on both sides in turn
(PV then direct, order swapped every round); figures are medians over
rounds, ratios are PV / direct of the medians. Targets (issue 7):
sequential >= 0.7x direct, random 4 KiB >= 0.5x.

The image is written through once before measuring, so both sides read
from the page cache: the comparison is the cost of the PV path itself.
Last line: JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import common

ROWS = [(p, op, bs, qd) for p, bs in (("seq", 65536), ("rand", 4096))
        for op in ("read", "write") for qd in (1, 32)]
TARGET = {"seq": 0.7, "rand": 0.5}
GUEST = "blkbench"


def row_name(p: str, op: str, bs: int, qd: int) -> str:
    return f"{p}-{op}-{bs // 1024}k-qd{qd}"


# -- the direct side (a worker process) ------------------------------------------------
_fds: dict[str, int] = {}


def worker_command(cmd: dict[str, Any]) -> dict[str, Any]:
    import trio

    from bench.blk_work import DirectIO, run_case

    fd = _fds.get(cmd["image"])
    if fd is None:
        fd = _fds[cmd["image"]] = os.open(cmd["image"], os.O_RDWR)
    return trio.run(run_case, DirectIO(fd), cmd)


# -- the stack ------------------------------------------------------------------------------
def start_stack(tmp: Path, stack: contextlib.ExitStack, args) -> dict[str, Any]:
    rundir = tmp / "run"
    for name in ("hypervisord", "xenstored", "backendd"):
        argv = ["-m", name, "--rundir", str(rundir)]
        if name == "hypervisord":
            argv += ["--memory", "512"]
        if args.profile and name == "backendd":
            argv = ["-m", "cProfile", "-o", str(Path(args.profile) / "backendd.prof"), *argv]
        svc = common.Service(name, argv, tmp)
        stack.callback(svc.stop)
        svc.start()
    image = tmp / "disk.img"
    with open(image, "wb") as f:  # written through: every block is in the page cache
        block = bytes(range(256)) * 4096
        for _ in range(args.image_mib):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    cfg = tmp / f"{GUEST}.cfg"
    cfg.write_text(f'name = "{GUEST}"\nmemory = 64\nkernel = "{common.REPO}/bench/blk_guest.py"\n'
                   f'cmdline = "{args.ring_page_order}"\n'
                   f"disk = [ 'format=raw, vdev=xvda, access=rw, target={image}' ]\n")
    env = common.child_env({"PVXEN_RUNDIR": str(rundir)})
    stack.callback(_stop_guests, rundir, env)
    subprocess.run([sys.executable, "-m", "toolstack.xl", "create", str(cfg)], check=True,
                   env=env, cwd=common.REPO, stdout=subprocess.DEVNULL)
    return {"rundir": rundir, "image": str(image), "env": env}


def _stop_guests(rundir: Path, env) -> None:
    subprocess.run([sys.executable, "-m", "toolstack.xl", "destroy", GUEST], env=env,
                   cwd=common.REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=30, check=False)
    pidfile = rundir / "xl" / "launcher.pid"
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(pidfile.read_text()), signal.SIGTERM)


class Guest:
    """The PV side: commands through the guest's ``data/bench`` in XenStore."""

    def __init__(self, rundir: Path) -> None:
        from libxen.xenstore.sync import XsSyncClient

        self.xs = XsSyncClient.open(str(rundir / "xenstored" / "socket"))
        self.seq = 0
        domid = None
        deadline = time.monotonic() + 30
        while domid is None:
            for d in self.xs.directory("/local/domain"):
                with contextlib.suppress(OSError):
                    if self.xs.read(f"/local/domain/{d.decode()}/name") == GUEST.encode():
                        domid = int(d)
            if time.monotonic() > deadline:
                raise TimeoutError("the bench guest never appeared")
            time.sleep(0.05)
        self.home = f"/local/domain/{domid}/data/bench"
        self.info = json.loads(self._wait("ready", 30))

    def _wait(self, key: str, timeout: float, seq: int | None = None) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                value = self.xs.read(f"{self.home}/{key}")
                if value and (seq is None or json.loads(value).get("seq") == seq):
                    return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"the bench guest did not answer {key}")
            time.sleep(0.02)

    def run(self, case: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        self.xs.write(f"{self.home}/cmd", json.dumps({**case, "seq": self.seq}).encode())
        return json.loads(self._wait("result", case["seconds"] + 60, self.seq))

    def close(self) -> None:
        self.seq += 1
        with contextlib.suppress(OSError):
            self.xs.write(f"{self.home}/cmd", json.dumps({"seq": self.seq, "quit": True}).encode())
        self.xs.close()


# -- measuring ------------------------------------------------------------------------------
def measure(guest: Guest, direct: common.Worker, image: str, args) -> dict[str, dict[str, list]]:
    samples: dict[str, dict[str, list]] = {row_name(*r): {"pv": [], "direct": []} for r in ROWS}
    for rnd in range(args.rounds):
        for p, op, bs, qd in ROWS:
            name = row_name(p, op, bs, qd)
            if args.only and name not in args.only:
                continue
            case = {"op": op, "pattern": p, "bs": bs, "qd": qd, "span": args.span_mib << 20,
                    "seconds": args.seconds, "max_ops": args.max_ops, "seed": rnd + 1}
            for side in common.rotate(["pv", "direct"], rnd):
                if side == "pv":
                    res = guest.run(case)
                else:
                    direct.send({**case, "image": image})
                    res = direct.result()
                samples[name][side].append(res)
        common.note(f"round {rnd + 1}/{args.rounds} done")
    return samples


def summarise(samples) -> tuple[list[list[Any]], dict[str, Any]]:
    rows, out = [], {}
    for p, op, bs, qd in ROWS:
        name = row_name(p, op, bs, qd)
        if not samples[name]["pv"]:
            continue
        med = {side: common.median([s["mb_s"] for s in samples[name][side]]) for side in ("pv", "direct")}
        lat = {side: common.median([s["lat_us_p50"] or float("nan") for s in samples[name][side]])
               for side in ("pv", "direct")}
        ratio = med["pv"] / med["direct"] if med["direct"] else float("nan")
        target = TARGET[p]
        rows.append([name, med["pv"], med["direct"], ratio, target, "yes" if ratio >= target else "no",
                     lat["pv"], lat["direct"]])
        out[name] = {"pv_mb_s": common.rounded(med["pv"]), "direct_mb_s": common.rounded(med["direct"]),
                     "ratio": common.rounded(ratio), "target": target, "met": ratio >= target,
                     "pv_lat_us_p50": common.rounded(lat["pv"], 1),
                     "direct_lat_us_p50": common.rounded(lat["direct"], 1)}
    return rows, out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench blk", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=1.0, help="per row and side and round")
    p.add_argument("--max-ops", type=int, default=200_000)
    p.add_argument("--image-mib", type=int, default=64)
    p.add_argument("--span-mib", type=int, default=64, help="the part of the image used")
    p.add_argument("--ring-page-order", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    p.add_argument("--only", metavar="ROW", action="append", help="run just this row (repeatable)")
    p.add_argument("--profile", metavar="DIR", help="run backendd under cProfile, output in DIR")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--tmpdir", metavar="DIR", help="where the private directory goes")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.max_ops, args.image_mib, args.span_mib = 1, 0.1, 200, 4, 4
    args.span_mib = min(args.span_mib, args.image_mib)
    return args


def main(argv: list[str]) -> int:
    if argv and argv[0] == "worker":
        return common.worker_loop(worker_command)
    args = parse_args(argv)
    common.terminate_on_sigterm()
    with common.private_tmpdir(args.tmpdir, keep=args.keep) as tmp, contextlib.ExitStack() as stack:
        paths = start_stack(tmp, stack, args)
        direct = common.Worker("bench.blk", "direct", tmp)
        stack.callback(direct.close)
        guest = Guest(paths["rundir"])
        stack.callback(guest.close)
        common.note(f"guest ready: {guest.info}; image {args.image_mib} MiB on "
                    f"{common.filesystem_of(tmp)}")
        samples = measure(guest, direct, paths["image"], args)
        rows, out = summarise(samples)
    print(common.table(["row", "pv MB/s", "direct MB/s", "ratio", "target", "met",
                        "pv p50 us", "direct p50 us"], rows))
    print(json.dumps({"bench": "blk", "rows": out, "guest": guest.info, "rounds": args.rounds,
                      "seconds": args.seconds,
                      "targets_met": all(r["met"] for r in out.values())}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
