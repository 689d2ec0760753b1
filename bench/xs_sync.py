"""The single-client rows of ``python -m bench xenstore``: libxenstore's request pattern.

One blocking Unix-socket connection per client, no event loop, so the client
costs as little as it can in Python and the same for every server. A request
goes out as libxenstore 4.17 sends it (``xs_talkv`` in
``tools/libs/store/xs.c``): one ``write()`` of the 16-byte header, then one
per argument (path, then value); the reply is read as ``read_reply`` does:
the header first, then exactly its payload.

Each op function returns its latency in seconds; the untimed set-up of an op
(the node an ``rm`` removes) runs before its clock starts.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

from hypervisord.public.io.xs_wire import XsdSockmsgType as T

HEADER = struct.Struct("<IIII")  # type, req_id, tx_id, len: struct xsd_sockmsg
VALUE = b"0123456789abcdef"


class SyncClient:
    """One connection; one request outstanding at a time, like libxenstore."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(30)
        self.buf = bytearray()
        self.events: list[tuple[int, bytes]] = []

    def send(self, mtype: int, *args: bytes, tx_id: int = 0) -> None:
        send = self.sock.sendall
        send(HEADER.pack(mtype, 0, tx_id, sum(map(len, args))))
        for arg in args:
            send(arg)

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf += chunk
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _message(self) -> tuple[int, bytes]:
        mtype, _, _, length = HEADER.unpack(self._exact(HEADER.size))
        return mtype, self._exact(length)

    def reply(self, mtype: int) -> bytes:
        while True:
            got, payload = self._message()
            if got == T.XS_WATCH_EVENT:
                self.events.append((got, payload))
                continue
            if got != mtype:
                raise RuntimeError(f"expected {T(mtype).name}, got type {got}: "
                                   f"{payload[:60]!r}")
            return payload

    def call(self, mtype: int, *args: bytes, tx_id: int = 0) -> bytes:
        self.send(mtype, *args, tx_id=tx_id)
        return self.reply(mtype)

    def event(self) -> bytes:
        if self.events:
            return self.events.pop(0)[1]
        got, payload = self._message()
        if got != T.XS_WATCH_EVENT:
            raise RuntimeError(f"expected a watch event, got type {got}")
        return payload

    def close(self) -> None:
        self.sock.close()


def make_op(op: str, i: int, a: SyncClient, b: SyncClient | None,
            ) -> Callable[[], float]:
    """Client ``i``'s operation ``op``; calls return its latency (s)."""
    pc = time.perf_counter
    call = a.call
    if op in ("read", "directory"):
        mtype = T.XS_READ if op == "read" else T.XS_DIRECTORY
        path = b"/bench/r/%d\0" % i if op == "read" else b"/bench/d\0"

        def simple() -> float:
            t0 = pc()
            call(mtype, path)
            return pc() - t0
        return simple
    if op in ("write", "rm"):
        path = (b"/bench/w/%d\0" if op == "write" else b"/bench/rm/%d\0") % i

        def write() -> float:
            t0 = pc()
            call(T.XS_WRITE, path, VALUE)
            return pc() - t0

        def rm() -> float:
            call(T.XS_WRITE, path, VALUE)  # untimed: the node to remove
            t0 = pc()
            call(T.XS_RM, path)
            return pc() - t0
        return write if op == "write" else rm
    if op in ("txn", "rmw"):
        path = b"/bench/t/%d\0" % i

        def txn() -> float:
            t0 = pc()
            tx_id = int(call(T.XS_TRANSACTION_START, b"\0").rstrip(b"\0") or b"0")
            if op == "rmw":
                value = call(T.XS_READ, path, tx_id=tx_id)
                call(T.XS_WRITE, path, value[:16], tx_id=tx_id)
            call(T.XS_TRANSACTION_END, b"T\0", tx_id=tx_id)
            return pc() - t0
        return txn
    assert op == "watch" and b is not None
    path = b"/bench/watch/%d\0" % i

    def watch() -> float:
        t0 = pc()
        a.send(T.XS_WRITE, path, VALUE)
        b.event()
        t1 = pc()
        a.reply(T.XS_WRITE)
        return t1 - t0
    return watch


def measure(cmd: dict) -> dict:
    """One client, ``cmd["op"]``, for ``duration`` s or ``limit`` ops."""
    from bench.common import quantile_sample

    op, i = cmd["op"], cmd["base"]
    a = SyncClient(cmd["socket"])
    b = None
    if op == "watch":
        b = SyncClient(cmd["socket"])
        b.call(T.XS_WATCH, b"/bench/watch/%d\0" % i, b"tok%d\0" % i)
        b.event()  # the initial event
    fn = make_op(op, i, a, b)
    pc = time.perf_counter
    time.sleep(max(0.0, cmd["start_at"] - pc()))
    start = pc()
    end = start + cmd["duration"]
    lats = []
    for _ in range(cmd["limit"]):
        lats.append(fn())
        if pc() >= end:
            break
    elapsed = pc() - start
    a.close()
    if b is not None:
        b.close()
    return {"ops": len(lats), "elapsed": elapsed, "late_ms": 0.0,
            "lat_us": [x * 1e6 for x in quantile_sample(lats)]}


def measure_many(cmd: dict) -> dict:
    """``clients`` threads in this process, each one client as in :func:`measure`;
    their sum of ops over the longest elapsed time is this process's share."""
    import threading

    op, n, base = cmd["op"], cmd["clients"], cmd["base"]
    fns, conns = [], []
    for k in range(n):
        a = SyncClient(cmd["socket"])
        b = None
        if op == "watch":
            b = SyncClient(cmd["socket"])
            b.call(T.XS_WATCH, b"/bench/watch/%d\0" % (base + k), b"tok%d\0" % (base + k))
            b.event()
        conns += [a] + ([b] if b else [])
        fns.append(make_op(op, base + k, a, b))
    pc = time.perf_counter
    counts = [0] * n
    last = [0.0] * n
    start = max(pc(), cmd["start_at"])
    end = start + cmd["duration"]
    limit = max(1, cmd["limit"] // max(1, n))

    def run(k: int) -> None:
        time.sleep(max(0.0, start - pc()))
        fn, done = fns[k], 0
        while done < limit and pc() < end:
            fn()
            done += 1
        counts[k], last[k] = done, pc()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in conns:
        c.close()
    return {"ops": sum(counts), "elapsed": max(last) - start, "late_ms": 0.0, "lat_us": []}
