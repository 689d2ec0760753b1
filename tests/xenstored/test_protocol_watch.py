"""Watches, domains, features, quotas and control against the real daemon
("no event" checks do one round trip, never sleep: see ``test_protocol.py``)."""

from __future__ import annotations

import fcntl
import struct
import termios
import time

import pytest

from tests.xenstored.rawclient import (
    XS_CONTROL,
    XS_ERROR,
    XS_GET_DOMAIN_PATH,
    XS_GET_FEATURE,
    XS_GET_QUOTA,
    XS_IS_DOMAIN_INTRODUCED,
    XS_READ,
    XS_RELEASE,
    XS_RESET_WATCHES,
    XS_RESUME,
    XS_SET_FEATURE,
    XS_SET_QUOTA,
    XS_SET_TARGET,
    XS_TRANSACTION_END,
    XS_UNWATCH,
    XS_WATCH,
    XS_WATCH_EVENT,
    XS_WRITE,
    RawClient,
    nul,
    pack,
)

pytestmark = pytest.mark.timeout(20)


from tests.xenstored.conftest import ev, no_events


# ======================================================================================
# Watches
# ======================================================================================
def test_watch_initial_event_then_write_modify_delete_perms(connect):
    w, c = connect(), connect()
    w.watch("/w", "tok")  # the node need not exist
    assert ev(w) == (b"/w", b"tok")
    c.write("/w", "1")
    assert ev(w) == (b"/w", b"tok")
    c.write("/w/child", "2")
    assert ev(w) == (b"/w/child", b"tok")
    c.write("/w/child", "3")  # modify
    assert ev(w) == (b"/w/child", b"tok")
    c.set_perms("/w/child", "b0", "r4")  # permission change
    assert ev(w) == (b"/w/child", b"tok")
    c.rm("/w/child")  # delete
    assert ev(w) == (b"/w/child", b"tok")
    c.mkdir("/w/dir")  # creation by mkdir
    assert ev(w) == (b"/w/dir", b"tok")
    c.mkdir("/w/dir")  # existing: no change, no event (as cxenstored)
    no_events(w)


def test_watch_prefix_match_is_by_path_component(connect):
    w, c = connect(), connect()
    w.watch("/pre", "t")
    ev(w)
    c.write("/prefix", "not a child")
    c.write("/pr", "not a child either")
    c.write("/other/pre", "nor this")
    no_events(w)
    c.write("/pre/a/b/c", "deep child")
    assert ev(w) == (b"/pre/a/b/c", b"t")


def test_watch_on_root_sees_everything(connect):
    w, c = connect(), connect()
    w.watch("/", "all")
    assert ev(w) == (b"/", b"all")
    c.write("/x/y", "")
    assert ev(w) == (b"/x/y", b"all")
    c.rm("/x")
    assert ev(w) == (b"/x", b"all")


def test_recursive_rm_reports_the_watched_path(connect):
    """xenstore.txt: on recursive removal of a parent of <wpath>, <epath> is <wpath>."""
    w, c = connect(), connect()
    c.write("/rr/a/b/c", "v")
    w.watch("/rr/a/b/c", "deep")
    w.watch("/rr", "top")
    assert ev(w) == (b"/rr/a/b/c", b"deep")
    assert ev(w) == (b"/rr", b"top")
    c.rm("/rr/a")
    got = {ev(w), ev(w)}
    assert got == {(b"/rr/a/b/c", b"deep"), (b"/rr/a", b"top")}
    no_events(w)


def test_write_fires_parent_watches_and_not_siblings(connect):
    w, c = connect(), connect()
    w.watch("/s/a", "a")
    w.watch("/s/b", "b")
    ev(w), ev(w)
    c.write("/s/a/x", "")
    assert ev(w) == (b"/s/a/x", b"a")
    no_events(w)


def test_two_tokens_same_path_two_events(connect):
    w, c = connect(), connect()
    w.watch("/tt", "one")
    w.watch("/tt", "two")
    ev(w), ev(w)
    c.write("/tt", "")
    assert {ev(w), ev(w)} == {(b"/tt", b"one"), (b"/tt", b"two")}


