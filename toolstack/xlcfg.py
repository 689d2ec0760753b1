"""The xl.cfg file syntax (``xl.cfg(5)``), parsed as libxlutil parses it.

Follows ``tools/libs/util/libxlu_cfg_l.l`` / ``libxlu_cfg_y.y`` /
``libxlu_cfg.c``: a file is ``KEY = VALUE`` (or ``KEY += VALUE``) settings
ended by a newline or ``;``; a value is a ``"string"`` or ``'string'``
(C escapes, no line breaks), a NUMBER (kept as text: decimal, ``0``-octal or
``0x``-hex, read with ``strtol(.., 0)`` semantics when asked for), or a
``[ list, ... ]`` of values (nestable, may span lines, a trailing comma is
fine). ``#`` starts a comment. The syntax looks like Python but is not:
nothing is evaluated. A later setting of a key replaces an earlier one;
``+=`` appends to a list.

Errors are reported the way libxlutil reports them,
``<file>:<line>: config parsing error near `<token>': <reason>``, and the
parser goes on to the next line so that one run shows every bad line.

Bounds libxlutil does not have, so that no input costs a traceback or
minutes: a file of more than :data:`MAX_CONFIG_BYTES` is refused before it
is read (xl reads any size with ``libxl_read_file_contents``; a 40 MB file
took 92 s here), and lists nest at most :data:`MAX_NESTING` deep (bison's
parser stack, ``YYMAXDEPTH``, is libxlutil's only bound). Numbers follow
``xlu_cfg_get_long``: outside a C ``long`` they are ``ERANGE``.

Pure: no I/O beyond the string given (:func:`parse_file` reads the file).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from toolstack.xlcfg_lex import Token, dequote, tokenize

#: configs are a few hundred bytes; 1 MiB leaves room for any real one
MAX_CONFIG_BYTES = 1 << 20
#: real configs nest lists two deep (vnuma); the parser recurses per level
MAX_NESTING = 64
#: ``strtol``'s range on LP64 (``LONG_MIN``, ``LONG_MAX``)
LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1

PYTHON_HINT = ("warning: Config file looks like it contains Python code.\n"
               "warning:  Arbitrary Python is no longer supported.\n"
               "warning:  See https://wiki.xen.org/wiki/PythonInXlConfig")


class ConfigError(Exception):
    """One bad line: ``<source>:<line>: <reason>``."""

    def __init__(self, source: str, line: int | None, reason: str) -> None:
        super().__init__(reason)
        self.source = source
        self.line = line
        self.reason = reason

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.reason}"


class ConfigErrors(Exception):
    """Every error found in one file (at least one)."""

    def __init__(self, errors: list[ConfigError], hint: str | None = None) -> None:
        super().__init__("\n".join(map(str, errors)))
        self.errors = errors
        self.hint = hint

    def __str__(self) -> str:
        text = "\n".join(map(str, self.errors))
        return f"{text}\n{self.hint}" if self.hint else text


@dataclass(frozen=True, slots=True)
class Value:
    """``kind`` is "string", "number" or "list"; scalars keep their text."""

    kind: str
    text: str = ""
    items: tuple["Value", ...] = ()
    line: int = 0

    def to_python(self) -> object:
        if self.kind == "list":
            return [v.to_python() for v in self.items]
        return self.text


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    value: Value
    line: int
    source: str


# -- parser ------------------------------------------------------------------

class _Syntax(Exception):
    def __init__(self, tok: Token, reason: str) -> None:
        super().__init__(reason)
        self.tok = tok
        self.reason = reason


_KIND_NAMES = {"ident": "IDENT", "number": "NUMBER", "string": "STRING",
               "newline": "NEWLINE", "eof": "end of file"}


def _kind(tok: Token) -> str:
    return _KIND_NAMES.get(tok.kind, f"'{tok.text}'")


def _describe(tok: Token) -> str:
    if tok.kind == "newline":
        return "<newline>"
    if tok.kind == "eof":
        return "end of file"
    return f"`{tok.text}'"


@dataclass
class _Parser:
    source: str
    tokens: list[Token]
    pos: int = 0
    errors: list[ConfigError] = field(default_factory=list)
    settings: list[tuple[Setting, str]] = field(default_factory=list)
    likely_python: bool = False

    def peek(self) -> Token:
        return self.tokens[self.pos]

    def take(self) -> Token:
        tok = self.tokens[self.pos]
        if tok.kind != "eof":
            self.pos += 1
        return tok

    def expect(self, what: str, kinds: tuple[str, ...], texts: tuple[str, ...] = ()) -> Token:
        tok = self.take()
        if tok.kind in ("error", "python"):
            self.likely_python |= tok.kind == "python"
            unterminated = tok.kind == "error" and tok.text[:1] in ("'", '"')
            raise _Syntax(tok, "unterminated quoted string" if unterminated else "lexical error")
        if tok.kind not in kinds or (texts and tok.text not in texts):
            raise _Syntax(tok, f"syntax error, unexpected {_kind(tok)}, expecting {what}")
        return tok

    def skip_newlines(self) -> None:
        while self.peek().kind == "newline":
            self.take()

    def value(self, depth: int = 0) -> Value:
        tok = self.expect("a value", ("string", "number", "op"))
        if tok.kind == "string":
            try:
                return Value("string", dequote(tok.text), line=tok.line)
            except ValueError as e:
                raise _Syntax(tok, str(e)) from None
        if tok.kind == "number":
            return Value("number", tok.text, line=tok.line)
        if tok.text != "[":
            raise _Syntax(tok, f"syntax error, unexpected {_kind(tok)}, expecting a value")
        if depth >= MAX_NESTING:
            raise _Syntax(tok, f"lists nested more than {MAX_NESTING} deep")
        return self.list_rest(tok, depth + 1)

    def list_rest(self, opening: Token, depth: int) -> Value:
        items: list[Value] = []
        self.skip_newlines()
        while True:
            if self.peek().kind == "op" and self.peek().text == "]":
                self.take()
                return Value("list", items=tuple(items), line=opening.line)
            items.append(self.value(depth))
            self.skip_newlines()
            sep = self.expect("',' or ']'", ("op",), (",", "]"))
            if sep.text == "]":
                return Value("list", items=tuple(items), line=opening.line)
            self.skip_newlines()

    def statement(self) -> None:
        first = self.peek()
        if first.kind == "newline" or (first.kind == "op" and first.text == ";"):
            self.take()
            return
        tok = self.expect("a setting name", ("ident",))
        op = self.expect("'=' or '+='", ("op",), ("=", "+="))
        val = self.value()
        if self.peek().kind != "eof":
            self.expect("';' or a newline", ("newline", "op"), ("\n", ";"))
        self.settings.append((Setting(tok.text, val, tok.line, self.source), op.text))

    def recover(self) -> None:
        """Bison's ``error NEWLINE``: drop tokens up to the end of the line."""
        while self.peek().kind not in ("newline", "eof"):
            self.take()
        self.take()

    def run(self) -> None:
        while self.peek().kind != "eof":
            try:
                self.statement()
            except _Syntax as e:
                self.errors.append(ConfigError(
                    self.source, e.tok.line,
                    f"config parsing error near {_describe(e.tok)}: {e.reason}"))
                if e.tok.kind != "newline":
                    self.recover()


