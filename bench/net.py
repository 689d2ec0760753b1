"""``python -m bench net``: guest-to-guest frames vs a raw Unix socketpair.

Two program guests (``xl create``) on one vif each, on the same bridge
(the in-process switch unless ``--bridge``: then real TAPs on a Linux
bridge): a client sends Ethernet frames with ``frontends.netfront``, an
echo guest sends each back (netfront -> netback -> switch/bridge ->
netback -> netfront, both ways). Beside it, the yardstick: two processes
echoing the same sizes over a ``socketpair(AF_UNIX, SOCK_SEQPACKET)``.

Per size (1500 B, 64 KiB = 65535 B, which needs scatter-gather: 16 slots):
round-trip latency (median of one-at-a-time echoes) and throughput (one
way, bytes echoed per second with a window of frames in flight). Both
sides run the same loops. Table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, child_env, note, private_tmpdir, terminate_on_sigterm

SIZES = (1500, 65535)
WINDOW = {1500: 32, 65535: 8}
TARGET = {1500: 0.3, 65535: 0.5}
MAC_CLIENT, MAC_ECHO = "00:16:3e:be:00:01", "00:16:3e:be:00:02"

CLIENT = r'''
import json, statistics, sys, time
import trio
from frontends.netfront import NetDevice

async def main(domain):
    peer = bytes.fromhex(domain.args[0].replace(":", ""))
    n_rtt, n_tput = int(domain.args[1]), int(domain.args[2])
    windows = dict(kv.split(":") for kv in domain.args[3].split(","))
    async with NetDevice.open(domain) as nic:
        out = {}
        for size, window in windows.items():
            size, window = int(size), int(window)
            frame = (peer + nic.mac + b"\x88\xb5" + bytes(size))[:size]
            lost = 0
            async def echo():  # one frame there and back; a lost one is sent again
                nonlocal lost
                while True:
                    await nic.send(frame)
                    with trio.move_on_after(1):
                        while len(await nic.recv()) != size:
                            pass
                        return
                    lost += 1
            with trio.fail_after(10):  # warm up: the echo is there
                await echo()
            while nic.recv_nowait() is not None:
                pass
            lat = []
            for _ in range(n_rtt):
                t = time.perf_counter()
                await echo()
                lat.append(time.perf_counter() - t)
            sent = got = 0
            t0 = time.perf_counter()
            with trio.move_on_after(60):
                while got < n_tput:
                    while sent < n_tput and sent - got < window:
                        await nic.send(frame)
                        sent += 1
                    with trio.move_on_after(1):
                        await nic.recv()
                        got += 1
                        continue
                    lost += sent - got  # the window went missing: sent again
                    sent = got
            dt = time.perf_counter() - t0
            await trio.sleep(0.5)
            while nic.recv_nowait() is not None:
                pass
            out[size] = {"rtt_us": statistics.median(lat) * 1e6, "mb_s": got * size / dt / 1e6,
                         "frames": got, "lost": lost}
        print("RESULT " + json.dumps(out), file=sys.stderr, flush=True)
        await trio.sleep_forever()
'''

ECHO = r'''
import sys
from frontends.netfront import NetDevice

async def main(domain):
    async with NetDevice.open(domain) as nic:
        print("UP", file=sys.stderr, flush=True)
        while True:
            f = await nic.recv()
            await nic.send(f[6:12] + nic.mac + f[12:])
'''


def _raw_pair(n_rtt: int, n_tput: int) -> dict:
    """The yardstick: the same loops over a SOCK_SEQPACKET socketpair."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    pid = os.fork()
    if pid == 0:  # the echo process
        a.close()
        try:
            while True:
                f = b.recv(70000)
                if not f:
                    break
                b.send(f[6:12] + f[0:6] + f[12:])
        finally:
            os._exit(0)
    b.close()
    out = {}
    try:
        for size in SIZES:
            frame = bytes(size)
            lat = []
            a.send(frame)
            a.recv(70000)
            for _ in range(n_rtt):
                t = time.perf_counter()
                a.send(frame)
                a.recv(70000)
                lat.append(time.perf_counter() - t)
            sent = got = 0
            window = WINDOW[size]
            t0 = time.perf_counter()
            while got < n_tput:
                while sent < n_tput and sent - got < window:
                    a.send(frame)
                    sent += 1
                a.recv(70000)
                got += 1
            dt = time.perf_counter() - t0
            out[size] = {"rtt_us": statistics.median(lat) * 1e6, "mb_s": got * size / dt / 1e6,
                         "frames": got, "lost": 0}
    finally:
        a.close()
        os.waitpid(pid, 0)
    return out


