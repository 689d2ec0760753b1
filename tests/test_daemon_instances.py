"""Both daemons: one instance per socket and state directory, and startup
failures that say what went wrong.

A second daemon started on a live daemon's socket (or, for xenstored, its
journal directory) must refuse to start and leave the first one serving; a
socket left by a daemon that died is taken over, as a restart by systemd
needs.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from libxen import ctrl
from libxen.sync import SyncXenCall
from tests.conftest import REPO
from tests.framework.daemons import Hypervisord, Xenstored
from libxen.xenstore.sync import XsSyncClient

pytestmark = pytest.mark.timeout(60)


def run_daemon(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=30)


def hv_alive(hv: Hypervisord) -> bool:
    with SyncXenCall(hv.privcmd) as xc:
        return ctrl.xen_version(xc)[0] >> 16 == 4


def test_second_hypervisord_leaves_the_first_alone(hypervisord):
    r = run_daemon("hypervisord", "--rundir", str(hypervisord.rundir))
    assert r.returncode == 1
    assert f"hypervisord cannot start: [Errno 98] another daemon is listening on " \
           f"{hypervisord.privcmd}" in r.stderr
    assert hypervisord.alive and hv_alive(hypervisord)


def test_second_xenstored_leaves_the_first_alone(xenstored, tmp_path):
    with XsSyncClient.open(str(xenstored.socket)) as xs:
        xs.write("/first", b"still here")
    r = run_daemon("xenstored", "--rundir", str(xenstored.rundir), "--no-persist")
    assert r.returncode == 1
    assert f"another daemon is listening on {xenstored.socket}" in r.stderr
    # another socket, the same journal: refused too, naming the holder
    r = run_daemon("xenstored", "--rundir", str(xenstored.rundir),
                   "--socket", str(tmp_path / "other.sock"))
    assert r.returncode == 1
    assert (f"is the state directory of another running process (pid {xenstored.proc.pid})"
            in r.stderr)
    assert not (tmp_path / "other.sock").exists()
    with XsSyncClient.open(str(xenstored.socket)) as xs:
        assert xs.read("/first") == b"still here"


@pytest.mark.parametrize("cls", [Hypervisord, Xenstored], ids=["hypervisord", "xenstored"])
def test_a_dead_daemons_socket_is_taken_over(tmp_path, cls):
    d = cls(tmp_path).start()
    try:
        d.proc.kill()  # SIGKILL: the socket file stays behind
        d.proc.wait()
        path = d.privcmd if cls is Hypervisord else d.socket
        assert path.is_socket()
        d.start()
        if cls is Hypervisord:
            assert hv_alive(d)
        else:
            with XsSyncClient.open(str(d.socket)) as xs:
                assert xs.read("/tool/xenstored") == b""
    finally:
        d.kill()


@pytest.mark.parametrize("module", ["hypervisord", "xenstored"])
def test_a_file_in_the_sockets_place_is_not_removed(tmp_path, module):
    sub = tmp_path / module
    sub.mkdir(mode=0o700)
    name = "privcmd" if module == "hypervisord" else "socket"
    (sub / name).write_text("precious")
    r = run_daemon(module, "--rundir", str(tmp_path))
    assert r.returncode == 1
    assert f"{module} cannot start: [Errno 17] {sub / name} exists and is not a socket" \
        in r.stderr
    assert (sub / name).read_text() == "precious"


@pytest.mark.parametrize("module", ["hypervisord", "xenstored"])
def test_an_unusable_rundir_is_one_clear_line(tmp_path, module):
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = run_daemon(module, "--rundir", str(blocker / "run"))
    assert r.returncode == 1
    assert f"{module} cannot start: [Errno 20] Not a directory" in r.stderr
    assert "Traceback" not in r.stderr


def test_stale_probe_does_not_disturb_a_live_xenstored_client(xenstored):
    """The probe a second instance makes is just a connection that closes."""
    with XsSyncClient.open(str(xenstored.socket)) as xs:
        run_daemon("xenstored", "--rundir", str(xenstored.rundir))
        xs.write("/after-probe", b"ok")
        assert xs.read("/after-probe") == b"ok"
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(xenstored.socket))
    s.close()


@pytest.mark.parametrize("setting, message", [
    ("nodes=abc", "bad quota setting 'nodes=abc', expected name=value with a value of 0.."),
    ("nodes=4294967296", "bad quota setting 'nodes=4294967296'"),
    ("nodes", "bad quota setting 'nodes'"),
    ("bogus=1", "unknown quota 'bogus' in 'bogus=1'; known: nodes, watches, transactions"),
])
def test_bad_quota_options_exit_2(tmp_path, setting, message):
    r = run_daemon("xenstored", "--rundir", str(tmp_path), "-Q", setting)
    assert r.returncode == 2 and f"xenstored: {message}" in r.stderr, r.stderr
    assert not (tmp_path / "xenstored").exists()
