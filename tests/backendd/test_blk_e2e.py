"""blkfront in a program guest -> blkback in backendd -> a raw image file:
the data lands in the file, reads come back, flush and discard do what
they say, a read-only disk refuses writes; the paths used (indirect,
persistent grants, a multi-page ring) show in backendd's counters."""

from __future__ import annotations

import os

import pytest

from tests.backendd.blkguest import disk_cfg, results, wait_result
from tests.toolstack.stack import stack, start_backendd  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(60)
MiB = 1 << 20

RW = """
async def main(domain):
    order = int(domain.args[0]) if domain.args else 0
    persistent = domain.args[1:] != ["nopersist"]
    async with BlockDevice.open(domain, ring_page_order=order, persistent=persistent) as disk:
        report(sectors=disk.sectors, sector_size=disk.sector_size, readonly=disk.readonly,
               persistent=disk.persistent, indirect=disk.max_indirect_segments,
               order=disk.ring_page_order, ring=disk.front.nr_ents)
        await disk.write(1000, b"hello, disk")              # unaligned: read-modify-write
        big = bytes(range(256)) * 1024                       # 256 KiB: indirect
        await disk.write_sectors(2048, big)
        async with trio.open_nursery() as n:                 # many in flight
            for i in range(40):
                n.start_soon(disk.write_sectors, 4096 + i * 8, bytes([i]) * 4096)
        await disk.flush()
        got = await disk.read(1000, 11)
        back = await disk.read_sectors(2048, 512)
        small = [await disk.read_sectors(4096 + i * 8, 8) == bytes([i]) * 4096 for i in range(40)]
        await disk.write_sectors(6144, b"\\xff" * 65536)
        await disk.discard(6144 * 512, 65536)
        zeros = await disk.read_sectors(6144, 128) == bytes(65536)
        try:
            await disk.read_sectors(disk.sectors - 1, 2)
            beyond = "no error"
        except BlockError as e:
            beyond = e.errno
        report(got=got.decode(), big=back == big, small=all(small), zeros=zeros, beyond=beyond,
               stats=disk.stats)
    report(closed=True)
"""


def _image(tmp_path, size=4 * MiB):
    image = tmp_path / "disk.img"
    with open(image, "wb") as f:
        f.truncate(size)  # sparse
    return image


def blk_stats(backendd_log: str, domid: int) -> dict[str, int] | None:
    """The counters backendd logs when a vbd of ``domid`` disconnects."""
    line = next((x for x in backendd_log.splitlines()
                 if f" vbd/{domid}/" in x and ": disconnected: " in x), None)
    if line is None:
        return None
    return {k: int(v) for k, v in (f.split("=") for f in line.split("disconnected: ")[1].split())}


@pytest.mark.parametrize("order,persistent", [(0, True), (2, True), (0, False)])
def test_read_write_flush_discard_into_the_image(stack, start_backendd, tmp_path, order,
                                                 persistent):
    be = start_backendd()
    image = _image(tmp_path)
    args = f"{order}{'' if persistent else ' nopersist'}"
    stack.xl_ok("create", str(disk_cfg(tmp_path, "rw", RW, image, args=args, memory=16)))
    info = wait_result(stack, "rw", "sectors")
    assert info == {"sectors": 8192, "sector_size": 512, "readonly": False,
                    "persistent": persistent, "indirect": 256, "order": order,
                    "ring": 32 << order}
    r = wait_result(stack, "rw", "got")
    assert r["got"] == "hello, disk" and r["big"] and r["small"] and r["zeros"], r
    assert r["beyond"] == 22  # EINVAL before anything is sent
    wait_result(stack, "rw", "closed")
    data = image.read_bytes()
    assert data[1000:1011] == b"hello, disk"
    assert data[2048 * 512:2048 * 512 + 256 * 1024] == bytes(range(256)) * 1024
    assert data[6144 * 512:6144 * 512 + 65536] == bytes(65536)
    stats = stack.wait(lambda: blk_stats(be.log(), 1), "backendd's counters")
    assert stats["indirect"] >= 1 and stats["f_req"] == 1 and stats["ds_req"] == 1
    if persistent:  # every page mapped once and kept
        assert stats["persistent_maps"] >= 1 and stats["transient_maps"] == 0
    else:  # mapped per request, read-only for a write's data
        assert stats["persistent_maps"] == 0 and stats["transient_maps"] > 40
    assert stats["errors"] == 0