def test_one_token_on_node_and_parent_sends_one_event(connect):
    """Identical events for one connection go once (cxenstored send_event drops
    one identical to an event already pending)."""
    w, c = connect(), connect()
    w.watch("/dup", "t")
    w.watch("/dup/x", "t")
    ev(w), ev(w)
    c.write("/dup/x", "1")
    assert ev(w) == (b"/dup/x", b"t")
    no_events(w)
    c.rm("/dup")  # the removal: /dup/x reached by both watches, /dup by one
    assert sorted([ev(w), ev(w)]) == [(b"/dup", b"t"), (b"/dup/x", b"t")]
    no_events(w)


def test_every_watching_connection_gets_the_event(connect):
    watchers = [connect() for _ in range(5)]
    for i, w in enumerate(watchers):
        w.watch("/multi", f"w{i}")
        assert ev(w) == (b"/multi", f"w{i}".encode())
    connect().write("/multi/x", "")
    for i, w in enumerate(watchers):
        assert ev(w) == (b"/multi/x", f"w{i}".encode())


def test_own_writes_fire_own_watches_after_the_reply(c):
    c.watch("/own", "t")
    ev(c)
    c.send(pack(XS_WRITE, b"/own\0v", req_id=77))
    assert c.recv_msg().raw == pack(XS_WRITE, b"OK\0", req_id=77)
    m = c.recv_msg()
    assert m.type == XS_WATCH_EVENT and m.strings == [b"/own", b"t"]


def test_transaction_fires_on_commit_only(connect):
    w, c = connect(), connect()
    w.watch("/txw", "t")
    ev(w)
    tx = c.start()
    c.write("/txw/a", "1", tx=tx)
    c.write("/txw/b", "2", tx=tx)
    no_events(w)
    assert c.end(tx) == "OK"
    assert {ev(w), ev(w)} == {(b"/txw/a", b"t"), (b"/txw/b", b"t")}
    no_events(w)


def test_aborted_or_failed_transaction_fires_nothing(connect):
    w, c, other = connect(), connect(), connect()
    w.watch("/txa", "t")
    ev(w)
    tx = c.start()
    c.write("/txa/a", "1", tx=tx)
    assert c.end(tx, commit=False) == "OK"
    no_events(w)
    tx = c.start()
    c.read("/tool", tx=tx)
    c.write("/txa/b", "1", tx=tx)
    other.write("/tool", "conflict")
    assert c.end(tx) == "EAGAIN"
    no_events(w)


def test_relative_watch_gets_relative_paths(connect):
    w, c = connect(), connect()
    w.watch("relw", "r")
    assert ev(w) == (b"relw", b"r")
    c.write("/local/domain/0/relw/x", "")
    assert ev(w) == (b"relw/x", b"r")
    w.watch("/local/domain/0/relw", "abs")
    assert ev(w) == (b"/local/domain/0/relw", b"abs")
    c.write("relw/y", "")
    assert {ev(w), ev(w)} == {(b"relw/y", b"r"), (b"/local/domain/0/relw/y", b"abs")}


def test_unwatch_stops_events(connect):
    w, c = connect(), connect()
    w.watch("/uw", "t")
    w.watch("/uw", "keep")
    ev(w), ev(w)
    w.unwatch("/uw", "t")
    c.write("/uw", "")
    assert ev(w) == (b"/uw", b"keep")
    no_events(w)
    assert w.err(XS_UNWATCH, nul("/uw", "t")) == "ENOENT"


def test_unwatch_relative_spelling(c):
    c.watch("relu", "t")
    ev(c)
    c.unwatch("/local/domain/0/relu", "t")
    assert c.err(XS_UNWATCH, nul("relu", "t")) == "ENOENT"


def test_reset_watches_drops_watches_and_transactions(connect):
    w, c = connect(), connect()
    w.watch("/rw", "t")
    w.watch("@introduceDomain", "i")
    ev(w), ev(w)
    tx = w.start()
    w.write("/rw/in-tx", "", tx=tx)
    assert w.ok(XS_RESET_WATCHES, b"\0") == b"OK\0"
    c.write("/rw", "")
    c.introduce(5)
    no_events(w)
    assert w.err(XS_READ, nul("/tool"), tx_id=tx) == "ENOENT"
    assert w.err(XS_TRANSACTION_END, nul("T"), tx_id=tx) == "ENOENT"
    assert c.err(XS_READ, nul("/rw/in-tx")) == "ENOENT"
    w.watch("/rw", "t")  # and may be registered again
    assert ev(w) == (b"/rw", b"t")


def test_watches_end_with_their_connection(xenstored, connect):
    w = connect()
    w.watch("/gone", "t")
    ev(w)
    w.close()
    c = connect()
    c.watch("/gone", "mine")
    ev(c)
    c.write("/gone", "")
    assert ev(c) == (b"/gone", b"mine")
    no_events(c)


