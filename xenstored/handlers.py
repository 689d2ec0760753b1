"""Handlers for every XenStore message type, and the dispatch table.

Each handler takes ``(core, conn, msg, tx, out)``, returns the reply
payload and may append watch events to ``out``; it raises ``XsError`` on
failure. Payload formats: ``docs/misc/xenstore.txt`` and
``xen/include/public/io/xs_wire.h``.
"""

from __future__ import annotations

from hypervisord.public.io.xs_wire import XENSTORE_PAYLOAD_MAX, XsdSockmsgType as T
from xenstored import ops
from xenstored.control import do_control, do_get_quota, do_set_quota
from xenstored.core import SERVER_FEATURES, Op, XenstoreCore
from xenstored.protocol.args import OK, c_atoi_unsigned, number, parse_perms, strings
from libxen.xenstore.errors import XsError
from xenstored.quota import exceeded
from xenstored.transaction import Transaction
from xenstored.watch import Watch


def _one_path(core, conn, msg, special=False) -> str:
    (raw,) = strings(msg.payload, 1)
    return core.path_arg(conn, raw, special)


def _layer(core, tx):
    return tx if tx is not None else core.store


def do_read(core, conn, msg, tx, out) -> bytes:
    return ops.read(_layer(core, tx), core.caller(conn), _one_path(core, conn, msg))


def _listing(children) -> bytes:
    """Child names, each nul-terminated: one join and one encode, not one per child."""
    return ("\0".join(children) + "\0").encode() if children else b""


def do_directory(core, conn, msg, tx, out) -> bytes:
    node = ops.directory(_layer(core, tx), core.caller(conn), _one_path(core, conn, msg))
    reply = _listing(node.children)
    if len(reply) > XENSTORE_PAYLOAD_MAX:
        raise XsError("E2BIG", "directory too large, use XS_DIRECTORY_PART")
    return reply


def do_directory_part(core, conn, msg, tx, out) -> bytes:
    raw_path, raw_off = strings(msg.payload, 2)
    path = core.path_arg(conn, raw_path)
    node = ops.directory(_layer(core, tx), core.caller(conn), path)
    # cxenstored send_directory_part: the offset is atoi()'d, never refused,
    # and one at or past the end answers "<gencnt>\0\0" (an empty last chunk)
    offset = c_atoi_unsigned(raw_off)
    listing = _listing(node.children)
    gen = str(node.generation).encode() + b"\0"
    if offset >= len(listing):
        return gen + b"\0"
    room = XENSTORE_PAYLOAD_MAX - len(gen) - 1
    chunk_end = offset
    while chunk_end < len(listing):
        nxt = listing.index(b"\0", chunk_end) + 1
        if nxt - offset > room:
            break
        chunk_end = nxt
    chunk = listing[offset:chunk_end]
    if chunk_end == len(listing):
        chunk += b"\0"  # the final chunk ends in an extra nul
    return gen + chunk


def do_get_perms(core, conn, msg, tx, out) -> bytes:
    path = _one_path(core, conn, msg, special=True)
    perms = ops.get_perms(_layer(core, tx), core.caller(conn), path)
    return b"".join(s.encode() + b"\0" for s in perms.strings())


def do_write(core, conn, msg, tx, out) -> bytes:
    raw_path, sep, value = msg.payload.partition(b"\0")
    if not sep:
        raise XsError("EINVAL", "write without a nul after the path")
    path = core.path_arg(conn, raw_path)
    caller = core.caller(conn)
    core.mutate(conn, tx, lambda layer: ops.write(layer, caller, path, value), out)
    return OK


def do_mkdir(core, conn, msg, tx, out) -> bytes:
    path = _one_path(core, conn, msg)
    caller = core.caller(conn)
    core.mutate(conn, tx, lambda layer: ops.mkdir(layer, caller, path), out)
    return OK


def do_rm(core, conn, msg, tx, out) -> bytes:
    path = _one_path(core, conn, msg)
    caller = core.caller(conn)
    core.mutate(conn, tx, lambda layer: ops.rm(layer, caller, path), out)
    return OK


