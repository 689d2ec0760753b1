"""A guest cannot change the size of its own memory file.

Each test runs the whole stack as processes (hypervisord, xenstored, the
launcher ``xl create`` starts), a well-behaved ``peer`` guest, and an
attacking program guest that works on ``domain.memory_fd``, the memory
file hypervisord hands every domain. Before the fix, truncating the file
made hypervisord (its ``shared_info`` and grant-frame mappings) and
xenstored (its foreign mapping of the store page) die of SIGBUS the next
time they touched that memory, and growing it let the guest hold host
memory far beyond what ``xl list`` showed.

The file is sealed (``F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL``, see
``hypervisord/machmem.py``) before any process but hypervisord holds it,
so every attempt fails with ``EPERM``, as the kernel's seals answer.
Then the daemons are made to touch the attacker's memory (``xl shutdown``
of it: xenstored writes a watch event into its store ring, hypervisord
sets a pending bit in its ``shared_info``) and must keep serving the peer.
"""

from __future__ import annotations

import re

import pytest

from hypervisord.public.memfile import RESERVED_SLOTS

from tests.toolstack.stack import stack, write_guest  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(60)

ATTACKER = """\
import ctypes, errno, os
from hypervisord.public import memfile

async def main(domain):
    fd = domain.memory_fd
    size = os.fstat(fd).st_size
    store = memfile.gfn_offset(domain.start_info.store_mfn)
    results = []
    for attack in ATTACKS:
        try:
            attack(fd, size, store)
            results.append("ok")
        except OSError as e:
            results.append(errno.errorcode[e.errno])
    print("attacks:", " ".join(results), flush=True)
    print("size:", os.fstat(fd).st_size, "was", size, flush=True)
    await domain.wait_for_shutdown()

def fallocate_keep_size(fd, offset, length):  # FALLOC_FL_KEEP_SIZE: blocks past the end
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.fallocate(fd, 1, ctypes.c_long(offset), ctypes.c_long(length)) != 0:
        raise OSError(ctypes.get_errno(), "fallocate")
"""

PEER = """\
async def main(domain):
    xs = await domain.open_xenbus()
    await xs.write(f"/local/domain/{domain.domid}/data/up", "1")
    await domain.wait_for_shutdown()
"""


def run_attack(stack, tmp_path, attacks: str, n: int) -> tuple[list[str], int, int]:
    """Start the peer and the attacker; returns (results, size after, size before)."""
    stack.xl_ok("create", str(write_guest(tmp_path, "peer", PEER)))
    peer = stack.domid_of("peer")
    stack.wait(lambda: stack.read(f"/local/domain/{peer}/data/up") == "1", "the peer's write")
    body = ATTACKER.replace("for attack in ATTACKS", f"for attack in [{attacks}]")
    stack.xl_ok("create", str(write_guest(tmp_path, "attacker", body)))
    log = stack.wait(lambda: re.search(r"attacks: (.*)\nsize: (\d+) was (\d+)\n",
                                       stack.guest_log("attacker")), "the attacker's report")
    results = log.group(1).split()
    assert len(results) == n
    return results, int(log.group(2)), int(log.group(3))


def daemons_and_peer_unharmed(stack, hypervisord, xenstored) -> None:
    """Make the daemons touch the attacker's memory, then use them for the peer."""
    attacker, peer = stack.domid_of("attacker"), stack.domid_of("peer")
    for d in (attacker, peer):  # the guests' runtimes offer PV shutdown (xl checks this)
        stack.wait(lambda: stack.read(f"/local/domain/{d}/control/feature-poweroff") == "1",
                   f"d{d}'s control/feature-poweroff")
    stack.xl_ok("shutdown", "attacker")  # store ring + shared_info of the attacker
    stack.wait(lambda: attacker not in stack.domids(), "the attacker's shutdown")
    assert hypervisord.alive, hypervisord.log()[-3000:]
    assert xenstored.alive, xenstored.log()[-3000:]
    assert stack.read(f"/local/domain/{peer}/data/up") == "1"  # store reads work
    assert peer in stack.domids()  # hypercalls answered, the peer's domain alive
    stack.xl_ok("shutdown", "peer")  # its ring and event channels still work
    stack.wait(lambda: peer not in stack.domids(), "the peer's own shutdown")
    assert "signal" not in stack.guest_log("peer").lower()


def test_truncate_to_zero_is_refused(stack, hypervisord, xenstored, tmp_path):
    results, after, before = run_attack(
        stack, tmp_path, "lambda fd, size, store: os.ftruncate(fd, 0)", 1)
    assert results == ["EPERM"] and after == before
    daemons_and_peer_unharmed(stack, hypervisord, xenstored)


