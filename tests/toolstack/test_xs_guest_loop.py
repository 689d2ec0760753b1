"""A program guest's ordinary XenStore read/write loop keeps its connection.

A guest of a few tasks writing and reading their own
nodes back as fast as the ring goes, for several seconds. When the ring
indices were written with ``struct.pack_into`` (which zeroes the field
before packing it), xenstored or the guest now and then read an index of 0,
took the ring for corrupted ("peer corrupted the ring indices (cons N,
prod 0)"), dropped the connection, and the guest's runtime then crashed the
domain. Here the domain must live through the loop, every value it wrote
must have arrived, and neither side may log a broken ring.

A thread of the guest also watches the two indices xenstored writes
(``req_cons``, ``rsp_prod``) with atomic loads throughout: free-running
indices only move forward, so any value behind the last one seen is a
store of xenstored's that the guest caught half done. The old code showed
them by the thousand; a disconnect needed luck.
"""

from __future__ import annotations

import pytest

from tests.toolstack.stack import stack, write_guest  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(60)

SECONDS = 8.0
TASKS = 16
FILL = b"v"
LONGEST = 2000  # values up to 2000 bytes (a domU node holds 2048): two ring turns

GUEST = f'''
import threading

import trio

from libxen.ringidx import SharedWord
from hypervisord.public.io.xs_wire import XS_RING_REQ_CONS_OFF, XS_RING_RSP_PROD_OFF


def watch(page, stop, seen):
    words = [SharedWord(page, XS_RING_REQ_CONS_OFF), SharedWord(page, XS_RING_RSP_PROD_OFF)]
    last = [w.load() for w in words]
    reads = backward = 0
    while not stop.is_set():
        for _ in range(500):
            for j, w in enumerate(words):
                v = w.load()
                if (v - last[j]) & 0xFFFFFFFF >= 0x80000000:
                    backward += 1
                else:
                    last[j] = v
        reads += 1000
    seen += [reads, backward]
    for w in words:
        w.close()


async def main(domain):
    xs = await domain.open_xenbus()
    home = f"/local/domain/{{domain.domid}}/data"
    counts = [0] * {TASKS}
    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=watch, args=(domain.map_gfn(domain.start_info.store_mfn),
                                                   stop, seen))
    watcher.start()

    async def loop(task):
        path = f"{{home}}/t{{task}}"
        deadline = trio.current_time() + {SECONDS}
        i = 0
        while trio.current_time() < deadline:
            i += 1
            value = f"{{task}}:{{i}}:".encode() + {FILL!r} * (i * 997 % {LONGEST})
            await xs.write(path, value)
            got = await xs.read(path)
            if got != value:
                raise AssertionError(f"read back {{got!r}} after writing {{value!r}}")
        counts[task] = i

    try:
        async with trio.open_nursery() as nursery:
            for task in range({TASKS}):
                nursery.start_soon(loop, task)
    finally:
        stop.set()
        watcher.join()
    await xs.write(f"{{home}}/watched", " ".join(map(str, seen)).encode())
    await xs.write(f"{{home}}/done", " ".join(map(str, counts)).encode())
    await domain.wait_for_shutdown()
'''


def test_guest_read_write_loop_keeps_its_xenstore_connection(stack, xenstored, tmp_path):
    cfg = write_guest(tmp_path, "looper", GUEST)
    stack.xl_ok("create", str(cfg))
    domid = stack.domid_of("looper")
    data = f"/local/domain/{domid}/data"
    done = stack.wait(lambda: stack.read(f"{data}/done") or domid not in stack.domids(),
                      "the guest's loop to finish", timeout=SECONDS + 15)
    assert domid in stack.domids(), f"the domain died during its loop{stack.logs()}"
    counts = [int(n) for n in str(done).split()]
    assert len(counts) == TASKS and min(counts) > 0, done
    # What the guest last wrote arrived: each task's node holds its final value.
    for task, n in enumerate(counts):
        assert stack.read(f"{data}/t{task}") == f"{task}:{n}:" + "v" * (n * 997 % LONGEST)
    reads, backward = map(int, stack.read(f"{data}/watched").split())
    assert reads > 10_000 and backward == 0, f"{backward} of {reads} index loads went back"
    assert "corrupted" not in stack.guest_log("looper"), stack.guest_log("looper")
    assert "corrupted the ring" not in xenstored.log()
    assert "closing its connection" not in xenstored.log()
    # Still alive and still served after the loop.
    assert stack.read(f"/local/domain/{domid}/name") == "looper"
    stack.xl_ok("destroy", "looper")
    assert domid not in stack.domids()