def test_watch_depth(connect):
    w, c = connect(), connect()
    w.watch("/dp", "d0", depth=0)
    w.watch("/dp", "d1", depth=1)
    w.watch("/dp", "d2", depth=2)
    for _ in range(3):
        ev(w)
    c.write("/dp", "")
    assert {ev(w), ev(w), ev(w)} == {(b"/dp", b"d0"), (b"/dp", b"d1"), (b"/dp", b"d2")}
    c.write("/dp/a", "")
    assert {ev(w), ev(w)} == {(b"/dp/a", b"d1"), (b"/dp/a", b"d2")}
    c.write("/dp/a/b", "")
    assert ev(w) == (b"/dp/a/b", b"d2")
    c.write("/dp/a/b/c", "")
    no_events(w)


def test_introduce_and_release_fire_special_watches(connect):
    w, c = connect(), connect()
    w.watch("@introduceDomain", "in")
    w.watch("@releaseDomain", "out")
    w.watch("@introduceDomain", "in1", depth=1)
    w.watch("@releaseDomain", "out1", depth=1)
    for _ in range(4):
        ev(w)
    c.introduce(5, 4096, 7)
    assert {ev(w), ev(w)} == {(b"@introduceDomain", b"in"), (b"@introduceDomain/5", b"in1")}
    no_events(w)
    c.introduce(5, 4096, 7)  # a harmless repeat is no new domain
    no_events(w)
    c.release(5)
    assert {ev(w), ev(w)} == {(b"@releaseDomain", b"out"), (b"@releaseDomain/5", b"out1")}
    no_events(w)
    assert c.err(XS_RELEASE, nul("5")) == "ENOENT"  # second release: nothing fires
    no_events(w)


def test_ordinary_writes_do_not_fire_special_watches(connect):
    w, c = connect(), connect()
    w.watch("@introduceDomain", "in")
    w.watch("@releaseDomain", "out")
    ev(w), ev(w)
    c.write("/local/domain/5/x", "")
    c.rm("/local/domain/5")
    no_events(w)


def test_watch_release_of_one_domain(connect):
    w, c = connect(), connect()
    w.watch("@releaseDomain/6", "six")
    assert ev(w) == (b"@releaseDomain/6", b"six")
    c.introduce(5)
    c.introduce(6)
    c.release(5)
    no_events(w)
    c.release(6)
    assert ev(w) == (b"@releaseDomain/6", b"six")


def test_release_removes_the_domains_nodes_and_keeps_dom0s(c):
    """XSA-419: nodes owned by a released domain go with it."""
    c.introduce(5)
    c.write("/local/domain/5/owned", "x")
    c.set_perms("/local/domain/5/owned", "b5")
    c.write("/local/domain/5/dom0s", "y")
    c.release(5)
    assert c.err(XS_READ, nul("/local/domain/5/owned")) == "ENOENT"
    assert c.read("/local/domain/5/dom0s") == b"y"
    assert c.control("check") == b"OK\0"


# ======================================================================================
# Domains
# ======================================================================================
def test_is_domain_introduced_and_get_domain_path(c):
    assert c.ok(XS_IS_DOMAIN_INTRODUCED, nul("0")) == b"T\0"  # dom0 is always there
    assert c.ok(XS_IS_DOMAIN_INTRODUCED, nul("7")) == b"F\0"
    c.introduce(7)
    assert c.ok(XS_IS_DOMAIN_INTRODUCED, nul("7")) == b"T\0"
    c.release(7)
    assert c.ok(XS_IS_DOMAIN_INTRODUCED, nul("7")) == b"F\0"
    for domid in (0, 1, 7, 32752, 65535):
        assert c.ok(XS_GET_DOMAIN_PATH, nul(str(domid))) == f"/local/domain/{domid}\0".encode()
    # introduced or not: the path is computed, not looked up; <domid> is normalised
    assert c.ok(XS_GET_DOMAIN_PATH, nul("123")) == b"/local/domain/123\0"
    assert c.ok(XS_GET_DOMAIN_PATH, nul("007")) == b"/local/domain/7\0"


def test_resume(c):
    c.introduce(8)
    assert c.ok(XS_RESUME, nul("8")) == b"OK\0"
    assert c.ok(XS_RESUME, nul("8")) == b"OK\0"
    assert c.err(XS_RESUME, nul("9")) == "ENOENT"
    assert c.err(XS_RESUME, nul("8", "9")) == "EINVAL"


