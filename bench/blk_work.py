"""The workload ``bench blk`` runs, the same code on both sides: in the
guest over blkfront (:class:`PvIO`) and in a plain trio process on the
image file (:class:`DirectIO`, ``preadv``/``pwritev``). ``qd`` tasks each
issue one request at a time, so ``qd`` requests are in flight."""

from __future__ import annotations

import os
import random
import time

import trio


class PvIO:
    def __init__(self, disk) -> None:
        self.disk = disk

    async def read(self, sector: int, nsect: int) -> bytes:
        return await self.disk.read_sectors(sector, nsect)

    async def write(self, sector: int, data: bytes) -> None:
        await self.disk.write_sectors(sector, data)


class DirectIO:
    """The yardstick: the syscalls themselves, inline in the trio task (the
    page cache answers in microseconds: no thread hop could pay off), with
    one checkpoint per request so that ``qd`` tasks interleave."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    async def read(self, sector: int, nsect: int) -> bytes:
        buf = bytearray(nsect * 512)
        os.preadv(self.fd, [buf], sector * 512)
        await trio.lowlevel.checkpoint()
        return bytes(buf)

    async def write(self, sector: int, data: bytes) -> None:
        os.pwritev(self.fd, [data], sector * 512)
        await trio.lowlevel.checkpoint()


async def run_case(io, case: dict) -> dict:
    """``case``: op (read/write), pattern (seq/rand), bs, qd, span (bytes),
    seconds, max_ops, seed. Returns ops, seconds, iops, mb_s, lat_us_p50."""
    bs, qd, op = case["bs"], case["qd"], case["op"]
    nsect, span = bs // 512, case["span"] // 512
    blocks = span // nsect
    rnd = random.Random(case.get("seed", 1))
    data = bytes([0x5A]) * bs
    state = {"next": 0, "ops": 0}
    lat: list[float] = []
    deadline = time.perf_counter() + case["seconds"]

    async def worker() -> None:
        while time.perf_counter() < deadline and state["ops"] < case["max_ops"]:
            if case["pattern"] == "seq":
                block = state["next"]
                state["next"] = (block + 1) % blocks
            else:
                block = rnd.randrange(blocks)
            state["ops"] += 1
            t0 = time.perf_counter()
            if op == "read":
                await io.read(block * nsect, nsect)
            else:
                await io.write(block * nsect, data)
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(qd):
            nursery.start_soon(worker)
    elapsed = time.perf_counter() - t0
    lat.sort()
    n = len(lat)
    return {"ops": n, "seconds": elapsed, "iops": n / elapsed, "mb_s": n * bs / elapsed / 1e6,
            "lat_us_p50": lat[n // 2] * 1e6 if n else None}
