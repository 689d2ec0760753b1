"""The xl.cfg lexer, as ``tools/libs/util/libxlu_cfg_l.l`` tokenizes.

Tokens: identifiers, NUMBERs (kept as text), ``"..."``/``'...'`` strings
with C escapes (:func:`dequote`, as ``xlu__cfgl_dequote``), the operators
``= += ; , [ ]``, newlines, comments (dropped) and, so that the parser can
say "looks like Python", the characters Python would need. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_TOKEN = re.compile(r"""
    (?P<ws>[ \t\r]+)
  | (?P<comment>\#[^\n]*)
  | (?P<newline>\n)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<number>[0-9][0-9A-Fa-fxX]*)
  | (?P<string>"(?:[^"\\\n]|\\[^\n])*"|'(?:[^'\\\n]|\\[^\n])*')
  | (?P<op>\+=|[=;,\[\]])
  | (?P<python>[-+.():{}])
""", re.VERBOSE)

_SIMPLE_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "a": "\a", "b": "\b", "f": "\f",
                   "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # ident number string op newline error eof
    text: str
    line: int


def dequote(raw: str) -> str:
    """``xlu__cfgl_dequote``: strip the quotes, expand C escapes.

    Raises ValueError with libxlutil's message for a bad escape.
    """
    body, out, i = raw[1:-1], [], 0
    while i < len(body):
        c = body[i]
        i += 1
        if c != "\\":
            out.append(c)
            continue
        nc = body[i]
        i += 1
        if nc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[nc])
        elif nc == "x":
            m = re.match(r"[0-9A-Fa-f]{2}", body[i:i + 2])
            if not m:
                raise ValueError("invalid digit after backslash hex numerical "
                                 "character escape in quoted string")
            out.append(chr(int(m.group(), 16)))
            i += 2
        elif nc in "01234567":
            m = re.match(r"[0-9]{0,2}", body[i:i + 2])
            digits = nc + (m.group() if m else "")
            out.append(chr(int(digits, 10) & 0xFF))  # sic: libxlu reads base 10
            i += len(digits) - 1
        else:
            raise ValueError("invalid character after backlash in quoted string")
    return "".join(out)


def tokenize(text: str) -> Iterator[Token]:
    line, pos = 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # any other character: a lexical error up to the line end
            end = text.find("\n", pos)
            end = len(text) if end < 0 else end
            yield Token("error", text[pos:end], line)
            pos = end
            continue
        kind, tok = m.lastgroup, m.group()
        pos = m.end()
        if kind == "newline":
            yield Token("newline", tok, line)
            line += 1
        elif kind == "python":
            yield Token("python", tok, line)
        elif kind not in ("ws", "comment"):
            yield Token(kind or "error", tok, line)
    yield Token("eof", "", line)
