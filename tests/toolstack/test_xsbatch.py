"""The toolstack's pipelined XenStore batches against a real xenstored."""

from __future__ import annotations

import pytest

from libxen.xenstore.errors import XsError
from libxen.xenstore.sync import XsSyncClient
from toolstack import xenstore_layout as layout
from toolstack import xsbatch

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def xs(xenstored):
    with XsSyncClient.open(str(xenstored.socket)) as client:
        yield client


def test_transaction_applies_ops_atomically_and_rm_enoent_is_fine(xs):
    ops = [layout.Op("rm", "/t"), layout.Op("write", "/t/x", "1"),
           layout.Op("perms", "/t/x", perms=("n0", "r5"))]
    with xs.transaction() as tx:
        xsbatch.apply_ops(xs, ops, tx)
        assert xsbatch.read(xs, "/t/x") is None  # not visible outside yet
    assert xsbatch.read(xs, "/t/x") == "1"
    assert xs.get_perms("/t/x") == [b"n0", b"r5"]
    with pytest.raises(XsError) as exc, xs.transaction() as tx:
        xsbatch.apply_ops(xs, [layout.Op("write", "/t/y", "2"),
                               layout.Op("perms", "/t/y", perms=("bogus",))], tx)
    assert exc.value.name == "EINVAL"
    assert xsbatch.read(xs, "/t/y") is None  # aborted


def test_domain_names_past_the_directory_size_limit(xs):
    names = {domid: f"guest-{domid}" for domid in range(1000, 2200)}  # > 4 KiB of ids
    ops = [layout.Op("write", f"/local/domain/{d}/name", n) for d, n in names.items()]
    xsbatch.apply_ops(xs, ops)
    assert xsbatch.domain_names(xs) == names
    assert xsbatch.read_many(xs, ["/local/domain/1000/name", "/x"]) == ["guest-1000", None]
