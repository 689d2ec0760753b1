"""A running pvxen stack for toolstack tests: hypervisord, then xenstored
(which attaches to it), both with ``<tmp>/run`` as runtime directory, and
``xl`` run in-process (its ``main``) against them. The launcher that
``xl create`` starts is stopped, and every guest process it forked
killed, on teardown.

Import the fixture into a test module with ``from tests.toolstack.stack
import stack``.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from toolstack import xl
from toolstack.builder import Toolstack, read_or_none
from toolstack.launchctl import LaunchError, LauncherClient, socket_path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class XlResult:
    rc: int
    out: str
    err: str


@dataclass
class Stack:
    rundir: Path
    ts: Toolstack

    @property
    def xl_dir(self) -> Path:
        return self.rundir / "xl"

    def xl(self, *argv: str) -> XlResult:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = xl.main(list(argv))
        return XlResult(rc, out.getvalue(), err.getvalue())

    def xl_ok(self, *argv: str) -> XlResult:
        r = self.xl(*argv)
        assert r.rc == 0, f"xl {' '.join(argv)} -> {r.rc}\n{r.err}{self.logs()}"
        return r

    def read(self, path: str) -> str | None:
        return read_or_none(self.ts.xs, path)

    def guest_log(self, name: str) -> str:
        p = self.xl_dir / "log" / f"guest-{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def logs(self) -> str:
        logs = self.xl_dir / "log"
        if not logs.exists():
            return ""
        return "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
                       for p in sorted(logs.iterdir()))

    def wait(self, cond: Callable[[], object], what: str, timeout: float = 10.0) -> object:
        deadline = time.monotonic() + timeout
        while True:
            value = cond()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}{self.logs()}")
            time.sleep(0.02)

    def domids(self) -> list[int]:
        from toolstack.xl_cmds import domain_infos

        return [i.domid for i in domain_infos(self.ts)]

    def domid_of(self, name: str) -> int:
        r = self.xl_ok("domid", name)
        return int(r.out)

    def launcher_guests(self) -> dict[int, int]:
        """domid -> pid of the guest processes the launcher watches."""
        return launcher_guests(self.rundir)

    def stop_launcher(self) -> None:
        stop_launcher(self.rundir)


def launcher_guests(rundir: Path) -> dict[int, int]:
    """domid -> pid of the guest processes the launcher in ``rundir`` watches."""
    try:
        with LauncherClient(socket_path(rundir)) as c:
            return {domid: pid for domid, pid in c.request({"op": "list"})["guests"]}
    except (OSError, LaunchError):
        return {}


def stop_launcher(rundir: Path) -> None:
    """SIGKILL the guests of the launcher in ``rundir``, then stop the launcher."""
    for pid in launcher_guests(rundir).values():
        _kill(pid, signal.SIGKILL)
    pidfile = rundir / "xl" / "launcher.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text())
        _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        _kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


@pytest.fixture
def stack(hypervisord, xenstored, monkeypatch):
    """hypervisord + xenstored (started in that order) and xl pointed at them."""
    rundir = hypervisord.rundir
    assert xenstored.rundir == rundir
    monkeypatch.setenv("PVXEN_RUNDIR", str(rundir))
    monkeypatch.chdir(REPO)
    ts = Toolstack(rundir)
    s = Stack(rundir, ts)
    try:
        yield s
    finally:
        s.stop_launcher()
        ts.close()


@pytest.fixture
def start_backendd(hypervisord):
    """``start_backendd(*args)``: a backendd process beside the stack's daemons
    (same runtime directory), killed on teardown."""
    from tests.conftest import _running
    from tests.framework.daemons import Backendd

    started = []

    def start(*extra: str) -> Backendd:
        d = Backendd(hypervisord.rundir.parent, list(extra)).start()
        started.append(d)
        _running.append(d)
        return d

    try:
        yield start
    finally:
        # The guests go first, while their backends still answer: a launcher
        # tearing down a guest's devices with no backendd waits out libxl's
        # 10 s device timeout (and answers nobody meanwhile).
        if started:
            stop_launcher(hypervisord.rundir)
        for d in started:
            _running.remove(d)
            d.kill()


def write_guest(tmp_path: Path, name: str, body: str, extra_cfg: str = "",
                memory: int = 4) -> Path:
    """A guest program ``<name>.py`` and its ``<name>.cfg``; returns the cfg path."""
    prog = tmp_path / f"{name}.py"
    prog.write_text(body)
    cfg = tmp_path / f"{name}.cfg"
    cfg.write_text(f'name = "{name}"\nmemory = {memory}\nkernel = "{prog}"\n{extra_cfg}')
    return cfg
