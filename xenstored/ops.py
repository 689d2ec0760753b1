"""What each node operation means: read, write, mkdir, rm, directory, perms.

Written once against the primitives that both the main store and a
transaction offer (see :mod:`xenstored.store`). Pure: callers pass the
layer and the caller's identity, and get back a value plus the watch
fires the change causes (delivered by the dispatcher, at once or on
commit). Permission rules: cxenstored ``perm_for_conn`` and
docs/misc/xenstore.txt; quota errors as cxenstored's ``core.c``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from xenstored import path as xpath
from xenstored.node import Node
from xenstored.perms import PERM_READ, PERM_WRITE, Perms
from libxen.xenstore.errors import XsError
from xenstored.quota import Quotas, exceeded

PERM_ENTRY_SIZE = 8  # sizeof(struct xs_permissions), for node-size accounting


class Layer(Protocol):
    def get(self, path: str) -> Node | None: ...
    def owned(self, domid: int) -> int: ...
    def create(self, path: str, value: bytes, perms: Perms) -> None: ...
    def set_value(self, path: str, value: bytes) -> None: ...
    def set_perms(self, path: str, perms: Perms) -> None: ...
    def delete(self, path: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: the connection's domain, never anything from the payload."""

    domid: int
    privileged: bool
    quotas: Quotas
    target: int | None = None  # XS_SET_TARGET: acts with the rights of this domain


@dataclass(frozen=True, slots=True)
class Fire:
    """A change at ``path`` that watches must hear about.

    ``recursive``: a subtree was removed, so watches below ``path`` fire too.
    ``perms``: the node's permissions at the time (a watcher must be able to
    read the node to get the event, XSA-115).
    """

    path: str
    recursive: bool
    perms: Perms
    #: for a recursive removal: the permissions of every node removed
    removed: dict[str, Perms] | None = None

    def perms_of(self, event_path: str) -> Perms:
        """Permissions deciding who hears about ``event_path``.

        For a watch below a removed subtree that is the removed node at the
        watch's path (or the nearest removed ancestor of it).
        """
        if self.removed is None or event_path == self.path:
            return self.perms
        p = event_path
        while p not in self.removed and p != self.path and p != "/":
            p = xpath.parent(p)
        return self.removed.get(p, self.perms)


def access(caller: Caller, perms: Perms) -> int:
    if caller.privileged:
        return PERM_READ | PERM_WRITE
    bits = perms.bits_for(caller.domid)
    if caller.target is not None:
        bits |= perms.bits_for(caller.target)
    return bits


def _missing_error(layer: Layer, caller: Caller, path: str) -> XsError:
    """ENOENT, or EACCES when the caller could not even see the parent."""
    for anc in reversed(xpath.ancestors(path)):
        node = layer.get(anc)
        if node is not None:
            if access(caller, node.perms) & PERM_READ:
                return XsError("ENOENT", path)
            return XsError("EACCES", path)
    return XsError("ENOENT", path)


def lookup(layer: Layer, caller: Caller, path: str, want: int) -> Node:
    node = layer.get(path)
    if node is None:
        raise _missing_error(layer, caller, path)
    if want & ~access(caller, node.perms):
        raise XsError("EACCES", path)
    return node


def node_size(value: bytes, children: dict[str, None], perms: Perms) -> int:
    return len(value) + sum(len(c) + 1 for c in children) + PERM_ENTRY_SIZE * len(perms.entries)


def _check_size(caller: Caller, value: bytes, children: dict[str, None], perms: Perms) -> None:
    if not caller.privileged and exceeded(caller.quotas.node_size, node_size(value, children, perms)):
        raise XsError("ENOSPC", "node-size quota")


def read(layer: Layer, caller: Caller, path: str) -> bytes:
    return lookup(layer, caller, path, PERM_READ).value


def directory(layer: Layer, caller: Caller, path: str) -> Node:
    return lookup(layer, caller, path, PERM_READ)


def get_perms(layer: Layer, caller: Caller, path: str) -> Perms:
    return lookup(layer, caller, path, PERM_READ).perms


