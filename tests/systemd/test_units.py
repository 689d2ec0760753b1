"""The unit files in ``systemd/``: their contract, ``systemd-analyze verify``,
and a real start/stop under a ``systemd --user`` manager.

The machines these tests run on have no systemd as PID 1, so the manager
runs as it can without PID 1: inside ``unshare --mount``
with a private tmpfs on /run/systemd (``systemd --user`` only checks that
/run/systemd/system exists). The test directory is bind-mounted at
:data:`MOUNT` inside that namespace, outside /tmp, because the units have
``PrivateTmp=yes``: paths the services see must not live under /tmp.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemonkit.daemon import add_common_arguments
from toolstack import pvxen
from toolstack.pvxen import DAEMONS
from tests.framework.daemons import REPO

UNITS = REPO / "systemd"
SYSTEMD = Path("/usr/lib/systemd/systemd")
MOUNT = "/run/systemd/pvxen-test"  # the test directory, inside the namespace
HV, XS, BE = DAEMONS


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def skip_or_fail(reason: str) -> None:
    if in_ci():
        pytest.fail(f"CI must run this test: {reason}")
    pytest.skip(reason)


def parse_unit(text: str) -> dict[str, list[str]]:
    """``Section.Key`` -> values, in order (keys may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def write_shims(bindir: Path) -> None:
    """Console scripts as pip would write them, running this source tree."""
    bindir.mkdir(parents=True, exist_ok=True)
    for spec in DAEMONS:
        shim = bindir / spec.name
        shim.write_text(f"#!{sys.executable}\nimport runpy, sys\n"
                        f"sys.path.insert(0, {str(REPO)!r})\n"
                        f"runpy.run_module({spec.module!r}, run_name='__main__')\n")
        shim.chmod(0o755)


def install_units(dest: Path, bindir: str | Path, *extra: str) -> list[Path]:
    rc = pvxen.main(["install-units", "--dest", str(dest), "--bindir", str(bindir), *extra])
    assert rc == 0
    return [dest / s.unit for s in DAEMONS]


# -- the contract, read from the files -------------------------------------
@pytest.mark.timeout(10)
@pytest.mark.parametrize("spec", DAEMONS, ids=lambda s: s.name)
def test_unit_contract(spec):
    u = parse_unit((UNITS / spec.unit).read_text())
    one = {k: v[-1] for k, v in u.items()}
    assert one["Service.Type"] == "notify" and one["Service.NotifyAccess"] == "main"
    assert one["Service.RuntimeDirectory"] == "pvxen"
    assert one["Service.RuntimeDirectoryPreserve"] == "yes"
    assert "PVXEN_RUNDIR=%t/pvxen" in one["Service.Environment"].split()
    assert "-/etc/default/xencommons" in u["Service.EnvironmentFile"]
    assert one["Service.SyslogIdentifier"] == spec.name
    assert one["Service.KillSignal"] == "SIGTERM"
    import argparse
    p = argparse.ArgumentParser()
    add_common_arguments(p)
    stop_deadline = p.parse_args([]).stop_deadline
    assert float(one["Service.TimeoutStopSec"]) > stop_deadline
    assert float(one["Service.TimeoutStopSec"]) == pvxen.STOP_TIMEOUT
    assert float(one["Service.TimeoutStartSec"]) == pvxen.START_TIMEOUT
    earlier = [s.unit for s in DAEMONS[:DAEMONS.index(spec)]]
    for key in ("Unit.Requires", "Unit.After"):
        assert sorted(" ".join(u.get(key, [])).split()) == sorted(earlier), key


@pytest.mark.timeout(10)
@pytest.mark.parametrize("spec", DAEMONS, ids=lambda s: s.name)
def test_execstart_is_pvxen_up_command_line(spec, tmp_path):
    """``pvxen up`` runs exactly what the installed unit runs."""
    (unit,) = [p for p in install_units(tmp_path / "u", "/opt/venv/bin") if p.name == spec.unit]
    (execstart,) = parse_unit(unit.read_text())["Service.ExecStart"]
    rundir = Path("/run/user/1000/pvxen")
    env = {spec.args_env: "--verbose --stop-deadline 3"}
    argv = []
    for word in shlex.split(execstart.replace("%t", "/run/user/1000")):
        argv += shlex.split(env[word[1:]]) if word == f"${spec.args_env}" else [word]
    assert argv == pvxen.command_line(spec, rundir, Path("/opt/venv/bin"), env)
    # install-units changed nothing but ExecStart=
    source = (UNITS / spec.unit).read_text().splitlines()
    changed = [(a, b) for a, b in zip(source, unit.read_text().splitlines()) if a != b]
    assert len(changed) == 1 and changed[0][1].startswith("ExecStart=/opt/venv/bin/")


# -- systemd-analyze verify ------------------------------------------------
def verify(units: list[Path], *, user: bool, runtime: Path) -> subprocess.CompletedProcess:
    if shutil.which("systemd-analyze") is None:
        skip_or_fail("systemd-analyze not installed (apt-get install systemd)")
    cmd = ["systemd-analyze", *(["--user"] if user else []), "verify", "--man=no",
           *map(str, units)]
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))  # --user resolves RuntimeDirectory=
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)


