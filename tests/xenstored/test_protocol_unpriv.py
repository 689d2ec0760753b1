"""Unprivileged (domU) semantics at the core level: permissions, quotas, watch
filtering, relative paths, owner changes, transaction quotas.

There is no way yet to connect to the daemon as a domU over the socket (socket
clients are dom0), so these tests drive ``XenstoreCore.handle`` directly with
connections from ``core.connect(domid, privileged=False)`` — the same entry
point the daemon's transports call, with the same bytes in and out.

References: docs/misc/xenstore.txt (Permissions, Watches), cxenstored
``perm_for_conn``/``do_set_perms``/``domain.c`` quotas, and the XSAs in
Xen's security advisories XSA-115, 352, 353, 323, 326, 330 and 421.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from hypervisord.public.io.xs_wire import XsdSockmsgType as T
from xenstored.core import XenstoreCore
from xenstored.handlers import TABLE
from libxen.xenstore.wire import FrameParser, Message
from xenstored.quota import Q_VAL_DISABLED, Quotas

pytestmark = pytest.mark.timeout(20)


def nul(*items: str | bytes) -> bytes:
    return b"".join((i.encode() if isinstance(i, str) else i) + b"\0" for i in items)


class Harness:
    """A core and the messages it sent to each connection (by conn_id)."""

    def __init__(self, quotas: Quotas | None = None) -> None:
        self.core = XenstoreCore(TABLE, quotas=quotas or Quotas())
        self.inbox: dict[int, list[Message]] = defaultdict(list)
        self.req_id = 0

    def connect(self, domid: int = 0, privileged: bool = True) -> "Peer":
        return Peer(self, self.core.connect(domid, privileged))


class Peer:
    def __init__(self, h: Harness, conn) -> None:
        self.h = h
        self.conn = conn

    # -- raw -------------------------------------------------------------------------
    def call(self, msg_type: int, payload: bytes = b"", tx: int = 0) -> Message:
        self.h.req_id += 1
        rid = self.h.req_id
        out = self.h.core.handle(self.conn, Message(msg_type, rid, tx, payload))
        reply = None
        for target, data in out:
            (msg,) = FrameParser().feed(data)
            assert len(msg.payload) <= 4096
            if target is self.conn and reply is None:
                reply = msg  # the first message to the caller is its reply
            else:
                self.h.inbox[target.conn_id].append(msg)
        assert reply is not None
        assert (reply.req_id, reply.tx_id) == (rid, tx)
        assert reply.type in (msg_type, T.XS_ERROR)
        return reply

    def ok(self, msg_type: int, payload: bytes = b"", tx: int = 0) -> bytes:
        r = self.call(msg_type, payload, tx)
        assert r.type == msg_type, f"expected success, got {r.payload!r}"
        return r.payload

    def err(self, msg_type: int, payload: bytes = b"", tx: int = 0) -> str:
        r = self.call(msg_type, payload, tx)
        assert r.type == T.XS_ERROR, f"expected an error, got {r.payload!r}"
        return r.payload.rstrip(b"\0").decode()

    # -- helpers -----------------------------------------------------------------------
    def read(self, path: str, tx: int = 0) -> bytes:
        return self.ok(T.XS_READ, nul(path), tx)

    def write(self, path: str, value: str | bytes = b"", tx: int = 0) -> None:
        v = value.encode() if isinstance(value, str) else value
        assert self.ok(T.XS_WRITE, path.encode() + b"\0" + v, tx) == b"OK\0"

    def write_err(self, path: str, value: bytes = b"", tx: int = 0) -> str:
        return self.err(T.XS_WRITE, path.encode() + b"\0" + value, tx)

    def perms(self, path: str) -> list[str]:
        return self.ok(T.XS_GET_PERMS, nul(path))[:-1].decode().split("\0")

    def set_perms(self, path: str, *perms: str, tx: int = 0) -> None:
        assert self.ok(T.XS_SET_PERMS, nul(path, *perms), tx) == b"OK\0"

    def watch(self, path: str, token: str) -> None:
        assert self.ok(T.XS_WATCH, nul(path, token)) == b"OK\0"

    def start(self) -> int:
        return int(self.ok(T.XS_TRANSACTION_START, b"\0")[:-1])

    def end(self, tx: int, commit: bool = True) -> str:
        r = self.call(T.XS_TRANSACTION_END, b"T\0" if commit else b"F\0", tx)
        return r.payload.rstrip(b"\0").decode()

    def events(self) -> list[tuple[bytes, bytes]]:
        """Watch events delivered to this connection since the last call."""
        msgs = self.h.inbox.pop(self.conn.conn_id, [])
        assert all(m.type == T.XS_WATCH_EVENT and m.req_id == 0 == m.tx_id for m in msgs)
        return [tuple(m.payload[:-1].split(b"\0")) for m in msgs]


@pytest.fixture
def h() -> Harness:
    return Harness()


def domain_home(dom0: Peer, domid: int) -> None:
    """What the toolstack does: /local/domain/<domid> owned by dom0, domid may write."""
    dom0.write(f"/local/domain/{domid}")
    dom0.set_perms(f"/local/domain/{domid}", "n0", f"b{domid}")


# ======================================================================================
# Permissions
# ======================================================================================
def test_unpriv_cannot_see_dom0_nodes_root_included(h):
    """XSA-353: no special case for / — it is n0 like the rest."""
    u = h.connect(5, privileged=False)
    for path in ("/", "/tool", "/tool/xenstored"):
        assert u.err(T.XS_READ, nul(path)) == "EACCES"
        assert u.err(T.XS_DIRECTORY, nul(path)) == "EACCES"
        assert u.err(T.XS_GET_PERMS, nul(path)) == "EACCES"
        assert u.err(T.XS_SET_PERMS, nul(path, "b5")) == "EACCES"
        assert u.err(T.XS_DIRECTORY_PART, nul(path, "0")) == "EACCES"
    assert u.write_err("/tool/x") == "EACCES"
    assert u.write_err("/new") == "EACCES"
    assert u.err(T.XS_MKDIR, nul("/new")) == "EACCES"
    assert u.err(T.XS_RM, nul("/tool")) == "EACCES"
    assert u.err(T.XS_RM, nul("/")) in ("EACCES", "EINVAL")
    dom0 = h.connect()
    assert dom0.ok(T.XS_DIRECTORY, nul("/")) == b"tool\0"
    assert dom0.perms("/") == ["n0"]
    assert h.core.check() == []


def test_missing_node_under_unreadable_parent_is_eacces_not_enoent(h):
    """Whether a node exists must not leak through an unreadable parent."""
    dom0 = h.connect()
    dom0.write("/secret/present", "x")
    u = h.connect(5, privileged=False)
    assert u.err(T.XS_READ, nul("/secret/present")) == "EACCES"
    assert u.err(T.XS_READ, nul("/secret/absent")) == "EACCES"
    dom0.set_perms("/secret", "r0")
    assert u.err(T.XS_READ, nul("/secret/absent")) == "ENOENT"


@pytest.mark.parametrize("perms, can_read, can_write", [
    (["n0"], False, False),
    (["r0"], True, False),  # first entry: the default for everyone
    (["w0"], False, True),
    (["b0"], True, True),
    (["n0", "r5"], True, False),  # a later entry for the domain decides
    (["n0", "w5"], False, True),
    (["n0", "b5"], True, True),
    (["b0", "n5"], False, False),  # ... even against a generous default
    (["n0", "r5", "w5"], True, False),  # the FIRST matching later entry decides
    (["n0", "r6"], False, False),  # an entry for someone else is irrelevant
    (["n5"], True, True),  # the owner has full access whatever the letter
    (["n5", "n5"], True, True),
])
def test_permission_lookup_order(h, perms, can_read, can_write):
    dom0 = h.connect()
    dom0.write("/p", "v")
    dom0.set_perms("/p", *perms)
    u = h.connect(5, privileged=False)
    if can_read:
        assert u.read("/p") == b"v"
        assert u.ok(T.XS_GET_PERMS, nul("/p")) == nul(*perms)
    else:
        assert u.err(T.XS_READ, nul("/p")) == "EACCES"
        assert u.err(T.XS_GET_PERMS, nul("/p")) == "EACCES"
    if can_write:
        u.write("/p", "new")
    else:
        assert u.write_err("/p", b"new") == "EACCES"
    assert dom0.read("/p") == (b"new" if can_write else b"v")


def test_unpriv_creates_own_nodes_inheriting_parent_perms(h):
    dom0 = h.connect()
    dom0.write("/local/domain/5")
    dom0.set_perms("/local/domain/5", "n0", "b5", "r7")
    u = h.connect(5, privileged=False)
    u.write("/local/domain/5/a/b", "v")
    # cxenstored: the creator becomes entry 0's domid; the rest is copied
    assert u.perms("/local/domain/5/a") == ["n5", "b5", "r7"]
    assert u.perms("/local/domain/5/a/b") == ["n5", "b5", "r7"]
    assert dom0.perms("/local/domain/5") == ["n0", "b5", "r7"]
    # dom0-created nodes keep the parent's list unchanged
    dom0.write("/local/domain/5/bydom0", "")
    assert dom0.perms("/local/domain/5/bydom0") == ["n0", "b5", "r7"]


def test_relative_paths_are_relative_to_the_callers_home(h):
    dom0 = h.connect()
    domain_home(dom0, 5)
    u = h.connect(5, privileged=False)
    u.write("data/key", "val")
    assert dom0.read("/local/domain/5/data/key") == b"val"
    assert u.read("data/key") == b"val"
    assert u.ok(T.XS_DIRECTORY, nul("data")) == b"key\0"
    u6 = h.connect(6, privileged=False)
    assert u6.err(T.XS_READ, nul("data/key")) in ("ENOENT", "EACCES")  # its own home


def test_set_perms_only_by_owner_and_never_the_owner_change(h):
    """XSA-352: only a privileged domain changes a node's owner (EPERM)."""
    dom0 = h.connect()
    domain_home(dom0, 5)
    u5 = h.connect(5, privileged=False)
    u6 = h.connect(6, privileged=False)
    u5.write("/local/domain/5/mine", "v")
    dom0.set_perms("/local/domain/5", "n0", "b5", "b6")
    u5.set_perms("/local/domain/5/mine", "n5", "r6")  # owner: fine
    assert u5.perms("/local/domain/5/mine") == ["n5", "r6"]
    assert u5.err(T.XS_SET_PERMS, nul("/local/domain/5/mine", "n6")) == "EPERM"
    assert u5.err(T.XS_SET_PERMS, nul("/local/domain/5/mine", "b0")) == "EPERM"
    assert u5.perms("/local/domain/5/mine") == ["n5", "r6"]
    # not the owner (even with read access): EACCES
    assert u6.err(T.XS_SET_PERMS, nul("/local/domain/5/mine", "n5", "b6")) == "EACCES"
    # a node owned by dom0 that u5 may write is still not u5's to chmod
    assert u5.err(T.XS_SET_PERMS, nul("/local/domain/5", "n0", "b5")) == "EACCES"
    # dom0 may change the owner
    dom0.set_perms("/local/domain/5/mine", "b6")
    assert dom0.perms("/local/domain/5/mine") == ["b6"]
    assert h.core.check() == []


