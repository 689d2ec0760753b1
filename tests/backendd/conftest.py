from __future__ import annotations

import pytest

from libxen.xenstore.sync import XsSyncClient
from tests.conftest import _daemon
from tests.framework.daemons import Backendd

VTEST = ["--device-type", "vtest=tests.backendd.vtest:VTest"]


@pytest.fixture
def backendd(xenstored, tmp_path):
    """backendd (with the test-only ``vtest`` driver) on a fresh xenstored."""
    yield from _daemon(lambda workdir: Backendd(workdir, VTEST), tmp_path)


@pytest.fixture
def xs(xenstored):
    """A dom0 client of the same xenstored (the test plays toolstack and frontend)."""
    c = XsSyncClient.open(str(xenstored.socket))
    try:
        yield c
    finally:
        c.close()
