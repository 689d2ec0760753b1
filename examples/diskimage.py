"""A disk image with an MBR partition table and an ext2 filesystem, for PV GRUB.

What a user would make with ``sfdisk`` and ``mkfs.ext2``: sector 0 holds a
classic MBR (four 16-byte entries at offset 446, the 0x55AA signature at
510; CHS fields set to the "use LBA" value 0xFFFFFF), partition 1 (type
0x83, Linux) is formatted ext2 by ``mkfs.ext2 -d`` with the given files, and
partition 2 (type 0x83) is left unformatted, so GRUB's ``ls`` has two
partitions to list. The filesystem is made by e2fsprogs' ``mkfs.ext2`` at
the partition's byte offset (``-E offset=``): no loop device, no root needed.

Used by ``make run`` (the GRUB guest's disk) and by the PV GRUB tests.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

SECTOR = 512
FIRST_SECTOR = 2048           # 1 MiB alignment, as sfdisk and parted place partition 1
MBR_ENTRIES_OFF = 446
MBR_SIGNATURE = b"\x55\xaa"
PART_LINUX = 0x83
CHS_LBA = b"\xff\xff\xff"     # CHS beyond 1024 cylinders: use the LBA fields
#: struct of one MBR entry: status, CHS first, type, CHS last, LBA first, sectors
MBR_ENTRY = struct.Struct("<B3sB3sII")


class DiskImageError(Exception):
    """The image could not be made (say why in one line)."""


def mbr(partitions: list[tuple[int, int, int]], disk_id: int = 0x70767865) -> bytes:
    """Sector 0: the MBR for ``(first_sector, sectors, type)`` entries (at most 4)."""
    if len(partitions) > 4:
        raise DiskImageError("an MBR holds at most 4 primary partitions")
    sector = bytearray(SECTOR)
    struct.pack_into("<I", sector, 440, disk_id)
    for i, (first, count, ptype) in enumerate(partitions):
        status = 0x80 if i == 0 else 0x00
        MBR_ENTRY.pack_into(sector, MBR_ENTRIES_OFF + 16 * i, status, CHS_LBA, ptype,
                            CHS_LBA, first, count)
    sector[510:512] = MBR_SIGNATURE
    return bytes(sector)


def make_image(path: Path, files: dict[str, bytes], size: int = 16 << 20,
               label: str = "pvxen") -> list[tuple[int, int, int]]:
    """Write ``path``: MBR, ext2 on partition 1 holding ``files``, partition 2 empty.

    Returns the partition list written. Needs ``mkfs.ext2`` (e2fsprogs).
    """
    mkfs = shutil.which("mkfs.ext2") or shutil.which("mkfs.ext2", path="/usr/sbin:/sbin")
    if mkfs is None:
        raise DiskImageError("mkfs.ext2 not found (install e2fsprogs)")
    total = size // SECTOR
    second = (total - FIRST_SECTOR) * 3 // 4 // FIRST_SECTOR * FIRST_SECTOR  # 2048-aligned
    parts = [(FIRST_SECTOR, second, PART_LINUX),
             (FIRST_SECTOR + second, total - FIRST_SECTOR - second, PART_LINUX)]
    with open(path, "wb") as f:
        f.truncate(size)  # sparse
    with tempfile.TemporaryDirectory() as root:
        for name, data in files.items():
            target = Path(root, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        first, count, _ = parts[0]
        r = subprocess.run([mkfs, "-q", "-F", "-t", "ext2", "-L", label, "-d", root,
                            "-E", f"offset={first * SECTOR}", str(path),
                            f"{count * SECTOR // 1024}k"], capture_output=True, text=True)
    if r.returncode != 0:
        raise DiskImageError(f"mkfs.ext2 failed: {r.stderr.strip() or r.returncode}")
    with open(path, "r+b") as f:
        f.write(mbr(parts))
    return parts
