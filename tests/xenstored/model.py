"""A deliberately naive reference model of XenStore, for tests/xenstored/test_model.py.

Written from the spec, sharing no code with ``xenstored/``:
``docs/misc/xenstore.txt`` (paths, READ/WRITE/MKDIR/RM/DIRECTORY, perms,
watches, transactions) and ``docs/misc/xenstore-paths.pandoc``; where those are silent, cxenstored (``tools/xenstored/core.c``,
``transaction.c``, ``watch.c``) decides.

* The store is one ``dict`` path -> :class:`MNode` (value, perms). Children
  are not stored: they are the keys whose parent is the path (recomputed by
  scanning, no recursion anywhere).
* Each existing path has a version, renewed by every change of the node
  (value, perms, a child added or removed); a missing path has version
  ``None``. This is cxenstored's generation count.
* A transaction is the set of node states it changed (``writes``, applied
  over the main dict to give its view) plus the version of every path it
  touched at first touch (``seen``). Commit fails with EAGAIN iff a seen
  path's version differs now (cxenstored: only a change *since first
  access* conflicts, and a node missing then and now does not).
* Snapshot per node (cxenstored ``access_node`` copies a node into the
  transaction at its first access, read or write): what a transaction
  sees of a node it has touched is that node as it was at first touch
  (``snap``: the node and its child names) plus its own changes; writes by
  others afterwards do not show through. A node first touched after an
  outside change shows the new state, and the commit then succeeds if
  nothing it touched changed later (which a whole-store snapshot taken at
  start, what docs/misc/xenstore.txt describes, could not express). Once a
  seen path has changed the transaction is *doomed* (it must end in
  EAGAIN; see ``Model.doomed`` for a path it perhaps touched); its view mixes old and new nodes, so of its replies the model
  checks only READ, GET_PERMS and DIRECTORY of an existing node it has
  already touched, which the snapshot rule decides alone.
  A touched node's child list is its own (``kids``): the names it had at
  first touch, changed only when the transaction itself creates a child
  below it or removes one (cxenstored ``construct_node`` -> ``add_child``
  and ``rm_node`` -> ``delete_child`` on the transaction's copy of the
  parent). So in a doomed view a node need not list a child that exists
  for the transaction: one first touched after an outside creation, as
  ``/a/w`` in "T: DIRECTORY /a; outside: WRITE /a/w/f; T: MKDIR /a/w/v"
  (cxenstored 4.17 then lists nothing under ``/a`` in T, and ``f v`` under
  ``/a/w``).
* Permissions: privileged or owner get everything; else the first later
  entry naming the domain; else entry 0's letter. A missing node gives
  ENOENT, or EACCES when the nearest existing ancestor is unreadable.
  Created nodes copy the nearest existing ancestor's perms, with an
  unprivileged creator as owner. Only the privileged change an owner (EPERM).
* Quotas (unprivileged only): nodes per owner, node size (value + child
  names with their nuls + 8 bytes per perm entry), permission entries,
  open transactions, distinct nodes touched by one transaction.

Where the spec is silent the model takes our core's choice, noting
cxenstored's: a missing node's errno always looks at *read* access to the
nearest existing ancestor (cxenstored: the access asked for, WRITE for RM
and SET_PERMS); RM of a missing child of an unreadable parent is EACCES
(cxenstored: of an unwritable one); SET_PERMS checks node-permissions
after the owner (cxenstored: before looking the node up); node size has no
16-byte header (cxenstored counts one).

Every operation returns a list of :class:`Candidate` outcomes: usually one;
several where the spec allows a choice the model cannot see (which of the
nodes of a failed operation a transaction had touched before the quota
stopped it). The test matches the real reply against them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

Perms = tuple[tuple[str, int], ...]  # (("n", 0), ("r", 1)) is "n0 r1"
READ, WRITE = 1, 2
LETTER_BITS = {"n": 0, "r": READ, "w": WRITE, "b": READ | WRITE}
ROOT_PERMS: Perms = (("n", 0),)
INITIAL_PATHS = ("/", "/tool", "/tool/xenstored")  # reference §1.8 "Fresh store"
PERM_ENTRY_SIZE = 8  # sizeof(struct xs_permissions)
_PERM_RE = re.compile(r"[nrwb](0|[1-9][0-9]{0,4})\Z")

# Known deviations of the core the model can be told to follow (see the
# strict-xfail tests in test_model.py): name -> what the spec says.
PARENT_SIZE = "parent-size"  # spec: a parent grown by a new child obeys node-size


class MErr(Exception):
    def __init__(self, name: str, why: str = "") -> None:
        super().__init__(f"{name} ({why})" if why else name)
        self.name = name
        self.why = why


@dataclass(frozen=True)
class MNode:
    value: bytes
    perms: Perms


@dataclass(frozen=True)
class Limits:
    nodes: int
    transactions: int
    transaction_nodes: int
    node_size: int
    node_permissions: int


# -- paths and perms ---------------------------------------------------------------
def parent(p: str) -> str:
    head = p.rsplit("/", 1)[0]
    return head or "/"


def basename(p: str) -> str:
    return p.rsplit("/", 1)[1]


def ancestors(p: str) -> list[str]:
    """Nearest first: ``/a/b/c`` -> ``/a/b, /a, /``."""
    out = []
    while p != "/":
        p = parent(p)
        out.append(p)
    return out


def below(p: str, w: str) -> bool:
    """``p`` lies strictly below ``w``."""
    return p != w and (w == "/" or p.startswith(w + "/"))


def levels(p: str, w: str) -> int:
    rel = p[1:] if w == "/" else p[len(w) + 1:]
    return rel.count("/") + 1


def children(nodes: dict[str, MNode], p: str) -> list[str]:
    return [basename(q) for q in nodes if q != "/" and parent(q) == p]


def descendants(nodes: dict[str, MNode], p: str) -> list[str]:
    return [q for q in nodes if below(q, p)]


def perm_strings(perms: Perms) -> list[str]:
    return [f"{letter}{domid}" for letter, domid in perms]


def parse_perms(items: list[str]) -> Perms | None:
    """None when the list is empty or an entry is malformed (EINVAL)."""
    if not items or not all(_PERM_RE.match(s) and int(s[1:]) <= 0xFFFF for s in items):
        return None
    return tuple((s[0], int(s[1:])) for s in items)


@dataclass(frozen=True)
class Caller:
    domid: int
    privileged: bool


def bits(caller: Caller, perms: Perms) -> int:
    if caller.privileged or caller.domid == perms[0][1]:
        return READ | WRITE
    for letter, domid in perms[1:]:
        if domid == caller.domid:
            return LETTER_BITS[letter]
    return LETTER_BITS[perms[0][0]]


def can_read(caller: Caller, perms: Perms | None) -> bool:
    return perms is not None and bool(bits(caller, perms) & READ)


def node_size(value: bytes, names: list[str], perms: Perms) -> int:
    return len(value) + sum(len(n) + 1 for n in names) + PERM_ENTRY_SIZE * len(perms)


# -- one operation on one view -------------------------------------------------------
@dataclass
class Fire:
    """A change watches hear of. ``node``: write/create/perms; ``rm``: a removal
    (``desc``: the removed descendants and their perms)."""

    path: str
    kind: str
    before: Perms | None
    after: Perms | None
    desc: dict[str, Perms] = field(default_factory=dict)


class Ctx:
    """An operation's scratch state: a private copy of the view, what it
    touched (looked at), what it changed and the watch fires it causes."""

    def __init__(self, view: dict[str, MNode], caller: Caller, limits: Limits,
                 excuse: frozenset[str]) -> None:
        self.view = dict(view)
        self.caller = caller
        self.limits = limits
        self.excuse = excuse
        self.touched: dict[str, None] = {}
        self.modified: dict[str, None] = {}
        self.fires: list[Fire] = []
        self.created: list[str] = []  # new nodes, parents first
        self.removed: list[str] = []  # root of a removed subtree

    def get(self, p: str) -> MNode | None:
        self.touched[p] = None
        return self.view.get(p)

    def put(self, p: str, node: MNode) -> None:
        self.view[p] = node
        self.modified[p] = None

    def delete(self, p: str) -> None:
        del self.view[p]
        self.modified[p] = None

    def owned(self, domid: int) -> int:
        return sum(1 for n in self.view.values() if n.perms[0][1] == domid)

    def check_size(self, value: bytes, names: list[str], perms: Perms) -> None:
        if not self.caller.privileged and node_size(value, names, perms) > self.limits.node_size:
            raise MErr("ENOSPC", "node-size")


def missing_error(ctx: Ctx, p: str) -> MErr:
    for a in ancestors(p):
        node = ctx.get(a)
        if node is not None:
            return MErr("ENOENT" if can_read(ctx.caller, node.perms) else "EACCES")
    raise AssertionError("the root always exists")


def lookup(ctx: Ctx, p: str, want: int) -> MNode:
    node = ctx.get(p)
    if node is None:
        raise missing_error(ctx, p)
    if want & ~bits(ctx.caller, node.perms):
        raise MErr("EACCES")
    return node


def op_read(ctx: Ctx, p: str) -> bytes:
    return lookup(ctx, p, READ).value


def op_directory(ctx: Ctx, p: str) -> bytes:
    lookup(ctx, p, READ)
    return b"".join(c.encode() + b"\0" for c in children(ctx.view, p))


def op_get_perms(ctx: Ctx, p: str) -> bytes:
    perms = lookup(ctx, p, READ).perms
    return b"".join(s.encode() + b"\0" for s in perm_strings(perms))


def _create(ctx: Ctx, p: str, value: bytes) -> None:
    missing = [p]
    for a in ancestors(p):
        anc = ctx.get(a)
        if anc is not None:
            break
        missing.append(a)
    if not bits(ctx.caller, anc.perms) & WRITE:
        raise MErr("EACCES")
    perms = anc.perms
    if not ctx.caller.privileged:
        perms = ((perms[0][0], ctx.caller.domid),) + perms[1:]
        ctx.check_size(value, [], perms)
        if PARENT_SIZE not in ctx.excuse:
            ctx.check_size(anc.value, children(ctx.view, a) + [basename(missing[-1])], anc.perms)
        if ctx.owned(ctx.caller.domid) + len(missing) > ctx.limits.nodes:
            raise MErr("ENOSPC", "nodes")
    ctx.put(a, anc)  # gains a child: a change of the node (its version)
    for q in reversed(missing):
        ctx.put(q, MNode(value if q == p else b"", perms))
        ctx.created.append(q)
    ctx.fires.append(Fire(p, "node", None, perms))


def op_write(ctx: Ctx, p: str, value: bytes) -> bytes:
    node = ctx.get(p)
    if node is None:
        _create(ctx, p, value)
        return b"OK\0"
    if not bits(ctx.caller, node.perms) & WRITE:
        raise MErr("EACCES")
    ctx.check_size(value, children(ctx.view, p), node.perms)
    ctx.put(p, MNode(value, node.perms))
    ctx.fires.append(Fire(p, "node", node.perms, node.perms))
    return b"OK\0"


def op_mkdir(ctx: Ctx, p: str) -> bytes:
    node = ctx.get(p)
    if node is None:
        _create(ctx, p, b"")
    elif not bits(ctx.caller, node.perms) & WRITE:
        raise MErr("EACCES")
    return b"OK\0"  # an existing node is left alone, and nobody hears of it


def op_rm(ctx: Ctx, p: str) -> bytes:
    node = ctx.get(p)
    if node is None:
        par = ctx.get(parent(p))
        if par is None:
            raise missing_error(ctx, p)
        if not can_read(ctx.caller, par.perms):
            raise MErr("EACCES")
        return b"OK\0"  # not an error if the node is missing but its parent is not
    if not bits(ctx.caller, node.perms) & WRITE:
        raise MErr("EACCES")
    par = ctx.get(parent(p))
    if par is None:
        # only in a doomed transaction's view: the node was copied, its parent
        # removed by others before the transaction first touched it
        raise MErr("EINVAL", "parent missing")  # cxenstored rm_node
    desc = {q: ctx.view[q].perms for q in descendants(ctx.view, p)}
    for q in desc:
        ctx.get(q)
    for q in [*desc, p]:
        ctx.delete(q)
    ctx.removed.append(p)
    ctx.put(parent(p), par)  # loses a child
    ctx.fires.append(Fire(p, "rm", node.perms, None, desc))
    return b"OK\0"


def op_set_perms(ctx: Ctx, p: str, items: list[str]) -> bytes:
    perms = parse_perms(items)
    if perms is None:
        raise MErr("EINVAL")  # before any node is looked at
    node = ctx.get(p)
    if node is None:
        raise missing_error(ctx, p)
    if not ctx.caller.privileged:
        owner = node.perms[0][1]
        if ctx.caller.domid != owner:
            raise MErr("EACCES")
        if perms[0][1] != owner:
            raise MErr("EPERM")
        if len(perms) > ctx.limits.node_permissions:
            raise MErr("ENOSPC", "node-permissions")
        ctx.check_size(node.value, children(ctx.view, p), perms)
    ctx.put(p, MNode(node.value, perms))
    ctx.fires.append(Fire(p, "node", node.perms, perms))
    return b"OK\0"


def removed_perms(f: Fire, p: str) -> Perms | None:
    """Perms of the removed node at ``p`` (below ``f.path``), or of its nearest
    removed ancestor when nothing existed at ``p``."""
    while p not in f.desc and p != f.path:
        p = parent(p)
    return f.desc.get(p, f.before)


# -- connections, transactions, watches -------------------------------------------------
@dataclass
class MWatch:
    path: str  # absolute
    token: bytes
    relative: bool
    depth: int | None


@dataclass
class MTx:
    limit: int | None  # transaction-nodes quota (None: privileged)
    writes: dict[str, MNode | None] = field(default_factory=dict)
    seen: dict[str, int | None] = field(default_factory=dict)
    maybe: dict[str, int | None] = field(default_factory=dict)  # perhaps touched
    #: first touch of each seen path: (the node then, its child names then)
    snap: dict[str, tuple[MNode | None, frozenset[str]]] = field(default_factory=dict)
    #: child names of each snapped node as the transaction sees them now:
    #: those at first touch, plus its own creations below it, less its own removals
    kids: dict[str, frozenset[str]] = field(default_factory=dict)
    fires: list[Fire] = field(default_factory=list)
    lost: bool = False  # the model could not follow a doomed transaction


@dataclass
class MConn:
    caller: Caller
    watches: dict[tuple[str, bytes], MWatch] = field(default_factory=dict)
    txs: dict[int, MTx] = field(default_factory=dict)

    @property
    def home(self) -> str:
        return f"/local/domain/{self.caller.domid}"


Reply = tuple[str, object]  # ("ok", payload) or ("err", "ENOENT")
Event = tuple[str, str, bytes]  # (connection name, event path as shown, token)


@dataclass
class Candidate:
    """One acceptable outcome: the reply (None: any), what the model does if
    it is the one, and the watch events it implies (``must`` ⊆ sent ⊆ ``may``)."""

    reply: Reply | None
    apply: Callable[[Reply], None] = lambda actual: None
    must: frozenset[Event] = frozenset()
    may: frozenset[Event] = frozenset()
    note: str = ""
    #: outside commits: exactly the events our core sends (``must`` plus the
    #: allowed spurious ones it chooses to send); None: not predicted
    exact: frozenset[Event] | None = frozenset()


class Model:
    def __init__(self, limits: Limits, excuse: frozenset[str] = frozenset()) -> None:
        self.limits = limits
        self.excuse = excuse
        self.main: dict[str, MNode] = {p: MNode(b"", ROOT_PERMS) for p in INITIAL_PATHS}
        self.counter = 0
        self.version: dict[str, int] = {}
        for p in INITIAL_PATHS:
            self._bump(p)
        self.conns: dict[str, MConn] = {}

    # -- versions ---------------------------------------------------------------------
    def _bump(self, p: str) -> None:
        self.counter += 1
        self.version[p] = self.counter

    def version_of(self, p: str) -> int | None:
        return self.version[p] if p in self.main else None

    def _install(self, changes: dict[str, MNode | None]) -> None:
        for p, node in changes.items():
            if node is None:
                self.main.pop(p, None)
                self.version.pop(p, None)
            else:
                self.main[p] = node
                self._bump(p)

    # -- transactions -------------------------------------------------------------------
    def view(self, tx: MTx | None) -> dict[str, MNode]:
        if tx is None:
            return self.main
        # the snapshot rule: a touched node as at first touch, then own changes
        merged = dict(self.main)
        for p, (node, _kids) in tx.snap.items():
            if node is None:
                merged.pop(p, None)
            else:
                merged[p] = node
        for p, n in tx.writes.items():
            if n is None:
                merged.pop(p, None)
            else:
                merged[p] = n
        return merged

    def conflicts(self, marks: dict[str, int | None]) -> list[str]:
        return [p for p, v in marks.items() if self.version_of(p) != v]

    def doomed(self, tx: MTx) -> bool:
        """The model no longer knows the transaction's whole view: a node it
        touched changed since (it must end in EAGAIN), or one it *perhaps*
        touched did (``maybe``: a request stopped by the transaction-nodes
        quota touched some of its nodes first, as cxenstored ``access_node``
        does; if that node was one of them, the transaction sees it as then
        and may end in EAGAIN)."""
        return tx.lost or bool(self.conflicts(tx.seen)) or bool(self.conflicts(tx.maybe))

    def _mark(self, marks: dict[str, int | None], paths) -> None:
        for p in paths:
            marks.setdefault(p, self.version_of(p))

    def _snap(self, tx: MTx, paths) -> None:
        """Record a first touch: the node as the live store has it now (a path
        the transaction has not touched yet is not in its writes either)."""
        for p in paths:
            if p in tx.snap or p in tx.maybe:
                continue
            if any(tx.writes.get(a, True) is None for a in ancestors(p)):
                # below a node the transaction removed: not there for it, even
                # if created outside since (the commit conflicts on the parent)
                tx.snap[p] = (None, frozenset())
            else:
                tx.snap[p] = (self.main.get(p), frozenset(children(self.main, p)))
            tx.kids[p] = tx.snap[p][1]

    @staticmethod
    def _relink(tx: MTx, ctx: Ctx) -> None:
        """The child lists a successful request changed: only the parent of
        each node it created or of the subtree it removed (a new node starts
        with none)."""
        for q in ctx.created:
            if q in tx.kids:
                tx.kids[q] = frozenset()
            if parent(q) in tx.kids:
                tx.kids[parent(q)] |= {basename(q)}
        for q in ctx.removed:
            if parent(q) in tx.kids:
                tx.kids[parent(q)] -= {basename(q)}

    def snapshot_node(self, tx: MTx, p: str) -> tuple[MNode, frozenset[str]] | None:
        """The node at ``p`` as ``tx`` sees it by the snapshot rule (None: not
        decided by it: never touched, perhaps touched, or absent)."""
        if p not in tx.snap:
            return None
        node = tx.writes[p] if p in tx.writes else tx.snap[p][0]
        if node is None:
            return None
        return node, tx.kids[p]

    def _snapshot_reply(self, tx: MTx, caller: Caller, fn, p: str) -> Reply | None:
        got = self.snapshot_node(tx, p)
        if got is None or fn not in (op_read, op_get_perms, op_directory):
            return None
        node, kids = got
        if not bits(caller, node.perms) & READ:
            return ("err", "EACCES")
        if fn is op_read:
            return ("ok", node.value)
        if fn is op_get_perms:
            return ("ok", b"".join(s.encode() + b"\0" for s in perm_strings(node.perms)))
        return ("ok", b"".join(c.encode() + b"\0" for c in sorted(kids)))

    # -- node operations ------------------------------------------------------------------
    def node_op(self, cname: str, tx_id: int, fn: Callable[..., bytes], *args) -> list[Candidate]:
        """Candidates for a node request ``fn(ctx, *args)`` in transaction ``tx_id``."""
        conn = self.conns[cname]
        if tx_id and tx_id not in conn.txs:
            return [Candidate(("err", "ENOENT"), note="no such transaction")]
        tx = conn.txs[tx_id] if tx_id else None
        ctx = Ctx(self.view(tx), conn.caller, self.limits, self.excuse)
        ctx.fn, ctx.path = fn, args[0] if args else None
        doomed = tx is not None and self.doomed(tx)
        why = ""
        try:
            reply: Reply = ("ok", fn(ctx, *args))
        except MErr as e:
            reply, why = ("err", e.name), e.why
        except (AssertionError, KeyError):
            if not doomed:
                raise
            reply = ("err", "model lost")  # an incoherent view: give up on this transaction
        if tx is not None:
            return self._in_transaction(tx, ctx, reply, why, doomed)
        if reply[0] == "err":
            return [Candidate(reply, note=why)]
        changes = {p: ctx.view.get(p) for p in ctx.modified}
        must, may, exact = self.events(ctx.fires, self.main, ctx.view)
        return [Candidate(reply, lambda actual: self._install(changes), must, may, exact=exact)]

    def _in_transaction(self, tx: MTx, ctx: Ctx, reply: Reply, why: str,
                        doomed: bool) -> list[Candidate]:
        touched = list(ctx.touched)
        changes = {p: ctx.view.get(p) for p in ctx.modified}

        def done(actual: Reply) -> None:
            self._snap(tx, touched)
            self._mark(tx.seen, touched)
            if actual[0] == "ok":
                if reply[0] != "ok":
                    tx.lost = True  # only possible while doomed
                    return
                tx.writes.update(changes)
                tx.fires.extend(ctx.fires)
                self._relink(tx, ctx)

        def quota_stop(actual: Reply) -> None:
            self._mark(tx.maybe, touched)  # some of them, we cannot tell which

        if doomed:
            # replies of a doomed transaction are not compared, except what the
            # snapshot rule alone decides (a read-only look at a touched node)
            return [Candidate(snapped, done, note="doomed: snapshot view")
                    if (snapped := self._snapshot_reply(tx, ctx.caller, ctx.fn, ctx.path))
                    else Candidate(None, lambda actual: quota_stop(actual)
                                   if actual == ("err", "ENOSPC") else done(actual),
                                   note="doomed transaction: reply not compared")]
        normal = Candidate(reply, done, note=why)
        stopped = Candidate(("err", "ENOSPC"), quota_stop,
                            note="partial" if reply[0] == "ok" and changes else "transaction-nodes")
        if tx.limit is None:
            return [normal]
        low = len(set(tx.seen) | set(touched))  # touched for sure, after this request
        high = len(set(tx.seen) | set(tx.maybe) | set(touched))  # perhaps
        if low > tx.limit:
            return [stopped]
        if high > tx.limit:
            # the same ENOSPC either way (e.g. the nodes quota): the model
            # cannot tell whether the request touched all its nodes first
            return [stopped] if reply == stopped.reply else [normal, stopped]
        return [normal]

    # -- transaction start/end ---------------------------------------------------------------
    def tx_start(self, cname: str) -> list[Candidate]:
        conn = self.conns[cname]
        if not conn.caller.privileged and len(conn.txs) + 1 > self.limits.transactions:
            return [Candidate(("err", "ENOSPC"), note="transactions")]
        limit = None if conn.caller.privileged else self.limits.transaction_nodes

        def started(actual: Reply) -> None:
            payload = actual[1]
            assert isinstance(payload, bytes) and payload.endswith(b"\0"), payload
            tx_id = int(payload[:-1])
            assert tx_id != 0 and tx_id not in conn.txs, f"bad transaction id {tx_id}"
            conn.txs[tx_id] = MTx(limit)

        return [Candidate(("ok", "<txid>"), started)]

    def tx_end(self, cname: str, tx_id: int, commit: bool) -> list[Candidate]:
        conn = self.conns[cname]
        tx = conn.txs.get(tx_id) if tx_id else None
        if tx is None:
            return [Candidate(("err", "ENOENT"))]

        def gone(actual: Reply) -> None:
            del conn.txs[tx_id]

        if not commit:
            return [Candidate(("ok", b"OK\0"), gone)]
        if tx.lost:
            return [Candidate(("err", "EAGAIN"), gone), Candidate(("err", "ENOSPC"), gone)]
        post = dict(self.view(tx))
        domid = conn.caller.domid
        over_quota = False
        if not conn.caller.privileged:
            owned = sum(1 for n in post.values() if n.perms[0][1] == domid)
            was = sum(1 for n in self.main.values() if n.perms[0][1] == domid)
            over_quota = owned > was and owned > self.limits.nodes
        if self.conflicts(tx.seen):
            # the quota check comes first but sees an incoherent view: either error
            return [Candidate(("err", "EAGAIN"), gone), Candidate(("err", "ENOSPC"), gone)]
        if over_quota:
            return [Candidate(("err", "ENOSPC"), gone, note="nodes at commit")]
        writes = dict(tx.writes)

        def committed(actual: Reply) -> None:
            gone(actual)
            self._install(writes)

        must, may, _ = self.events(tx.fires, self.main, post)
        ok = Candidate(("ok", b"OK\0"), committed, must, may, exact=None)
        if self.conflicts(tx.maybe):
            return [ok, Candidate(("err", "EAGAIN"), gone)]
        return [ok]

    # -- watches ---------------------------------------------------------------------------
    def watch(self, cname: str, path: str, token: bytes, relative: bool,
              depth: int | None) -> list[Candidate]:
        conn = self.conns[cname]
        if (path, token) in conn.watches:
            return [Candidate(("err", "EEXIST"))]
        w = MWatch(path, token, relative, depth)

        def added(actual: Reply) -> None:
            conn.watches[(path, token)] = w

        first = frozenset({(cname, self.shown(conn, w, path), token)})
        return [Candidate(("ok", b"OK\0"), added, first, first, exact=first)]

    def unwatch(self, cname: str, path: str, token: bytes) -> list[Candidate]:
        conn = self.conns[cname]
        if (path, token) not in conn.watches:
            return [Candidate(("err", "ENOENT"))]
        return [Candidate(("ok", b"OK\0"), lambda actual: conn.watches.pop((path, token)))]

    def reset_watches(self, cname: str) -> list[Candidate]:
        conn = self.conns[cname]

        def reset(actual: Reply) -> None:
            conn.watches.clear()
            conn.txs.clear()

        return [Candidate(("ok", b"OK\0"), reset)]

    @staticmethod
    def shown(conn: MConn, w: MWatch, epath: str) -> str:
        return epath[len(conn.home) + 1:] if w.relative else epath

    def events(self, fires: list[Fire], pre: dict[str, MNode], post: dict[str, MNode]
               ) -> tuple[frozenset[Event], frozenset[Event], frozenset[Event]]:
        """(must, may, exact) events for ``fires`` taking the store from ``pre``
        to ``post``, given the watches set now (see :func:`judge`)."""
        must: set[Event] = set()
        may: set[Event] = set()
        exact: set[Event] = set()
        for cname, conn in self.conns.items():
            for w in conn.watches.values():
                for f in fires:
                    verdict = judge(conn.caller, w, f, pre, post)
                    if verdict is None:
                        continue
                    epath, is_must, is_may, is_exact = verdict
                    ev = (cname, self.shown(conn, w, epath), w.token)
                    for flag, bucket in ((is_must, must), (is_may, may), (is_exact, exact)):
                        if flag:
                            bucket.add(ev)
        return frozenset(must), frozenset(may), frozenset(exact)


def matches(epath: str, w: MWatch) -> bool:
    """``epath`` is the watched path or lies below it, within the watch's depth."""
    if epath == w.path:
        return True
    return below(epath, w.path) and (w.depth is None or levels(epath, w.path) <= w.depth)


