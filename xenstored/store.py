"""The main XenStore database: a flat map ``path -> Node``.

Owns the global generation counter (cxenstored's ``generation``: every
modification of a node stamps it with ``++generation``), the count of nodes
owned by each domain (for the ``nodes`` quota, checkable against a recount)
and the set of paths changed since the journal last looked.

The tree is kept flat so that no operation recurses with tree depth or
width. Both :class:`Store` and :class:`~xenstored.transaction.Transaction`
offer the same small set of primitives (``get``, ``create``, ``set_value``,
``set_perms``, ``delete``, ``owned``); the request semantics in
:mod:`xenstored.ops` are written once against them.
"""

from __future__ import annotations

from collections import Counter

from xenstored import path as xpath
from xenstored.node import NO_GENERATION, Node
from xenstored.perms import ROOT_PERMS, Perms
from hypervisord.public.io.xs_wire import SPECIAL_INTRODUCE_DOMAIN, SPECIAL_RELEASE_DOMAIN

INITIAL_PATHS = ("/", "/tool", "/tool/xenstored")
SPECIAL_NODES = (SPECIAL_INTRODUCE_DOMAIN, SPECIAL_RELEASE_DOMAIN)


class Store:
    def __init__(self, nodes: dict[str, Node] | None = None, generation: int = 0) -> None:
        self.generation = generation
        self.nodes: dict[str, Node] = nodes if nodes is not None else self._initial()
        self.owner_count: Counter[int] = self.recount()
        #: paths modified since :meth:`take_changes` was last called
        self.changed: dict[str, None] = {}

    def _initial(self) -> dict[str, Node]:
        nodes: dict[str, Node] = {}
        for p in INITIAL_PATHS:
            nodes[p] = Node(b"", ROOT_PERMS, {}, self.next_generation())
            if p != "/":
                nodes[xpath.parent(p)].children[xpath.basename(p)] = None
        for p in SPECIAL_NODES:
            nodes[p] = Node(b"", ROOT_PERMS, {}, self.next_generation())
        return nodes

    def next_generation(self) -> int:
        self.generation += 1
        return self.generation

    # -- primitives shared with Transaction ---------------------------------
    def get(self, path: str) -> Node | None:
        return self.nodes.get(path)

    def generation_of(self, path: str) -> int:
        node = self.nodes.get(path)
        return NO_GENERATION if node is None else node.generation

    def owned(self, domid: int) -> int:
        return self.owner_count[domid]

    def create(self, path: str, value: bytes, perms: Perms) -> None:
        parent = self.nodes[xpath.parent(path)]
        parent.children[xpath.basename(path)] = None
        parent.generation = self.next_generation()
        self.nodes[path] = Node(value, perms, {}, self.next_generation())
        self.owner_count[perms.owner] += 1
        self._touch(xpath.parent(path), path)

    def set_value(self, path: str, value: bytes) -> None:
        node = self.nodes[path]
        node.value = value
        node.generation = self.next_generation()
        self._touch(path)

    def set_perms(self, path: str, perms: Perms) -> None:
        node = self.nodes[path]
        if not xpath.is_special(path):
            self._recount_owner(node.perms.owner, perms.owner)
        node.perms = perms
        node.generation = self.next_generation()
        self._touch(path)

    def delete(self, path: str) -> None:
        """Remove one childless node (callers delete subtrees leaves first)."""
        node = self.nodes.pop(path)
        self.owner_count[node.perms.owner] -= 1
        parent_path = xpath.parent(path)
        parent = self.nodes[parent_path]
        parent.children.pop(xpath.basename(path), None)
        parent.generation = self.next_generation()
        self._touch(parent_path, path)

    # -- used by transaction commit ------------------------------------------
    def put(self, path: str, node: Node) -> None:
        """Install a whole node (from a committing transaction)."""
        old = self.nodes.get(path)
        if not xpath.is_special(path):
            if old is not None:
                self.owner_count[old.perms.owner] -= 1
            self.owner_count[node.perms.owner] += 1
        node.generation = self.next_generation()
        self.nodes[path] = node
        self._touch(path)

    def drop(self, path: str) -> None:
        """Remove a node without touching its parent (transaction commit)."""
        old = self.nodes.pop(path, None)
        if old is not None:
            if not xpath.is_special(path):
                self.owner_count[old.perms.owner] -= 1
            self._touch(path)

    # -- bookkeeping ------------------------------------------------------------
    def _recount_owner(self, old: int, new: int) -> None:
        if old != new:
            self.owner_count[old] -= 1
            self.owner_count[new] += 1

    def _touch(self, *paths: str) -> None:
        for p in paths:
            self.changed[p] = None

    def take_changes(self) -> list[tuple[str, Node | None]]:
        """Changed paths with their current node (None: deleted) since last call."""
        if not self.changed:
            return []
        out = [(p, self.nodes.get(p)) for p in self.changed]
        self.changed = {}
        return out

    def recount(self) -> Counter[int]:
        """Nodes per owner, counted from scratch (special nodes excluded)."""
        counts: Counter[int] = Counter()
        for p, node in self.nodes.items():
            if not xpath.is_special(p):
                counts[node.perms.owner] += 1
        return counts

    def check(self) -> list[str]:
        """Consistency problems (empty when sound): accounting and tree links."""
        problems = []
        counts = self.recount()
        for domid in set(counts) | {d for d, c in self.owner_count.items() if c}:
            if counts[domid] != self.owner_count[domid]:
                problems.append(f"domain {domid}: accounted {self.owner_count[domid]} "
                                f"nodes, recount {counts[domid]}")
        for p, node in self.nodes.items():
            if xpath.is_special(p):
                continue
            for child in node.children:
                if xpath.join(p, child) not in self.nodes:
                    problems.append(f"{p}: child {child} missing")
            if p != "/" and xpath.basename(p) not in self.nodes.get(xpath.parent(p), Node(b"", ROOT_PERMS)).children:
                problems.append(f"{p}: not linked from its parent")
        return problems
