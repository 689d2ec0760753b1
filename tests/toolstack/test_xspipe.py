"""Pipelined XenStore batches against a real xenstored."""

from __future__ import annotations

import pytest

from hypervisord.public.io.xs_wire import XsdSockmsgType as T
from toolstack import xenstore_layout as layout
from toolstack import xspipe
from libxen.xenstore.sync import XsError

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pipe(xenstored):
    p = xspipe.XsPipe.open(str(xenstored.socket))
    try:
        yield p
    finally:
        p.close()


def test_batch_keeps_order_and_reports_errors_in_place(pipe):
    results = pipe.batch([(T.XS_WRITE, b"/a\0one"), (T.XS_READ, b"/missing\0"),
                          (T.XS_READ, b"/a\0"), (T.XS_RM, b"/no/such/node\0")])
    assert results[0] == b"OK\0"
    assert isinstance(results[1], XsError) and results[1].name == "ENOENT"
    assert results[2] == b"one"
    assert isinstance(results[3], XsError) and results[3].name == "ENOENT"
    assert xspipe.read(pipe, "/a") == "one" and xspipe.read(pipe, "/missing") is None


def test_transaction_applies_ops_atomically_and_rm_enoent_is_fine(pipe):
    ops = [layout.Op("rm", "/t"), layout.Op("write", "/t/x", "1"),
           layout.Op("perms", "/t/x", perms=("n0", "r5"))]
    with pipe.transaction() as tx:
        xspipe.apply_ops(pipe, ops, tx)
        assert xspipe.read(pipe, "/t/x") is None  # not visible outside yet
    assert xspipe.read(pipe, "/t/x") == "1"
    assert pipe.request(T.XS_GET_PERMS, b"/t/x\0") == b"n0\0r5\0"
    with pytest.raises(XsError), pipe.transaction() as tx:
        xspipe.apply_ops(pipe, [layout.Op("write", "/t/y", "2"),
                                layout.Op("perms", "/t/y", perms=("bogus",))], tx)
    assert xspipe.read(pipe, "/t/y") is None  # aborted


def test_domain_names_past_the_directory_size_limit(pipe):
    names = {domid: f"guest-{domid}" for domid in range(1000, 2200)}  # > 4 KiB of ids
    ops = [layout.Op("write", f"/local/domain/{d}/name", n) for d, n in names.items()]
    xspipe.apply_ops(pipe, ops)
    got = xspipe.domain_names(pipe)
    assert got == names
    assert xspipe.read_many(pipe, ["/local/domain/1000/name", "/x"]) == ["guest-1000", None]
