"""Request arguments: how a payload splits into strings, numbers, permissions.

The protocol layer, below the dispatcher: handlers (``xenstored.handlers``,
``xenstored.control``) parse their payloads with these and the core never
needs them. Payload formats: ``docs/misc/xenstore.txt`` and
``xen/include/public/io/xs_wire.h``.
"""

from __future__ import annotations

from xenstored.perms import Perms, PermsError
from xenstored.protocol.errors import XsError

OK = b"OK\0"


def strings(payload: bytes, count: int | None = None, at_least: int = 0) -> list[bytes]:
    """Nul-terminated strings of a request; EINVAL unless well formed."""
    if not payload.endswith(b"\0"):
        raise XsError("EINVAL", "payload not nul-terminated")
    parts = payload[:-1].split(b"\0")
    if count is not None and len(parts) != count:
        raise XsError("EINVAL", f"expected {count} arguments")
    if len(parts) < at_least:
        raise XsError("EINVAL", f"expected at least {at_least} arguments")
    return parts


def number(raw: bytes, limit: int = 0xFFFFFFFF) -> int:
    if not raw.isdigit() or len(raw) > 10 or int(raw) > limit:
        raise XsError("EINVAL", f"bad number {raw[:20]!r}")
    return int(raw)


def parse_perms(items: list[bytes]) -> Perms:
    try:
        return Perms.parse([i.decode("ascii") for i in items])
    except (PermsError, UnicodeDecodeError) as e:
        raise XsError("EINVAL", str(e)) from None
