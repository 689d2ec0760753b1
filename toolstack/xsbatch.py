"""The toolstack's XenStore work as pipelined batches.

Creating a domain writes ~40 nodes in one transaction; one request at a
time that is ~40 round trips through xenstored, most of the builder's time
(XenStore dominates creation, as the LightVM paper (SOSP 2017) found for
xl). ``xs_wire.h`` lets a client have many requests outstanding on a
connection (replies carry the request's ``req_id``), so the libxl layout's
operations (:class:`toolstack.xenstore_layout.Op`) go out as one
:meth:`libxen.xenstore.sync.XsSyncClient.batch`: three round trips for a
transaction (start, the batch, commit) however many nodes it writes.
"""

from __future__ import annotations

from typing import Any

from libxen.xenstore import protocol as ops
from libxen.xenstore.errors import XsError
from libxen.xenstore.sync import XsSyncClient
from toolstack import xenstore_layout as layout


def store_op(op: layout.Op) -> ops.Op[Any]:
    """The client operation for one layout op; an rm of what is gone is fine
    (libxl ignores ``xs_rm``'s result, ENOENT included)."""
    if op.kind == "write":
        return ops.write(op.path, op.value)
    if op.kind == "perms":
        return ops.set_perms(op.path, op.perms)
    if op.kind == "rm":
        return ops.ignore_enoent(ops.rm(op.path))
    raise ValueError(f"unknown store op {op.kind}")


def apply_ops(xs: XsSyncClient, layout_ops: list[layout.Op], tx_id: int = 0) -> None:
    """All of ``layout_ops`` in one batch; the first error raises."""
    for result in xs.batch([store_op(op) for op in layout_ops], tx_id):
        if isinstance(result, XsError):
            raise result


def domain_names(xs: XsSyncClient, tx_id: int = 0) -> dict[int, str]:
    """Every domain's name (two round trips for up to ~1000 domains)."""
    try:
        children = xs.directory("/local/domain", tx_id)
    except XsError:
        return {}
    domids = [int(c) for c in children if c.isdigit() and c.isascii()]
    names = read_many(xs, [f"/local/domain/{d}/name" for d in domids], tx_id)
    return {d: n for d, n in zip(domids, names) if n is not None}


def read(xs: XsSyncClient, path: str, tx_id: int = 0) -> str | None:
    """A node's value, or None when it cannot be read."""
    return read_many(xs, [path], tx_id)[0]


def read_many(xs: XsSyncClient, paths: list[str], tx_id: int = 0) -> list[str | None]:
    """Several nodes in one round trip (None for those that cannot be read)."""
    results = xs.batch([ops.read(p) for p in paths], tx_id)
    return [None if isinstance(r, XsError) else r.decode("utf-8", "replace") for r in results]
