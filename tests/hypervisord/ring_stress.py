"""Two-process stress of the shared-page indices (used by test_ring_atomic.py).

Each harness forks two processes that map one memfd page each on their own,
as two domains' processes map one frame, and run one end each as fast as
they can. They report what they saw through a pipe; the parent only
collects. ``kind`` chooses the index accessors: ``"atomic"`` is what the
code uses now, ``"struct"`` the ``struct.pack_into``/``unpack_from`` pair it
used before (kept here only to measure the old behaviour).

Run by hand to compare: ``python -m tests.hypervisord.ring_stress KIND SECONDS``
with KIND ``atomic``/``struct`` (one word), ``ring-atomic``/``ring-struct``
(``io/ring.h``) or ``stream`` (the XenStore ring, whatever xsring.py is).
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import pickle
import socket
import struct
import sys
import time
from collections.abc import Callable

from hypervisord.public.xen import PAGE_SIZE

U32 = struct.Struct("<I")
FORK = multiprocessing.get_context("fork")


def _accessors(kind: str, page: mmap.mmap, off: int):
    if kind == "atomic":
        from libxen.ringidx import SharedWord

        w = SharedWord(page, off)
        return w.load, w.store
    return (lambda: U32.unpack_from(page, off)[0]), (lambda v: U32.pack_into(page, off, v))


def _run_pair(sides: list[Callable[[mmap.mmap, socket.socket], object]], timeout: float) -> list:
    """Fork one process per side over a fresh page; return what each returned."""
    fd = os.memfd_create("ring-stress")
    os.ftruncate(fd, PAGE_SIZE)
    socks = socket.socketpair()
    pipes, procs = [], []
    for side, sock in zip(sides, socks):
        r, w = os.pipe()

        def child(side=side, sock=sock, w=w) -> None:
            page = mmap.mmap(fd, PAGE_SIZE)
            try:
                result = side(page, sock)
            except BaseException as e:  # report, never hang the parent
                result = {"error": repr(e)}
            os.write(w, pickle.dumps(result))
            os._exit(0)

        p = FORK.Process(target=child)
        p.start()
        os.close(w)
        pipes.append(r)
        procs.append(p)
    os.close(fd)
    for s in socks:
        s.close()
    results = []
    for r, p in zip(pipes, procs):
        p.join(timeout)
        if p.is_alive():
            p.kill()
            p.join()
        data = b""
        while chunk := os.read(r, 1 << 20):
            data += chunk
        os.close(r)
        results.append(pickle.loads(data) if data else {"error": "no report"})
    return results


# -- one word: does the reader ever see a value the writer never wrote? ---------------

def word_stress(kind: str, seconds: float) -> dict:
    """The writer stores k * 0x01010101 (k = 1..255, never 0); the reader
    counts loads that are not of that form (a torn or transient value)."""

    def writer(page, sock):
        _, store = _accessors(kind, page, 0)
        store(0x01010101)
        sock.send(b"go")
        end = time.monotonic() + seconds
        k, stores = 1, 0
        while time.monotonic() < end:
            for _ in range(2000):
                k = k % 255 + 1
                store(k * 0x01010101)
            stores += 2000
        U32.pack_into(page, 64, 1)  # done flag: not the word under test
        return {"stores": stores}

    def reader(page, sock):
        load, _ = _accessors(kind, page, 0)
        sock.recv(2)
        reads = torn = zero = 0
        while not U32.unpack_from(page, 64)[0]:
            for _ in range(2000):
                v = load()
                if v % 0x01010101 or not v:
                    torn += 1
                    zero += v == 0
            reads += 2000
        return {"reads": reads, "torn": torn, "zero": zero}

    w, r = _run_pair([writer, reader], seconds + 20)
    return {**w, **r}


# -- the XenStore ring stream, both directions at once ----------------------------------

PATTERN = bytes(range(256)) * 8


def _leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for e in group.exceptions for leaf in _leaves(e)]
    return [group]
FRAME = struct.Struct("<H")


def _stream_side(server: bool, seconds: float, seed: int):
    def side(page, sock):
        import random

        import trio

        from libxen.xsring import XsRingStream

        sock.setblocking(False)
        rng = random.Random(seed)

        def notify() -> None:
            try:
                sock.send(b"\0")
            except BlockingIOError:
                pass  # a notification is pending anyway: they coalesce

        stream = XsRingStream(memoryview(page), notify, server=server)
        out = {"sent": 0, "received": 0, "errors": []}

        async def pump() -> None:
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    sock.recv(4096)
                except BlockingIOError:
                    continue
                stream.kick()

        async def sender() -> None:
            end = trio.current_time() + seconds
            pos = 0
            while trio.current_time() < end:
                n = rng.randint(1, 300)
                start = pos % 256
                await stream.send_all(FRAME.pack(n) + PATTERN[start:start + n])
                pos += n
            await stream.send_all(FRAME.pack(0))  # end of stream
            out["sent"] = pos

        async def receiver() -> None:
            buf = bytearray()
            pos = 0
            while True:
                buf += await stream.receive_some()
                while len(buf) >= FRAME.size:
                    (n,) = FRAME.unpack_from(buf)
                    if n == 0:
                        out["received"] = pos
                        return
                    if len(buf) < FRAME.size + n:
                        break
                    start = pos % 256
                    if buf[FRAME.size:FRAME.size + n] != PATTERN[start:start + n]:
                        out["errors"].append(f"data differs at byte {pos}")
                        return
                    del buf[:FRAME.size + n]
                    pos += n

        async def main() -> None:
            with trio.move_on_after(seconds + 10) as scope:
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(pump)
                        async with trio.open_nursery() as work:
                            work.start_soon(sender)
                            work.start_soon(receiver)
                        nursery.cancel_scope.cancel()
                except* trio.BrokenResourceError as group:
                    out["errors"] += [str(e) for e in _leaves(group)]
            if scope.cancelled_caught:
                out["errors"].append("timed out (the other end stopped)")
            await stream.aclose()  # drops the index views before the unmap

        trio.run(main)
        return out

    return side


def stream_stress(seconds: float) -> list[dict]:
    """Client and server streams over one page, each sending and receiving."""
    return _run_pair([_stream_side(False, seconds, 1), _stream_side(True, seconds, 2)],
                     seconds + 20)


# -- the io/ring.h front and back rings -------------------------------------------------

ENTRY = 16  # request/response: seq u32, then 12 bytes derived from it
REQ = struct.Struct("<I12s")
END = 0xFFFFFFFF


def _sring(kind: str, page: mmap.mmap):
    if kind == "atomic":
        from libxen.ringidx import shared_ring

        return shared_ring(page, ENTRY)
    from hypervisord.public.io.ring import SharedRing, private_index

    return SharedRing(page, ENTRY, index_access=private_index)  # the old struct access


def _body(seq: int) -> bytes:
    return (seq * 2654435761 & 0xFFFFFFFF).to_bytes(4, "little") * 3


def ring_stress(kind: str, seconds: float) -> list[dict]:
    """The front pushes numbered requests, the back answers each with the same
    number; both poll (no event channel) and check order and contents. A lying
    index shows as RingOverflowError, a wrong entry as an error."""
    from hypervisord.public.io.ring import BackRing, FrontRing, RingOverflowError

    def front(page, sock):
        sring = _sring(kind, page)
        ring = FrontRing.init(sring)
        sock.send(b"go")
        out = {"requests": 0, "responses": 0, "errors": []}
        seq, expect, end = 0, 0, time.monotonic() + seconds
        try:
            while True:
                finishing = time.monotonic() >= end
                while not ring.full() and not finishing:
                    ring.put_request(REQ.pack(seq, _body(seq)))
                    seq += 1
                if finishing and expect == seq:
                    ring.put_request(REQ.pack(END, b""))
                    ring.push_requests()
                    break
                ring.push_requests_and_check_notify()
                got = ring.take_responses()
                for raw in got:
                    n, body = REQ.unpack(raw)
                    if n != expect or body != _body(n):
                        raise AssertionError(f"response {n} where {expect} was due")
                    expect += 1
                if not got:
                    if U32.unpack_from(page, PAGE_SIZE - 8)[0]:
                        raise AssertionError("the back end stopped")
                    os.sched_yield()
        except (RingOverflowError, AssertionError) as e:
            out["errors"].append(f"{type(e).__name__}: {e}")
        out["requests"], out["responses"] = seq, expect
        U32.pack_into(page, PAGE_SIZE - 4, 1)  # tell the back end to stop, if it waits
        sring.close()
        return out

    def back(page, sock):
        sock.recv(2)
        sring = _sring(kind, page)
        ring = BackRing.init(sring)
        out = {"requests": 0, "errors": []}
        expect = 0
        try:
            while not U32.unpack_from(page, PAGE_SIZE - 4)[0]:
                reqs = ring.take_requests()
                for raw in reqs:
                    n, body = REQ.unpack(raw)
                    if n == END:
                        out["requests"] = expect
                        sring.close()
                        return out
                    if n != expect or body != _body(n):
                        raise AssertionError(f"request {n} where {expect} was due")
                    ring.put_response(raw)
                    expect += 1
                ring.push_responses_and_check_notify()
                if not reqs and not ring.final_check_for_requests():
                    os.sched_yield()
        except (RingOverflowError, AssertionError) as e:
            out["errors"].append(f"{type(e).__name__}: {e}")
        out["requests"] = expect
        U32.pack_into(page, PAGE_SIZE - 8, 1)  # tell the front end we stopped
        sring.close()
        return out

    return _run_pair([front, back], seconds + 20)


if __name__ == "__main__":
    what, secs = sys.argv[1], float(sys.argv[2])
    if what == "stream":
        print(stream_stress(secs))
    elif what.startswith("ring-"):
        print(ring_stress(what[5:], secs))
    else:
        print(word_stress(what, secs))