# -- the parsed file ---------------------------------------------------------

class Config:
    """Settings by name (last one wins; ``+=`` appends to lists)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.settings: dict[str, Setting] = {}

    def set(self, setting: Setting, op: str = "=") -> None:
        prev = self.settings.get(setting.name)
        if op == "+=" and prev is not None:
            a, b = prev.value, setting.value
            if a.kind != "list" or b.kind != "list":
                raise ConfigError(setting.source, setting.line,
                                  f"{setting.name}: += needs a list on both sides")
            merged = Value("list", items=a.items + b.items, line=a.line)  # see parse()
            setting = Setting(setting.name, merged, setting.line, setting.source)
        self.settings[setting.name] = setting

    def update(self, other: "Config") -> None:
        """Apply ``other``'s settings over ours (command-line overrides)."""
        for s in other.settings.values():
            self.settings[s.name] = s

    def __contains__(self, name: str) -> bool:
        return name in self.settings

    def error(self, name: str, reason: str) -> ConfigError:
        s = self.settings.get(name)
        if s is None:
            return ConfigError(self.source, None, reason)
        return ConfigError(s.source, s.line, reason)

    def get_string(self, name: str, default: str | None = None) -> str | None:
        s = self.settings.get(name)
        if s is None:
            return default
        if s.value.kind == "list":
            raise self.error(name, f"{name}: expected a string, got a list")
        return s.value.text

    def get_long(self, name: str, default: int | None = None) -> int | None:
        """``xlu_cfg_get_long``: a number or a string holding one (strtol base 0)."""
        text = self.get_string(name)
        if text is None:
            return default
        value = parse_c_long(text)
        if value is None:
            raise self.error(name, f"{name}: invalid number {text!r}")
        if not LONG_MIN <= value <= LONG_MAX:
            shown = text.strip()
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise self.error(name, f"{name}: {shown} could not be parsed as a number: "
                                   "Numerical result out of range")
        return value

    def get_bool(self, name: str, default: bool = False) -> bool:
        value = self.get_long(name)
        return default if value is None else value != 0

    def get_list(self, name: str) -> list[object] | None:
        s = self.settings.get(name)
        if s is None:
            return None
        if s.value.kind != "list":
            raise self.error(name, f"{name}: expected a list")
        return s.value.to_python()  # type: ignore[return-value]

    def as_dict(self) -> dict[str, object]:
        return {k: s.value.to_python() for k, s in self.settings.items()}