def test_privileged_only_messages_are_eacces(h):
    dom0 = h.connect()
    dom0.ok(T.XS_INTRODUCE, nul("5", "1", "1"))
    u = h.connect(5, privileged=False)
    for msg_type, payload in [
        (T.XS_CONTROL, nul("check")), (T.XS_CONTROL, nul("help")),
        (T.XS_INTRODUCE, nul("6", "1", "1")), (T.XS_RELEASE, nul("5")),
        (T.XS_RESUME, nul("5")), (T.XS_SET_TARGET, nul("5", "5")),
        (T.XS_SET_FEATURE, nul("5", "0")), (T.XS_GET_QUOTA, nul("nodes")),
        (T.XS_GET_QUOTA, b""), (T.XS_SET_QUOTA, nul("nodes", "99999")),
        (T.XS_SET_QUOTA, nul("5", "nodes", "99999")), (T.XS_GET_FEATURE, nul("5")),
        (T.XS_IS_DOMAIN_INTRODUCED, nul("5")),
    ]:
        assert u.err(msg_type, payload) == "EACCES", (msg_type, payload)
    assert dom0.ok(T.XS_IS_DOMAIN_INTRODUCED, nul("6")) == b"F\0"
    assert dom0.ok(T.XS_GET_QUOTA, nul("nodes")) == b"1000\0"
    # what a domU may ask: its own features (all the server's unless the toolstack
    # restricted them before its INTRODUCE)
    assert u.ok(T.XS_GET_FEATURE, b"") == b"4\0"  # XENSTORE_SERVER_FEATURE_WATCHDEPTH
    dom0.ok(T.XS_SET_FEATURE, nul("7", "0"))
    dom0.ok(T.XS_INTRODUCE, nul("7", "1", "1"))
    assert h.connect(7, privileged=False).ok(T.XS_GET_FEATURE, b"") == b"0\0"
    assert dom0.ok(T.XS_GET_FEATURE, b"") == b"4\0"  # what the server offers
    assert u.ok(T.XS_GET_DOMAIN_PATH, nul("5")) == b"/local/domain/5\0"


