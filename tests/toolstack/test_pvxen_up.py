"""``pvxen up`` / ``down`` / ``status``: the stack started without systemd.

Pure tests of the command lines and the pid-reuse guard, then the real
console script (``python -m toolstack.pvxen``) starting real
hypervisord and xenstored processes in a private runtime directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from libxen import ctrl
from libxen.core import SyncXenCall
from toolstack import pvxen
from toolstack.pvxen import DAEMONS
from tests.framework.daemons import REPO, Xenstored

HV, XS, BE = DAEMONS


def run_pvxen(*args: str, env: dict[str, str] | None = None,
              timeout: float = 45) -> subprocess.CompletedProcess:
    full = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, "-m", "toolstack.pvxen", *args],
                          capture_output=True, text=True, env=full, timeout=timeout, cwd=REPO)


def xenstore(rundir: Path, *args: str) -> subprocess.CompletedProcess:
    """Our xenstore-* tools, finding xenstored through $PVXEN_RUNDIR."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PVXEN_RUNDIR=str(rundir))
    env.pop("XENSTORED_PATH", None)
    return subprocess.run([sys.executable, "-m", "xenstored.cli", *args], capture_output=True,
                          text=True, env=env, timeout=20, cwd=REPO)


def pids(rundir: Path) -> dict[str, int]:
    return {s.name: int(pvxen.pidfile(rundir, s).read_text()) for s in DAEMONS}


@pytest.fixture
def rundir(tmp_path):
    """A runtime directory whose pvxen daemons are killed at teardown."""
    r = tmp_path / "run"
    yield r
    for spec in DAEMONS:
        pid = pvxen.running_pid(r, spec)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


# -- pure -----------------------------------------------------------------
@pytest.mark.timeout(10)
def test_daemons_in_start_order():
    assert [s.name for s in DAEMONS] == ["hypervisord", "xenstored", "backendd"]
    assert HV.socket == "hypervisord/privcmd" and XS.socket == "xenstored/socket"
    assert BE.socket == "backendd/socket"
    assert len({s.name for s in DAEMONS}) == len(DAEMONS)


@pytest.mark.timeout(10)
def test_command_lines():
    r = Path("/run/pvxen")
    assert pvxen.command_line(HV, r, Path("/opt/v/bin"), {}) == [
        "/opt/v/bin/hypervisord", "--rundir", "/run/pvxen"]
    assert pvxen.command_line(XS, r, None, {}) == [
        sys.executable, "-m", "xenstored", "--rundir", "/run/pvxen"]
    # $XENSTORED_ARGS is word-split, as systemd does for an unbraced $VAR
    env = {"XENSTORED_ARGS": "--no-persist  -Q nodes=10", "HYPERVISORD_ARGS": ""}
    assert pvxen.command_line(XS, r, None, env)[-3:] == ["--no-persist", "-Q", "nodes=10"]
    assert pvxen.command_line(HV, r, None, env)[-1] == "/run/pvxen"


@pytest.mark.timeout(10)
def test_matches_guards_against_pid_reuse():
    r = Path("/run/pvxen")
    assert pvxen.matches(["/v/bin/python3", "/v/bin/hypervisord", "--rundir", "/run/pvxen"], HV, r)
    assert pvxen.matches(["python3", "-m", "xenstored", "--rundir", "/run/pvxen", ""], XS, r)
    assert not pvxen.matches(["python3", "-m", "xenstored", "--rundir", "/run/pvxen"], HV, r)
    assert not pvxen.matches(["/v/bin/hypervisord", "--rundir", "/other"], HV, r)
    assert not pvxen.matches(["bash", "-c", "hypervisord --rundir /run/pvxen"], HV, r)
    assert not pvxen.matches([], HV, r)


