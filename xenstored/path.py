"""XenStore path rules (docs/misc/xenstore.txt "Paths"; cxenstored is_valid_nodename).

Paths are absolute (``/a/b``), relative to the caller's home
``/local/domain/<domid>`` or special (``@introduceDomain``,
``@releaseDomain``). Allowed characters: ASCII letters, digits and
``-/_@``; no empty path, no ``//``, no trailing ``/`` except the root.
"""

from __future__ import annotations

import re

from hypervisord.public.io.xs_wire import (
    SPECIAL_INTRODUCE_DOMAIN,
    SPECIAL_RELEASE_DOMAIN,
    XENSTORE_ABS_PATH_MAX,
    XENSTORE_REL_PATH_MAX,
)
from libxen.xenstore.errors import XsError

SPECIAL_PATHS = (SPECIAL_INTRODUCE_DOMAIN, SPECIAL_RELEASE_DOMAIN)
_VALID = re.compile(r"[A-Za-z0-9\-/_@]+\Z")
#: what cxenstored's is_valid_nodename skips before measuring a path:
#: sscanf(node, "/local/domain/%5u/%n") - at most 5 characters of number
_LOCAL = re.compile(r"/local/domain/(-?[0-9]+)/")


def home(domid: int) -> str:
    return f"/local/domain/{domid}"


def is_special(path: str) -> bool:
    return path.startswith("@")


def decode(raw: bytes) -> str:
    """Path bytes from the wire; non-ASCII is simply invalid."""
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise XsError("EINVAL", "path is not ASCII") from None


def canonical(raw: str, domid: int, *, allow_special: bool = False,
              any_special: bool = False, path_max: int | None = None) -> str:
    """Validate ``raw`` and return the absolute path.

    Length, as cxenstored 4.17 measures it (tools/xenstored/core.c
    ``is_valid_nodename``, for every caller): the absolute path, less a
    leading ``/local/domain/<domid>/`` of *any* domain, is at most
    ``XENSTORE_REL_PATH_MAX`` (2048) bytes, or ``path_max`` (the ``path-max``
    quota, unprivileged callers only) when that is lower. A special path
    (watches) is at most ``XENSTORE_REL_PATH_MAX`` bytes (``check_watch_path``).
    ``any_special`` (watches only) accepts any well-formed ``@...`` path.
    """
    if is_special(raw):
        if len(raw) > XENSTORE_REL_PATH_MAX:
            raise XsError("EINVAL", "special path too long")
        if allow_special and raw in SPECIAL_PATHS:
            return raw
        # Watches may name any special path (xenstore.txt); only the two
        # real ones (and @releaseDomain/<domid>) ever fire.
        if (any_special and len(raw) > 1 and _VALID.match(raw) and "//" not in raw
                and not raw.endswith("/")):
            return raw
        raise XsError("EINVAL", f"bad special path {raw!r}")
    if not raw or not _VALID.match(raw) or "//" in raw:
        raise XsError("EINVAL", f"bad path {raw!r}")
    if raw.startswith("/"):
        path = raw
    else:
        path = f"{home(domid)}/{raw}"
    if len(path) > 1 and path.endswith("/"):
        raise XsError("EINVAL", f"trailing slash in {raw!r}")
    if len(path) > XENSTORE_ABS_PATH_MAX:
        raise XsError("EINVAL", "path too long")
    limit = XENSTORE_REL_PATH_MAX if path_max is None else min(path_max, XENSTORE_REL_PATH_MAX)
    m = _LOCAL.match(path)
    skipped = m.end() if m is not None and len(m.group(1)) <= 5 else 0
    if len(path) - skipped > limit:
        raise XsError("EINVAL", "path too long" if path_max is None
                      else "path exceeds the path-max quota")
    return path


def relative_to(path: str, domid: int) -> str:
    """How an event path is shown to a watcher that used a relative path."""
    prefix = home(domid) + "/"
    return path[len(prefix):] if path.startswith(prefix) else path


def parent(path: str) -> str:
    if path == "/":
        return "/"
    head = path.rsplit("/", 1)[0]
    return head or "/"


def basename(path: str) -> str:
    return path.rsplit("/", 1)[1]


def join(parent_path: str, name: str) -> str:
    return f"/{name}" if parent_path == "/" else f"{parent_path}/{name}"


def is_child(path: str, ancestor: str) -> bool:
    """True when ``path`` is ``ancestor`` or lies below it."""
    if ancestor == "/":
        return path.startswith("/")
    return path == ancestor or path.startswith(ancestor + "/")


def ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``["/", "/a", "/a/b"]`` (without the path itself)."""
    out = ["/"]
    idx = path.find("/", 1)
    while idx != -1:
        out.append(path[:idx])
        idx = path.find("/", idx + 1)
    return out if path != "/" else []
