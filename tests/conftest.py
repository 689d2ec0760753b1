"""Shared fixtures: real daemons in a temp dir, logs shown on failure."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.framework.daemons import Hypervisord, Xenstored  # noqa: E402

_running: list = []


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for d in _running:
            rep.sections.append((f"{d.name} log", d.log()[-20000:]))


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