def test_set_target(c):
    c.introduce(5)
    c.introduce(6)
    assert c.ok(XS_SET_TARGET, nul("5", "6")) == b"OK\0"
    assert c.err(XS_SET_TARGET, nul("5", "9")) == "ENOENT"
    assert c.err(XS_SET_TARGET, nul("9", "5")) == "ENOENT"
    assert c.err(XS_SET_TARGET, nul("5")) == "EINVAL"
    assert c.err(XS_SET_TARGET, nul("5", "x")) == "EINVAL"


def test_introduce_release_introduce_again(c):
    for _ in range(3):
        c.introduce(5, 4096, 7)
        assert c.ok(XS_IS_DOMAIN_INTRODUCED, nul("5")) == b"T\0"
        c.release(5)
        assert c.ok(XS_IS_DOMAIN_INTRODUCED, nul("5")) == b"F\0"
    c.introduce(5, 8192, 9)  # a new incarnation may bring a new page and port
    assert c.control("check") == b"OK\0"


# ======================================================================================
# Features, quotas, control
# ======================================================================================
def test_get_feature(c):
    feats = int(c.ok(XS_GET_FEATURE, b"")[:-1])
    assert feats & 4, "XENSTORE_SERVER_FEATURE_WATCHDEPTH: the daemon supports WATCH depth"
    assert feats & ~0xF == 0
    c.introduce(5)
    dom = int(c.ok(XS_GET_FEATURE, nul("5"))[:-1])
    assert dom & ~feats == 0
    assert c.err(XS_GET_FEATURE, nul("5", "6")) == "EINVAL"
    assert c.err(XS_GET_FEATURE, nul("x")) == "EINVAL"


def test_set_feature_argument_errors(c):
    c.introduce(5)
    assert c.err(XS_SET_FEATURE, nul("5")) == "EINVAL"
    assert c.err(XS_SET_FEATURE, nul("5", "x")) == "EINVAL"
    assert c.err(XS_SET_FEATURE, nul("5", str(1 << 20))) == "EINVAL"  # not offered
    # before INTRODUCE the toolstack may set a domain's features (xenstore.txt)
    assert c.ok(XS_SET_FEATURE, nul("9", "0")) == b"OK\0"
    assert c.ok(XS_GET_FEATURE, nul("9")) == b"0\0"


def test_get_set_quota(c):
    names = c.ok(XS_GET_QUOTA, b"")[:-1].split(b" ")
    assert {b"nodes", b"watches", b"transactions", b"node-size", b"node-permissions",
            b"path-max", b"transaction-nodes"} <= set(names)
    defaults = {b"nodes": 1000, b"watches": 128, b"transactions": 10, b"node-size": 2048,
                b"node-permissions": 5, b"path-max": 2048, b"transaction-nodes": 1024}
    for name, value in defaults.items():
        assert c.ok(XS_GET_QUOTA, name + b"\0") == str(value).encode() + b"\0"
    assert c.ok(XS_SET_QUOTA, nul("nodes", "1234")) == b"OK\0"
    assert c.ok(XS_GET_QUOTA, nul("nodes")) == b"1234\0"
    # a domain introduced now starts from the global values ...
    c.introduce(5)
    assert c.ok(XS_GET_QUOTA, nul("5", "nodes")) == b"1234\0"
    # ... and may get its own
    assert c.ok(XS_SET_QUOTA, nul("5", "nodes", "7")) == b"OK\0"
    assert c.ok(XS_GET_QUOTA, nul("5", "nodes")) == b"7\0"
    assert c.ok(XS_GET_QUOTA, nul("nodes")) == b"1234\0"
    # errors
    assert c.err(XS_GET_QUOTA, nul("no-such")) == "EINVAL"
    assert c.err(XS_GET_QUOTA, nul("5", "nodes", "x")) == "EINVAL"
    assert c.err(XS_SET_QUOTA, nul("nodes")) == "EINVAL"
    assert c.err(XS_SET_QUOTA, nul("nodes", "x")) == "EINVAL"
    assert c.err(XS_SET_QUOTA, nul("no-such", "1")) == "EINVAL"
    assert c.err(XS_SET_QUOTA, nul("5", "no-such", "1")) == "EINVAL"
    assert c.err(XS_SET_QUOTA, nul("1", "2", "3", "4")) == "EINVAL"