def test_set_target_gives_the_targets_rights(h):
    dom0 = h.connect()
    for d in (5, 6):
        dom0.ok(T.XS_INTRODUCE, nul(str(d), "1", "1"))
        domain_home(dom0, d)
    u6 = h.connect(6, privileged=False)
    u6.write("/local/domain/6/guest", "g")  # owned by 6
    stub = h.connect(5, privileged=False)
    assert stub.err(T.XS_READ, nul("/local/domain/6/guest")) == "EACCES"
    dom0.ok(T.XS_SET_TARGET, nul("5", "6"))
    assert stub.read("/local/domain/6/guest") == b"g"
    stub.write("/local/domain/6/guest", "by-stub")
    stub.set_perms("/local/domain/6/guest", "n6", "r5")  # acting as the owner
    assert u6.read("/local/domain/6/guest") == b"by-stub"
    assert stub.err(T.XS_READ, nul("/tool")) == "EACCES"  # but not dom0's rights


# ======================================================================================
# Watch-event filtering (XSA-115) and relative watches
# ======================================================================================
def test_unpriv_watch_gets_events_only_for_readable_nodes(h):
    dom0 = h.connect()
    u = h.connect(5, privileged=False)
    u.watch("/shared", "t")
    assert u.events() == [(b"/shared", b"t")]  # the initial event is always sent
    dom0.write("/shared", "secret")  # n0 (inherits /): unreadable for 5
    assert u.events() == []
    dom0.set_perms("/shared", "n0", "r5")
    assert u.events() == [(b"/shared", b"t")]  # readable now
    dom0.write("/shared/child", "")
    assert u.events() == [(b"/shared/child", b"t")]
    dom0.write("/shared/hidden", "")
    dom0.set_perms("/shared/hidden", "n0")
    u.events()
    dom0.write("/shared/hidden", "change")
    assert u.events() == []
    dom0.set_perms("/shared", "n0", "r5")
    assert u.events() == [(b"/shared", b"t")]


