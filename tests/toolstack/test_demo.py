"""``make run``'s demo, end to end, in a private runtime directory.

The demo runs the commands a user types (pvxen up, xl create, xl list,
xenstore-ls); this checks that what it shows is what the README promises:
the daemons up (backendd too), both demo guests listed with their disk
and vif, both printing on their consoles, guest 1 pinging guest 2 and fetching its page over TCP, guest 2's
disk blob read back, the store readable by our tools, and that it can be
run twice. It runs on backendd's in-process switch (``PVXEN_NET_SWITCH``)
and with its own images (``PVXEN_DEMO_DIR``), so a ``make run`` on the
same host is not disturbed; the real bridge is covered in tests/backendd.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PV_GRUB = Path("/usr/lib/grub-xen/grub-x86_64-xen.bin")  # Debian's grub-xen-host
BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(not (BIN / "xl").exists() or not (BIN / "pvxen").exists(),
                       reason="needs the installed console scripts (make test installs them)"),
]


def run_demo(rundir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PVXEN_RUNDIR=str(rundir), PVXEN_NET_SWITCH="1",
               PVXEN_DEMO_DIR=str(rundir.parent / "demo"))
    env.pop("XENSTORED_PATH", None)
    return subprocess.run([sys.executable, "-m", "examples.demo"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=100)


def test_demo_boots_two_guests_and_shows_the_store(tmp_path):
    rundir = tmp_path / "run"
    try:
        first = run_demo(rundir)
        assert first.returncode == 0, first.stdout + first.stderr
        out = first.stdout
        for daemon in ("hypervisord", "xenstored", "backendd"):
            assert f"{daemon}: started" in out
        listing = out.split("as xl shows them", 1)[1].split("$ xl block-list", 1)[0]
        names = [line.split()[0] for line in listing.splitlines()
                 if line[:1].isalpha() and not line.startswith(("Name", "$"))]
        assert names[:3] == ["Domain-0", "web", "client"], listing
        assert "read back: OK" in out
        # what the guests printed, read back from their consoles (backendd's logs)
        consoles = out.split("printed on their consoles", 1)[1].split("== dom0", 1)[0]
        for name in ("web", "client"):
            assert f"{name}: console on /dev/pts/" in consoles, consoles
        assert "  | web: listening on 10.0.0.2/24 port 80" in consoles
        assert "  | GET http://10.0.0.2/ -> HTTP/1.0 200 OK" in consoles
        if PV_GRUB.exists():  # the third guest: PV GRUB at its prompt, its disk listed
            assert names[3] == "grub", listing
            assert "grub: at its prompt" in consoles, consoles
            assert "  | grub> ls\n  | (memdisk) (proc) (xen/xvda) (xen/xvda,msdos2) " \
                "(xen/xvda,msdos1)\n  | grub>" in consoles, consoles
        else:
            assert "(Debian package grub-xen-host): no GRUB guest" in out
        assert "xl console web" in out  # how to attach
        assert "  | ping 10.0.0.2: 3/3 replies" in out
        assert "-> HTTP/1.0 200 OK: hello from web" in out
        assert "on backendd's in-process switch" in out
        blocks = out.split("$ xl block-list web client", 1)[1].splitlines()[1:]
        assert blocks[0].split()[:3] == ["Vdev", "BE", "handle"]
        assert blocks[1].split()[:4] == ["51712", "0", "1", "4"]  # both disks Connected
        assert blocks[2].split()[:4] == ["768", "0", "2", "4"]
        if PV_GRUB.exists():  # GRUB's blkfront says Initialised (3), the backend Connected
            assert blocks[3].split()[:4] == ["51712", "0", "3", "3"], blocks
        nics = out.split("$ xl network-list web client\n", 1)[1].splitlines()
        assert nics[1].split()[2] == "00:16:3e:00:0a:02" and nics[1].split()[-1] == "switch"
        assert nics[2].split()[2] == "00:16:3e:00:0a:01" and nics[2].split()[4] == "4"
        tree = out.split("$ xenstore-ls /local/domain\n", 1)[1]
        assert ' name = "Domain-0"' in tree
        for key in ("ring-ref", "event-channel", "tx-ring-ref", "rx-ring-ref", "mac"):
            assert f"    {key} = " in tree, key

        second = run_demo(rundir)  # idempotent: nothing started twice
        assert second.returncode == 0, second.stdout + second.stderr
        assert "already running" in second.stdout
        assert not PV_GRUB.exists() or "grub: already running" in second.stdout
    finally:
        subprocess.run([str(BIN / "pvxen"), "down"], env=dict(os.environ, PVXEN_RUNDIR=str(rundir)),
                       capture_output=True, timeout=60)
    status = subprocess.run([str(BIN / "pvxen"), "status"],
                            env=dict(os.environ, PVXEN_RUNDIR=str(rundir)),
                            capture_output=True, text=True, timeout=30)
    assert status.returncode != 0 and "stopped" in status.stdout
