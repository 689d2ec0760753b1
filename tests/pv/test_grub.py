"""Debian's PV GRUB, unmodified, at its ``grub>`` prompt on ``xl console``.

The test makes a disk image with a partition table and an ext2 filesystem
(:mod:`examples.diskimage`), boots ``grub-x86_64-xen.bin`` (Debian's
``grub-xen-host``) with ``xl create`` on our vCPU, and types at its prompt
through ``xl console`` (pexpect, on a real pty). What GRUB lists and reads,
it reads through its blkfront (``grub-core/disk/xen/xendisk.c``) from our
blkback: a grant-table ring it grants as ref 0, its event channel, the
xenbus handshake. Its console is our console ring, served by backendd.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from examples.diskimage import make_image
from tests.toolstack.stack import REPO, stack, start_backendd  # noqa: F401 (fixtures)

pexpect = pytest.importorskip("pexpect", reason="needs pexpect (pip install pexpect)")
PV_GRUB = Path("/usr/lib/grub-xen/grub-x86_64-xen.bin")  # Debian's grub-xen-host
pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not PV_GRUB.exists(), reason="grub-xen-host is not installed"),
              pytest.mark.skipif(not shutil.which("mkfs.ext2", path="/usr/sbin:/sbin:/usr/bin"),
                                 reason="e2fsprogs (mkfs.ext2) is not installed")]

HELLO = b"hello from a file on the pvxen disk, read by GRUB through blkback\n"
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def text(raw: bytes) -> str:
    """GRUB's screen output as one line: escapes dropped, its wrapping undone."""
    return " ".join(ANSI.sub(b"", raw).decode(errors="replace").split())


@pytest.fixture
def grub(stack, start_backendd, tmp_path):
    """GRUB booted with a partitioned disk; yields the ``xl console`` child at a prompt."""
    start_backendd()
    image = tmp_path / "grub.img"
    make_image(image, {"hello.txt": HELLO, "docs/readme": b"pvxen\n"}, label="pvxengrub")
    cfg = tmp_path / "grub.cfg"
    cfg.write_text(f'name = "grub"\ntype = "pv"\nmemory = 32\nkernel = "{PV_GRUB}"\n'
                   f'disk = [ "format=raw, vdev=xvda, access=rw, target={image}" ]\n')
    t0 = time.monotonic()
    stack.xl_ok("create", str(cfg))
    env = {"PVXEN_RUNDIR": str(stack.rundir), "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
           "TERM": "vt100"}
    child = pexpect.spawn(sys.executable, ["-m", "toolstack.xl", "console", "grub"],
                          cwd=str(REPO), env=env, timeout=60)
    try:
        child.expect_exact("Connected to grub console; escape character is '^]'")
        child.expect_exact("grub> ")
        print(f"grub> after {time.monotonic() - t0:.1f} s")
        child.timeout = 20
        yield child
    finally:
        child.close(force=True)
        stack.xl("destroy", "grub")


def command(child, line: str) -> str:
    """Type ``line`` at the prompt; what GRUB printed before the next prompt."""
    child.send(line + "\r")
    child.expect_exact("grub> ")
    return text(child.before)


def test_grub_ls_lists_the_xen_disk_and_its_partitions(grub):
    out = command(grub, "ls")
    assert "(xen/xvda) (xen/xvda,msdos2) (xen/xvda,msdos1)" in out or \
        "(xen/xvda) (xen/xvda,msdos1) (xen/xvda,msdos2)" in out, out
    detail = command(grub, "ls -l")
    assert "Device xen/xvda: No known filesystem detected - Sector size 512B - Total size 16384KiB" \
        in detail, detail
    assert "Partition xen/xvda,msdos1: Filesystem type ext* - Label `pvxengrub'" in detail, detail
    assert "Partition start at 1024KiB" in detail, detail
    assert "Partition xen/xvda,msdos2: No known filesystem detected" in detail, detail


def test_grub_reads_a_file_through_blkback(grub):
    listing = command(grub, "ls (xen/xvda,msdos1)/")
    assert "hello.txt" in listing and "docs/" in listing and "lost+found/" in listing, listing
    assert HELLO.decode().strip() in command(grub, "cat (xen/xvda,msdos1)/hello.txt")
    assert "error: file `/nothere' not found." in command(grub, "cat (xen/xvda,msdos1)/nothere")