def test_privileged_watch_sees_everything(h):
    dom0 = h.connect()
    watcher = h.connect()
    u = h.connect(5, privileged=False)
    domain_home(dom0, 5)
    watcher.watch("/local", "all")
    watcher.events()
    u.write("/local/domain/5/x", "")
    dom0.write("/local/secret", "")
    assert watcher.events() == [(b"/local/domain/5/x", b"all"), (b"/local/secret", b"all")]


def test_unpriv_relative_watch_gets_relative_paths(h):
    dom0 = h.connect()
    domain_home(dom0, 5)
    u = h.connect(5, privileged=False)
    u.watch("device", "rel")
    assert u.events() == [(b"device", b"rel")]
    u.write("device/vbd/0", "x")
    assert u.events() == [(b"device/vbd/0", b"rel")]
    dom0.write("/local/domain/5/device/vif", "")
    assert u.events() == [(b"device/vif", b"rel")]
    u.watch("/local/domain/5/device", "abs")
    u.events()
    u.write("device/x", "")
    assert sorted(u.events()) == [(b"/local/domain/5/device/x", b"abs"), (b"device/x", b"rel")]


def test_special_watches_need_permission_on_the_special_node(h):
    dom0 = h.connect()
    u = h.connect(5, privileged=False)
    u.watch("@introduceDomain", "in")
    u.watch("@releaseDomain", "out")
    assert u.events() == [(b"@introduceDomain", b"in"), (b"@releaseDomain", b"out")]
    dom0.ok(T.XS_INTRODUCE, nul("7", "1", "1"))
    dom0.ok(T.XS_RELEASE, nul("7"))
    assert u.events() == []
    dom0.set_perms("@introduceDomain", "n0", "r5")
    dom0.set_perms("@releaseDomain", "n0", "r5")
    u.events()
    dom0.ok(T.XS_INTRODUCE, nul("7", "1", "1"))
    assert u.events() == [(b"@introduceDomain", b"in")]
    dom0.ok(T.XS_RELEASE, nul("7"))
    assert u.events() == [(b"@releaseDomain", b"out")]


