"""Shared fixtures: real daemons in a temp dir, logs shown on failure."""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.framework.daemons import Hypervisord, Xenstored  # noqa: E402
from tests.framework.hostres import HOST_WIDE  # noqa: E402

_running: list = []


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for d in _running:
            rep.sections.append((f"{d.name} log", d.log()[-20000:]))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Under ``--dist loadgroup`` (``make test``) every ``xdist_group`` mark
    must have reached its test's node id (``<id>@<group>``): that suffix is all
    the scheduler goes by, and without it the group's tests would run side by
    side, silently (pytest-dev/pytest-xdist#1386)."""
    if not getattr(config.option, "loadgroup", False):
        return
    lost = [item.nodeid for item in items if item.get_closest_marker("xdist_group")
            and "@" not in item.nodeid.rpartition("]")[2]]
    if lost:
        raise pytest.UsageError(f"--dist loadgroup lost the xdist_group of {lost[:3]}: "
                                "this pytest-xdist does not group with this pytest")


@pytest.fixture(autouse=True)
def _host_wide_lock(request):
    """A test in a host-wide group (see tests/framework/hostres.py) holds that
    group's lock file while it runs: the xdist group serialises it within one
    run, the lock against another run on the same host."""
    groups = sorted({m.args[0] for m in request.node.iter_markers("xdist_group")
                     if m.args} & HOST_WIDE)
    locks = []
    try:
        for g in groups:
            f = open(Path(tempfile.gettempdir()) / f"pvxen-tests-{g}.lock", "a")
            locks.append(f)
            fcntl.flock(f, fcntl.LOCK_EX)
        yield
    finally:
        for f in locks:
            f.close()


def _daemon(cls, tmp_path):
    """Start a daemon, show its log if the test fails, kill it on teardown."""
    d = cls(tmp_path).start()
    _running.append(d)
    try:
        yield d
    finally:
        _running.remove(d)
        d.kill()


@pytest.fixture
def hypervisord(tmp_path):
    """A fresh hypervisord process; yields the Hypervisord handle."""
    yield from _daemon(Hypervisord, tmp_path)


@pytest.fixture
def xenstored(tmp_path):
    """A fresh xenstored process (attached to ``hypervisord`` when a test
    requests that fixture first: they share the runtime directory)."""
    yield from _daemon(Xenstored, tmp_path)


def require_c_tools(*names: str) -> None:
    """Skip (or, in CI, fail) when Debian's xenstore-utils are absent."""
    missing = [n for n in names if shutil.which(n, path="/usr/bin:/bin") is None]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must have Debian's xenstore-utils: missing {missing}")
        pytest.skip(f"Debian's xenstore-utils not installed (missing {missing}); "
                    "apt-get install xenstore-utils")