def do_set_perms(core, conn, msg, tx, out) -> bytes:
    parts = strings(msg.payload, at_least=2)
    path = core.path_arg(conn, parts[0], special=True)
    perms = parse_perms(parts[1:])
    caller = core.caller(conn)
    core.mutate(conn, tx, lambda layer: ops.set_perms(layer, caller, path, perms), out)
    return OK


def check_watch_quota(conn) -> None:
    if not conn.privileged and exceeded(conn.quotas.watches, len(conn.watches) + 1):
        raise XsError("E2BIG", "watches quota")


def do_watch(core, conn, msg, tx, out) -> bytes:
    parts = strings(msg.payload)
    if len(parts) not in (2, 3):
        raise XsError("EINVAL", "watch takes a path, a token and an optional depth")
    raw_path, token = parts[0], parts[1]
    path = core.path_arg(conn, raw_path, special=True, any_special=True)
    depth = number(parts[2], 0xFFFF) if len(parts) == 3 else None
    check_watch_quota(conn)
    watch = Watch(conn, path, token, relative=not raw_path.startswith((b"/", b"@")), depth=depth)
    if not core.watches.add(watch):
        raise XsError("EEXIST", "watch already registered")
    conn.watches.append(watch)
    # The initial event follows the reply (docs/misc/xenstore.txt).
    initial = core.event(watch, path)
    if initial is not None:
        out.append((conn, initial))
    return OK


def do_unwatch(core, conn, msg, tx, out) -> bytes:
    raw_path, token = strings(msg.payload, 2)
    path = core.path_arg(conn, raw_path, special=True, any_special=True)
    watch = core.watches.remove(conn, path, token)
    if watch is None:
        raise XsError("ENOENT", "no such watch")
    conn.watches.remove(watch)
    return OK


def do_reset_watches(core, conn, msg, tx, out) -> bytes:
    core.watches.remove_all(conn, conn.watches)
    conn.watches.clear()
    conn.transactions.clear()
    return OK


def do_transaction_start(core, conn, msg, tx, out) -> bytes:
    if msg.tx_id != 0:
        if msg.tx_id in conn.transactions:
            raise XsError("EBUSY", "nested transactions are not supported")
        raise XsError("ENOENT", f"no transaction {msg.tx_id}")
    if not conn.may_start_transaction():
        raise XsError("ENOSPC", "transactions quota")
    tx_id = conn.new_tx_id()
    limit = None if conn.privileged else conn.quotas.transaction_nodes
    conn.transactions[tx_id] = Transaction(core.store, tx_id, node_limit=limit)
    return str(tx_id).encode() + b"\0"


def do_transaction_end(core, conn, msg, tx, out) -> bytes:
    (arg,) = strings(msg.payload, 1)
    if arg not in (b"T", b"F"):
        raise XsError("EINVAL", "transaction end takes T or F")
    if tx is None:
        raise XsError("ENOENT", "not in a transaction")
    del conn.transactions[tx.tx_id]
    if arg == b"T":
        if not conn.privileged:
            after = tx.owned(conn.domid)
            if tx.owner_delta[conn.domid] > 0 and exceeded(conn.quotas.nodes, after):
                raise XsError("ENOSPC", "nodes quota")
        tx.commit()
        core.fire(tx.commit_fires(), out)
    return OK


def do_introduce(core, conn, msg, tx, out) -> bytes:
    raw_domid, raw_mfn, raw_port = strings(msg.payload, 3)
    domid = number(raw_domid, 0x7FEF)
    if domid == 0:
        raise XsError("EINVAL", "dom0 is not introduced")
    core.introduce_domain(domid, number(raw_mfn, 2**64 - 1), number(raw_port), out)
    return OK


def do_release(core, conn, msg, tx, out) -> bytes:
    (raw,) = strings(msg.payload, 1)
    domid = number(raw, 0x7FEF)
    if domid == 0:
        raise XsError("EINVAL", "dom0 cannot be released")
    core.release_domain(domid, out)
    return OK


def do_is_domain_introduced(core, conn, msg, tx, out) -> bytes:
    (raw,) = strings(msg.payload, 1)
    domid = number(raw, 0xFFFF)
    return b"T\0" if domid == 0 or core.domains.get(domid) else b"F\0"


def do_get_domain_path(core, conn, msg, tx, out) -> bytes:
    (raw,) = strings(msg.payload, 1)
    return f"/local/domain/{number(raw, 0xFFFF)}".encode() + b"\0"