def _run(argv, env, **kw):
    return subprocess.run([sys.executable, *argv], env=env, cwd=REPO, capture_output=True,
                          text=True, **kw)


def _pv(tmp: Path, n_rtt: int, n_tput: int, real_bridge: bool, timeout: float) -> dict:
    run = tmp / "run"
    env = child_env({"PVXEN_RUNDIR": str(run)})
    if not real_bridge:
        env["PVXEN_NET_SWITCH"] = "1"
    bridge_name = f"pvxbn{os.getpid() % 100000}"
    r = _run(["-m", "toolstack.pvxen", "up", "--rundir", str(run)], env)
    if r.returncode:
        raise SystemExit(f"bench: pvxen up failed:\n{r.stdout}{r.stderr}")
    try:
        for name, body, mac, args in (
                ("netecho", ECHO, MAC_ECHO, ""),
                ("netclient", CLIENT, MAC_CLIENT,
                 f"{MAC_ECHO} {n_rtt} {n_tput} " + ",".join(f"{s}:{WINDOW[s]}" for s in SIZES))):
            (tmp / f"{name}.py").write_text(body)
            mtu = ",mtu=65521" if real_bridge else ""
            (tmp / f"{name}.cfg").write_text(
                f'name = "{name}"\nmemory = 8\nkernel = "{tmp / name}.py"\n'
                f"vif = [ 'mac={mac},bridge={bridge_name}{mtu}' ]\ncmdline = '{args}'\n")
            r = _run(["-m", "toolstack.xl", "create", str(tmp / f"{name}.cfg")], env)
            if r.returncode:
                raise SystemExit(f"bench: xl create {name} failed:\n{r.stdout}{r.stderr}")
            log = run / "xl" / "log" / f"guest-{name}.log"
            want = "UP" if name == "netecho" else "RESULT"
            deadline = time.monotonic() + timeout
            while True:
                text = log.read_text(errors="replace") if log.exists() else ""
                if want in text:
                    break
                if "Traceback" in text or time.monotonic() > deadline:
                    raise SystemExit(f"bench: guest {name} failed:\n{text[-3000:]}")
                time.sleep(0.05)
        line = next(x for x in text.splitlines() if x.startswith("RESULT "))
        return {int(k): v for k, v in json.loads(line[7:]).items()}
    finally:
        for name in ("netclient", "netecho"):
            _run(["-m", "toolstack.xl", "destroy", name], env)
        _run(["-m", "toolstack.pvxen", "down", "--rundir", str(run)], env)
        if real_bridge:
            from backendd.bridge import cleanup
            cleanup(run)
            subprocess.run(["ip", "link", "del", "dev", bridge_name], capture_output=True)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench net", description=__doc__.split("\n")[0])
    p.add_argument("--rtt", type=int, default=300, help="round trips per size (default 300)")
    p.add_argument("--frames", type=int, default=2000, help="frames per throughput run")
    p.add_argument("--bridge", action="store_true", help="real TAPs on a Linux bridge, not the switch")
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    terminate_on_sigterm()
    with private_tmpdir() as tmp:
        note("raw socketpair")
        raw = _raw_pair(args.rtt, args.frames)
        note("guest to guest through netback (" + ("bridge" if args.bridge else "switch") + ")")
        pv = _pv(tmp, args.rtt, args.frames, args.bridge, args.timeout)
    rows = []
    print(f"{'size':>6} {'metric':<12} {'pv':>10} {'raw':>10} {'ratio':>6} {'target':>6}")
    for size in SIZES:
        for metric, unit, better in (("mb_s", "MB/s", "higher"), ("rtt_us", "RTT us", "lower")):
            a, b = pv[size][metric], raw[size][metric]
            ratio = a / b if better == "higher" else b / a
            rows.append({"size": size, "metric": metric, "pv": round(a, 2), "raw": round(b, 2),
                         "ratio": round(ratio, 3), "target": TARGET[size],
                         "ok": ratio >= TARGET[size], "lost": pv[size]["lost"]})
            print(f"{size:>6} {unit:<12} {a:>10.1f} {b:>10.1f} {ratio:>6.2f} {TARGET[size]:>6}")
    print(json.dumps({"bench": "net", "link": "bridge" if args.bridge else "switch",
                      "rows": rows}))
    return 0
