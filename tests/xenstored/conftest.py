"""Shared fixtures and helpers of the protocol tests (real daemon, raw client)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.xenstored.rawclient import XS_WATCH_EVENT, RawClient


@pytest.fixture
def c(xenstored):
    with RawClient(xenstored.socket) as client:
        yield client


@pytest.fixture
def connect(xenstored):
    opened = []

    def factory() -> RawClient:
        client = RawClient(xenstored.socket)
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.close()


def no_events(watcher: RawClient) -> None:
    """Round trip on ``watcher``: any event already due arrives first."""
    assert watcher.alive()
    assert list(watcher.events) == []


def ev(watcher: RawClient) -> tuple[bytes, bytes]:
    m = watcher.next_event()
    assert (m.type, m.req_id, m.tx_id) == (XS_WATCH_EVENT, 0, 0)
    path, token = m.strings
    return path, token


CXENSTORED = Path("/usr/lib/xen-4.17/bin/xenstored")
REPO = Path(__file__).resolve().parents[2]
#: ../shared/tools/cxenstored beside the clone (or beside a worktree's parent)
STARTS = [base / "shared" / "tools" / "cxenstored" / "start-cxenstored"
          for base in (REPO.parent, REPO.parent.parent)]


@pytest.fixture(scope="module")
def cxenstored(tmp_path_factory):
    """Debian's cxenstored 4.17 on a socket (dom0 clients only), shared by a
    module's tests: yields the socket path."""
    start = next((p for p in STARTS if p.exists()), None)
    if not CXENSTORED.exists() or shutil.which("gcc") is None or start is None:
        if os.environ.get("CI") == "true":  # .ci/run installs them: their absence is a bug
            pytest.fail("CI must have Debian's cxenstored (xen-utils-4.17), gcc and "
                        "../shared/tools/cxenstored")
        pytest.skip("Debian's cxenstored (xen-utils-4.17), gcc or ../shared/tools/cxenstored "
                    "missing; apt-get install xen-utils-4.17 gcc")
    d = tmp_path_factory.mktemp("cx")
    pid = int(subprocess.run([str(start), str(d)], check=True, capture_output=True,
                             text=True, timeout=20).stdout.strip())
    try:
        yield d / "socket"
    finally:
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(params=["ours", pytest.param("cxenstored", marks=pytest.mark.interop)])
def daemon(request):
    """The socket of our xenstored, or of Debian's cxenstored 4.17 (one per
    module: each test uses its own paths): a test using it runs on both."""
    if request.param == "ours":
        return request.getfixturevalue("xenstored").socket
    return request.getfixturevalue("cxenstored")
