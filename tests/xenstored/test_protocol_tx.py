"""Transactions against the real daemon: isolation, EAGAIN and retry
(cxenstored's generation-count rule; see ``xenstored/transaction.py``)."""

from __future__ import annotations

import pytest

from tests.xenstored.conftest import ev, no_events
from tests.xenstored.rawclient import (
    XS_DIRECTORY_PART,
    XS_GET_PERMS,
    XS_READ,
    XS_RM,
    RawClient,
    nul,
)

pytestmark = pytest.mark.timeout(20)


# ======================================================================================
# Transactions: isolation and EAGAIN
# ======================================================================================
def test_transaction_isolation(connect):
    a, b = connect(), connect()
    a.write("/iso/base", "0")
    tx = a.start()
    a.write("/iso/base", "1", tx=tx)
    a.write("/iso/new/deep", "n", tx=tx)
    a.rm("/tool/xenstored", tx=tx)
    # inside: own changes
    assert a.read("/iso/base", tx=tx) == b"1"
    assert a.read("/iso/new/deep", tx=tx) == b"n"
    assert a.directory("/tool", tx=tx) == []
    # outside (other connection, and the same connection without tx_id): old state
    for cl in (a, b):
        assert cl.read("/iso/base") == b"0"
        assert cl.err(XS_READ, nul("/iso/new")) == "ENOENT"
        assert cl.directory("/tool") == [b"xenstored"]
    # another transaction sees the old state too
    tx2 = b.start()
    assert b.read("/iso/base", tx=tx2) == b"0"
    assert b.end(tx2, commit=False) == "OK"
    assert a.end(tx) == "OK"
    for cl in (a, b):
        assert cl.read("/iso/base") == b"1"
        assert cl.read("/iso/new/deep") == b"n"
        assert cl.directory("/tool") == []
    assert a.control("check") == b"OK\0"


def test_transaction_abort_discards_everything(c):
    c.write("/ab", "keep")
    tx = c.start()
    c.write("/ab", "changed", tx=tx)
    c.write("/ab/child", "x", tx=tx)
    c.set_perms("/ab", "b3", tx=tx)
    assert c.end(tx, commit=False) == "OK"
    assert c.read("/ab") == b"keep"
    assert c.directory("/ab") == []
    assert c.get_perms("/ab") == [b"n0"]


def test_transaction_create_then_delete_inside(c):
    tx = c.start()
    c.write("/cd/a/b", "x", tx=tx)
    c.rm("/cd/a", tx=tx)
    assert c.directory("/cd", tx=tx) == []
    assert c.end(tx) == "OK"
    assert c.directory("/cd") == []
    assert c.control("check") == b"OK\0"


def test_eagain_example_1_read_a_write_b_commits(connect):
    """cxenstored transaction.c example 1: no interference, commit succeeds."""
    c = connect()
    c.write("/A", "a")
    c.write("/B", "b")
    tx = c.start()
    assert c.read("/A", tx=tx) == b"a"
    c.write("/B", "b1", tx=tx)
    assert c.end(tx) == "OK"
    assert c.read("/B") == b"b1"


def test_eagain_example_2_conflicting_write(connect):
    c, other = connect(), connect()
    c.write("/A", "a")
    c.write("/B", "b")
    tx = c.start()
    assert c.read("/A", tx=tx) == b"a"
    other.write("/A", "a-outside")
    c.write("/B", "b1", tx=tx)
    assert c.end(tx) == "EAGAIN"
    assert c.read("/B") == b"b"  # nothing applied
    assert c.read("/A") == b"a-outside"
    assert c.err(XS_READ, nul("/A"), tx_id=tx) == "ENOENT"  # the transaction is gone


def test_eagain_example_3_conflicting_delete(connect):
    c, other = connect(), connect()
    c.write("/A", "a")
    c.write("/B", "b")
    tx = c.start()
    assert c.read("/A", tx=tx) == b"a"
    other.rm("/A")
    c.write("/B", "b1", tx=tx)
    assert c.end(tx) == "EAGAIN"
    assert c.read("/B") == b"b"


