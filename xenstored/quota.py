"""Quotas for unprivileged domains (cxenstored defaults, tools/xenstored/domain.c).

Privileged connections (dom0, the Unix socket) are never limited. Values
are per domain; ``Q_VAL_DISABLED`` switches a quota off. The limits are
plain data passed explicitly (``Quotas``), with per-domain overrides set
through ``XS_SET_QUOTA``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

Q_VAL_DISABLED = 0xFFFFFFFF  # UINT_MAX


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
