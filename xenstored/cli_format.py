"""Pure helpers of the ``xenstore-*`` tools (:mod:`xenstored.cli`).

Owns everything the tools compute without a daemon, each matching Xen
4.17's C code byte for byte:

* value escaping: ``sanitise_value`` / ``unsanitise_value`` of
  ``tools/xenstore/xs_lib.c`` (including glibc ``sscanf`` quirks);
* C number parsing: ``strtol``/``atoi`` as the tools use them for domids;
* permission strings as ``xs_strings_to_perms`` + ``xs_perm_to_string``
  re-print them;
* ``xenstore-ls`` line layout (``do_ls``: indent, 80-column cut,
  ``. . .`` padding to column 60);
* GNU ``getopt_long`` for ``"hfspturn:R"`` with its exact warnings.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

_OPTSTRING = "hfspturn:R"
_LONGOPTS = (("help", False, "h"), ("flat", False, "f"), ("prefix", False, "p"),
             ("tidy", False, "t"), ("upto", False, "u"), ("recurse", False, "r"),
             ("number", True, "n"), ("raw", False, "R"))
TAG_LEN = len(b' = "..."')  # the room xenstore-ls keeps for ` = "` … `\\..."`

# -- value escaping (xs_lib.c sanitise_value / unsanitise_value) ------------
_SANITISE = [bytes([c]) if 0x20 <= c <= 0x7E and c != 0x5C
             else b"\\%03o" % c if c < 8 else b"\\x%02x" % c for c in range(256)]
for _c, _esc in ((9, b"\\t"), (10, b"\\n"), (13, b"\\r"), (0x5C, b"\\\\")):
    _SANITISE[_c] = _esc
_UNESCAPE = {ord("t"): 9, ord("n"): 10, ord("r"): 13, ord("\\"): 0x5C}
_CSPACE = b" \t\n\v\f\r"  # isspace() in the C locale
_HEX = b"0123456789abcdefABCDEF"


def sanitise_value(value: bytes) -> bytes:
    """Printable form of a value: ``\\t \\n \\r \\\\``, ``\\NNN`` below 8, ``\\xNN``."""
    return b"".join([_SANITISE[c] for c in value])


def _scan_uint(s: bytes, i: int, width: int, base: int) -> tuple[int, int] | None:
    """glibc ``sscanf(s+i, "%<width>x|o%n")``: (value, chars used) or None."""
    j = i
    while j < len(s) and s[j] in _CSPACE:  # skipped blanks don't count in width
        j += 1
    neg = False
    if width and j < len(s) and s[j] in b"+-":
        neg, j, width = s[j] == 0x2D, j + 1, width - 1
    digits = bytearray()
    if width and j < len(s) and s[j] == 0x30:
        digits.append(0x30)
        j, width = j + 1, width - 1
        if base == 16 and width and j < len(s) and s[j] in b"xX":
            j, width = j + 1, width - 1
    valid = _HEX if base == 16 else _HEX[:8]
    while width and j < len(s) and s[j] in valid:
        digits.append(s[j])
        j, width = j + 1, width - 1
    if not digits:
        return None
    value = int(digits, base)
    return (-value if neg else value) & 0xFFFFFFFF, j - i


def unsanitise_value(spec: bytes) -> bytes:
    """Undo :func:`sanitise_value` on a command-line value, as xenstore-write does.

    Quirks kept from C: an unknown escape gives the character itself, a
    ``\\x`` without hex digits gives ``x``, a trailing backslash gives a nul.
    """
    spec = spec.split(b"\0", 1)[0]  # a C string ends at its first nul
    out = bytearray()
    i = 0
    while i < len(spec):
        c = spec[i]
        i += 1
        if c == 0x5C:
            if i == len(spec):
                out.append(0)
                break
            c = spec[i]
            i += 1
            if c in _UNESCAPE:
                c = _UNESCAPE[c]
            elif c == ord("x") or 0x30 <= c <= 0x37:
                octal = c != ord("x")
                i -= octal
                got = _scan_uint(spec, i, 3 if octal else 2, 8 if octal else 16)
                if got is not None:
                    c, used = got
                    i += used
        out.append(c & 0xFF)
    return bytes(out)


# -- C number parsing ---------------------------------------------------
def c_strtol(s: bytes, base: int) -> tuple[int, int]:
    """glibc ``strtol`` for base 0 or 10: (value clamped to long, end index)."""
    j = 0
    while j < len(s) and s[j] in _CSPACE:
        j += 1
    neg = j < len(s) and s[j] == 0x2D
    j += j < len(s) and s[j] in b"+-"
    if base == 0:
        base = 10
        if s[j:j + 1] == b"0":
            base = 8
            if s[j + 1:j + 2] in (b"x", b"X") and len(s) > j + 2 and s[j + 2] in _HEX:
                base, j = 16, j + 2
    valid = _HEX if base == 16 else _HEX[:base]
    start = j
    while j < len(s) and s[j] in valid:
        j += 1
    if j == start:
        return 0, 0
    value = -int(s[start:j], base) if neg else int(s[start:j], base)
    return max(-(1 << 63), min((1 << 63) - 1, value)), j


def c_int(value: int) -> int:
    """The low 32 bits as a C ``int``."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def atoi(s: bytes) -> int:
    return c_int(c_strtol(s, 10)[0])


