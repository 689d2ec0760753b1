"""The console client's pure parts (toolstack/xl_console.py), as xenconsole's
``--escape`` and its tty paths (tools/console/client/main.c)."""

from __future__ import annotations

from toolstack.xl_console import ESCAPE, escape_char, tty_path


def test_escape_character_as_xenconsole_reads_it():
    assert ESCAPE == 0x1d == escape_char(None) == escape_char("^]")
    assert escape_char("^a") == 0x01 and escape_char("^A") == 0x01
    assert escape_char("q") == ord("q")


def test_tty_paths_of_console_0_and_others():
    assert tty_path(5) == "/local/domain/5/console/tty"
    assert tty_path(5, 2) == "/local/domain/5/device/console/2/tty"
