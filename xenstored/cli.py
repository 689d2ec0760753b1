"""The ``xenstore-*`` command-line tools, byte-compatible with Xen 4.17's.

One multi-call entry point, :func:`main`, behaves as Xen's
``tools/xenstore/xenstore_client.c`` (4.17; ``tools/xs-clients/`` later):
the mode comes from ``basename(argv[0])`` (``xenstore-ls`` …) or from the
first argument (``xenstore ls …``). Options are parsed as GNU
``getopt_long`` does (permutation, abbreviations and its warnings), and
options, output, error messages and exit codes match Debian's C tools byte
for byte. ``python -m xenstored.cli MODE …`` runs ``xenstore MODE …``;
``python -m xenstored.cli [/path/]xenstore-MODE …`` runs that tool name.

The pure parts (escaping, C number parsing, ``xenstore-ls`` lines, GNU
getopt) live in :mod:`xenstored.cli_format`; this module holds the modes,
which talk through the blocking :class:`~libxen.xenstore.sync.XsSyncClient`
(no trio import, so the tools start fast).
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import BinaryIO, NoReturn

from xenstored.cli_format import (
    LsLayout, atoi, gnu_getopt, ls_line, perm_strings, sanitise_value, unsanitise_value)
from libxen.xenstore.sync import XsSyncClient

MODES = ("chmod", "exists", "list", "ls", "read", "rm", "write", "watch")
_USAGE = {
    "read": b"[-h] [-p] [-s] [-R] key [...]",
    "write": b"[-h] [-s] [-R] key value [...]",
    "rm": b"[-h] [-s] [-t] key [...]",
    "exists": b"[-h] [-p] [-s] key [...]",
    "list": b"[-h] [-p] [-s] key [...]",
    "ls": b"[-h] [-f] [-p] [-s] [path]",
    "chmod": b"[-h] [-u] [-r] [-s] key <mode [modes...]>",
    "watch": b"[-h] [-n NR] key",
}
INT_MAX = 0x7FFFFFFF
STRING_MAX = 3072 + 1024  # XENSTORE_ABS_PATH_MAX + 1024: do_ls's path buffer
MAX_PATH_LEN = 256  # do_chmod's child path buffer (silently truncates)
STDIO_BUFSIZ = 65536  # flush ls output in chunks, as stdio would


# -- the tool -----------------------------------------------------------
class _Exit(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class Tool:
    """One run: names for messages, options, and the two stdout buffers."""

    argv0: bytes
    mode: str = ""
    incl_mode: bool = False
    stdout: BinaryIO = field(default_factory=lambda: sys.stdout.buffer)
    stderr: BinaryIO = field(default_factory=lambda: sys.stderr.buffer)
    printed: bytearray = field(default_factory=bytearray)  # stdio's buffer
    output: bytearray = field(default_factory=bytearray)  # output(): kept until the end
    opts: dict[str, int] = field(default_factory=dict)  # letter -> 1, or -n's number
    layout: LsLayout = field(default_factory=LsLayout)

    @property
    def prog(self) -> bytes:  # program_invocation_short_name, as err() prints
        return self.argv0.rsplit(b"/", 1)[-1]

    def warn_raw(self, text: bytes) -> None:
        self.stderr.write(text + b"\n")
        self.stderr.flush()

    def warnx(self, msg: bytes) -> None:
        self.warn_raw(self.prog + b": " + msg)

    def warn(self, msg: bytes, exc: OSError) -> None:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        self.warnx(msg + b": " + reason.encode())

    def errx(self, msg: bytes) -> NoReturn:
        self.warnx(msg)
        raise _Exit(1)

    def err(self, msg: bytes, exc: OSError) -> NoReturn:
        self.warn(msg, exc)
        raise _Exit(1)

    def usage(self) -> NoReturn:
        if not self.mode:
            self.errx(b"Usage: %s <mode> [-h] [...]" % self.argv0)
        mstr = self.mode.encode() + b" " if self.incl_mode else b""
        self.errx(b"Usage: %s %s%s" % (self.argv0, mstr, _USAGE[self.mode]))

    def flush(self) -> None:
        if self.printed:
            self.stdout.write(bytes(self.printed))
            self.printed.clear()
        self.stdout.flush()


# -- the modes (perform() in C) ---------------------------------------------
def _do_read(tool: Tool, xs: XsSyncClient, keys: list[bytes], tx: int) -> int:
    for key in keys:
        try:
            value = xs.read(key, tx)
        except OSError:
            tool.warnx(b"couldn't read path %s" % key)
            return 1
        if tool.opts.get("p"):
            tool.output += key + b": "
        tool.output += value if tool.opts.get("R") else sanitise_value(value) + b"\n"
    return 0


def _do_write(tool: Tool, xs: XsSyncClient, keys: list[bytes], tx: int) -> int:
    for key, spec in zip(keys[::2], keys[1::2]):
        try:
            xs.write(key, spec if tool.opts.get("R") else unsanitise_value(spec), tx)
        except OSError:
            tool.warnx(b"could not write path %s" % key)
            return 1
    return 0


def _empty_leaf(xs: XsSyncClient, path: bytes, tx: int) -> bool:
    """rm -t climbs while the parent has an empty value and no children."""
    try:
        return xs.read(path, tx) == b"" and xs.directory(path, tx) == []
    except OSError:
        return False


def _do_rm(tool: Tool, xs: XsSyncClient, keys: list[bytes], tx: int) -> int:
    for path in keys:
        while True:
            try:
                xs.rm(path, tx)
            except OSError:
                tool.warnx(b"could not remove path %s" % path)
                return 1
            if not tool.opts.get("t") or b"/" not in path:
                break
            path = path[:path.rindex(b"/")]
            if not _empty_leaf(xs, path, tx):
                break
    return 0


def _do_exists(tool: Tool, xs: XsSyncClient, keys: list[bytes], tx: int) -> int:
    for key in keys:
        try:
            xs.read(key, tx)
        except OSError:
            return 1
    return 0


def _do_list(tool: Tool, xs: XsSyncClient, keys: list[bytes], tx: int) -> int:
    for key in keys:
        try:
            children = xs.directory(key, tx)
        except OSError:
            tool.warnx(b"could not list path %s" % key)
            return 1
        for child in children:
            tool.output += (key + b"/" if tool.opts.get("p") else b"") + child + b"\n"
    return 0


def _set_perms(tool: Tool, xs: XsSyncClient, path: bytes, perms: list[bytes], tx: int) -> None:
    try:
        xs.set_perms(path, perms, tx)
    except OSError as exc:
        tool.err(b"Error occurred setting permissions on '%s'" % path, exc)


def _chmod(tool: Tool, xs: XsSyncClient, path: bytes, perms: list[bytes], tx: int,
           upto: bool, recurse: bool) -> None:
    """do_chmod: the node, then with -u each parent, then with -r the subtree."""
    if not path:
        return
    _set_perms(tool, xs, path, perms, tx)
    parent = path
    while upto:
        if b"/" not in parent:
            tool.errx(b"Unable to locate path separator '/' in '%s'" % parent)
        parent = parent[:parent.rindex(b"/")]
        if not parent:
            break
        _set_perms(tool, xs, parent, perms, tx)
    if recurse:
        try:
            children = xs.directory(path, tx)
        except OSError:
            children = []
        for child in children:  # C builds these in a 256-byte buffer
            child_path = (path + b"/" + child)[:MAX_PATH_LEN - 1]
            _chmod(tool, xs, child_path, perms, tx, False, True)


def _do_chmod(tool: Tool, xs: XsSyncClient, keys: list[bytes], tx: int) -> int:
    perms = []
    for spec in keys[1:]:
        if not spec or spec[:1] not in b"nrwb":
            tool.errx(b"Invalid permission specification: '%c'" % (spec[:1] or b"\0"))
        perms.append(spec[:1] + b"%d" % atoi(spec[1:]))
    _chmod(tool, xs, keys[0], perms, tx, bool(tool.opts.get("u")), bool(tool.opts.get("r")))
    return 0


def _do_watch(tool: Tool, xs: XsSyncClient, keys: list[bytes]) -> int:
    for path in keys:
        try:
            xs.watch(path, path)  # the token is the path
        except OSError:
            tool.errx(b"Unable to add watch on %s\n" % path)
    limit = tool.opts.get("n", -1)
    count = 0
    while limit == -1 or count < limit:
        try:
            path, _token = xs.read_watch()
        except OSError as exc:
            # C counts a failed read as an event (and spins forever without
            # -n); pvxen stops instead of spinning.
            if limit == -1:
                tool.err(b"xs_read_watch", exc)
            count += 1
            continue
        tool.stdout.write(path + b"\n")
        tool.stdout.flush()
        count += 1
    return 0


def _ls_children(tool: Tool, xs: XsSyncClient, path: bytes, depth: int) -> list[bytes]:
    try:
        return xs.directory(path)
    except OSError as exc:
        if depth and exc.errno == errno.ENOENT:
            return []  # vanished while we walked: move on silently
        tool.err(b"xs_directory (%s)" % path, exc)


def _ls_node(tool: Tool, xs: XsSyncClient, depth: int, name: bytes, path: bytes) -> bytes:
    value = None
    if len(path) < STRING_MAX:  # longer ones were truncated, hence invalid
        try:
            value = xs.read(path)
        except OSError:
            pass
    perms = None
    if tool.layout.show_perms:
        try:
            perms = perm_strings(xs.get_perms(path))
            if perms is None:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        except OSError as exc:
            tool.warn(b"\ncould not access permissions for %s" % name, exc)
    return ls_line(tool.layout, depth, name, path, value, perms)


def _do_ls(tool: Tool, xs: XsSyncClient, keys: list[bytes]) -> int:
    """do_ls, depth first, with an explicit stack (trees can be deep)."""
    for top in keys or [b"/"]:
        stack = [(top, 0, iter(_ls_children(tool, xs, top, 0)))]
        while stack:
            path, depth, children = stack[-1]
            name = next(children, None)
            if name is None:
                stack.pop()
                continue
            newpath = path + (b"" if path.endswith(b"/") else b"/") + name
            tool.printed += _ls_node(tool, xs, depth, name, newpath)
            if len(tool.printed) >= STDIO_BUFSIZ:
                tool.flush()
            newpath = newpath[:STRING_MAX - 1]
            stack.append((newpath, depth + 1, iter(_ls_children(tool, xs, newpath, depth + 1))))
    return 0


_PERFORM = {"read": _do_read, "write": _do_write, "rm": _do_rm, "exists": _do_exists,
            "list": _do_list, "chmod": _do_chmod}


def _transact(tool: Tool, xs: XsSyncClient, keys: list[bytes]) -> int:
    """perform() inside a transaction where C uses one, redone on EAGAIN."""
    use_tx = {"read": len(keys) > 1, "write": len(keys) > 2}.get(tool.mode, True)
    while True:
        tx = 0
        if use_tx:
            try:
                tx = xs.transaction_start()
            except OSError:
                pass
            if tx == 0:  # XBT_NULL
                tool.errx(b"couldn't start transaction")
        tool.output.clear()
        ret = _PERFORM[tool.mode](tool, xs, keys, tx)
        if use_tx:
            try:
                xs.transaction_end(tx, commit=ret == 0)
            except OSError as exc:
                if ret == 0 and exc.errno == errno.EAGAIN:
                    continue
                tool.errx(b"couldn't end transaction")
        tool.printed += tool.output
        return ret


def _execute(tool: Tool, keys: list[bytes]) -> int:
    if tool.mode == "ls":
        try:  # TIOCGWINSZ on stdout: a terminal sets the width, even with -f
            tool.layout.max_width = os.get_terminal_size(tool.stdout.fileno()).columns - 2
        except (OSError, ValueError):
            pass
    try:
        xs = XsSyncClient.open()
    except OSError as exc:
        tool.err(b"xs_open", exc)
    with xs:
        if tool.mode == "ls":
            return _do_ls(tool, xs, keys)
        if tool.mode == "watch":
            return _do_watch(tool, xs, keys)
        return _transact(tool, xs, keys)


def _set_option(tool: Tool, letter: str, optarg: bytes | None) -> None:
    allowed = {"f": ("ls",), "p": ("read", "list", "ls"), "t": ("rm",), "u": ("chmod",),
               "r": ("chmod",), "n": ("watch",), "R": ("read", "write")}
    if letter == "h" or (letter in allowed and tool.mode not in allowed[letter]):
        tool.usage()
    if letter == "f":
        tool.layout = LsLayout(INT_MAX // 2, 0, True, tool.layout.show_perms)
    elif letter == "p":
        tool.layout.show_perms = True
    if letter in allowed:
        tool.opts[letter] = atoi(optarg or b"") if letter == "n" else 1
    # 's' (the old "use the socket") and '?' (already warned) are ignored.


def _parse(tool: Tool, args: list[bytes]) -> list[bytes]:
    """Options into ``tool``; returns the keys. Usage errors exit."""
    positional: list[bytes] = []
    for letter, optarg in gnu_getopt(args[1:], args[0], tool.warn_raw, positional):
        _set_option(tool, letter, optarg)
    if tool.mode == "write" and len(positional) % 2 == 1:
        tool.usage()
    if tool.mode != "ls" and not positional:
        tool.usage()
    return positional


def _select_mode(tool: Tool, argv: list[bytes]) -> list[bytes]:
    """Mode from argv[0] or argv[1]; returns the vector getopt sees."""
    command = tool.prog
    if command.startswith(b"xenstore-"):
        command, args = command[len(b"xenstore-"):], argv
    elif len(argv) < 2:
        tool.usage()
    else:
        command, args, tool.incl_mode = argv[1], argv[1:], True
    name = command.decode("ascii", "replace")
    if name not in MODES:
        tool.errx(b"unknown mode %s\n" % command)
    tool.mode = name
    return args


def run(argv: list[bytes], stdout: BinaryIO | None = None,
        stderr: BinaryIO | None = None) -> int:
    """Run one tool invocation; ``argv[0]`` selects the mode. Returns the exit code."""
    tool = Tool(argv[0] if argv else b"xenstore")
    if stdout is not None:
        tool.stdout = stdout
    if stderr is not None:
        tool.stderr = stderr
    try:
        args = _select_mode(tool, argv or [b"xenstore"])
        keys = _parse(tool, args)
        return _execute(tool, keys)
    except _Exit as exc:
        return exc.code
    finally:
        tool.flush()


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: ``xenstore``, ``xenstore-ls``, ``xenstore-read`` …"""
    if argv is None:
        argv = sys.argv
        # Die of SIGPIPE / SIGINT like the C tools instead of a traceback.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    return run([os.fsencode(a) for a in argv])


def _module_argv(argv: list[str]) -> list[str]:
    """``python -m xenstored.cli [xenstore-MODE|MODE] …`` as a tool argv."""
    if len(argv) > 1 and os.path.basename(argv[1]).startswith("xenstore"):
        return argv[1:]
    return ["xenstore", *argv[1:]]


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(main(_module_argv(sys.argv)))
