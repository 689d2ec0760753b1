"""Interdomain event ping-pong for ``python -m bench hypervisor``.

Two processes bounce one event back and forth; A times the round trips.
Four kinds, measured in the same worker, interleaved by the controller:

``raw``          a socketpair, blocking 1-byte ``send``/``recv`` on both sides
                 (the yardstick the target is written against)
``trio-socket``  the same socketpair through ``trio.socket`` on both sides
``evtchn``       two **domU processes**: the worker (as dom0) creates two
                 domains, unpauses them, asks ``connect_domain`` for each and
                 forks one process per domain with only that domain's
                 descriptors. A allocates an unbound port for B
                 (``EVTCHNOP_alloc_unbound``), B binds it
                 (``EVTCHNOP_bind_interdomain``); then A ``EVTCHNOP_send``\\s
                 and waits with ``XenEvtchn.wait_port``, B waits and sends
                 back (``libxen/evtchn.py``, trio)
``evtchn-sync``  the same domains and ops with blocking clients
                 (``SyncXenCall`` for the sends, a blocking read of the
                 event-channel stream plus the shared_info test-and-clear for
                 the waits): the part of ``evtchn`` that is not client-side trio

The port number travels from A to B over a pipe (what XenStore carries in
a real system). Each measurement is bounded in count and time; A reports
``rounds, elapsed`` on a pipe; B is killed afterwards, which closes its
connection, so hypervisord destroys both domains.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import time
import traceback
from collections.abc import Callable
from typing import Any

from bench.common import _die_with_parent
from bench.hv_proc import schedstat
from libxen import ctrl
from libxen.core import SyncXenCall, XenError
from hypervisord.public.event_channel import EvtchnOp as Op
from hypervisord.public.pvxen import EVTCHN_NOTIFY_DOORBELL, HYPERVISOR_pvxen_op, PvxenOp
from hypervisord.public.xen import DOMID_SELF, Hypercall
from libxen.rpc import fds_from_ancillary

KINDS = ("raw", "trio-socket", "evtchn", "evtchn-sync")
_PORT = struct.Struct("<I")
EVTCHN_OP = Hypercall.event_channel_op
BATCH = 16  # round trips between two looks at the clock


class Bounds:
    """How A runs: warmup round trips, then up to ``limit`` or ``duration``.

    Around the timed part A also samples the scheduler statistics of the
    processes on the path (``pids``: itself, B, hypervisord), so the report
    says how much CPU each spent per round trip and how long each waited
    for a CPU (the host's other load shows there).
    """

    def __init__(self, cmd: dict[str, Any], pids: dict[str, int] | None = None) -> None:
        self.warmup = int(cmd.get("warmup", 200))
        self.limit = int(cmd["limit"])
        self.duration = float(cmd["duration"])
        self.pids = dict(pids or {})
        self._t0 = 0.0
        self._before: dict[str, tuple[int, int]] = {}

    def start(self) -> float:
        self._before = {k: schedstat(p or os.getpid()) for k, p in self.pids.items()}
        self._t0 = time.perf_counter()
        return self._t0

    def result(self, n: int) -> dict[str, Any]:
        elapsed = time.perf_counter() - self._t0
        out: dict[str, Any] = {"rounds": n, "elapsed": elapsed}
        for k, p in self.pids.items():
            run0, wait0 = self._before[k]
            run1, wait1 = schedstat(p or os.getpid())
            out[f"cpu_us_{k}"] = (run1 - run0) / n / 1e3
            out[f"wait_us_{k}"] = (wait1 - wait0) / n / 1e3
        return out


def report(out_w: int, result: dict[str, Any]) -> None:
    """A's result, written while A still holds its connection: when a domU
    process closes it, hypervisord destroys the domain and SIGKILLs it."""
    os.write(out_w, json.dumps(result).encode() + b"\n")


def timed(bounds: Bounds, rt: Callable[[], None]) -> dict[str, Any]:
    for _ in range(bounds.warmup):
        rt()
    n, end = 0, bounds.start() + bounds.duration
    while n < bounds.limit:
        for _ in range(BATCH):
            rt()
        n += BATCH
        if time.perf_counter() >= end:
            break
    return bounds.result(n)


async def timed_async(bounds: Bounds, rt) -> dict[str, Any]:
    for _ in range(bounds.warmup):
        await rt()
    n, end = 0, bounds.start() + bounds.duration
    while n < bounds.limit:
        for _ in range(BATCH):
            await rt()
        n += BATCH
        if time.perf_counter() >= end:
            break
    return bounds.result(n)


# ---------------------------------------------------------------------------
# Socketpair yardsticks.
# ---------------------------------------------------------------------------

def raw_a(fd: int, bounds: Bounds, out_w: int) -> None:
    s = socket.socket(fileno=fd)

    def rt() -> None:
        s.send(b"x")
        s.recv(1)
    report(out_w, timed(bounds, rt))


def raw_b(fd: int) -> None:
    s = socket.socket(fileno=fd)
    while data := s.recv(1):
        s.send(data)


def trio_a(fd: int, bounds: Bounds, out_w: int) -> None:
    import trio

    async def main() -> None:
        s = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))

        async def rt() -> None:
            await s.send(b"x")
            await s.recv(1)
        report(out_w, await timed_async(bounds, rt))
    trio.run(main)


def trio_b(fd: int) -> None:
    import trio

    async def main() -> None:
        s = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))
        while data := await s.recv(1):
            await s.send(data)
    trio.run(main)


# ---------------------------------------------------------------------------
# Event channels between two domU processes.
# ---------------------------------------------------------------------------

async def _wait_fd(fd: int, size: int) -> bytes:
    import trio
    await trio.lowlevel.wait_readable(fd)
    return os.read(fd, size)


def evtchn_a(fds: dict[str, int], peer: int, port_w: int, go_r: int,
             bounds: Bounds, out_w: int) -> None:
    import trio

    from libxen.core import XenCall
    from libxen.evtchn import XenEvtchn

    async def main() -> None:
        async with XenCall.from_fd(fds["hypercall"]) as xc, \
                XenEvtchn.open(xc, fds["evtchn"], memory_fd=fds["memory"]) as xe:
            port = await xe.bind_unbound_port(peer)
            os.write(port_w, _PORT.pack(port))
            await _wait_fd(go_r, 1)

            async def rt() -> None:
                await xe.notify(port)
                await xe.wait_port(port)
            report(out_w, await timed_async(bounds, rt))
    trio.run(main)


def evtchn_b(fds: dict[str, int], peer: int, port_r: int, go_w: int) -> None:
    import trio

    from libxen.core import XenCall
    from libxen.evtchn import XenEvtchn

    async def main() -> None:
        async with XenCall.from_fd(fds["hypercall"]) as xc, \
                XenEvtchn.open(xc, fds["evtchn"], memory_fd=fds["memory"]) as xe:
            (remote_port,) = _PORT.unpack(await _wait_fd(port_r, 4))
            port = await xe.bind_interdomain(peer, remote_port)
            await xe.wait_port(port)  # Xen makes a freshly bound port pending
            os.write(go_w, b"g")
            while True:  # until killed
                await xe.wait_port(port)
                await xe.notify(port)
    trio.run(main)


class SyncEvtchn:
    """Blocking event-channel client: EVTCHNOP_* over SyncXenCall, stream reads,
    and the channel's doorbell (pvxen.EVTCHN_NOTIFY_DOORBELL) when one comes."""

    def __init__(self, fds: dict[str, int]) -> None:
        from libxen.evtchn import map_shared_info
        from libxen.shinfo import SharedInfoBits

        self.xc = SyncXenCall(fd=fds["hypercall"])
        self.stream = socket.socket(fileno=fds["evtchn"])
        self.bits = SharedInfoBits(map_shared_info(fds["memory"]))
        self.buf = b""
        self.fds: list[int] = []
        self.doorbells: dict[int, int] = {}
        self.xc.call(HYPERVISOR_pvxen_op, PvxenOp.evtchn_doorbells)

    def call(self, op: Op, **args: Any) -> dict:
        return self.xc.call(EVTCHN_OP, op, **args)[1]

    def send(self, port: int) -> None:
        fd = self.doorbells.get(port)
        if fd is not None:
            try:
                os.write(fd, b"\1")
                return
            except BlockingIOError:
                return
            except OSError:
                del self.doorbells[port]
        self.xc.call(EVTCHN_OP, Op.EVTCHNOP_send, port=port)

    def _stream_entry(self) -> int | None:
        """One u32 from the stream if a whole one is buffered (doorbells taken)."""
        while len(self.buf) >= 4:
            (p,) = _PORT.unpack(self.buf[:4])
            self.buf = self.buf[4:]
            if p & EVTCHN_NOTIFY_DOORBELL and self.fds:
                fd = self.fds.pop(0)
                os.set_blocking(fd, False)  # rings are drained, never waited on here
                self.doorbells[p & ~EVTCHN_NOTIFY_DOORBELL] = fd
                continue
            return p
        return None

    def _read_stream(self) -> None:
        data, anc, _, _ = self.stream.recvmsg(4096, socket.CMSG_SPACE(64))
        if not data:
            raise ConnectionResetError("event-channel stream closed")
        self.fds.extend(fds_from_ancillary(anc))
        self.buf += data

    def wait_port(self, port: int) -> None:
        """Until ``port`` fires: a ring on its doorbell, or a stream entry whose
        pending bit is set (and cleared here)."""
        while True:
            p = self._stream_entry()
            while p is not None:
                if p == port and self.bits.clear_pending(p):
                    return
                p = self._stream_entry()
            bell = self.doorbells.get(port)
            ready, _, _ = select.select([self.stream] + ([bell] if bell is not None else []),
                                        [], [])
            if bell is not None and bell in ready:
                if not os.read(bell, 64):
                    del self.doorbells[port]
                    continue
                try:
                    while os.read(bell, 64):
                        pass
                except BlockingIOError:
                    pass
                return
            self._read_stream()


def evtchn_sync_a(fds: dict[str, int], peer: int, port_w: int, go_r: int,
                  bounds: Bounds, out_w: int) -> None:
    ev = SyncEvtchn(fds)
    port = ev.call(Op.EVTCHNOP_alloc_unbound, dom=DOMID_SELF, remote_dom=peer)["port"]
    os.write(port_w, _PORT.pack(port))
    os.read(go_r, 1)

    def rt() -> None:
        ev.send(port)
        ev.wait_port(port)
    report(out_w, timed(bounds, rt))


def evtchn_sync_b(fds: dict[str, int], peer: int, port_r: int, go_w: int) -> None:
    ev = SyncEvtchn(fds)
    (remote_port,) = _PORT.unpack(os.read(port_r, 4))
    port = ev.call(Op.EVTCHNOP_bind_interdomain, remote_dom=peer,
                   remote_port=remote_port)["local_port"]
    ev.wait_port(port)
    os.write(go_w, b"g")
    while True:
        ev.wait_port(port)
        ev.send(port)


# ---------------------------------------------------------------------------
# The worker side: set up, fork A and B, collect, clean up.
# ---------------------------------------------------------------------------

_dom0: dict[str, SyncXenCall] = {}


def dom0(path: str) -> SyncXenCall:
    if path not in _dom0:
        _dom0[path] = SyncXenCall(path)
    return _dom0[path]


def fork_child(fn: Callable[..., Any], args: tuple, keep: set[int], close: set[int]) -> int:
    """Fork ``fn(*args)``; fds in ``close - keep`` are closed in the child first."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the child: never returns into the worker
        _die_with_parent()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for fd in close - keep:
            os.close(fd)
        fn(*args)
        code = 0
    except BaseException:  # noqa: BLE001 - the child must reach os._exit
        traceback.print_exc()
    finally:
        os._exit(code)


def make_domains(xc: SyncXenCall, n: int) -> list[tuple[int, dict[str, int]]]:
    doms = []
    for _ in range(n):
        _, r = ctrl.domain_create(xc)
        domid = r["domain"]
        ctrl.domain_unpause(xc, domid)  # a paused domain's process is stopped
        _, r = ctrl.connect_domain(xc, domid)
        doms.append((domid, r["fds"]))
    return doms


def _read_result(out_r: int, timeout: float) -> dict[str, Any]:
    ready, _, _ = select.select([out_r], [], [], timeout)
    if not ready:
        raise TimeoutError(f"ping-pong did not finish in {timeout:.0f}s")
    line = os.read(out_r, 4096)
    if not line:
        raise RuntimeError("process A ended without a result (see the worker's log)")
    return json.loads(line)


def measure(cmd: dict[str, Any]) -> dict[str, Any]:
    """Worker command ``pingpong``: one measurement of one kind."""
    kind, bounds = cmd["kind"], Bounds(cmd)
    out_r, out_w = os.pipe()
    pipes = [out_r, out_w]
    doms: list[tuple[int, dict[str, int]]] = []
    pids: list[int] = []
    try:
        if kind in ("raw", "trio-socket"):
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            fa, fb = a.detach(), b.detach()
            pipes += [fa, fb]
            fn_a, fn_b = (raw_a, raw_b) if kind == "raw" else (trio_a, trio_b)
            args_a, args_b = (fa, bounds, out_w), (fb,)
            keep_a, keep_b = {fa, out_w}, {fb}
        else:
            doms = make_domains(dom0(cmd["privcmd"]), 2)
            (da, fds_a), (db, fds_b) = doms
            port_r, port_w = os.pipe()
            go_r, go_w = os.pipe()
            pipes += [port_r, port_w, go_r, go_w, *fds_a.values(), *fds_b.values()]
            fn_a, fn_b = ((evtchn_a, evtchn_b) if kind == "evtchn"
                          else (evtchn_sync_a, evtchn_sync_b))
            args_a = (fds_a, db, port_w, go_r, bounds, out_w)
            args_b = (fds_b, da, port_r, go_w)
            keep_a = {*fds_a.values(), port_w, go_r, out_w}
            keep_b = {*fds_b.values(), port_r, go_w}
        everything = set(pipes)
        pids.append(fork_child(fn_b, args_b, keep_b, everything))
        bounds.pids = {"a": 0, "b": pids[0]}  # 0: A itself
        if doms and cmd.get("hv_pid"):
            bounds.pids["hv"] = cmd["hv_pid"]
        pids.append(fork_child(fn_a, args_a, keep_a, everything))
        for fd in pipes[1:]:
            os.close(fd)  # the children hold them now; A's exit closes out_w
        pipes = [out_r]
        timeout = 15.0 + bounds.duration + bounds.warmup * 0.005
        result = _read_result(out_r, timeout)
        return {"us_rt": result["elapsed"] / result["rounds"] * 1e6, **result}
    finally:
        _cleanup(pids, pipes, doms, cmd.get("privcmd"))


def _cleanup(pids: list[int], fds: list[int], doms, privcmd: str | None) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    if doms and privcmd:
        for domid, _ in doms:
            try:  # normally gone already: its process's connection closed
                ctrl.domain_destroy(dom0(privcmd), domid)
            except XenError:
                pass
