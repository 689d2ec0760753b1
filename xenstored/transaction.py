"""Transactions: isolation over the main store, conflicts by generation count.

This follows cxenstored's rule (tools/xenstored/transaction.c): every node
a transaction touches is recorded with the generation it had at first
access (``NO_GENERATION`` when absent). Commit fails with ``EAGAIN`` when
any of those generations has changed in the main store; deletion counts as
a change. Every operation reads a node before modifying it (permission
checks, parent lookups), so all touched nodes are checked.

Worked example (G = global generation, g(X) = generation of node X)::

    I: g(A)=1, g(B)=2, G=2          T1 start
    T1: read A      -> accessed[A]=1
    (outside) write A -> g(A)=3
    T1: write B     -> accessed[B]=2, private copy of B in the overlay
    T1 end "T"      -> accessed[A]=1 != g(A)=3  => EAGAIN, nothing applied

Changes live in ``overlay`` (path -> private Node copy, or None for a
deleted node) and are invisible outside until commit, which installs the
overlay in the main store in one step. Watch events queued by the
transaction's operations fire at commit only.
"""

from __future__ import annotations

from collections import Counter

from xenstored import path as xpath
from xenstored.node import Node
from xenstored.perms import Perms
from libxen.xenstore.errors import XsError
from xenstored.quota import exceeded
from xenstored.store import Store


class Transaction:
    def __init__(self, store: Store, tx_id: int, *, node_limit: int | None = None) -> None:
        self.store = store
        self.tx_id = tx_id
        self.node_limit = node_limit  # transaction-nodes quota; None = privileged
        self.accessed: dict[str, int] = {}
        self.overlay: dict[str, Node | None] = {}
        self.owner_delta: Counter[int] = Counter()
        self.fires: list = []  # watch fires, delivered on commit
        self.deleted: set[str] = set()  # paths removed by this transaction

    # -- access bookkeeping ---------------------------------------------------
    def _access(self, path: str) -> None:
        if path in self.accessed:
            return
        if self.node_limit is not None and exceeded(self.node_limit, len(self.accessed) + 1):
            raise XsError("ENOSPC", "too many nodes in transaction")
        self.accessed[path] = self.store.generation_of(path)

    def get(self, path: str) -> Node | None:
        if path in self.overlay:
            return self.overlay[path]
        self._access(path)
        if self._under_deleted(path):
            # Created outside below a node this transaction removed: not
            # there for us (and the commit will conflict on the parent).
            return None
        return self.store.get(path)

    def _under_deleted(self, path: str) -> bool:
        if not self.deleted:
            return False
        return any(anc in self.deleted for anc in xpath.ancestors(path))

    def _writable(self, path: str) -> Node:
        node = self.overlay.get(path)
        if node is None:
            base = self.get(path)
            assert base is not None, path
            node = base.copy()
            # A fresh generation marks the private copy as changed (what
            # DIRECTORY_PART's <gencnt> reports inside the transaction);
            # commit stamps the node again in the main store.
            node.generation = self.store.next_generation()
            self.overlay[path] = node
        return node

    def owned(self, domid: int) -> int:
        return self.store.owned(domid) + self.owner_delta[domid]

    # -- primitives (same contract as Store) ----------------------------------
    def create(self, path: str, value: bytes, perms: Perms) -> None:
        self._access(path)
        parent = self._writable(xpath.parent(path))
        parent.children[xpath.basename(path)] = None
        self.overlay[path] = Node(value, perms, {}, self.store.next_generation())
        self.deleted.discard(path)
        self.owner_delta[perms.owner] += 1

    def set_value(self, path: str, value: bytes) -> None:
        self._writable(path).value = value

    def set_perms(self, path: str, perms: Perms) -> None:
        node = self._writable(path)
        if not xpath.is_special(path) and node.perms.owner != perms.owner:
            self.owner_delta[node.perms.owner] -= 1
            self.owner_delta[perms.owner] += 1
        node.perms = perms

    def delete(self, path: str) -> None:
        node = self.get(path)
        assert node is not None, path
        # The parent first: touching it may hit the transaction-nodes quota,
        # and nothing may have changed when that raises.
        parent = self._writable(xpath.parent(path))
        self.owner_delta[node.perms.owner] -= 1
        self.overlay[path] = None
        self.deleted.add(path)
        parent.children.pop(xpath.basename(path), None)

    # -- end ---------------------------------------------------------------------
    def conflicts(self) -> list[str]:
        """Paths whose generation changed since this transaction first saw them."""
        gen = self.store.generation_of
        return [p for p, g in self.accessed.items() if gen(p) != g]

    def commit(self) -> None:
        """Install the overlay in the main store, or raise EAGAIN (nothing applied)."""
        if self.conflicts():
            raise XsError("EAGAIN", "transaction conflict")
        for p, node in self.overlay.items():
            if node is None:
                self.store.drop(p)
            else:
                self.store.put(p, node)