def _create_missing(layer: Layer, caller: Caller, path: str, value: bytes) -> None:
    """Create ``path`` and any missing ancestors; children inherit perms."""
    missing = [path]
    for anc in reversed(xpath.ancestors(path)):
        node = layer.get(anc)
        if node is not None:
            break
        missing.append(anc)
    if not access(caller, node.perms) & PERM_WRITE:
        raise XsError("EACCES", anc)
    perms = node.perms if caller.privileged else node.perms.with_owner(caller.domid)
    _check_size(caller, value, {}, perms)
    # The existing ancestor gains a child: it must stay within node-size too.
    grown = dict(node.children)
    grown[xpath.basename(missing[-1])] = None
    _check_size(caller, node.value, grown, node.perms)
    if not caller.privileged and exceeded(
        caller.quotas.nodes, layer.owned(caller.domid) + len(missing)
    ):
        raise XsError("ENOSPC", "nodes quota")
    for i, p in enumerate(reversed(missing)):
        layer.create(p, value if i == len(missing) - 1 else b"", perms)


def write(layer: Layer, caller: Caller, path: str, value: bytes) -> list[Fire]:
    node = layer.get(path)
    if node is None:
        _create_missing(layer, caller, path, value)
        node = layer.get(path)
        assert node is not None
    else:
        if not access(caller, node.perms) & PERM_WRITE:
            raise XsError("EACCES", path)
        _check_size(caller, value, node.children, node.perms)
        layer.set_value(path, value)
    return [Fire(path, False, node.perms)]


def mkdir(layer: Layer, caller: Caller, path: str) -> list[Fire]:
    node = layer.get(path)
    if node is not None:
        if not access(caller, node.perms) & PERM_WRITE:
            raise XsError("EACCES", path)
        return []  # never clobbers; cxenstored fires nothing either
    _create_missing(layer, caller, path, b"")
    node = layer.get(path)
    assert node is not None
    return [Fire(path, False, node.perms)]


def rm(layer: Layer, caller: Caller, path: str) -> list[Fire]:
    if path == "/":
        raise XsError("EINVAL", "cannot remove the root")
    node = layer.get(path)
    if node is None:
        parent = layer.get(xpath.parent(path))
        if parent is None:
            raise _missing_error(layer, caller, path)
        if not access(caller, parent.perms) & PERM_READ:
            raise XsError("EACCES", path)
        return []
    if not access(caller, node.perms) & PERM_WRITE:
        raise XsError("EACCES", path)
    perms = node.perms
    # Touch the parent before changing anything: in a transaction that may
    # hit the transaction-nodes quota, and an rm must fail whole or not at all.
    if layer.get(xpath.parent(path)) is None:
        # Only in a doomed transaction: it copied the node, and the parent,
        # first touched now, was removed by others since. cxenstored rm_node
        # (tools/xenstored/core.c) answers EINVAL when the parent is missing.
        raise XsError("EINVAL", f"{path}: parent missing in the transaction")
    removed = remove_subtree(layer, path)
    return [Fire(path, True, perms, removed)]


def remove_subtree(layer: Layer, path: str) -> dict[str, Perms]:
    """Delete ``path`` and everything below it, leaves first, iteratively.

    Returns the permissions each removed node had (for watch filtering).
    """
    order: list[str] = []
    removed: dict[str, Perms] = {}
    stack = [path]
    while stack:
        p = stack.pop()
        order.append(p)
        node = layer.get(p)
        if node is not None:
            removed[p] = node.perms
            stack.extend(xpath.join(p, c) for c in node.children)
    for p in reversed(order):
        if layer.get(p) is not None:
            layer.delete(p)
    return removed


def set_perms(layer: Layer, caller: Caller, path: str, perms: Perms) -> list[Fire]:
    node = layer.get(path)
    if node is None:
        raise _missing_error(layer, caller, path)
    if not caller.privileged:
        owner = node.perms.owner
        if caller.domid != owner and caller.target != owner:
            raise XsError("EACCES", path)
        if perms.owner != owner:
            raise XsError("EPERM", "only a privileged domain changes the owner")
        if exceeded(caller.quotas.node_permissions, len(perms.entries)):
            raise XsError("ENOSPC", "node-permissions quota")
        _check_size(caller, node.value, node.children, perms)
    layer.set_perms(path, perms)
    return [Fire(path, False, perms)]
