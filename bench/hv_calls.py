"""Null hypercalls for ``python -m bench hypervisor``: the echo yardstick and the clients.

The measured call is ``XENVER_version`` (``xen/include/public/version.h``):
no arguments, an int result, nothing to look up, so its cost is hypervisord's
transport, envelope validation and dispatch. The yardstick is a trio
**msgpack echo** server (``python -m bench.hv_calls echo-server SOCKET``):
the same transport (``AF_UNIX``/``SOCK_SEQPACKET``, one msgpack message per
packet), the same envelope (``libxen/rpc.py``: request
``[req_id, hypercall, subop, args]``, reply ``[req_id, rc, result]``), one
trio task per connection, and nothing else: it unpacks the request and
answers ``[req_id, 0, nil]``.

Both targets are driven by the same client code, in two styles:

``sync``  :class:`~libxen.core.SyncXenCall` (blocking, as ``xl`` uses)
``trio``  :class:`~libxen.core.XenCall` (a reader task, one
          ``trio.Event`` per call, as daemons and guests use)

Each client makes one call at a time (libxencall's model) for a bounded
time and count; the controller interleaves targets and styles.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import msgpack

from bench.hv_proc import schedstat
from libxen import ctrl
from libxen.core import SyncXenCall

CLIENTS = ("sync", "trio")


# ---------------------------------------------------------------------------
# Clients (run in a worker process; the same loops for both targets).
# ---------------------------------------------------------------------------

def _run_sync(path: str, duration: float, limit: int, warmup: int) -> tuple[int, float]:
    pc = time.perf_counter
    with SyncXenCall(path) as xc:
        for _ in range(warmup):
            ctrl.xen_version(xc)
        n, start = 0, pc()
        end = start + duration
        while n < limit:
            for _ in range(32):  # the clock is read once per 32 calls
                ctrl.xen_version(xc)
            n += 32
            if pc() >= end:
                break
        return n, pc() - start


async def _run_trio(path: str, duration: float, limit: int, warmup: int) -> tuple[int, float]:
    from libxen.core import XenCall

    pc = time.perf_counter
    async with XenCall.open(path) as xc:
        for _ in range(warmup):
            await ctrl.xen_version(xc)
        n, start = 0, pc()
        end = start + duration
        while n < limit:
            for _ in range(32):
                await ctrl.xen_version(xc)
            n += 32
            if pc() >= end:
                break
        return n, pc() - start


def measure(cmd: dict[str, Any]) -> dict[str, Any]:
    """Worker command ``calls``: one client style against one socket.

    Also the CPU time the server process and this client spent per call
    (``/proc/PID/schedstat``, warmup included: 200 calls of thousands).
    """
    args = (cmd["socket"], cmd["duration"], cmd["limit"], cmd.get("warmup", 200))
    pids = {"server": cmd.get("server_pid") or 0, "client": os.getpid()}
    before = {k: schedstat(p) for k, p in pids.items() if p}
    if cmd["client"] == "sync":
        n, elapsed = _run_sync(*args)
    else:
        import trio
        n, elapsed = trio.run(_run_trio, *args)
    out: dict[str, Any] = {"calls": n, "elapsed": elapsed}
    calls = n + args[3]
    for k, (run0, _) in before.items():
        out[f"cpu_us_{k}"] = (schedstat(pids[k])[0] - run0) / calls / 1e3
    return out


# ---------------------------------------------------------------------------
# The echo server.
# ---------------------------------------------------------------------------

async def echo_server(path: str) -> None:
    import trio

    from daemonkit.daemon import sd_notify
    from libxen.rpc import MAX_PACKET

    packer = msgpack.Packer(use_bin_type=True)

    async def handle(conn) -> None:
        with conn:
            while True:
                try:
                    data = await conn.recv(MAX_PACKET)
                except OSError:
                    return
                if not data:
                    return
                req = msgpack.unpackb(data, raw=False)
                try:
                    await conn.send(packer.pack((req[0], 0, None)))
                except OSError:
                    return

    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    await sock.bind(path)
    sock.listen(64)
    sd_notify("READY=1")
    async with trio.open_nursery() as nursery:
        with sock:
            while True:
                conn, _ = await sock.accept()
                nursery.start_soon(handle, conn)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["echo-server"] and len(sys.argv) == 3:
        import trio
        try:
            trio.run(echo_server, sys.argv[2])
        except KeyboardInterrupt:
            pass
        sys.exit(0)
    sys.exit("usage: python -m bench.hv_calls echo-server SOCKET")