def test_unpriv_may_not_set_perms_on_special_nodes(h):
    u = h.connect(5, privileged=False)
    assert u.err(T.XS_SET_PERMS, nul("@introduceDomain", "n0", "r5")) == "EACCES"
    assert u.err(T.XS_SET_PERMS, nul("@releaseDomain", "r5")) == "EACCES"


def test_unpriv_transaction_events_on_commit_only(h):
    dom0 = h.connect()
    domain_home(dom0, 5)
    u = h.connect(5, privileged=False)
    w = h.connect()
    w.watch("/local/domain/5", "t")
    w.events()
    tx = u.start()
    u.write("a", "1", tx=tx)
    assert w.events() == []
    assert u.end(tx) == "OK"
    assert w.events() == [(b"/local/domain/5/a", b"t")]


# ======================================================================================
# Quotas: ENOSPC / E2BIG as in cxenstored (there is no "EQUOTA")
# ======================================================================================
def quota_harness(**q) -> tuple[Harness, Peer, Peer]:
    h = Harness(Quotas(**q))
    dom0 = h.connect()
    domain_home(dom0, 5)
    return h, dom0, h.connect(5, privileged=False)


def test_nodes_quota_enospc(h):
    h, dom0, u = quota_harness(nodes=10)
    for i in range(10):
        u.write(f"n{i}", "")
    assert u.write_err("n10") == "ENOSPC"
    assert u.err(T.XS_MKDIR, nul("n10")) == "ENOSPC"
    assert h.core.store.owned(5) == 10
    # a write that would create several nodes fails whole, creating none
    u.ok(T.XS_RM, nul("n9"))
    assert u.write_err("deep/a/b") == "ENOSPC"  # needs 3, 1 left
    assert u.err(T.XS_READ, nul("deep")) == "ENOENT"
    u.write("deep", "")  # exactly the last one
    assert h.core.store.owned(5) == 10
    # overwriting an existing node needs no new node
    u.write("n0", "again")
    # freeing makes room
    u.ok(T.XS_RM, nul("n0"))
    u.write("n0", "")
    assert h.core.check() == []


def test_nodes_quota_checked_at_commit(h):
    h, dom0, u = quota_harness(nodes=5)
    for i in range(4):
        u.write(f"pre{i}")
    tx1 = u.start()
    tx2 = u.start()
    u.write("pre0/t1", tx=tx1)  # each fits on its own (and they do not conflict) ...
    u.write("pre1/t2", tx=tx2)
    assert u.end(tx1) == "OK"
    assert u.end(tx2) == "ENOSPC"  # ... not both (XSA-421)
    assert h.core.store.owned(5) == 5
    assert h.core.check() == []


