"""Pure tests of the xenstore-* tools: escaping, C parsing, ls lines, getopt.

No daemon: what the C tools compute locally is checked against the facts of
``xs_lib.c``/``xenstore_client.c`` (and, where glibc decides, against glibc
itself through ctypes).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io

import pytest
from hypothesis import given, settings, strategies as st

from xenstored import cli
from xenstored.cli_format import (
    LsLayout, atoi, c_strtol, gnu_getopt, ls_line, perm_strings, sanitise_value,
    unsanitise_value, _scan_uint)

pytestmark = pytest.mark.timeout(30)


# -- sanitise_value / unsanitise_value ----------------------------------
@pytest.mark.parametrize("raw, shown", [
    (b"plain text ~!", b"plain text ~!"),
    (b"a\x01\x01b\\", b"a\\001\\001b\\\\"),  # the reference's example
    (b"\t\n\r", b"\\t\\n\\r"),
    (b"\x00\x07\x08", b"\\000\\007\\x08"),  # below 8: octal; from 8: hex
    (b"\x7f\x80\xff", b"\\x7f\\x80\\xff"),
    (b'say "hi"', b'say "hi"'),  # quotes are not escaped
    (b"", b""),
])
def test_sanitise_value(raw: bytes, shown: bytes) -> None:
    assert sanitise_value(raw) == shown


@given(st.binary(max_size=64))
def test_unsanitise_inverts_sanitise(raw: bytes) -> None:
    assert unsanitise_value(sanitise_value(raw)) == raw


@pytest.mark.parametrize("spec, value", [
    (b"a\\x01\\001b\\\\", b"a\x01\x01b\\"),
    (b"tr\\", b"tr\x00"),  # a trailing backslash writes a nul
    (b"\\x", b"x"),  # \x without digits is just x
    (b"\\xg", b"xg"),
    (b"\\x-1", b"\xff"),  # sscanf("%2x") takes a sign ...
    (b"\\x 4z", b"\x04z"),  # ... and skips blanks
    (b"\\x0xq", b"\x00q"),  # ... and eats a 0x prefix
    (b"\\400", b"\x00"),  # octal wraps to 8 bits
    (b"\\777", b"\xff"),
    (b"\\8\\q", b"8q"),  # unknown escapes give the character
    (b"\\0015", b"\x015"),  # at most three octal digits
])
def test_unsanitise_quirks(spec: bytes, value: bytes) -> None:
    assert unsanitise_value(spec) == value


def _libc() -> ctypes.CDLL:
    name = ctypes.util.find_library("c")
    if name is None:
        pytest.skip("no C library to compare with")
    return ctypes.CDLL(name)


_SCAN_ALPHABET = st.sampled_from(list(b" \t0123456789abcdefABCDEFxX+-gz8\n"))


@settings(max_examples=400, deadline=None)
@given(st.lists(_SCAN_ALPHABET, max_size=6).map(bytes))
def test_scan_matches_glibc_sscanf(text: bytes) -> None:
    libc = _libc()
    for fmt, width, base in ((b"%2x%n", 2, 16), (b"%3o%n", 3, 8)):
        value, used = ctypes.c_uint(0), ctypes.c_int(0)
        got = libc.sscanf(text, fmt, ctypes.byref(value), ctypes.byref(used))
        expect = (value.value, used.value) if got == 1 else None
        assert _scan_uint(text, 0, width, base) == expect, (text, fmt)


@settings(max_examples=400, deadline=None)
@given(st.lists(_SCAN_ALPHABET, max_size=8).map(bytes), st.sampled_from([0, 10]))
def test_strtol_matches_glibc(text: bytes, base: int) -> None:
    libc = _libc()
    libc.strtol.restype = ctypes.c_long
    buf = ctypes.create_string_buffer(text)
    end = ctypes.c_void_p()
    value = libc.strtol(buf, ctypes.byref(end), base)
    assert c_strtol(text, base) == (value, end.value - ctypes.addressof(buf))


def test_atoi_wraps_like_c_int() -> None:
    assert atoi(b"12abc") == 12
    assert atoi(b"  -3") == -3
    assert atoi(b"abc") == 0
    assert atoi(b"4294967295") == -1
    assert atoi(b"99999999999999999999") == -1  # LONG_MAX, then the low 32 bits


@pytest.mark.parametrize("raw, shown", [
    ([b"b0", b"r5"], [b"b0", b"r5"]),
    ([b"r010"], [b"r8"]),  # strtol base 0
    ([b"w0x10"], [b"w16"]),
    ([b"n-1"], [b"n-1"]),
    ([b"r4294967295"], [b"r-1"]),  # printed with %i
    ([b"x1"], None), ([b"r"], None), ([b"r1a"], None), ([b""], None),
])
def test_perm_strings(raw: list[bytes], shown: list[bytes] | None) -> None:
    assert perm_strings(raw) == shown


# -- xenstore-ls lines ----------------------------------------------------
def test_ls_default_line_and_indent() -> None:
    layout = LsLayout()
    assert ls_line(layout, 0, b"foo", b"/foo", b"bar", None) == b'foo = "bar"\n'
    assert ls_line(layout, 3, b"foo", b"/a/b/c/foo", b"", None) == b'   foo = ""\n'


def test_ls_perms_pad_to_column_60() -> None:
    line = ls_line(LsLayout(show_perms=True), 0, b"foo", b"/foo", b"bar baz", [b"b0", b"r5"])
    assert line == b'foo = "bar baz"  . . . . . . . . . . . . . . . . . . . . . .  (b0,r5)\n'
    assert line.index(b"  (b0") == 60
    # the pattern is by column parity: odd columns get the dots
    even = ls_line(LsLayout(show_perms=True), 1, b"x", b"/a/x", b"", [b"n0"])
    assert even == b' x = ""  ' + b". " * 25 + b".  (n0)\n"
    odd = ls_line(LsLayout(show_perms=True), 0, b"t", b"/t", b"", [b"n0"])
    assert odd == b't = "" ' + b". " * 26 + b".  (n0)\n"
    assert even.index(b"  (") == odd.index(b"  (") == 60


def test_ls_full_path_with_perms_has_no_dots() -> None:
    layout = LsLayout(0x7FFFFFFF // 2, 0, True, True)
    line = ls_line(layout, 2, b"foo", b"/tool/foo", b"bar baz", [b"n0"])
    assert line == b'/tool/foo = "bar baz"   (n0)\n'


def test_ls_cuts_long_values_at_80_columns() -> None:
    line = ls_line(LsLayout(), 0, b"long", b"/long", b"v" * 120, None)
    assert line == b'long = "' + b"v" * 68 + b'\\..."\n'
    # -p after a cut value: no dots, the perms follow at once
    line = ls_line(LsLayout(show_perms=True), 0, b"long", b"/long", b"v" * 120, [b"n0"])
    assert line.endswith(b'\\..."  (n0)\n')


def test_ls_cut_uses_raw_length_not_escaped_length() -> None:
    # 30 raw bytes fit in 80 columns even though they print as 120 characters
    line = ls_line(LsLayout(), 0, b"c", b"/c", b"\x01" * 30, None)
    assert line == b'c = "' + b"\\001" * 30 + b'"\n'
    cut = ls_line(LsLayout(), 0, b"c", b"/c", b"\x01" * 80, None)
    assert cut == b'c = "' + (b"\\001" * 30)[:71] + b'\\..."\n'


def test_ls_cuts_long_names_and_deep_indents() -> None:
    line = ls_line(LsLayout(), 1, b"n" * 90, b"/t/nnn", b"x", None)
    assert line == b" " + b"n" * 71 + b' = "\\..."\n'
    # deeper than the width: a negative %.*s precision prints everything
    deep = ls_line(LsLayout(), 75, b"leaf", b"/p", b"v", None)
    assert deep == b" " * 75 + b'leaf = "v\\..."\n'


def test_ls_unreadable_node() -> None:
    # C prints ":\n" and then the line's own newline: an empty line follows
    assert ls_line(LsLayout(), 0, b"secret", b"/secret", None, None) == b"secret:\n\n"
    with_perms = ls_line(LsLayout(show_perms=True), 0, b"s", b"/s", None, [b"n0"])
    assert with_perms == b"s:\n  (n0)\n"


def test_ls_terminal_with_no_columns_never_cuts() -> None:
    line = ls_line(LsLayout(max_width=-2, show_perms=True), 0, b"k", b"/k", b"v" * 100, [b"n0"])
    assert line == b'k = "' + b"v" * 100 + b'"   (n0)\n'


# -- GNU getopt_long ------------------------------------------------------
def _getopt(*args: bytes, posix: bool = False) -> tuple[list, list, list]:
    warnings: list[bytes] = []
    positional: list[bytes] = []
    opts = list(gnu_getopt(list(args), b"prog", warnings.append, positional))
    return opts, positional, warnings


def test_getopt_permutes_and_clusters() -> None:
    opts, pos, warns = _getopt(b"/a", b"-pR", b"/b", b"-n", b"5", b"-n7", b"-", b"--", b"-f")
    assert opts == [("p", None), ("R", None), ("n", b"5"), ("n", b"7")]
    assert pos == [b"/a", b"/b", b"-", b"-f"]
    assert warns == []


def test_getopt_posixly_correct_stops_at_first_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSIXLY_CORRECT", "1")
    opts, pos, _ = _getopt(b"-p", b"/a", b"-x")
    assert opts == [("p", None)] and pos == [b"/a", b"-x"]


def test_getopt_long_options_and_abbreviations() -> None:
    opts, pos, warns = _getopt(b"--pre", b"--number=3", b"--num", b"4", b"--raw", b"k")
    assert opts == [("p", None), ("n", b"3"), ("n", b"4"), ("R", None)]
    assert pos == [b"k"] and warns == []


@pytest.mark.parametrize("args, warning", [
    ([b"-x"], b"prog: invalid option -- 'x'"),
    ([b"-:"], b"prog: invalid option -- ':'"),
    ([b"-n"], b"prog: option requires an argument -- 'n'"),
    ([b"--r"], b"prog: option '--r' is ambiguous; possibilities: '--recurse' '--raw'"),
    ([b"--foo=bar"], b"prog: unrecognized option '--foo=bar'"),
    ([b"--pre=3"], b"prog: option '--prefix' doesn't allow an argument"),
    ([b"--number"], b"prog: option '--number' requires an argument"),
])
def test_getopt_warnings(args: list[bytes], warning: bytes) -> None:
    opts, _, warns = _getopt(*args)
    assert opts == [("?", None)] and warns == [warning]


# -- whole invocations that never reach the daemon -----------------------------
def _run(*argv: bytes) -> tuple[int, bytes, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    code = cli.run(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("argv, message", [
    ([b"/usr/bin/xenstore-read", b"-h"],
     b"xenstore-read: Usage: /usr/bin/xenstore-read [-h] [-p] [-s] [-R] key [...]\n"),
    ([b"xenstore", b"ls", b"-h"], b"xenstore: Usage: xenstore ls [-h] [-f] [-p] [-s] [path]\n"),
    ([b"xenstore-exists"], b"xenstore-exists: Usage: xenstore-exists [-h] [-p] [-s] key [...]\n"),
    ([b"xenstore-write", b"k"],
     b"xenstore-write: Usage: xenstore-write [-h] [-s] [-R] key value [...]\n"),
    ([b"xenstore-rm", b"-p", b"/k"], b"xenstore-rm: Usage: xenstore-rm [-h] [-s] [-t] key [...]\n"),
    ([b"xenstore"], b"xenstore: Usage: xenstore <mode> [-h] [...]\n"),
    ([b"xenstore", b"frob"], b"xenstore: unknown mode frob\n\n"),
    ([b"/bin/xenstore-frob"], b"xenstore-frob: unknown mode frob\n\n"),
    ([b"xenstore", b"read", b"-x"],
     b"read: invalid option -- 'x'\nxenstore: Usage: xenstore read [-h] [-p] [-s] [-R] key [...]\n"),
])
def test_usage_errors(argv: list[bytes], message: bytes) -> None:
    assert _run(*argv) == (1, b"", message)


def test_no_daemon_reports_xs_open(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("XENSTORED_PATH", str(tmp_path / "none"))
    assert _run(b"xenstore-ls") == (1, b"", b"xenstore-ls: xs_open: No such file or directory\n")


def test_module_argv_selects_the_tool() -> None:
    assert cli._module_argv(["cli.py", "ls", "-f"]) == ["xenstore", "ls", "-f"]
    assert cli._module_argv(["cli.py", "/usr/bin/xenstore-ls", "/"]) == ["/usr/bin/xenstore-ls", "/"]