def test_quota_does_not_limit_dom0(c):
    assert c.ok(XS_SET_QUOTA, nul("nodes", "1")) == b"OK\0"
    assert c.ok(XS_SET_QUOTA, nul("watches", "1")) == b"OK\0"
    assert c.ok(XS_SET_QUOTA, nul("transactions", "1")) == b"OK\0"
    for i in range(5):
        c.write(f"/q/{i}", "x" * 3000)
        c.watch(f"/q/{i}", "t")
    txs = [c.start() for _ in range(5)]
    for tx in txs:
        assert c.end(tx) == "OK"


def test_control_commands(c):
    assert c.control("check") == b"OK\0"
    help_text = c.control("help")
    for cmd in (b"check", b"log", b"print", b"quota", b"help"):
        assert cmd in help_text
    # xenstore-control print: OK, the string goes to the log (control.c)
    assert c.control("print", "hello from the test") == b"OK\0"
    assert c.err(XS_CONTROL, nul("print")) == "EINVAL"
    assert c.err(XS_CONTROL, nul("print", "a", "b")) == "EINVAL"
    assert c.control("log", "on") == b"OK\0"
    assert c.control("log") == b"on\0"
    assert c.control("log", "off") == b"OK\0"
    assert c.control("log") == b"off\0"
    assert c.err(XS_CONTROL, nul("log", "maybe")) == "EINVAL"
    shown = c.control("quota")
    assert b"nodes: 1000" in shown and b"watches: 128" in shown
    assert c.control("quota", "set", "nodes", "999") == b"OK\0"
    assert c.ok(XS_GET_QUOTA, nul("nodes")) == b"999\0"
    c.introduce(5)
    assert b"nodes: 999" in c.control("quota", "5")
    assert c.err(XS_CONTROL, nul("quota", "set", "nodes")) == "EINVAL"
    assert c.err(XS_CONTROL, nul("quota", "set", "bogus", "1")) == "EINVAL"
    assert c.err(XS_CONTROL, nul("no-such-command")) == "EINVAL"
    assert c.err(XS_CONTROL, b"check") == "EINVAL"  # not nul-terminated


def test_only_watch_and_unwatch_ignore_tx_id(c):
    """cxenstored's wire_funcs: XS_FLAG_NOTID on WATCH and UNWATCH alone; every other
    type looks its tx_id up, so a bogus one is ENOENT (echoed in the reply)."""
    reply = c.call(XS_WATCH, nul("/w", "tok"), tx_id=99)
    assert (reply.type, reply.tx_id) == (XS_WATCH, 99)
    assert c.next_event().strings == [b"/w", b"tok"]
    reply = c.call(XS_UNWATCH, nul("/w", "tok"), tx_id=99)
    assert (reply.type, reply.tx_id) == (XS_UNWATCH, 99)
    reply = c.call(XS_CONTROL, nul("check"), tx_id=99)
    assert (reply.type, reply.tx_id, reply.payload) == (XS_ERROR, 99, b"ENOENT\0")
    tx = c.start()
    reply = c.call(XS_CONTROL, nul("check"), tx_id=tx)  # a live one is fine
    assert (reply.type, reply.payload) == (XS_CONTROL, b"OK\0")
    c.end(tx, commit=False)


def test_watch_any_special_path_is_accepted(connect):
    w, c = connect(), connect()
    w.watch("@someOtherEvent", "t")
    assert ev(w) == (b"@someOtherEvent", b"t")
    c.introduce(5)
    c.release(5)
    no_events(w)


def test_release_fires_for_every_removed_node(connect):
    """RELEASE removes the domain's nodes as XS_RM would, and watchers hear of
    them (cxenstored domain_tree_remove -> rm_node), before @releaseDomain."""
    dom0, w = connect(), connect()
    dom0.introduce(5)
    dom0.write("/local/domain/5/data/a", "1")
    dom0.set_perms("/local/domain/5/data", "b5")
    dom0.set_perms("/local/domain/5/data/a", "b5")
    dom0.write("/backend/vif/5/0/state", "4")
    dom0.set_perms("/backend/vif/5/0/state", "n5", "r0")
    dom0.write("/local/domain/5/kept", "dom0's")
    for path, token in [("/local/domain/5", "home"), ("/local/domain/5/data/a", "a"),
                        ("/backend/vif/5/0/state", "be"), ("/local/domain/5/kept", "kept"),
                        ("@releaseDomain", "rel")]:
        w.watch(path, token)
        assert ev(w) == (path.encode(), token.encode())
    dom0.release(5)
    got = [ev(w) for _ in range(4)]
    assert sorted(got[:3]) == [(b"/backend/vif/5/0/state", b"be"),
                               (b"/local/domain/5/data", b"home"),
                               (b"/local/domain/5/data/a", b"a")]
    assert got[3] == (b"@releaseDomain", b"rel")
    no_events(w)
    assert dom0.directory("/local/domain/5") == [b"kept"]
    assert dom0.directory("/backend/vif/5/0") == []


