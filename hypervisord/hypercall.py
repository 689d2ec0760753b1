"""Hypercall dispatch: one table, privilege checked once.

Each hypercall family module (``domctl``, ``memory``, ``evtchn``,
``gnttab``, ``sched``, ``version`` ...) exports ``HANDLERS``: a map from
``(hypercall, subop)`` to a :class:`Handler`. :func:`dispatch` merges them,
refuses privileged ops from unprivileged callers and turns errors into
``-errno``.

Errors have two sources, kept apart so a hypervisor bug never looks like
a guest mistake:

* the caller's: every handler reads its arguments through the helpers
  below (or raises :class:`HypercallError` itself), which refuse a missing,
  mistyped or out-of-range field with ``-EINVAL`` at the boundary, as Xen's
  handlers do after ``copy_from_guest``;
* ours: any other exception is an internal error. It is logged with its
  traceback at error level and the caller gets ``-EIO`` (Xen has no such
  case: there a hypervisor bug is a ``BUG()``; ``EIO`` says "the
  hypervisor failed" without blaming an argument or an address as
  ``EINVAL``/``EFAULT`` would). The connection and the daemon carry on.

A handler is ``fn(hv, caller, args) -> result`` where ``result`` is an int
(the return value), a dict (OUT fields; rc 0) or ``(rc, dict)``. A dict may
carry ``"_fds"``: file descriptors sent with the reply (closed here after
sending unless the handler keeps them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypervisord.errors import E, HypercallError
from hypervisord.public.errno import XenErrno

log = logging.getLogger("hypervisord")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes the call: always from the connection, never from the payload."""

    domid: int
    privileged: bool
    conn: Any  # the server-side connection object


@dataclass(frozen=True, slots=True)
class Handler:
    fn: Callable[..., Any]
    privileged: bool = False


class Dispatcher:
    def __init__(self, hv, tables: list[dict[tuple[int, int], Handler]]) -> None:
        self.hv = hv
        self.table: dict[tuple[int, int], Handler] = {}
        for t in tables:
            overlap = self.table.keys() & t.keys()
            assert not overlap, f"hypercall registered twice: {overlap}"
            self.table.update(t)

    def call(self, caller: Caller, hypercall: int, subop: int,
             args: dict[str, Any]) -> tuple[int, dict | None]:
        """Run one hypercall; returns (rc, result). Never raises for bad input."""
        handler = self.table.get((hypercall, subop))
        try:
            if handler is None:
                raise HypercallError(E.XEN_ENOSYS, f"hypercall {hypercall}/{subop}")
            if handler.privileged and not caller.privileged:
                raise HypercallError(E.XEN_EPERM, "privileged operation")
            result = handler.fn(self.hv, caller, args)
        except HypercallError as e:
            log.debug("d%d hypercall %d/%d -> %s", caller.domid, hypercall, subop, e)
            return -int(e.errno), ({"error": e.detail} if e.detail else None)
        except Exception:  # a bug of ours, whatever the caller sent
            log.exception("d%d hypercall %d/%d: internal error", caller.domid, hypercall, subop)
            return -int(XenErrno.XEN_EIO), {"error": "internal error in hypervisord"}
        if isinstance(result, tuple):
            return result
        if isinstance(result, dict):
            return 0, result
        if result is None:
            return 0, None
        return int(result), None


# -- argument helpers: the caller's mistakes are EINVAL, found here ---------------

def u(args: dict, name: str, bits: int = 32, default: int | None = None) -> int:
    value = args.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise HypercallError(E.XEN_EINVAL, f"{name} must be an integer")
    if not 0 <= value < (1 << bits):
        raise HypercallError(E.XEN_EINVAL, f"{name} out of range")
    return value


def int_list(args: dict, name: str, limit: int = 1 << 20) -> list[int]:
    value = args.get(name)
    if not isinstance(value, list) or len(value) > limit:
        raise HypercallError(E.XEN_EINVAL, f"{name} must be a list of at most {limit} integers")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 64
               for v in value):
        raise HypercallError(E.XEN_EINVAL, f"{name} must hold unsigned 64-bit integers")
    return value
