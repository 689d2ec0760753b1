"""Per-connection state of xenstored (cxenstored ``struct connection``).

A connection is a socket client (dom0, privileged) or a domain's ring.
It owns its transactions, its watches and its identity; how bytes move is
the transport's business, not this module's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from xenstored.quota import DOM0_TRANSACTIONS, Quotas, exceeded
from xenstored.transaction import Transaction
from xenstored.watch import Watch

_ids = itertools.count(1)


@dataclass(eq=False)
class Connection:
    domid: int
    privileged: bool
    quotas: Quotas
    name: str = ""
    target: int | None = None
    conn_id: int = field(default_factory=lambda: next(_ids))
    transactions: dict[int, Transaction] = field(default_factory=dict)
    next_tx_id: int = 1
    watches: list[Watch] = field(default_factory=list)
    closed: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            self.name = f"conn{self.conn_id}(dom{self.domid})"

    def new_tx_id(self) -> int:
        """Next unused, nonzero id (ids are per connection, as in cxenstored)."""
        while True:
            tx_id = self.next_tx_id
            self.next_tx_id = (self.next_tx_id + 1) & 0xFFFFFFFF or 1
            if tx_id not in self.transactions:
                return tx_id

    def may_start_transaction(self) -> bool:
        """Room for one more open transaction: the domain's ``transactions``
        quota (as cxenstored), or DOM0_TRANSACTIONS on a privileged
        connection (cxenstored has no limit there)."""
        limit = DOM0_TRANSACTIONS if self.privileged else self.quotas.transactions
        return not exceeded(limit, len(self.transactions) + 1)

    def __repr__(self) -> str:
        return self.name