@pytest.mark.timeout(40)
@pytest.mark.parametrize("user", [False, True], ids=["system", "user"])
def test_systemd_analyze_verify(tmp_path, user):
    write_shims(tmp_path / "bin")
    units = install_units(tmp_path / "units", tmp_path / "bin", *(["--user"] if user else []))
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    r = verify(units, user=user, runtime=runtime)  # together: Requires= resolves
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


@pytest.mark.timeout(40)
def test_systemd_analyze_verify_catches_mistakes(tmp_path):
    """The verify test above can fail: a typo (a warning only: rc 0, which is
    why that test also wants empty output) and a missing binary (rc 1)."""
    write_shims(tmp_path / "bin")
    units = install_units(tmp_path / "units", tmp_path / "bin")
    text = units[0].read_text()
    units[0].write_text(text.replace("Type=notify", "Type=notyfy"))
    r = verify(units, user=False, runtime=tmp_path)
    assert "Failed to parse service type, ignoring: notyfy" in r.stderr
    units[0].write_text(text)
    (tmp_path / "bin" / "xenstored").unlink()
    r = verify(units, user=False, runtime=tmp_path)
    assert r.returncode != 0 and "xenstored" in r.stderr


# -- a real systemd --user manager -----------------------------------------
def manager_prerequisites() -> str | None:
    """Why a user manager cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root for unshare --mount"
    missing = [t for t in ("unshare", "nsenter", "systemctl") if shutil.which(t) is None]
    if missing or not os.access(SYSTEMD, os.X_OK):
        return f"missing {missing or [str(SYSTEMD)]} (apt-get install systemd util-linux)"
    return None


class UserManager:
    """``systemd --user`` in a private mount namespace, units from ``root``.

    Inside the namespace ``root`` is visible as :data:`MOUNT`; its ``xdg``
    subdirectory is ``$XDG_RUNTIME_DIR`` (so ``%t/pvxen`` is
    ``root/xdg/pvxen`` outside) and ``config/systemd/user`` holds the units.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "xdg").mkdir(mode=0o700)
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("NOTIFY_SOCKET", "DBUS_SESSION_BUS_ADDRESS", "PYTHONPATH")}
        self.env.update(XDG_RUNTIME_DIR=f"{MOUNT}/xdg", XDG_CONFIG_HOME=f"{MOUNT}/config",
                        SYSTEMD_PAGER="", SYSTEMD_COLORS="0")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> None:
        script = (f"mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/system {MOUNT} && "
                  f"mount --bind {shlex.quote(str(self.root))} {MOUNT} && "
                  f"exec {SYSTEMD} --user")
        with open(self.root / "manager.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env)
        private = self.root / "xdg" / "systemd" / "private"
        deadline = time.monotonic() + timeout
        while not private.is_socket():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                skip_or_fail(f"systemd --user did not start (rc {self.proc.poll()}): "
                             f"{(self.root / 'manager.log').read_text()[-2000:]}")
            time.sleep(0.02)

    def systemctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        assert self.proc is not None
        return subprocess.run(["nsenter", "-t", str(self.proc.pid), "-m", "systemctl",
                               "--user", "--no-pager", *args], capture_output=True,
                              text=True, env=self.env, timeout=timeout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        r = self.systemctl("show", unit, "-p", ",".join(props))
        assert r.returncode == 0, r.stderr
        return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)

    def diagnostics(self) -> str:
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted((self.root / "logs").glob("*.log")))
        status = self.systemctl("status", *(s.unit for s in DAEMONS), timeout=10)
        return f"{status.stdout}\n{logs}"

    def close(self) -> None:
        """SIGTERM: a user manager starts exit.target (stops every unit)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def install_for_manager(root: Path) -> None:
    """Shims, units naming them by their in-namespace path, log drop-ins."""
    write_shims(root / "bin")
    units = root / "config" / "systemd" / "user"
    install_units(units, f"{MOUNT}/bin", "--user")
    (root / "logs").mkdir()
    # The checkout under test (and its venv's interpreter) may live in /tmp,
    # which the units' PrivateTmp=yes would hide: the test drop-in turns it
    # off; everything else stays as shipped.
    private_tmp = "PrivateTmp=no\n" if _under_tmp(REPO, Path(sys.executable)) else ""
    for spec in DAEMONS:  # there is no journald: stdout/stderr to files
        dropin = units / f"{spec.unit}.d"
        dropin.mkdir()
        log = f"{MOUNT}/logs/{spec.name}.log"
        (dropin / "test-logs.conf").write_text(
            f"[Service]\nStandardOutput=append:{log}\nStandardError=append:{log}\n"
            + private_tmp)


def _under_tmp(*paths: Path) -> bool:
    tmp = Path("/tmp").resolve()
    return any(p.resolve() == tmp or tmp in p.resolve().parents for p in paths)


def talk_to_both(rundir: Path) -> None:
    """A xenstore write and read (Debian's xenstore-read if present), and a
    hypercall, from outside the namespace, over the daemons' sockets."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PVXEN_RUNDIR=str(rundir),
               XENSTORED_PATH=str(rundir / "xenstored" / "socket"))
    w = subprocess.run([sys.executable, "-m", "xenstored.cli", "write", "/systemd", "works"],
                       env=env, capture_output=True, text=True, timeout=20)
    assert w.returncode == 0, w.stderr
    reader = (["/usr/bin/xenstore-read"] if os.access("/usr/bin/xenstore-read", os.X_OK)
              else [sys.executable, "-m", "xenstored.cli", "read"])
    r = subprocess.run([*reader, "/systemd"], env=env, capture_output=True, text=True,
                       timeout=20)
    assert (r.returncode, r.stdout) == (0, "works\n"), r.stderr
    code = ("from libxen import ctrl\n"
            "from libxen.core import SyncXenCall\n"
            "with SyncXenCall() as xc: print(ctrl.xen_version(xc)[0] >> 16)\n")
    v = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=20)
    assert v.returncode == 0 and int(v.stdout) >= 4, v.stderr


