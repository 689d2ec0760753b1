"""The hypercall error type: every failure is a Xen errno, returned negated.

Handlers raise :class:`HypercallError`; the dispatcher alone turns it into
``rc = -errno`` (XSA-316: a hypercall returns 0, a positive value where the
op defines one, or ``-errno``, nothing else).
"""

from __future__ import annotations

from hypervisord.public.errno import XenErrno


class HypercallError(Exception):
    def __init__(self, err: XenErrno, detail: str = "") -> None:
        super().__init__(f"{err.name}: {detail}" if detail else err.name)
        self.errno = err
        self.detail = detail


def fail(err: XenErrno, detail: str = "") -> HypercallError:
    return HypercallError(err, detail)


E = XenErrno
