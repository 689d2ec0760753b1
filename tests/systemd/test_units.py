"""The unit files in ``systemd/``: their contract, ``systemd-analyze verify``,
and a real start/stop under a ``systemd --user`` manager.

The machines these tests run on have no systemd as PID 1, so the manager
runs as in ../shared/reference/ecosystem.md §2: inside ``unshare --mount``
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

from hypervisord.libxen.daemon import add_common_arguments
from hypervisord.toolstack import pvxen
from hypervisord.toolstack.pvxen import DAEMONS
from tests.framework.daemons import REPO

UNITS = REPO / "systemd"
SYSTEMD = Path("/usr/lib/systemd/systemd")
MOUNT = "/run/systemd/pvxen-test"  # the test directory, inside the namespace
HV, XS = DAEMONS


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