def test_node_size_quota(h):
    h, dom0, u = quota_harness(node_size=100)
    u.write("small", b"x" * 50)
    assert u.write_err("big", b"x" * 200) == "ENOSPC"
    assert u.write_err("small", b"x" * 200) == "ENOSPC"
    assert u.read("small") == b"x" * 50
    dom0.write("/local/domain/5/dom0-big", b"x" * 2000)  # dom0 is not limited


def test_node_permissions_quota(h):
    h, dom0, u = quota_harness(node_permissions=3)
    u.write("p")
    u.set_perms("p", "n5", "r1", "r2")
    assert u.err(T.XS_SET_PERMS, nul("p", "n5", "r1", "r2", "r3")) == "ENOSPC"
    assert u.perms("p") == ["n5", "r1", "r2"]
    dom0.set_perms("/local/domain/5/p", "n5", "r1", "r2", "r3", "r4", "r6")


def test_watches_quota(h):
    """Ours answers E2BIG, like cxenstored 4.17 (xenstored_watch.c); upstream
    cxenstored now answers ENOSPC."""
    h, dom0, u = quota_harness(watches=4)
    for i in range(4):
        u.watch(f"w{i}", "t")
    assert u.err(T.XS_WATCH, nul("w4", "t")) == "E2BIG"
    u.ok(T.XS_UNWATCH, nul("w0", "t"))
    u.watch("w4", "t")
    assert u.err(T.XS_WATCH, nul("w5", "t")) == "E2BIG"
    # RESET_WATCHES returns the whole allowance (XSA-330)
    for _ in range(50):
        u.ok(T.XS_RESET_WATCHES, b"\0")
        for i in range(4):
            u.watch(f"w{i}", "t")
    assert len(u.conn.watches) == 4
    assert len(h.core.watches) == 4


def test_transactions_quota(h):
    h, dom0, u = quota_harness(transactions=3)
    txs = [u.start() for _ in range(3)]
    assert u.err(T.XS_TRANSACTION_START, b"\0") == "ENOSPC"
    assert u.end(txs[0], commit=False) == "OK"
    txs[0] = u.start()
    assert u.err(T.XS_TRANSACTION_START, b"\0") == "ENOSPC"
    u.ok(T.XS_RESET_WATCHES, b"\0")  # drops them all
    assert [u.start() for _ in range(3)]


def test_transaction_nodes_quota(h):
    h, dom0, u = quota_harness(transaction_nodes=10)
    for i in range(20):
        u.write(f"n{i}", "")
    tx = u.start()
    errors = [u.call(T.XS_READ, nul(f"n{i}"), tx) for i in range(20)]
    names = [e.payload.rstrip(b"\0") for e in errors if e.type == T.XS_ERROR]
    assert names and set(names) == {b"ENOSPC"}
    assert len(names) < 20
    assert u.end(tx, commit=False) == "OK"
    # touching few nodes is fine
    tx = u.start()
    u.write("n0", "changed", tx=tx)
    assert u.end(tx) == "OK"
    assert u.read("n0") == b"changed"


def test_path_max_quota_on_relative_part(h):
    """path-max limits the path below the caller's home (cxenstored canonicalize);
    XSA-323: measured on the resolved path, not on what the guest sent."""
    h, dom0, u = quota_harness(path_max=20)
    u.write("a" * 20, "")
    assert u.write_err("a" * 21) == "EINVAL"
    assert u.write_err("/local/domain/5/" + "a" * 21) == "EINVAL"
    dom0.write("/local/domain/5/" + "b" * 100, "")  # not for dom0


def test_per_domain_quota_via_set_quota(h):
    dom0 = h.connect()
    dom0.ok(T.XS_INTRODUCE, nul("5", "1", "1"))
    domain_home(dom0, 5)
    u = h.connect(5, privileged=False)
    dom0.ok(T.XS_SET_QUOTA, nul("5", "nodes", "2"))
    u.write("a")
    u.write("b")
    assert u.write_err("c") == "ENOSPC"
    # another domain keeps the global default
    domain_home(dom0, 6)
    u6 = h.connect(6, privileged=False)
    for i in range(5):
        u6.write(f"x{i}")
    # a disabled quota never trips
    dom0.ok(T.XS_SET_QUOTA, nul("5", "nodes", str(Q_VAL_DISABLED)))
    for i in range(20):
        u.write(f"many{i}")


