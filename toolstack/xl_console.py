"""``xl console`` and ``xl create -c``: the console client.

Xen's xl execs ``xenconsole`` (``tools/console/client/main.c``) through
``libxl_console_exec``; this is that client, in-process: it reads the pty
path the console daemon (backendd's console service) wrote to
``~/console/tty`` (``device/console/<n>/tty`` for ``-n N``), waiting up to
5 seconds for it as xenconsole does, puts the pty and, when stdin and
stdout are terminals, stdin into raw mode (``cfmakeraw``), and copies both
ways until the escape character (``^]``, 0x1d; ``-e`` changes it) is
typed. If the console goes away (the domain is destroyed) it returns; if
the daemon writes a new pty (a restarted backendd) it follows it.

Upstream prints nothing on attach, which makes the escape easy to miss;
we say ``Connected to <name> console; escape character is '^]'`` on
stderr first (the newcomer's request in the project notes). Errors are
xenconsole's and xl's: ``Could not read tty from store``, ``Can't specify
Domain-0``, then ``Unable to attach console``.

With stdin not a terminal (a pipe, a test) input is still copied; at its
end the client keeps showing output until the console goes.
"""

from __future__ import annotations

import io
import os
import select
import sys
import termios
import time
import tty

from toolstack.builder import Toolstack, read_or_none

ESCAPE = 0x1d  # xenconsole's DEFAULT_ESCAPE_CHARACTER, ^]
TTY_WAIT = 5.0  # get_pty_fd(xs, path, 5)
POLL = 0.05
#: how often the client re-reads the tty path while attached (xenconsole watches it)
RECHECK = 0.5
CONSOLE_TYPES = "pv, serial, vuart"


class ConsoleError(Exception):
    pass


def escape_char(spec: str | None) -> int:
    """xenconsole's ``--escape``: ``^X`` is that control character, else the first byte."""
    if not spec:
        return ESCAPE
    if len(spec) > 1 and spec[0] == "^":
        return ord(spec[1]) & 0x1f
    return ord(spec[0])


def tty_path(domid: int, num: int = 0) -> str:
    base = f"/local/domain/{domid}"
    return f"{base}/console/tty" if num == 0 else f"{base}/device/console/{num}/tty"


def _wait_pty(ts: Toolstack, path: str, seconds: float,
              quiet: bool = False) -> tuple[str, int] | None:
    deadline = time.monotonic() + seconds
    while True:
        pty = read_or_none(ts.xs, path)
        if pty:
            try:
                return pty, os.open(pty, os.O_RDWR | os.O_NOCTTY)
            except OSError as e:
                if not quiet:
                        print(f"xenconsole: Could not open tty `{pty}': {e.strerror}",
                          file=sys.stderr)
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL)


def _raw(fd: int) -> list | None:
    """``init_term``: raw mode, the old attributes to restore (None if not a tty)."""
    try:
        old = termios.tcgetattr(fd)
        tty.setraw(fd, termios.TCSANOW)
        return old
    except termios.error:
        return None


def _out(data: bytes) -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, io.UnsupportedOperation):
        sys.stdout.write(data.decode(errors="replace"))
        return
    sys.stdout.flush()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def attach(ts: Toolstack, domid: int, num: int = 0, escape: int = ESCAPE,
           name: str | None = None) -> int:
    """Run the console client for ``domid``; 0 when detached or the console went."""
    if domid == 0:
        print("Can't specify Domain-0", file=sys.stderr)
        print("Unable to attach console", file=sys.stderr)
        return 1
    path = tty_path(domid, num)
    got = _wait_pty(ts, path, TTY_WAIT)
    if got is None:
        print("xenconsole: Could not read tty from store: No such file or directory",
              file=sys.stderr)
        print("Unable to attach console", file=sys.stderr)
        return 1
    pty, fd = got
    _raw(fd)
    name = name or read_or_none(ts.xs, f"/local/domain/{domid}/name") or str(domid)
    print(f"Connected to {name} console; escape character is "
          f"'{'^' + chr(escape + 64) if escape < 32 else chr(escape)}'",
          file=sys.stderr, flush=True)
    stdin = _stdin_fd()
    interactive = stdin is not None and os.isatty(stdin) and os.isatty(1)
    old = _raw(stdin) if interactive else None
    try:
        return _loop(ts, path, pty, fd, stdin, escape)
    finally:
        if old is not None:
            termios.tcsetattr(stdin, termios.TCSANOW, old)
        if interactive:
            print(file=sys.stderr)


def _stdin_fd() -> int | None:
    try:
        return sys.stdin.fileno()
    except (AttributeError, io.UnsupportedOperation, ValueError):
        return None


def _loop(ts: Toolstack, path: str, pty: str, fd: int, stdin: int | None, escape: int) -> int:
    """``console_loop``: stdin -> pty, pty -> stdout, until escape or the console
    goes. A pty that ends (the daemon closed it) is closed here, and the path
    in the store looked at again: gone means the domain went; a pty there
    (the same name or a new one, from a restarted daemon) is opened."""
    cur: int | None = fd
    recheck = time.monotonic() + RECHECK
    try:
        while True:
            fds = ([cur] if cur is not None else []) + ([stdin] if stdin is not None else [])
            ready = select.select(fds, [], [], RECHECK)[0]
            if stdin is not None and stdin in ready:
                data = os.read(stdin, 4096)
                if not data:
                    stdin = None  # input ended: keep showing output
                elif escape in data:
                    if cur is not None:
                        os.write(cur, data[:data.index(escape)])
                    return 0
                elif cur is not None:
                    os.write(cur, data)
            if cur is not None and cur in ready:
                try:
                    data = os.read(cur, 4096)
                except OSError:
                    data = b""
                if data:
                    _out(data)
                    continue
                os.close(cur)  # the daemon closed its end
                cur = None
                recheck = 0.0
            if time.monotonic() >= recheck:
                recheck = time.monotonic() + RECHECK
                now = read_or_none(ts.xs, path)
                if not now:
                    return 0  # the console went with its domain
                if cur is None or now != pty:
                    got = _wait_pty(ts, path, 0, quiet=True)
                    if got is not None:
                        if cur is not None:
                            os.close(cur)
                        pty, cur = got
                        _raw(cur)
    finally:
        if cur is not None:
            os.close(cur)


def console(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    """``xl console [-t type] [-n num] [-e esc] <Domain>`` (``tools/xl/xl_console.c``)."""
    from toolstack.xl_cmds import XlError, find_domain

    ctype = opts.get("-t")
    if ctype is not None and ctype not in ("pv", "serial", "vuart"):
        print(f"console type supported are: {CONSOLE_TYPES}", file=sys.stderr)
        return 1
    try:
        num = int(opts.get("-n", "0"))
    except ValueError:
        num = 0  # atoi
    domid = find_domain(ts, args[0])
    if ctype in ("serial", "vuart"):
        # a PV guest has neither: xenconsole falls back to the PV console for
        # "serial" when there is no serial/0/tty, and finds no vuart
        if ctype == "vuart":
            raise XlError("Unable to attach console")
    return attach(ts, domid, num, escape_char(opts.get("-e")))
