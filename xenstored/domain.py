"""Domains introduced to xenstored (XS_INTRODUCE / XS_RELEASE / XS_RESUME).

Records, per domid, the store page frame and event-channel port the
toolstack announced, the domain's features and quota overrides, and the
connection serving its ring once a transport is attached.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xenstored.quota import Quotas


@dataclass(slots=True)
class Domain:
    domid: int
    mfn: int
    port: int
    quotas: Quotas
    features: int = 0
    target: int | None = None
    shutdown: bool = False
    conn: object | None = None  # the ring Connection, when attached


@dataclass
class Domains:
    default_quotas: Quotas
    by_id: dict[int, Domain] = field(default_factory=dict)
    #: XS_SET_FEATURE values set before XS_INTRODUCE
    pending_features: dict[int, int] = field(default_factory=dict)

    def get(self, domid: int) -> Domain | None:
        return self.by_id.get(domid)

    def introduce(self, domid: int, mfn: int, port: int, features: int) -> Domain:
        features = self.pending_features.pop(domid, features)
        dom = Domain(domid, mfn, port, self.default_quotas, features)
        self.by_id[domid] = dom
        return dom

    def release(self, domid: int) -> Domain | None:
        return self.by_id.pop(domid, None)

    def quotas_for(self, domid: int) -> Quotas:
        dom = self.by_id.get(domid)
        return dom.quotas if dom else self.default_quotas
