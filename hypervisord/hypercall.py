"""Hypercall dispatch: one table, privilege checked once.

Each hypercall family module (``domctl``, ``memory``, ``evtchn``,
``gnttab``, ``sched``, ``version`` ...) exports ``HANDLERS``: a map from
``(hypercall, subop)`` to a :class:`Handler`. :func:`dispatch` merges them,
refuses privileged ops from unprivileged callers, validates argument types
through each handler's own parsing, and turns errors into ``-errno``.

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
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            # A missing or mistyped argument: the caller's fault, not ours.
            log.debug("d%d hypercall %d/%d bad arguments: %r", caller.domid, hypercall, subop, e)
            return -int(XenErrno.XEN_EINVAL), {"error": f"bad arguments: {e}"}
        if isinstance(result, tuple):
            return result
        if isinstance(result, dict):
            return 0, result
        if result is None:
            return 0, None
        return int(result), None


# -- argument helpers: each raises TypeError/ValueError -> EINVAL -----------------

def u(args: dict, name: str, bits: int = 32, default: int | None = None) -> int:
    value = args.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an integer")
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{name} out of range")
    return value


def int_list(args: dict, name: str, limit: int = 1 << 20) -> list[int]:
    value = args.get(name)
    if not isinstance(value, list) or len(value) > limit:
        raise TypeError(f"{name} must be a list of at most {limit} integers")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise TypeError(f"{name} must hold non-negative integers")
    return value
