"""Request arguments: how a payload splits into strings, numbers, permissions.

The protocol layer, below the dispatcher: handlers (``xenstored.handlers``,
``xenstored.control``) parse their payloads with these and the core never
needs them. Payload formats: ``docs/misc/xenstore.txt`` and
``xen/include/public/io/xs_wire.h``.
"""

from __future__ import annotations

from xenstored.perms import Perms, PermsError
from libxen.xenstore.errors import XsError

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


_LONG_MAX = 2**63 - 1
_C_SPACE = b" \t\n\v\f\r"


def c_atoi_unsigned(raw: bytes) -> int:
    """``(unsigned int)atoi(raw)`` as glibc on x86-64 computes it.

    For the fields cxenstored reads with ``atoi`` and never refuses (the
    DIRECTORY_PART offset): leading C white space, an optional sign, then
    decimal digits up to the first other byte; no digits is 0; ``strtol``
    saturates at LONG_MIN/LONG_MAX and the conversions to int and then to
    unsigned int keep the low 32 bits.
    """
    i = 0
    while i < len(raw) and raw[i] in _C_SPACE:
        i += 1
    negative = i < len(raw) and raw[i] == ord("-")
    if i < len(raw) and raw[i] in b"+-":
        i += 1
    j = i
    while j < len(raw) and 0x30 <= raw[j] <= 0x39:
        j += 1
    value = int(raw[i:j]) if j > i else 0
    value = max(-_LONG_MAX - 1, min(_LONG_MAX, -value if negative else value))
    return value & 0xFFFFFFFF
