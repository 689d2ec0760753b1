"""Transactions: snapshot views over the main store, conflicts by generation.

This follows cxenstored (the comment at the top of tools/xenstored/transaction.c
and its ``access_node``): the first time a transaction touches a node, read or
write, it takes a private copy of that node (or notes that it is absent) and
the generation it had then (``NO_GENERATION`` when absent). From then on the
transaction sees only its copy: the node's value, children and permissions as
they were at that first access, plus its own changes. Writes by others do not
show through; they change the node's generation in the main store, and commit
fails with ``EAGAIN`` when any touched node's generation differs (deletion
counts as a change). Every operation reads a node before modifying it
(permission checks, parent lookups), so every touched node is checked.

Worked example (G = global generation, g(X) = generation of node X)::

    I: g(A)=1, g(B)=2, G=2          T1 start
    T1: read A      -> view[A] = copy of A, accessed[A]=1
    (outside) write A -> g(A)=3
    T1: read A      -> the copy: the value A had before the outside write
    T1: write B     -> accessed[B]=2, B changed in the view
    T1 end "T"      -> accessed[A]=1 != g(A)=3  => EAGAIN, nothing applied

``view`` holds every node the transaction has touched (path -> Node copy, or
None when absent or deleted); ``modified`` the paths to install at commit,
which happens in one step. Watch events fire at commit only, one per node
(cxenstored ``queue_watches``: a node changed several times fires once, a
recursive removal replaces a plain change), in the order the transaction
first touched the nodes, and a node that was absent at first access and is
absent again at the end fires nothing (cxenstored finds neither the node nor
its saved permissions, so no watcher is permitted to hear of it).
"""

from __future__ import annotations

from collections import Counter

from xenstored import path as xpath
from xenstored.node import NO_GENERATION, Node
from xenstored.perms import Perms
from libxen.xenstore.errors import XsError
from xenstored.quota import exceeded
from xenstored.store import Store


class Transaction:
    def __init__(self, store: Store, tx_id: int, *, node_limit: int | None = None) -> None:
        self.store = store
        self.tx_id = tx_id
        self.node_limit = node_limit  # transaction-nodes quota; None = privileged
        #: generation of each touched node at first access (insertion order =
        #: order of first access, which is the order events fire in at commit)
        self.accessed: dict[str, int] = {}
        #: what the transaction sees of every touched node: a private copy
        #: taken at first access and changed in place, or None (absent)
        self.view: dict[str, Node | None] = {}
        #: paths whose view entry is installed in the main store at commit
        self.modified: set[str] = set()
        self.owner_delta: Counter[int] = Counter()
        #: path -> the watch fire to deliver on commit (one per node)
        self.fires: dict[str, object] = {}
        self.deleted: set[str] = set()  # paths removed by this transaction

    # -- access bookkeeping ---------------------------------------------------
    def get(self, path: str) -> Node | None:
        try:
            return self.view[path]
        except KeyError:
            pass
        if self.node_limit is not None and exceeded(self.node_limit, len(self.accessed) + 1):
            raise XsError("ENOSPC", "too many nodes in transaction")
        live = self.store.get(path)
        self.accessed[path] = self.store.generation_of(path)
        if live is not None and self._under_deleted(path):
            # Created outside below a node this transaction removed: not
            # there for us (and the commit will conflict on the parent).
            live = None
        node = None if live is None else live.copy()
        self.view[path] = node
        return node

    def _under_deleted(self, path: str) -> bool:
        if not self.deleted:
            return False
        return any(anc in self.deleted for anc in xpath.ancestors(path))

    def _writable(self, path: str) -> Node:
        node = self.get(path)
        assert node is not None, path
        if path not in self.modified:
            # A fresh generation marks the private copy as changed (what
            # DIRECTORY_PART's <gencnt> reports inside the transaction);
            # commit stamps the node again in the main store.
            node.generation = self.store.next_generation()
            self.modified.add(path)
        return node

    def owned(self, domid: int) -> int:
        return self.store.owned(domid) + self.owner_delta[domid]

    # -- primitives (same contract as Store) ----------------------------------
    def create(self, path: str, value: bytes, perms: Perms) -> None:
        assert self.get(path) is None, path  # also records the first access
        parent = self._writable(xpath.parent(path))
        parent.children[xpath.basename(path)] = None
        self.view[path] = Node(value, perms, {}, self.store.next_generation())
        self.modified.add(path)
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
        self.view[path] = None
        self.modified.add(path)
        self.deleted.add(path)
        parent.children.pop(xpath.basename(path), None)

    # -- watch events ----------------------------------------------------------------
    def queue_fires(self, fires: list) -> None:
        """Keep one fire per node; a recursive one replaces a plain one."""
        for f in fires:
            old = self.fires.get(f.path)
            if old is None or f.recursive or not old.recursive:
                self.fires[f.path] = f

    def commit_fires(self) -> list:
        """The fires to deliver after a commit, in order of first access."""
        out = []
        for p in self.accessed:
            f = self.fires.get(p)
            if f is None:
                continue
            if self.accessed[p] == NO_GENERATION and self.view.get(p) is None:
                continue  # absent before and after: nobody hears of it
            out.append(f)
        return out

    # -- end ---------------------------------------------------------------------
    def conflicts(self) -> list[str]:
        """Paths whose generation changed since this transaction first saw them."""
        gen = self.store.generation_of
        return [p for p, g in self.accessed.items() if gen(p) != g]

    def commit(self) -> None:
        """Install the overlay in the main store, or raise EAGAIN (nothing applied)."""
        if self.conflicts():
            raise XsError("EAGAIN", "transaction conflict")
        for p in self.modified:
            node = self.view[p]
            if node is None:
                self.store.drop(p)
            else:
                self.store.put(p, node)
