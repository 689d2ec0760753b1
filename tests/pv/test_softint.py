"""hypervisord/vcpu/softint.py: software interrupt or exception, from the code bytes."""

from __future__ import annotations

import struct

from hypervisord.vcpu import paging, softint

PAGE = paging.PAGE_SIZE


class Mem:
    """Guest-physical memory with identity tables mapping VA 0x1000..0x3000 (not 0x3000..)."""

    def __init__(self) -> None:
        self.b = bytearray(16 * PAGE)
        l4, l3, l2, l1 = 8 * PAGE, 9 * PAGE, 10 * PAGE, 11 * PAGE
        for table, nxt in ((l4, l3), (l3, l2), (l2, l1)):
            struct.pack_into("<Q", self.b, table, nxt | 7)
        for pfn in (1, 2):
            struct.pack_into("<Q", self.b, l1 + 8 * pfn, pfn * PAGE | 7)
        self.cr3 = l4

    def read(self, gpa: int, n: int) -> bytes:
        return bytes(self.b[gpa:gpa + n])

    def read_u64(self, gpa: int) -> int:
        return struct.unpack_from("<Q", self.b, gpa)[0]

    def length(self, intno: int, rip: int) -> int:
        return softint.length(self.read, self.read_u64, self.cr3, intno, rip)


def test_vectors_above_31_are_always_software() -> None:
    assert Mem().length(0x80, 0x1002) == 2


def test_int3_int_n_and_faults_by_their_bytes() -> None:
    m = Mem()
    m.b[0x1000:0x1008] = bytes.fromhex("cccd0e31c9f7f1cd")  # int3; int $14; xor; div
    assert m.length(3, 0x1001) == 1  # int3
    assert m.length(14, 0x1003) == 2  # int $14, RIP past it
    assert m.length(0, 0x1005) == 0  # the div after "31 c9": an exception
    assert m.length(14, 0x1005) == 0  # a #PF there is no int $14 either
    m.b[0x1010:0x1012] = bytes.fromhex("cd03")
    assert m.length(3, 0x1012) == 2  # the two-byte int $3


def test_bytes_across_a_page_boundary_and_unmapped_ones() -> None:
    m = Mem()
    m.b[0x1000], m.b[0x1FFF], m.b[0x2000] = 0xCD, 0xCD, 0x0D
    assert m.length(13, 0x2001) == 2  # cd in one page, the vector in the next
    assert softint.code_before(m.read, m.read_u64, m.cr3, 0x1001, 2) == b"\0\xcd"  # 0xfff: unmapped
    assert m.length(6, 0x3001) == 0  # 0x3000 unmapped: read as 0, an exception
