"""A XenStore node: value, permissions, children, generation count.

Nodes in the main store are mutated in place by the store; a transaction
works on private copies (:meth:`Node.copy`), so the main store never sees a
transaction's changes before commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xenstored.perms import Perms

#: Generation of a node that does not exist (cxenstored's NO_GENERATION).
NO_GENERATION = -1


@dataclass(slots=True)
class Node:
    value: bytes
    perms: Perms
    #: child name -> None; a dict keeps creation order, as cxenstored does.
    children: dict[str, None] = field(default_factory=dict)
    generation: int = 0

    def copy(self) -> "Node":
        return Node(self.value, self.perms, dict(self.children), self.generation)

    @property
    def owner(self) -> int:
        return self.perms.owner