def perm_strings(raw: list[bytes]) -> list[bytes] | None:
    """``xs_strings_to_perms`` then ``xs_perm_to_string``; None where C fails (EINVAL)."""
    out = []
    for item in raw:
        if not item or item[:1] not in b"rwbn":
            return None
        value, end = c_strtol(item[1:], 0)
        if len(item) == 1 or end != len(item) - 1:
            return None
        out.append(item[:1] + b"%d" % c_int(value))
    return out


# -- xenstore-ls formatting (do_ls) -------------------------------------
@dataclass
class LsLayout:
    """How do_ls lays out a line; -f gives whole paths and INT_MAX/2 width."""

    max_width: int = 80
    desired_width: int = 60
    whole_path: bool = False
    show_perms: bool = False


def _cut(text: bytes, precision: int) -> bytes:
    """printf's ``%.*s``: a negative precision means no limit."""
    return text if precision < 0 else text[:precision]


def ls_value_part(layout: LsLayout, linewid: int, value: bytes) -> bytes:
    """`` = "value"`` (cut with ``\\...`` past the width) and -p's dot padding."""
    san = sanitise_value(value)
    # C compares in unsigned arithmetic, on the *raw* length: a negative
    # width (a tty reporting 0 columns) never cuts.
    if 0 <= layout.max_width < linewid + len(value) + TAG_LEN:
        return b' = "' + _cut(san, layout.max_width - TAG_LEN - linewid) + b'\\..."'
    part = b' = "' + san + b'"'
    if not layout.show_perms:
        return part
    linewid += len(part) + 1
    pad = bytearray(b" ")
    while linewid < min(layout.desired_width, layout.max_width):
        pad += b"." if linewid & 1 else b" "
        linewid += 1
    return part + pad


def ls_line(layout: LsLayout, depth: int, name: bytes, fullpath: bytes,
            value: bytes | None, perms: list[bytes] | None) -> bytes:
    """One node's stdout bytes; ``value`` None means unreadable (``name:``)."""
    if layout.whole_path:
        out, linewid = fullpath, 0
    else:
        shown = _cut(name, layout.max_width - TAG_LEN - depth)
        out, linewid = b" " * depth + shown, depth + len(shown)
    out += b":\n" if value is None else ls_value_part(layout, linewid, value)
    if layout.show_perms and perms is not None:
        out += b"  (" + b",".join(perms) + b")"
    return out + b"\n"


# -- GNU getopt_long ----------------------------------------------------
def _long_option(body: bytes, args: list[bytes], i: int, name: bytes,
                 warn: Callable[[bytes], None]) -> tuple[str, bytes | None, int]:
    key, eq, value = body.partition(b"=")
    found = [o for o in _LONGOPTS if o[0].encode() == key]
    found = found or [o for o in _LONGOPTS if o[0].encode().startswith(key)]
    if len(found) > 1:
        alts = b"".join(b" '--%s'" % o[0].encode() for o in found)
        warn(b"%s: option '--%s' is ambiguous; possibilities:%s" % (name, body, alts))
        return "?", None, i
    if not found:
        warn(b"%s: unrecognized option '--%s'" % (name, body))
        return "?", None, i
    lname, has_arg, letter = found[0]
    if eq and not has_arg:
        warn(b"%s: option '--%s' doesn't allow an argument" % (name, lname.encode()))
        return "?", None, i
    if eq or not has_arg:
        return letter, (value if eq else None), i
    if i < len(args):
        return letter, args[i], i + 1
    warn(b"%s: option '--%s' requires an argument" % (name, lname.encode()))
    return "?", None, i


def gnu_getopt(args: list[bytes], name: bytes, warn: Callable[[bytes], None],
               positional: list[bytes]) -> Iterator[tuple[str, bytes | None]]:
    """Yield ``(letter, optarg)`` like ``getopt_long(…, "hfspturn:R", …)``.

    Non-options go to ``positional`` (GNU permutes them after the options
    unless ``POSIXLY_CORRECT`` is set); errors are warned and yield ``"?"``.
    Lazy, so that a ``-h`` stops the warnings after it, as in C.
    """
    i = 0
    while i < len(args):
        arg, i = args[i], i + 1
        if arg == b"--":
            positional.extend(args[i:])
            return
        if arg[:1] != b"-" or arg == b"-":
            positional.append(arg)
            if "POSIXLY_CORRECT" in os.environ:
                positional.extend(args[i:])
                return
            continue
        if arg[:2] == b"--":
            letter, optarg, i = _long_option(arg[2:], args, i, name, warn)
            yield letter, optarg
            continue
        for j in range(1, len(arg)):
            ch = chr(arg[j])
            pos = _OPTSTRING.find(ch) if ch != ":" else -1
            if pos < 0:
                warn(b"%s: invalid option -- '%c'" % (name, arg[j]))
                yield "?", None
            elif _OPTSTRING[pos + 1:pos + 2] != ":":
                yield ch, None
                continue
            elif j + 1 < len(arg):
                yield ch, arg[j + 1:]
            elif i < len(args):
                i += 1
                yield ch, args[i - 1]
            else:
                warn(b"%s: option requires an argument -- '%c'" % (name, arg[j]))
                yield "?", None
            if pos >= 0:
                break