@pytest.mark.timeout(60)
def test_units_under_a_real_user_manager(tmp_path):
    reason = manager_prerequisites()
    if reason:
        pytest.skip(f"no systemd --user manager here: {reason}")
    install_for_manager(tmp_path)
    manager = UserManager(tmp_path)
    main_pids: list[int] = []
    try:
        manager.start()
        # returns only once all sent READY=1 (Type=notify), hypervisord first
        start = manager.systemctl("start", BE.unit)
        assert start.returncode == 0, start.stderr + manager.diagnostics()
        active = manager.systemctl("is-active", HV.unit, XS.unit, BE.unit)
        assert active.stdout.split() == ["active"] * 3, manager.diagnostics()
        props = ("MainPID", "StatusText", "ActiveEnterTimestampMonotonic",
                 "ExecMainStartTimestampMonotonic", "InactiveEnterTimestampMonotonic",
                 "ActiveExitTimestampMonotonic", "Result", "ExecMainStatus", "ActiveState")
        hv, xs, be = (manager.show(s.unit, *props) for s in DAEMONS)
        main_pids += [int(hv["MainPID"]), int(xs["MainPID"]), int(be["MainPID"])]
        assert int(xs["ExecMainStartTimestampMonotonic"]) >= int(
            hv["ActiveEnterTimestampMonotonic"]), "xenstored started before hypervisord's READY"
        assert int(be["ExecMainStartTimestampMonotonic"]) >= int(
            xs["ActiveEnterTimestampMonotonic"]), "backendd started before xenstored's READY"
        assert hv["StatusText"] == xs["StatusText"] == be["StatusText"] == "running"
        rundir = tmp_path / "xdg" / "pvxen"  # RuntimeDirectory=pvxen under %t
        for spec, pid in zip(DAEMONS, main_pids):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
            assert pvxen.matches(cmdline, spec, Path(f"{MOUNT}/xdg/pvxen")), cmdline
            assert (rundir / spec.socket).is_socket()
        talk_to_both(rundir)

        stop = manager.systemctl("stop", BE.unit, XS.unit, HV.unit)
        assert stop.returncode == 0, stop.stderr + manager.diagnostics()
        hv, xs, be = (manager.show(s.unit, *props) for s in DAEMONS)
        for name, p in (("hypervisord", hv), ("xenstored", xs), ("backendd", be)):
            assert (p["ActiveState"], p["Result"], p["ExecMainStatus"]) == (
                "inactive", "success", "0"), (name, p, manager.diagnostics())
        # stopped in reverse order: hypervisord only once xenstored is gone
        assert int(hv["ActiveExitTimestampMonotonic"]) >= int(
            xs["InactiveEnterTimestampMonotonic"])
        assert int(xs["ActiveExitTimestampMonotonic"]) >= int(
            be["InactiveEnterTimestampMonotonic"])
        for spec in DAEMONS:
            log = (tmp_path / "logs" / f"{spec.name}.log").read_text()
            assert "received SIGTERM" in log and f"{spec.name} stopped" in log, log
            # no warning either: xenstored attached to hypervisord from its sandbox
            assert "Traceback" not in log and "WARNING" not in log, log
        assert rundir.is_dir()  # RuntimeDirectoryPreserve=yes
    finally:
        manager.close()
        for pid in main_pids:
            if pvxen.process_alive(pid):
                os.kill(pid, signal.SIGKILL)