def _queued_to(client: RawClient) -> int:
    """Bytes waiting in ``client``'s socket receive queue (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(client.sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def _stalled(client: RawClient, at_least: int, timeout: float = 10.0) -> None:
    """Wait until the daemon can write no more to ``client`` (which does not
    read): its receive queue holds ``at_least`` bytes and stops growing."""
    deadline = time.monotonic() + timeout
    last, steady = -1, 0
    while steady < 3:
        assert time.monotonic() < deadline, f"queue to the client never settled ({last} bytes)"
        time.sleep(0.05)
        now = _queued_to(client)
        steady = steady + 1 if now == last and now >= at_least else 0
        last = now


def test_identical_event_still_unsent_from_an_earlier_request_goes_once(daemon):
    """cxenstored ``send_event`` (tools/xenstored/core.c) drops a watch event
    identical to one still on the connection's output list, whichever request
    queued it. The watcher stops reading behind replies more than its socket
    holds; two WRITEs by another connection then each fire ``/dq t`` for it,
    and a third fires a different event: it gets ``/dq t`` once, then that one."""
    with RawClient(daemon) as w, RawClient(daemon) as c:
        c.write("/dq-big", b"x" * 4000)
        w.watch("/dq", "t")
        assert ev(w) == (b"/dq", b"t")
        n = 600  # 2.4 MB of replies: far more than any socket buffer holds
        w.send(b"".join(pack(XS_READ, nul("/dq-big"), req_id=i + 1) for i in range(n)))
        _stalled(w, at_least=1)
        c.write("/dq", "1")
        c.write("/dq", "2")
        c.write("/dq/x", "3")
        replies, events = 0, []
        while replies < n:
            m = w.recv_msg()
            if m.type == XS_WATCH_EVENT:
                events.append(tuple(m.strings))
            else:
                assert (m.type, m.req_id, len(m.payload)) == (XS_READ, replies + 1, 4000)
                replies += 1
        assert w.alive()  # a round trip: any event still due arrives first
        while w.events:
            events.append(tuple(w.events.popleft().strings))
        assert events == [(b"/dq", b"t"), (b"/dq/x", b"t")]
        # once sent, the same event is sent again
        c.write("/dq", "4")
        assert ev(w) == (b"/dq", b"t")
        no_events(w)


def test_outbox_drops_an_event_until_its_last_byte_has_left():
    """Pure logic of :class:`xenstored.service.Outbox`: a sender may take part
    of ``buf`` (a non-blocking write); an event is waiting while any of it is
    there (cxenstored keeps a half-written message on its output list)."""
    from xenstored.service import Outbox

    def event(path: bytes) -> bytes:
        body = path + b"\0t\0"
        return pack(XS_WATCH_EVENT, body)

    box = Outbox(100, 1 << 20)
    reply = pack(XS_READ, b"v")
    box.push(reply, wake=False)
    box.push(event(b"/a"), wake=False)
    box.push(reply, wake=False)  # replies are never dropped
    box.push(event(b"/a"), wake=False)  # identical, still waiting: dropped
    box.push(event(b"@releaseDomain"), wake=False)
    box.push(event(b"@releaseDomain"), wake=False)  # special: exempt, as in cxenstored
    assert bytes(box.buf) == (reply + event(b"/a") + reply + event(b"@releaseDomain") * 2)
    del box.buf[:len(reply) + len(event(b"/a")) - 1]  # all of /a but its last byte left
    rest = bytes(box.buf)
    box.push(event(b"/a"), wake=False)
    assert bytes(box.buf) == rest  # still waiting: dropped
    del box.buf[:1]  # now all of it has
    box.push(event(b"/a"), wake=False)
    assert bytes(box.buf) == rest[1:] + event(b"/a")
    box.buf = bytearray()  # a flush took everything
    box.push(event(b"/a"), wake=False)
    assert bytes(box.buf) == event(b"/a")