def test_truncate_below_the_store_page_is_refused(stack, hypervisord, xenstored, tmp_path):
    results, after, before = run_attack(
        stack, tmp_path, "lambda fd, size, store: os.ftruncate(fd, store + 4095), "
                         "lambda fd, size, store: os.ftruncate(fd, store)", 2)
    assert results == ["EPERM", "EPERM"] and after == before
    daemons_and_peer_unharmed(stack, hypervisord, xenstored)


def test_growing_by_one_page_is_refused_by_the_seals(stack, hypervisord, xenstored, tmp_path):
    """Within the guest's file-size limit only the seals stand in the way."""
    results, after, before = run_attack(
        stack, tmp_path,
        "lambda fd, size, store: os.ftruncate(fd, size + 4096), "
        "lambda fd, size, store: os.pwrite(fd, b'x' * 4096, size), "
        "lambda fd, size, store: os.posix_fallocate(fd, size, 4096), "
        "lambda fd, size, store: fallocate_keep_size(fd, size, 4096)", 4)
    assert results == ["EPERM"] * 4
    assert after == before
    daemons_and_peer_unharmed(stack, hypervisord, xenstored)


def test_growing_by_256_mib_is_refused(stack, hypervisord, xenstored, tmp_path):
    big = 256 << 20
    results, after, before = run_attack(
        stack, tmp_path,
        f"lambda fd, size, store: os.ftruncate(fd, size + {big}), "
        f"lambda fd, size, store: os.pwrite(fd, b'x' * 4096, size + {big} - 4096), "
        f"lambda fd, size, store: os.posix_fallocate(fd, size, {big}), "
        f"lambda fd, size, store: fallocate_keep_size(fd, size, {big})", 4)
    # Refused by the seals (EPERM), or before them by the guest's RLIMIT_FSIZE
    # (EFBIG: its memory file plus 64 MiB); either way nothing grows.
    assert set(results) <= {"EPERM", "EFBIG"} and len(results) == 4
    assert after == before
    # the file is exactly the domain's physmap (4 MiB here) and its reserved slots
    assert before == (RESERVED_SLOTS + 1024) * 4096
    daemons_and_peer_unharmed(stack, hypervisord, xenstored)


UNPOPULATED = """\
import errno, os
from libxen import ctrl
from hypervisord.public import memfile

async def main(domain):
    fd = domain.memory_fd
    rc, _ = await ctrl.populate_physmap(domain.xc, [2048])
    print("populate 2048:", rc, flush=True)
    for gfn in (1500, 2048):
        try:
            os.pwrite(fd, b"x" * 4096, memfile.gfn_offset(gfn))
            print(f"write {gfn}: ok", flush=True)
        except OSError as e:
            print(f"write {gfn}: {errno.errorcode[e.errno]}", flush=True)
    st = os.fstat(fd)
    print(f"file: {st.st_size} bytes, {st.st_blocks * 512} allocated", flush=True)
    await domain.wait_for_shutdown()
"""


def test_unpopulated_slots_are_bounded_by_the_sealed_physmap(stack, hypervisord, xenstored,
                                                             tmp_path):
    """What a guest can still do with its file: write into slots of its physmap
    that have no frame (a host page each, never more than ``maxmem``), and
    nothing beyond it, even after ``xl mem-max`` raised its limit: the physmap
    was sealed when its process got the file."""
    stack.xl_ok("create", str(write_guest(tmp_path, "peer", PEER)))
    cfg = write_guest(tmp_path, "attacker", UNPOPULATED, "maxmem = 8\n", memory=4)
    stack.xl_ok("create", "-p", str(cfg))
    stack.xl_ok("mem-max", "attacker", "64")
    stack.xl_ok("unpause", "attacker")
    log = stack.wait(lambda: re.search(r"file: (\d+) bytes, (\d+) allocated",
                                       stack.guest_log("attacker")), "the attacker's report")
    text = stack.guest_log("attacker")
    assert "populate 2048: 0\n" in text  # Xen's short count: outside the physmap
    assert "write 1500: ok\n" in text and "write 2048: EPERM\n" in text
    size, allocated = int(log.group(1)), int(log.group(2))
    assert size == (RESERVED_SLOTS + 2048) * 4096  # maxmem = 8 MiB when it was sealed
    assert allocated <= size
    daemons_and_peer_unharmed(stack, hypervisord, xenstored)
