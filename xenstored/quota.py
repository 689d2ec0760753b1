"""Quotas for unprivileged domains (cxenstored defaults, tools/xenstored/domain.c),
and the few bounds we put on dom0 connections where cxenstored has none.

``Quotas`` are cxenstored's, per domain; ``Q_VAL_DISABLED`` switches one off.
They are plain data passed explicitly, with per-domain overrides set through
``XS_SET_QUOTA``. As in cxenstored (``domain_quota_val_exceeds`` returns
false for ``priv_domid``), they never apply to privileged connections.

dom0's socket clients are trusted in cxenstored: it reads them whatever
their output queue holds, counts no transactions for them, and accepts any
number of them (``accept_connection`` in ``tools/xenstored/posix.c``). A
runaway dom0 tool could thus grow the daemon without bound, so ours sets the bounds below; the README's "xenstored limits"
table says where and why they differ from cxenstored.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

Q_VAL_DISABLED = 0xFFFFFFFF  # UINT_MAX

#: Open transactions per privileged connection (cxenstored: unlimited). Far
#: above any real tool's (libxl keeps one open at a time); past it
#: ``XS_TRANSACTION_START`` answers ENOSPC, the errno cxenstored's
#: ``do_transaction_start`` gives a domain over its ``transactions`` quota.
DOM0_TRANSACTIONS = 256

#: A connection with this many bytes of replies and events waiting is not
#: read until they have left (backpressure; cxenstored stops reading a
#: domain over its ``outstanding`` or ``memory`` quota, never a socket).
OUTPUT_HIGH_WATER = 32 << 10

#: Messages and bytes a connection may have waiting before it is closed as
#: one that does not read: only events caused by others can get there, as
#: its own replies stop at OUTPUT_HIGH_WATER. (dom0, domain)
EVENT_BACKLOG = ((65536, 16 << 20), (1024, 1 << 20))

#: Socket clients served at once (``--max-connections``), at most; fewer
#: when the descriptor limit is low, so clients never take the descriptors
#: the journal and the domain rings need.
MAX_CONNECTIONS = 1024
FDS_RESERVED = 64


def default_max_connections() -> int:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft - FDS_RESERVED))


@dataclass(frozen=True, slots=True)
class Quotas:
    nodes: int = 1000
    watches: int = 128
    transactions: int = 10
    node_size: int = 2048
    node_permissions: int = 5
    path_max: int = 2048
    transaction_nodes: int = 1024
    outstanding: int = 20

    @staticmethod
    def names() -> list[str]:
        """Quota names as the protocol spells them (``node-size`` ...)."""
        return [f.name.replace("_", "-") for f in fields(Quotas)]

    def get(self, name: str) -> int:
        attr = name.replace("-", "_")
        if attr not in _ATTRS:
            raise KeyError(name)
        return getattr(self, attr)

    def set(self, name: str, value: int) -> "Quotas":
        attr = name.replace("-", "_")
        if attr not in _ATTRS:
            raise KeyError(name)
        return replace(self, **{attr: value})

    @classmethod
    def from_options(cls, items: list[str]) -> "Quotas":
        """``["nodes=2000", "watches=64"]`` (the ``-Q name=value`` options)."""
        q = cls()
        for item in items:
            name, sep, value = item.partition("=")
            if not sep or not value.isdigit() or int(value) > Q_VAL_DISABLED:
                raise ValueError(f"bad quota setting {item!r}, expected name=value "
                                 f"with a value of 0..{Q_VAL_DISABLED}")
            try:
                q = q.set(name, int(value))
            except KeyError:
                raise ValueError(f"unknown quota {name!r} in {item!r}; known: "
                                 + ", ".join(cls.names())) from None
        return q


_ATTRS = frozenset(f.name for f in fields(Quotas))


def exceeded(limit: int, value: int) -> bool:
    """True when ``value`` is over ``limit`` (a disabled quota never is)."""
    return limit != Q_VAL_DISABLED and value > limit