def test_global_quota_change_reaches_unintroduced_connections(h):
    dom0 = h.connect()
    domain_home(dom0, 5)
    u = h.connect(5, privileged=False)
    dom0.ok(T.XS_SET_QUOTA, nul("nodes", "1"))
    u.write("one")
    assert u.write_err("two") == "ENOSPC"


def test_quota_errors_leave_accounting_exact(h):
    """After every failure mode the per-domain counts equal a recount (XSA-414/421)."""
    h, dom0, u = quota_harness(nodes=8, node_size=64, transaction_nodes=6)
    for i in range(6):
        u.write(f"k{i}", b"v")
    u.write_err("big", b"x" * 100)
    u.write_err("a/b/c", b"")
    tx = u.start()
    u.write("t1", tx=tx)
    u.call(T.XS_RM, nul("k0"), tx)
    for i in range(10):
        u.call(T.XS_READ, nul(f"k{i}"), tx)
    u.end(tx)
    assert h.core.check() == []
    assert h.core.store.owned(5) == h.core.store.recount()[5]


# ======================================================================================
# Connections of a released domain, RESET_WATCHES inside a transaction
# ======================================================================================
def test_release_disconnects_the_domains_connections_and_watches(h):
    dom0 = h.connect()
    dom0.ok(T.XS_INTRODUCE, nul("5", "1", "1"))
    domain_home(dom0, 5)
    u = h.connect(5, privileged=False)
    u.watch("x", "t")
    u.start()
    dom0.ok(T.XS_RELEASE, nul("5"))
    assert u.conn.closed
    assert u.conn.conn_id not in h.core.connections
    assert len(h.core.watches) == 0
    assert h.core.check() == []


def test_reset_watches_inside_a_transaction(h):
    """CVE-2026-23557: RESET_WATCHES with a live tx_id crashed cxenstored."""
    dom0 = h.connect()
    domain_home(dom0, 5)
    u = h.connect(5, privileged=False)
    u.watch("x", "t")
    tx = u.start()
    u.write("y", "in-tx", tx=tx)
    r = u.call(T.XS_RESET_WATCHES, b"\0", tx)
    assert (r.type, r.payload) == (T.XS_RESET_WATCHES, b"OK\0")
    assert u.err(T.XS_READ, nul("y"), tx) == "ENOENT"  # the transaction went too
    assert u.err(T.XS_READ, nul("y")) == "ENOENT"
    assert len(u.conn.watches) == 0 and not u.conn.transactions
    assert h.core.check() == []


# ======================================================================================
# Known daemon bugs
# ======================================================================================
def test_reused_domid_does_not_inherit_stale_acl_entries(h):
    dom0 = h.connect()
    dom0.ok(T.XS_INTRODUCE, nul("5", "1", "1"))
    dom0.write("/granted", "secret")
    dom0.set_perms("/granted", "n0", "r5")
    old = h.connect(5, privileged=False)
    assert old.read("/granted") == b"secret"
    dom0.ok(T.XS_RELEASE, nul("5"))
    dom0.ok(T.XS_INTRODUCE, nul("5", "1", "1"))  # a new domain, same domid
    new = h.connect(5, privileged=False)
    assert new.err(T.XS_READ, nul("/granted")) == "EACCES"


def test_recursive_rm_notifies_watcher_of_a_readable_descendant(h):
    dom0 = h.connect()
    dom0.write("/a/b/c", "v")  # /a and /a/b: n0
    dom0.set_perms("/a/b/c", "n0", "r5")
    u = h.connect(5, privileged=False)
    u.watch("/a/b/c", "t")
    assert u.events() == [(b"/a/b/c", b"t")]
    dom0.ok(T.XS_RM, nul("/a"))
    assert u.events() == [(b"/a/b/c", b"t")]
