"""The one error type of the XenStore core and its mapping to the wire.

Handlers raise :class:`XsError`; the dispatcher alone turns it into an
``XS_ERROR`` reply whose payload is the errno's name from ``xsd_errors``.
"""

from __future__ import annotations

import errno as _errno

from hypervisord.public.io.xs_wire import XSD_ERROR_BY_ERRNO


class XsError(Exception):
    """A request failed with the xenstore error ``name`` ("ENOENT", ...)."""

    def __init__(self, name: str, detail: str = "") -> None:
        if name not in _NAMES:
            raise ValueError(f"not an xsd_errors name: {name}")
        super().__init__(f"{name}: {detail}" if detail else name)
        self.name = name
        self.detail = detail

    @property
    def errno(self) -> int:
        return getattr(_errno, self.name)

    def payload(self) -> bytes:
        return self.name.encode() + b"\0"


_NAMES = frozenset(XSD_ERROR_BY_ERRNO.values())
