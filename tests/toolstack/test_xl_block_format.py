"""The list formats of ``tools/xl/xl_block.c`` / ``xl_nic.c`` and how libxl
reads guest-written numbers (``strtoul`` into an ``int``): pure."""

from __future__ import annotations

import pytest

from toolstack import xl_devcmds as d


@pytest.mark.parametrize("text,value", [
    (None, -1),                      # a missing node: libxl's -1
    ("28", 28), ("  12xyz", 12), ("+7", 7), ("", 0), ("abc", 0), ("0x10", 0),
    ("-5", -5),                      # strtoul negates; the int wraps back
    ("4294967296", 0), ("4294967295", -1), ("2147483648", -2147483648),
    ("99999999999999999999999", -1),  # ERANGE: ULONG_MAX
    ("0" * 5000 + "9", 9),           # leading zeros are not an overflow
    ("1" * 5000, -1),
])
def test_guest_written_numbers_read_as_libxl_reads_them(text, value):
    assert d.c_strtoul_int(text) == value


def test_headers_are_xls_byte_for_byte():
    assert d.BLOCK_HEADER == ("Vdev  BE  handle state evt-ch ring-ref "
                              "BE-path                       \n")
    xen_net = ("Idx BE Mac Addr.         handle state evt-ch   tx-/rx-ring-ref "
               "BE-path                       ")
    assert d.NETWORK_HEADER == xen_net + " Link\n"


def test_rows():
    assert d.block_row(51712, 0, 3, 4, 28, 9, "/local/domain/0/backend/vbd/3/51712") == (
        "51712 0   3      4     28     9        /local/domain/0/backend/vbd/3/51712\n")
    assert d.block_row(768, 0, 1, -1, -1, -1, "/b") == (
        "768   0   1      -1    -1     -1       /b" + " " * 28 + "\n")
    assert d.network_row(0, 0, "00:16:3e:aa:bb:cc", 4, 11, 523, 524,
                         "/local/domain/0/backend/vif/3/0", "bridge") == (
        "0   0  00:16:3e:aa:bb:cc     0     4     11   523/524         "
        "/local/domain/0/backend/vif/3/0 bridge\n")


@pytest.mark.parametrize("text,shown", [
    ("00:16:3E:AA:bb:01", "00:16:3e:aa:bb:01"), (None, "00:00:00:00:00:00"),
    ("00:16:3e:aa:bb", "00:00:00:00:00:00"), ("00:16:3e:aa:bb:zz", "00:00:00:00:00:00"),
    ("0:16:3e:aa:bb:cc:", "00:00:00:00:00:00"),
])
def test_mac_text(text, shown):
    assert d.mac_text(text) == shown
