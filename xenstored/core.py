"""The XenStore server core: one request in, replies and events out.

Pure and synchronous (no trio, no sockets). A transport hands
:meth:`XenstoreCore.handle` a connection and a parsed message and gets back
the messages to send, to that connection and to watchers elsewhere. The
dispatch table, given to the constructor (``xenstored.handlers.TABLE``),
maps each message type to its handler and flags, as cxenstored's
``wire_funcs`` does (privileged-only, ignores ``tx_id``); handlers raise
:class:`XsError` and :meth:`handle` alone turns errors into ``XS_ERROR``
replies. Imports flow one way: handlers -> core, handlers -> control,
both -> ``xenstored.protocol``; the core imports neither.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hypervisord.public.io.xs_wire import (
    SPECIAL_INTRODUCE_DOMAIN,
    SPECIAL_RELEASE_DOMAIN,
    XENSTORE_PAYLOAD_MAX,
    XENSTORE_SERVER_FEATURE_WATCHDEPTH,
    XsdSockmsgType as T,
)
from xenstored import ops
from xenstored import path as xpath
from xenstored.connection import Connection
from xenstored.domain import Domains
from xenstored.ops import Caller, Fire
from xenstored.perms import PERM_READ, Perms
from libxen.xenstore.errors import XsError
from libxen.xenstore.wire import HEADER_SIZE, Message, encode, join_strings
from xenstored.quota import Quotas
from xenstored.store import Store
from xenstored.transaction import Transaction
from xenstored.watch import Watch, WatchRegistry

log = logging.getLogger("xenstored")

SERVER_FEATURES = XENSTORE_SERVER_FEATURE_WATCHDEPTH

Outgoing = list[tuple[Connection, bytes]]


@dataclass(frozen=True, slots=True)
class Op:
    handler: Callable
    privileged: bool = False  # dom0 only
    uses_tx: bool = True  # False: tx_id is ignored (XS_FLAG_NOTID)


class XenstoreCore:
    def __init__(self, table: Mapping[int, Op], store: Store | None = None,
                 quotas: Quotas | None = None) -> None:
        #: message type -> Op; given by the caller (``xenstored.handlers.TABLE``)
        #: so the core never imports its handlers
        self.table = table
        self.store = store or Store()
        self.quotas = quotas or Quotas()
        self.domains = Domains(self.quotas)
        self.watches = WatchRegistry()
        self.connections: dict[int, Connection] = {}
        #: called with (domid, mfn, port) after XS_INTRODUCE, for a ring transport
        self.on_introduce: Callable[[int, int, int], None] | None = None
        #: called with (domid,) after a domain's release
        self.on_release: Callable[[int], None] | None = None

    # -- connections ------------------------------------------------------------
    def connect(self, domid: int = 0, privileged: bool = True, name: str = "") -> Connection:
        conn = Connection(domid, privileged, self.domains.quotas_for(domid), name)
        dom = self.domains.get(domid)
        if dom is not None:
            conn.target = dom.target
        self.connections[conn.conn_id] = conn
        return conn

    def disconnect(self, conn: Connection) -> None:
        """Forget a connection: its transactions abort, its watches go."""
        conn.closed = True
        conn.transactions.clear()
        self.watches.remove_all(conn, conn.watches)
        conn.watches.clear()
        self.connections.pop(conn.conn_id, None)

    def caller(self, conn: Connection) -> Caller:
        return Caller(conn.domid, conn.privileged, conn.quotas, conn.target)

    # -- the one entry point -------------------------------------------------------
    def handle(self, conn: Connection, msg: Message) -> Outgoing:
        out: Outgoing = []
        op = self.table.get(msg.type)
        try:
            if op is None:
                raise XsError("ENOSYS", f"unknown message type {msg.type}")
            if op.privileged and not conn.privileged:
                raise XsError("EACCES", f"{msg.type_name} is for dom0 only")
            tx = self._transaction(conn, msg) if op.uses_tx else None
            payload = op.handler(self, conn, msg, tx, out)
            if len(out) > 1:
                out[:] = unique_events(out)
            if len(payload) > XENSTORE_PAYLOAD_MAX:
                raise XsError("E2BIG", "reply too large")
            out.insert(0, (conn, encode(msg.type, msg.req_id, msg.tx_id, payload)))
        except XsError as e:
            log.debug("%s %s -> %s", conn, msg.type_name, e)
            out.insert(0, (conn, encode(T.XS_ERROR, msg.req_id, msg.tx_id, e.payload())))
        return out

    def _transaction(self, conn: Connection, msg: Message) -> Transaction | None:
        if msg.tx_id == 0:
            return None
        tx = conn.transactions.get(msg.tx_id)
        if tx is None:
            raise XsError("ENOENT", f"no transaction {msg.tx_id}")
        return tx

    # -- helpers for handlers ----------------------------------------------------------
    def path_arg(self, conn: Connection, raw: bytes, special: bool = False,
                 any_special: bool = False) -> str:
        limit = None if conn.privileged else conn.quotas.path_max
        return xpath.canonical(xpath.decode(raw), conn.domid, allow_special=special,
                               any_special=any_special, path_max=limit)

    def fire(self, fires: list[Fire], out: Outgoing) -> None:
        """Queue the watch events ``fires`` cause, for watchers allowed to see them."""
        for f in fires:
            for watch, epath in self.watches.match(f.path, f.recursive):
                watcher = watch.owner
                assert isinstance(watcher, Connection)
                if not watcher.privileged and not (
                    ops.access(self.caller(watcher), f.perms_of(epath)) & PERM_READ
                ):
                    continue
                self._queue_event(out, watch, epath)

    def _queue_event(self, out: Outgoing, watch: Watch, epath: str) -> None:
        data = self.event(watch, epath)
        if data is not None:
            out.append((watch.owner, data))

    def event(self, watch: Watch, epath: str) -> bytes | None:
        """The XS_WATCH_EVENT for ``watch``; None if it would exceed the payload limit."""
        assert isinstance(watch.owner, Connection)
        shown = xpath.relative_to(epath, watch.owner.domid) if watch.relative else epath
        payload = join_strings([shown.encode(), watch.token])
        if len(payload) > XENSTORE_PAYLOAD_MAX:  # XSA-324: never send an oversized message
            log.warning("%s: dropped a watch event over %d bytes", watch.owner, XENSTORE_PAYLOAD_MAX)
            return None
        return encode(T.XS_WATCH_EVENT, 0, 0, payload)

    def fire_special(self, special: str, domid: int, out: Outgoing) -> None:
        """@introduceDomain/@releaseDomain: privileged or permitted watchers only.

        A watch with a depth (WATCHDEPTH) is told ``@special/<domid>``; a
        watch on ``@releaseDomain/<domid>`` hears about that domain only.
        """
        node = self.store.get(special)
        assert node is not None
        matches = list(self.watches.match(special, False))
        matches += self.watches.match(f"{special}/{domid}", False)
        for watch, epath in matches:
            watcher = watch.owner
            assert isinstance(watcher, Connection)
            if watcher.privileged or ops.access(self.caller(watcher), node.perms) & PERM_READ:
                shown = f"{special}/{domid}" if watch.depth or watch.path != special else special
                self._queue_event(out, watch, shown)

    def mutate(self, conn: Connection, tx: Transaction | None,
               change: Callable[[ops.Layer], list[Fire]], out: Outgoing) -> None:
        """Run a node change directly or inside ``tx``; fire or defer its events."""
        if tx is not None:
            tx.queue_fires(change(tx))
            return
        fires = change(self.store)
        self.fire(fires, out)

    # -- domains ------------------------------------------------------------------------
    def release_domain(self, domid: int, out: Outgoing) -> None:
        """A domain is gone: its nodes, watches and connection go, watchers hear."""
        dom = self.domains.release(domid)
        if dom is None:
            raise XsError("ENOENT", f"domain {domid} not introduced")
        for conn in list(self.connections.values()):
            if conn.domid == domid and not conn.privileged:
                self.disconnect(conn)
        # Watchers hear of every node removed, as for XS_RM (cxenstored
        # domain_tree_remove -> rm_node), then of @releaseDomain.
        self.fire(self.remove_domain_nodes(domid), out)
        self.fire_special(SPECIAL_RELEASE_DOMAIN, domid, out)
        if self.on_release:
            self.on_release(domid)

    def remove_domain_nodes(self, domid: int) -> list[Fire]:
        """XSA-419: nodes owned by a destroyed domain do not outlive it.

        Each topmost owned node goes with its subtree, like an XS_RM of it;
        returns the watch fires those removals cause.
        """
        fires: list[Fire] = []
        if domid == 0:
            return fires
        owned = [p for p, n in self.store.nodes.items()
                 if n.perms.owner == domid and not xpath.is_special(p)]
        for p in sorted(owned, key=len):
            node = self.store.get(p)
            if node is not None:
                perms = node.perms
                fires.append(Fire(p, True, perms, ops.remove_subtree(self.store, p)))
        # XSA-322: entries naming the dead domain must not grant anything to
        # a later domain that reuses its id.
        for p, node in list(self.store.nodes.items()):
            stale = [e for e in node.perms.entries[1:] if e.domid == domid]
            if stale:
                kept = tuple(e for e in node.perms.entries[1:] if e.domid != domid)
                self.store.set_perms(p, Perms((node.perms.entries[0],) + kept))
        return fires

    def introduce_domain(self, domid: int, mfn: int, port: int, out: Outgoing) -> None:
        dom = self.domains.get(domid)
        if dom is not None:
            if (dom.mfn, dom.port) != (mfn, port):
                raise XsError("EEXIST", f"domain {domid} already introduced")
            return
        self.domains.introduce(domid, mfn, port, SERVER_FEATURES)
        self.fire_special(SPECIAL_INTRODUCE_DOMAIN, domid, out)
        if self.on_introduce:
            self.on_introduce(domid, mfn, port)

    def reset_store(self) -> None:
        """Back to the initial tree (a new host boot): everything else goes."""
        initial = Store()
        for p in sorted((p for p in self.store.nodes if p not in initial.nodes), key=len):
            if self.store.get(p) is not None and not xpath.is_special(p):
                ops.remove_subtree(self.store, p)
        for p in ("@introduceDomain", "@releaseDomain"):
            self.store.set_perms(p, initial.nodes[p].perms)
        self.domains.by_id.clear()
        self.domains.pending_features.clear()

    # -- consistency (XS_CONTROL check) ----------------------------------------------
    def check(self) -> list[str]:
        return self.store.check()



def unique_events(out: Outgoing) -> Outgoing:
    """``out`` without repeats: one request queues an identical event for one
    connection once (cxenstored ``send_event`` drops an event identical to one
    already pending; two watches with one token on a node and its parent, or a
    node reached twice by one commit). Special paths (``@...``) are exempt, as
    there.
    """
    seen: set[tuple[int, bytes]] = set()
    kept: Outgoing = []
    for conn, data in out:
        if data[HEADER_SIZE:HEADER_SIZE + 1] != b"@":
            key = (id(conn), data)
            if key in seen:
                continue
            seen.add(key)
        kept.append((conn, data))
    return kept