def judge(c: Caller, w: MWatch, f: Fire, pre: dict[str, MNode], post: dict[str, MNode]
          ) -> tuple[str, bool, bool, bool] | None:
    """Does change ``f`` concern watch ``w`` of caller ``c``: (event path, must,
    may, exact), or None (docs/misc/xenstore.txt "WATCH", "WATCH_EVENT").

    Must: a watcher that can read the changed node hears of it; a watcher of
    a removed descendant it could read hears of it, even when the removed
    root was unreadable ("an application may rely on being sent a watch when
    a path which it _is_ able to read is deleted even if that leaves only a
    nonexistent unreadable parent"). Inside a transaction the node must
    also be so before (removed) or after (changed) the commit.
    May: spurious events are allowed ("Watches may be triggered
    spuriously"), but only on a matching watch and for a node the watcher
    could read before or after the change; a watched path below a removed
    root that did not exist is judged by its nearest removed ancestor.
    Exact, what our core sends for one request outside commits: must, plus
    the watched paths below a removed root that did not exist (cxenstored
    tells only the watchers of removed nodes; the spec allows either).
    """
    if matches(f.path, w):
        if f.kind == "node":
            now = post.get(f.path)
            must = can_read(c, f.after) and now is not None and now.perms == f.after
            return f.path, must, must or can_read(c, f.before) or can_read(c, f.after), must
        was = pre.get(f.path)
        readable = can_read(c, f.before)
        must = readable and was is not None and can_read(c, was.perms) and f.path not in post
        return f.path, must, readable, must
    if f.kind == "rm" and below(w.path, f.path):
        mine = f.desc.get(w.path)
        was = pre.get(w.path)
        must = (can_read(c, mine) and was is not None and can_read(c, was.perms)
                and w.path not in post)
        may = must or can_read(c, removed_perms(f, w.path))
        return w.path, must, may, must or (mine is None and may)
    return None
