"""XS_CONTROL commands and the GET/SET_QUOTA messages (dom0 only).

``XS_CONTROL`` payload: ``<cmd>\\0[<arg>\\0]*`` (what ``xenstore-control``
sends). Commands: ``check`` (store and accounting consistency), ``log``
(``on``/``off``: debug logging), ``quota`` (show, ``quota <domid>``,
``quota set <name> <value>``), ``print <string>`` (the string goes to the
log, as cxenstored's ``xprintf("control: %s")``) and ``help``.
"""

from __future__ import annotations

import logging

from xenstored.protocol.args import OK, number, strings
from libxen.xenstore.errors import XsError

log = logging.getLogger("xenstored")


def _check(core, args: list[bytes]) -> bytes:
    problems = core.check()
    if not problems:
        return OK
    for p in problems:
        log.error("check: %s", p)
    return ("\n".join(problems)[:4000] + "\n").encode() + b"\0"


def _log(core, args: list[bytes]) -> bytes:
    root = logging.getLogger()
    if not args:
        return (b"on" if root.level <= logging.DEBUG else b"off") + b"\0"
    if args[0] == b"on":
        root.setLevel(logging.DEBUG)
    elif args[0] == b"off":
        root.setLevel(logging.INFO)
    else:
        raise XsError("EINVAL", "log takes on or off")
    return OK


def _show_quotas(quotas) -> bytes:
    return "".join(f"{n}: {quotas.get(n)}\n" for n in quotas.names()).encode() + b"\0"


def _quota(core, args: list[bytes]) -> bytes:
    if not args:
        return _show_quotas(core.quotas)
    if args[0] == b"set":
        if len(args) != 3:
            raise XsError("EINVAL", "quota set <name> <value>")
        _set_global(core, args[1].decode(errors="replace"), number(args[2]))
        return OK
    if len(args) != 1:
        raise XsError("EINVAL", "quota [<domid> | set <name> <value>]")
    return _show_quotas(_domain(core, args[0]).quotas)


def _print(core, args: list[bytes]) -> bytes:
    # tools/xenstored/control.c do_control_print: exactly one string
    if len(args) != 1:
        raise XsError("EINVAL", "print takes one string")
    log.info("control: %s", args[0].decode(errors="backslashreplace"))
    return OK


def _help(core, args: list[bytes]) -> bytes:
    return (b"Commands:\ncheck\nlog [on|off]\nprint <string>\n"
            b"quota [<domid> | set <name> <value>]\nhelp\n\0")


COMMANDS = {b"check": _check, b"log": _log, b"print": _print, b"quota": _quota,
            b"help": _help}


def do_control(core, conn, msg, tx, out) -> bytes:
    parts = strings(msg.payload, at_least=1)
    cmd = COMMANDS.get(parts[0])
    if cmd is None:
        raise XsError("EINVAL", f"unknown control command {parts[0][:40]!r}")
    return cmd(core, parts[1:])


def _domain(core, raw: bytes):
    dom = core.domains.get(number(raw, 0xFFFF))
    if dom is None:
        raise XsError("ENOENT", "domain not introduced")
    return dom


def _set_global(core, name: str, value: int) -> None:
    try:
        core.quotas = core.quotas.set(name, value)
    except KeyError:
        raise XsError("EINVAL", f"unknown quota {name!r}") from None
    core.domains.default_quotas = core.quotas
    for conn in core.connections.values():
        if core.domains.get(conn.domid) is None:
            conn.quotas = core.quotas


def do_get_quota(core, conn, msg, tx, out) -> bytes:
    parts = strings(msg.payload) if msg.payload else []
    if not parts:
        return " ".join(core.quotas.names()).encode() + b"\0"
    if len(parts) > 2:
        raise XsError("EINVAL", "get-quota takes [<domid>] <quota>")
    quotas = _domain(core, parts[0]).quotas if len(parts) == 2 else core.quotas
    try:
        return str(quotas.get(parts[-1].decode(errors="replace"))).encode() + b"\0"
    except KeyError:
        raise XsError("EINVAL", "unknown quota") from None


def do_set_quota(core, conn, msg, tx, out) -> bytes:
    parts = strings(msg.payload)
    if len(parts) == 2:
        _set_global(core, parts[0].decode(errors="replace"), number(parts[1]))
        return OK
    if len(parts) != 3:
        raise XsError("EINVAL", "set-quota takes [<domid>] <quota> <value>")
    dom = _domain(core, parts[0])
    try:
        dom.quotas = dom.quotas.set(parts[1].decode(errors="replace"), number(parts[2]))
    except KeyError:
        raise XsError("EINVAL", "unknown quota") from None
    for c in core.connections.values():
        if c.domid == dom.domid and not c.privileged:
            c.quotas = dom.quotas
    return OK
