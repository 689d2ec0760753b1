"""The one XenStore error type, shared by the daemon and every client.

xenstored's handlers raise :class:`XsError` and its dispatcher alone turns
it into an ``XS_ERROR`` reply whose payload is the errno's name from
``xsd_errors`` (``xen/include/public/io/xs_wire.h``); a client raises the
same class for an ``XS_ERROR`` it receives. It is an :class:`OSError`, so
``exc.errno`` is the errno the name stands for; a name the table does not
know maps to EINVAL, as libxenstore's ``get_error()`` does.
:class:`XsConnectionLost` is a client's broken or misbehaving connection.
"""

from __future__ import annotations

import errno as _errno
import os

from hypervisord.public.io.xs_wire import XSD_ERROR_BY_NAME


class XsError(OSError):
    """A request failed with the xenstore error ``name`` ("ENOENT", ...)."""

    def __init__(self, name: str, detail: str = "") -> None:
        num = XSD_ERROR_BY_NAME.get(name, _errno.EINVAL)
        super().__init__(num, os.strerror(num))
        self.name = name
        self.detail = detail

    def __str__(self) -> str:
        where = f" ({self.detail})" if self.detail else ""
        return f"{self.name}: {self.strerror}{where}"

    def __reduce__(self):  # OSError's would rebuild it from (errno, strerror)
        return (type(self), (self.name, self.detail))

    def payload(self) -> bytes:
        """The ``XS_ERROR`` reply payload: the name, nul-terminated."""
        return self.name.encode() + b"\0"


class XsConnectionLost(ConnectionError):
    """The connection closed or broke the protocol; it cannot be used again.

    Its errno is EBADF, which is what libxenstore reports once it has
    closed a broken connection.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(_errno.EBADF, os.strerror(_errno.EBADF))
        self.reason = reason

    def __str__(self) -> str:
        return f"xenstore connection lost: {self.reason}"
