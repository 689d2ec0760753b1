"""Transactions against the real daemon: isolation, EAGAIN and retry
(cxenstored's generation-count rule; see ``xenstored/transaction.py``)."""

from __future__ import annotations

import pytest

from tests.xenstored.rawclient import (
    XS_READ,
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