@pytest.mark.timeout(10)
def test_process_alive_sees_zombies_as_gone():
    p = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while pvxen.process_alive(p.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not pvxen.process_alive(p.pid)  # exited, not yet reaped
    p.wait()
    assert pvxen.process_alive(os.getpid())


# -- the real script ------------------------------------------------------
@pytest.mark.timeout(60)
def test_up_status_down(rundir):
    # as if pvxen itself ran under systemd: the daemons still log to files
    up = run_pvxen("up", "--rundir", str(rundir), env={"JOURNAL_STREAM": "8:12345"})
    assert up.returncode == 0, up.stderr
    lines = up.stdout.splitlines()
    started = [ln.split(":")[0] for ln in lines if ": started (pid" in ln]
    assert started == ["hypervisord", "xenstored", "backendd"], up.stdout  # in order, each once ready
    assert f"socket {rundir}/xenstored/socket" in up.stdout
    assert f"log    {rundir}/log/hypervisord.log" in up.stdout
    assert lines[-1] == f"clients: export PVXEN_RUNDIR={rundir}"
    first = pids(rundir)
    for name, pid in first.items():
        assert pvxen.process_alive(pid), name
        assert os.getsid(pid) == pid, f"{name} not detached (setsid)"
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
        assert os.readlink(f"/proc/{pid}/fd/2") == f"{rundir}/log/{name}.log"
    assert not (rundir / "pvxen.notify").exists()

    # talk to both daemons through their sockets
    assert xenstore(rundir, "write", "/up/test", "hello").returncode == 0
    read = xenstore(rundir, "read", "/up/test")
    assert (read.returncode, read.stdout) == (0, "hello\n"), read.stderr
    with SyncXenCall(rundir / "hypervisord" / "privcmd") as xc:
        rc, _ = ctrl.xen_version(xc)
    assert rc > 0 and rc >> 16 >= 4  # XENVER_version: major << 16 | minor

    again = run_pvxen("up", env={"PVXEN_RUNDIR": str(rundir)})  # rundir from the environment
    assert again.returncode == 0, again.stderr
    assert f"hypervisord: already running (pid {first['hypervisord']})" in again.stdout
    assert f"xenstored: already running (pid {first['xenstored']})" in again.stdout
    assert "started" not in again.stdout and pids(rundir) == first

    status = run_pvxen("status", "--rundir", str(rundir))
    assert status.returncode == 0
    assert f"running  pid {first['xenstored']}" in status.stdout

    down = run_pvxen("down", "--rundir", str(rundir))
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.stdout.splitlines() == [
        f"backendd: stopped cleanly (pid {first['backendd']})",
        f"xenstored: stopped cleanly (pid {first['xenstored']})",
        f"hypervisord: stopped cleanly (pid {first['hypervisord']})"]
    for name, pid in first.items():
        assert not pvxen.process_alive(pid), name
        assert not (rundir / f"{name}.pid").exists()
        log = (rundir / "log" / f"{name}.log").read_text()
        assert "received SIGTERM" in log and log.rstrip().endswith(f"{name} stopped"), log
        assert "Traceback" not in log and "WARNING" not in log, log
        assert log[:2] == "20", "journald <N> prefixes in a log file"

    stopped = run_pvxen("status", "--rundir", str(rundir))
    assert stopped.returncode == pvxen.NOT_RUNNING
    assert stopped.stdout.split() == ["hypervisord", "stopped", "xenstored", "stopped",
                                      "backendd", "stopped"]
    twice = run_pvxen("down", "--rundir", str(rundir))
    assert (twice.returncode, twice.stdout.split("\n")[0]) == (0, "backendd: not running")


@pytest.mark.timeout(60)
def test_up_restarts_a_crashed_daemon(rundir):
    assert run_pvxen("up", "--rundir", str(rundir)).returncode == 0
    assert xenstore(rundir, "write", "/kept", "yes").returncode == 0
    before = pids(rundir)
    os.kill(before["xenstored"], signal.SIGKILL)
    assert pvxen.wait_gone(before["xenstored"], 5)

    status = run_pvxen("status", "--rundir", str(rundir))
    assert status.returncode == pvxen.NOT_RUNNING
    assert "xenstored    stopped (stale pidfile)" in status.stdout

    up = run_pvxen("up", "--rundir", str(rundir))
    assert up.returncode == 0, up.stderr
    assert f"hypervisord: already running (pid {before['hypervisord']})" in up.stdout
    after = pids(rundir)
    assert after["hypervisord"] == before["hypervisord"]
    assert after["xenstored"] != before["xenstored"]
    assert xenstore(rundir, "read", "/kept").stdout == "yes\n"  # journalled store
    assert run_pvxen("down", "--rundir", str(rundir)).returncode == 0


@pytest.mark.timeout(60)
def test_up_reports_a_daemon_that_fails(rundir):
    up = run_pvxen("up", "--rundir", str(rundir), env={"HYPERVISORD_ARGS": "--memory 1X"})
    assert up.returncode == 1
    assert "hypervisord: exited with status 2 before it was ready" in up.stderr
    assert "argument --memory: '1X' is not a size" in up.stderr  # the log excerpt
    assert not any(rundir.glob("*.pid")) and not (rundir / "log" / "xenstored.log").exists()
    assert "started" not in up.stdout


@pytest.mark.timeout(60)
def test_down_kills_a_daemon_that_ignores_sigterm(rundir, tmp_path):
    fake = tmp_path / "bin" / "hypervisord"
    fake.parent.mkdir()
    fake.write_text("import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                    "print('ignoring SIGTERM', flush=True)\ntime.sleep(60)\n")
    rundir.mkdir()
    proc = subprocess.Popen([sys.executable, str(fake), "--rundir", str(rundir)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ignoring SIGTERM\n"
        pvxen.pidfile(rundir, HV).write_text(f"{proc.pid}\n")
        t0 = time.monotonic()
        down = run_pvxen("down", "--rundir", str(rundir), "--timeout", "0.5")
        assert down.returncode == 1
        assert down.stdout.splitlines() == [
            "backendd: not running", "xenstored: not running",
            f"hypervisord: killed with SIGKILL after 0.5 s (pid {proc.pid})"]
        assert proc.wait(5) == -signal.SIGKILL and time.monotonic() - t0 < 10
        assert not pvxen.pidfile(rundir, HV).exists()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.timeout(60)
def test_up_leaves_a_foreign_daemon_alone(tmp_path):
    xs = Xenstored(tmp_path).start()  # as if systemd ran it in this rundir
    rundir = xs.rundir
    try:
        up = run_pvxen("up", "--rundir", str(rundir))
        assert up.returncode == 0, up.stderr
        assert "hypervisord: started" in up.stdout
        assert "xenstored: already served by a process pvxen did not start" in up.stdout
        assert "(not started by pvxen)" in run_pvxen("status", "--rundir", str(rundir)).stdout
        down = run_pvxen("down", "--rundir", str(rundir))
        assert down.stdout.splitlines()[0].startswith("backendd: stopped cleanly")
        assert down.stdout.splitlines()[1] == "xenstored: not started by pvxen, left running"
        assert "hypervisord: stopped cleanly" in down.stdout
        assert xs.alive
    finally:
        pid = pvxen.running_pid(rundir, HV)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        xs.kill()