def test_eagain_example_4_two_interfering_transactions(connect):
    c1, c2 = connect(), connect()
    c1.write("/A", "a")
    c1.write("/B", "b")
    t1 = c1.start()
    t2 = c2.start()
    assert c1.read("/A", tx=t1) == b"a"
    assert c2.read("/B", tx=t2) == b"b"
    c1.write("/B", "from-1", tx=t1)
    c2.write("/A", "from-2", tx=t2)
    assert c1.end(t1) == "OK"
    assert c2.end(t2) == "EAGAIN"
    assert c1.read("/A") == b"a"
    assert c1.read("/B") == b"from-1"


def test_eagain_read_of_absent_node_then_created(connect):
    c, other = connect(), connect()
    tx = c.start()
    assert c.err(XS_READ, nul("/later"), tx_id=tx) == "ENOENT"
    other.write("/later", "x")
    c.write("/mine", "y", tx=tx)
    assert c.end(tx) == "EAGAIN"
    assert c.err(XS_READ, nul("/mine")) == "ENOENT"


def test_retry_after_eagain_succeeds(connect):
    c, other = connect(), connect()
    c.write("/ctr", "0")
    for attempt in range(3):
        tx = c.start()
        v = int(c.read("/ctr", tx=tx))
        if attempt == 0:
            other.write("/ctr", "10")
        c.write("/ctr", str(v + 1), tx=tx)
        if c.end(tx) == "OK":
            break
    assert attempt == 1
    assert c.read("/ctr") == b"11"


# ======================================================================================
# Snapshot views: a node is seen as it was at the transaction's first access to it
# (tools/xenstored/transaction.c access_node), writes by others do not show through
# ======================================================================================
def test_read_write_read_sees_the_first_value(connect):
    a, b = connect(), connect()
    a.write("/snap/x", "old")
    tx = a.start()
    assert a.read("/snap/x", tx=tx) == b"old"
    b.write("/snap/x", "new")
    assert a.read("/snap/x", tx=tx) == b"old"
    assert a.read("/snap/x") == b"new"  # outside the transaction: the store
    assert a.end(tx) == "EAGAIN"
    assert a.read("/snap/x") == b"new"


def test_directory_is_seen_as_at_first_access(connect):
    a, b = connect(), connect()
    a.write("/snapd/a", "1")
    tx = a.start()
    assert a.directory("/snapd", tx=tx) == [b"a"]
    gen = a.ok(XS_DIRECTORY_PART, b"/snapd\0" b"0\0", tx)
    b.write("/snapd/b", "2")
    b.rm("/snapd/a")
    assert a.directory("/snapd", tx=tx) == [b"a"]
    assert a.ok(XS_DIRECTORY_PART, b"/snapd\0" b"0\0", tx) == gen
    # a node first touched now is seen as it is now
    assert a.err(XS_READ, b"/snapd/a\0", tx) == "ENOENT"
    assert a.read("/snapd/b", tx=tx) == b"2"
    assert a.end(tx) == "EAGAIN"


def test_own_changes_apply_to_the_snapshot(connect):
    a, b = connect(), connect()
    a.write("/snapo/a", "1")
    tx = a.start()
    assert a.directory("/snapo", tx=tx) == [b"a"]
    b.write("/snapo/b", "2")
    a.write("/snapo/c", "3", tx=tx)
    assert a.directory("/snapo", tx=tx) == [b"a", b"c"]
    assert a.end(tx) == "EAGAIN"
    assert a.directory("/snapo") == [b"a", b"b"]


def test_permissions_are_seen_as_at_first_access(connect):
    a, b = connect(), connect()
    a.write("/snapp", "v")
    tx = a.start()
    assert a.get_perms("/snapp", tx=tx) == [b"n0"]
    b.set_perms("/snapp", "r0", "w0")
    assert a.get_perms("/snapp", tx=tx) == [b"n0"]
    assert a.end(tx) == "EAGAIN"
    assert a.get_perms("/snapp") == [b"r0", b"w0"]