def parse_c_long(text: str) -> int | None:
    """``strtol(text, &end, 0)`` that must consume everything (leading blanks ok)."""
    t = text.strip()
    m = re.fullmatch(r"([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", t)
    if m is None:
        return None
    sign, digits = m.groups()
    if len(digits.lstrip("0xX")) > 24:
        # beyond a long whatever the base; int() of a long decimal string
        # would itself fail (sys.int_info.default_max_str_digits)
        value = 1 << 64
    elif digits[:2].lower() == "0x":
        value = int(digits, 16)
    elif digits.startswith("0"):
        value = int(digits, 8)
    else:
        value = int(digits)
    return -value if sign == "-" else value


def parse(text: str, source: str = "<string>") -> Config:
    """Parse xl.cfg text; raises :class:`ConfigErrors` listing every bad line."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigErrors([too_large(source, len(text))])
    parser = _Parser(source, list(tokenize(text)))
    parser.run()
    cfg = Config(source)
    for setting in _merge_additions(parser.settings, parser.errors):
        cfg.set(setting)
    if parser.errors:
        hint = PYTHON_HINT if parser.likely_python else None
        parser.errors.sort(key=lambda e: e.line or 0)
        raise ConfigErrors(parser.errors, hint)
    return cfg


def _merge_additions(settings: list[tuple[Setting, str]],
                     errors: list[ConfigError]) -> list[Setting]:
    """Apply ``+=`` as :meth:`Config.set` does, in linear time: each key's list
    grows in place (tuple concatenation per ``+=`` line took 135 s for a
    1 MiB file of them)."""
    merged: dict[str, tuple[Setting, list[Value] | None]] = {}
    for setting, op in settings:
        prev = merged.get(setting.name)
        if op == "+=" and prev is not None:
            base, items = prev
            if items is None or setting.value.kind != "list":
                errors.append(ConfigError(setting.source, setting.line,
                                          f"{setting.name}: += needs a list on both sides"))
                continue
            items.extend(setting.value.items)
            merged[setting.name] = (Setting(setting.name, base.value, setting.line,
                                            setting.source), items)
        else:
            items = list(setting.value.items) if setting.value.kind == "list" else None
            merged[setting.name] = (setting, items)
    out = []
    for setting, items in merged.values():
        if items is not None and len(items) != len(setting.value.items):
            value = Value("list", items=tuple(items), line=setting.value.line)
            setting = Setting(setting.name, value, setting.line, setting.source)
        out.append(setting)
    return out


def too_large(source: str, size: int) -> ConfigError:
    return ConfigError(source, None, f"config file of {size} bytes refused: the limit is "
                                     f"{MAX_CONFIG_BYTES} bytes")


def parse_file(path: str) -> Config:
    with open(path, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)  # a device or a growing file: never more
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigErrors([too_large(path, max(len(data), os.fstat(f.fileno()).st_size))])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:  # every value is written to XenStore as UTF-8
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigErrors([ConfigError(path, line, f"byte {data[e.start]:#04x} is not "
                                                    "valid UTF-8")]) from None
    return parse(text, path)


def parse_overrides(args: list[str], source: str = "<command line>") -> Config:
    """``key=value`` arguments of ``xl create`` (each may hold ``;``-joined settings)."""
    cfg = Config(source)
    errors: list[ConfigError] = []
    for index, arg in enumerate(args, 1):
        try:
            arg.encode("utf-8")  # argv bytes that are not UTF-8 come as surrogates
        except UnicodeEncodeError:
            errors.append(ConfigError(source, index, f"{arg!r}: not valid UTF-8"))
            continue
        try:
            one = parse(arg, source)
        except ConfigErrors as e:
            errors.extend(ConfigError(source, index, f"{arg!r}: {err.reason}")
                          for err in e.errors)
            continue
        for s in one.settings.values():
            cfg.set(Setting(s.name, s.value, index, source))
    if errors:
        raise ConfigErrors(errors)
    return cfg
