"""``make run``'s demo, end to end, in a private runtime directory.

The demo runs the commands a user types (pvxen up, xl create, xl list,
xenstore-ls); this checks that what it shows is what the README promises:
the daemons up, both demo guests listed, the store readable by our tools
(and by Debian's when installed), and that it can be run twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not (BIN / "xl").exists() or not (BIN / "pvxen").exists(),
                       reason="needs the installed console scripts (make test installs them)"),
]


def run_demo(rundir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PVXEN_RUNDIR=str(rundir))
    env.pop("XENSTORED_PATH", None)
    return subprocess.run([sys.executable, "-m", "examples.demo"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=90)


def test_demo_boots_two_guests_and_shows_the_store(tmp_path):
    rundir = tmp_path / "run"
    try:
        first = run_demo(rundir)
        assert first.returncode == 0, first.stdout + first.stderr
        out = first.stdout
        assert "hypervisord: started" in out and "xenstored: started" in out
        listing = out.split("the domains, as xl shows them", 1)[1]
        names = [line.split()[0] for line in listing.splitlines()
                 if line[:1].isalpha() and not line.startswith(("Name", "$"))]
        assert names[:3] == ["Domain-0", "hello", "counter"], listing
        assert '/local/domain/0/name = "Domain-0"' in out
        assert "hello: hello from domain" in out

        second = run_demo(rundir)  # idempotent: nothing started twice
        assert second.returncode == 0, second.stdout + second.stderr
        assert "already running" in second.stdout
    finally:
        subprocess.run([str(BIN / "pvxen"), "down"], env=dict(os.environ, PVXEN_RUNDIR=str(rundir)),
                       capture_output=True, timeout=60)
    status = subprocess.run([str(BIN / "pvxen"), "status"],
                            env=dict(os.environ, PVXEN_RUNDIR=str(rundir)),
                            capture_output=True, text=True, timeout=30)
    assert status.returncode != 0 and "stopped" in status.stdout