def test_absent_node_stays_absent_in_the_transaction(connect):
    a, b = connect(), connect()
    a.mkdir("/snapn")
    tx = a.start()
    assert a.err(XS_READ, b"/snapn/new\0", tx) == "ENOENT"
    b.write("/snapn/new", "x")
    assert a.err(XS_READ, b"/snapn/new\0", tx) == "ENOENT"
    assert a.err(XS_GET_PERMS, b"/snapn/new\0", tx) == "ENOENT"
    assert a.end(tx) == "EAGAIN"


def test_untouched_node_changed_outside_commits(connect):
    """Only a change after the first access conflicts (transaction.c example 1)."""
    a, b = connect(), connect()
    a.write("/snapu/x", "old")
    tx = a.start()
    b.write("/snapu/x", "new")
    assert a.read("/snapu/x", tx=tx) == b"new"
    a.write("/snapu/y", "1", tx=tx)
    assert a.end(tx) == "OK"


# ======================================================================================
# Child lists in a transaction: the copy of first access, changed only by the
# transaction's own creations and removals (core.c construct_node -> add_child,
# rm_node -> delete_child on the transaction's copy). Both daemons, same answers.
# ======================================================================================
@pytest.fixture
def pair(daemon):
    with RawClient(daemon) as a, RawClient(daemon) as b:
        yield a, b


def _children(client, path: str, tx: int) -> tuple[list[bytes], list[bytes]]:
    """DIRECTORY and the names of DIRECTORY_PART from offset 0 (after its <gencnt>)."""
    part = client.ok(XS_DIRECTORY_PART, nul(path, "0"), tx)
    return client.directory(path, tx=tx), part.split(b"\0")[1:-2]


def test_child_created_below_a_node_first_touched_after_an_outside_creation(pair):
    """The state machine's shrunk case (tests/xenstored/test_model.py
    test_machine_doomed_child_list_is_the_copy_of_first_access): the
    transaction copies /kids-a with no children; another connection then
    creates /kids-a/w/f; MKDIR /kids-a/w/v in the transaction finds w live
    (first touched now), so only w gains a child, and the copy of /kids-a
    still lists nothing."""
    a, b = pair
    b.mkdir("/kids-a")
    tx = a.start()
    assert a.directory("/kids-a", tx=tx) == []
    b.write("/kids-a/w/f", "1")
    a.mkdir("/kids-a/w/v", tx=tx)
    assert _children(a, "/kids-a", tx) == ([], [])
    assert _children(a, "/kids-a/w", tx) == ([b"f", b"v"], [b"f", b"v"])
    assert a.end(tx) == "EAGAIN"
    assert b.directory("/kids-a") == [b"w"]
    assert b.directory("/kids-a/w") == [b"f"]


def test_child_created_below_a_node_first_seen_absent(pair):
    """/kids-b/x is absent at first access and created outside since: for the
    transaction it stays absent, so WRITE /kids-b/x/y creates x again in its
    copy of /kids-b (first touched now, with x listed once) and y below it."""
    a, b = pair
    b.mkdir("/kids-b")
    tx = a.start()
    assert a.err(XS_READ, nul("/kids-b/x"), tx) == "ENOENT"
    b.write("/kids-b/x", "outside")
    a.write("/kids-b/x/y", "inside", tx=tx)
    assert _children(a, "/kids-b", tx) == ([b"x"], [b"x"])
    assert _children(a, "/kids-b/x", tx) == ([b"y"], [b"y"])
    assert a.read("/kids-b/x", tx=tx) == b""
    assert a.end(tx) == "EAGAIN"
    assert b.directory("/kids-b/x") == []


def test_child_created_below_a_copied_node_removed_outside(pair):
    """The transaction copied /kids-e/p/q, then q is removed outside: /kids-e/p,
    first touched now, lists nothing, while the copy of q still exists and
    takes a new child."""
    a, b = pair
    b.write("/kids-e/p/q", "1")
    tx = a.start()
    assert a.read("/kids-e/p/q", tx=tx) == b"1"
    b.rm("/kids-e/p/q")
    assert _children(a, "/kids-e/p", tx) == ([], [])
    a.write("/kids-e/p/q/r", "x", tx=tx)
    assert _children(a, "/kids-e/p", tx) == ([], [])
    assert _children(a, "/kids-e/p/q", tx) == ([b"r"], [b"r"])
    assert a.end(tx) == "EAGAIN"
    assert b.directory("/kids-e/p") == []