def _introduced(core, raw: bytes):
    dom = core.domains.get(number(raw, 0xFFFF))
    if dom is None:
        raise XsError("ENOENT", "domain not introduced")
    return dom


def do_resume(core, conn, msg, tx, out) -> bytes:
    (raw,) = strings(msg.payload, 1)
    _introduced(core, raw).shutdown = False
    return OK


def do_set_target(core, conn, msg, tx, out) -> bytes:
    raw_domid, raw_target = strings(msg.payload, 2)
    dom = _introduced(core, raw_domid)
    target = number(raw_target, 0xFFFF)
    if target != 0 and core.domains.get(target) is None:
        raise XsError("ENOENT", "target not introduced")
    dom.target = target
    for c in core.connections.values():
        if c.domid == dom.domid and not c.privileged:
            c.target = target
    return OK


def do_get_feature(core, conn, msg, tx, out) -> bytes:
    parts = strings(msg.payload) if msg.payload else []
    if not parts:
        # a domain is told what it was given; dom0's tools, what the server offers
        dom = None if conn.privileged else core.domains.get(conn.domid)
        features = dom.features if dom is not None else SERVER_FEATURES
        return str(features).encode() + b"\0"
    if len(parts) != 1:
        raise XsError("EINVAL", "get-feature takes at most a domid")
    if not conn.privileged:
        raise XsError("EACCES", "dom0 only")
    domid = number(parts[0], 0xFFFF)
    dom = core.domains.get(domid)
    if dom is not None:
        return str(dom.features).encode() + b"\0"
    if domid in core.domains.pending_features:
        return str(core.domains.pending_features[domid]).encode() + b"\0"
    raise XsError("ENOENT", f"domain {domid} unknown")


def do_set_feature(core, conn, msg, tx, out) -> bytes:
    """Features a domain's ring will see: set by the toolstack BEFORE INTRODUCE."""
    raw_domid, raw_value = strings(msg.payload, 2)
    domid = number(raw_domid, 0xFFFF)
    value = number(raw_value)
    if value & ~SERVER_FEATURES:
        raise XsError("EINVAL", "feature not offered by this server")
    if core.domains.get(domid) is not None:
        raise XsError("EBUSY", "features are set before the domain is introduced")
    core.domains.pending_features[domid] = value
    return OK


TABLE: dict[int, Op] = {
    T.XS_CONTROL: Op(do_control, privileged=True),
    T.XS_DIRECTORY: Op(do_directory),
    T.XS_READ: Op(do_read),
    T.XS_GET_PERMS: Op(do_get_perms),
    T.XS_WATCH: Op(do_watch, uses_tx=False),
    T.XS_UNWATCH: Op(do_unwatch, uses_tx=False),
    T.XS_TRANSACTION_START: Op(do_transaction_start),
    T.XS_TRANSACTION_END: Op(do_transaction_end),
    T.XS_INTRODUCE: Op(do_introduce, privileged=True),
    T.XS_RELEASE: Op(do_release, privileged=True),
    T.XS_GET_DOMAIN_PATH: Op(do_get_domain_path),
    T.XS_WRITE: Op(do_write),
    T.XS_MKDIR: Op(do_mkdir),
    T.XS_RM: Op(do_rm),
    T.XS_SET_PERMS: Op(do_set_perms),
    T.XS_IS_DOMAIN_INTRODUCED: Op(do_is_domain_introduced, privileged=True),
    T.XS_RESUME: Op(do_resume, privileged=True),
    T.XS_SET_TARGET: Op(do_set_target, privileged=True),
    T.XS_RESET_WATCHES: Op(do_reset_watches),
    T.XS_DIRECTORY_PART: Op(do_directory_part),
    T.XS_GET_FEATURE: Op(do_get_feature),
    T.XS_SET_FEATURE: Op(do_set_feature, privileged=True),
    T.XS_GET_QUOTA: Op(do_get_quota, privileged=True),
    T.XS_SET_QUOTA: Op(do_set_quota, privileged=True),
}


def new_core(store=None, quotas=None) -> XenstoreCore:
    """A core serving every message type of :data:`TABLE`."""
    return XenstoreCore(TABLE, store, quotas)
