from __future__ import annotations

import pytest

from libxen.xenstore.sync import XsSyncClient
from tests.conftest import _running
from tests.framework.daemons import Backendd

VTEST = ["--device-type", "vtest=tests.backendd.vtest:VTest"]


@pytest.fixture
def backendd(xenstored, tmp_path):
    """backendd (with the test-only ``vtest`` driver) on a fresh xenstored."""
    d = Backendd(tmp_path, VTEST).start()
    _running.append(d)
    try:
        yield d
    finally:
        _running.remove(d)
        d.kill()


@pytest.fixture
def xs(xenstored):
    """A dom0 client of the same xenstored (the test plays toolstack and frontend)."""
    c = XsSyncClient.open(str(xenstored.socket))
    try:
        yield c
    finally:
        c.close()