def test_own_creation_and_outside_changes_of_a_copied_directory(pair):
    a, b = pair
    b.write("/kids-c/old", "1")
    tx = a.start()
    assert a.directory("/kids-c", tx=tx) == [b"old"]
    a.write("/kids-c/new", "1", tx=tx)
    b.rm("/kids-c/old")
    b.write("/kids-c/other", "2")
    assert _children(a, "/kids-c", tx) == ([b"old", b"new"], [b"old", b"new"])
    a.rm("/kids-c/new", tx=tx)
    assert _children(a, "/kids-c", tx) == ([b"old"], [b"old"])
    assert a.end(tx) == "EAGAIN"
    assert b.directory("/kids-c") == [b"other"]


def test_rm_of_a_copied_node_whose_parent_was_removed_outside(pair):
    """The transaction copied /rmp/c; others then remove /rmp. RM /rmp/c in the
    transaction finds its copy but no parent (first touched now): cxenstored
    rm_node answers EINVAL, and so do we (this crashed the connection, found by
    the state machine)."""
    a, b = pair
    b.mkdir("/rmp/c")
    tx = a.start()
    a.write("/rmp/c/d", "1", tx=tx)
    b.rm("/rmp")
    assert a.err(XS_RM, nul("/rmp/c"), tx) == "EINVAL"
    assert a.read("/rmp/c/d", tx=tx) == b"1"  # nothing changed in the transaction
    assert a.end(tx) == "EAGAIN"
    assert a.alive()
    assert b.err(XS_READ, nul("/rmp")) == "ENOENT"


# ======================================================================================
# Watch events of a transaction: one per node at commit (transaction.c queue_watches)
# ======================================================================================
def test_node_changed_twice_in_a_transaction_fires_once(connect):
    a, w = connect(), connect()
    a.write("/txev/x", "0")
    w.watch("/txev", "tok")
    assert ev(w) == (b"/txev", b"tok")
    tx = a.start()
    a.write("/txev/x", "1", tx=tx)
    a.write("/txev/x", "2", tx=tx)
    a.set_perms("/txev/x", "n0", "r0", tx=tx)
    a.write("/txev/y", "2", tx=tx)
    assert a.end(tx) == "OK"
    assert ev(w) == (b"/txev/x", b"tok")
    assert ev(w) == (b"/txev/y", b"tok")
    no_events(w)


def test_node_created_and_removed_in_a_transaction_fires_nothing(connect):
    a, w = connect(), connect()
    a.mkdir("/txcr")
    w.watch("/txcr", "tok")
    assert ev(w) == (b"/txcr", b"tok")
    tx = a.start()
    a.write("/txcr/n", "1", tx=tx)
    a.rm("/txcr/n", tx=tx)
    assert a.end(tx) == "OK"
    no_events(w)


def test_node_changed_then_removed_in_a_transaction_fires_once_per_watch(connect):
    """As cxenstored 4.17 answers: the change of /a/b reaches both watches, the
    removal of /a the parent's; no event twice."""
    a, w = connect(), connect()
    a.write("/txrm/a/b", "1")
    w.watch("/txrm/a/b", "tb")
    w.watch("/txrm", "tr")
    assert {ev(w), ev(w)} == {(b"/txrm/a/b", b"tb"), (b"/txrm", b"tr")}
    tx = a.start()
    a.write("/txrm/a/b", "2", tx=tx)
    a.rm("/txrm/a", tx=tx)
    assert a.end(tx) == "OK"
    got = [ev(w), ev(w), ev(w)]
    no_events(w)
    assert sorted(got) == [(b"/txrm/a", b"tr"), (b"/txrm/a/b", b"tb"), (b"/txrm/a/b", b"tr")]
