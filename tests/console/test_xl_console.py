"""``xl console`` and ``xl create -c`` (the console client, run as the user
runs it: a process on a real terminal, through pexpect), and Debian's own
``xenconsole`` attached to the same pty through our xenstored."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.console.conftest import ECHO_GUEST, Pty, wait_tty
from tests.toolstack.stack import REPO, write_guest

pexpect = pytest.importorskip("pexpect", reason="needs pexpect (pip install pexpect)")
pytestmark = pytest.mark.timeout(60)

XENCONSOLE = Path("/usr/lib/xen-4.17/bin/xenconsole")
BANNER = "Connected to echo console; escape character is '^]'"


def _env(stack) -> dict:
    return {"PVXEN_RUNDIR": str(stack.rundir), "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
            "XENSTORED_PATH": str(stack.rundir / "xenstored" / "socket"), "TERM": "dumb"}


def _xl(stack, *args: str):
    return pexpect.spawn(sys.executable, ["-m", "toolstack.xl", *args], cwd=str(REPO),
                         env=_env(stack), timeout=10)


def _detach(child) -> None:
    child.sendcontrol("]")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before


def test_xl_console_shows_output_takes_input_and_detaches(stack, backendd, tmp_path):
    stack.xl_ok("create", str(write_guest(tmp_path, "echo", ECHO_GUEST)))
    wait_tty(stack, stack.domid_of("echo"))
    child = _xl(stack, "console", "echo")
    child.expect_exact(BANNER)
    child.expect_exact("hello from echo on its console")
    child.send("typed at xl\r")
    child.expect_exact("echo: typed at xl")
    _detach(child)
    assert stack.read(f"/local/domain/{stack.domid_of('echo')}/name") == "echo"  # still running


def test_xl_create_c_attaches(stack, backendd, tmp_path):
    child = _xl(stack, "create", "-c", str(write_guest(tmp_path, "echo", ECHO_GUEST)))
    child.expect_exact("Parsing config from")
    child.expect_exact(BANNER)
    child.expect_exact("hello from echo on its console")
    child.send("x\r")
    child.expect_exact("echo: x")
    _detach(child)


def test_xl_console_without_a_tty_and_by_domid(stack, backendd, tmp_path):
    stack.xl_ok("create", str(write_guest(tmp_path, "echo", ECHO_GUEST)))
    domid = stack.domid_of("echo")
    p = subprocess.Popen([sys.executable, "-m", "toolstack.xl", "console", str(domid)],
                         cwd=REPO, env=_env(stack), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        p.stdin.write(b"piped\r")
        p.stdin.flush()
        time.sleep(1.0)
        p.stdin.write(b"\x1d")
        p.stdin.flush()
        out, err = p.communicate(timeout=10)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert BANNER.encode() in err
    assert b"echo: piped" in out


def test_xl_console_returns_when_the_domain_is_destroyed(stack, backendd, tmp_path):
    stack.xl_ok("create", str(write_guest(tmp_path, "echo", ECHO_GUEST)))
    wait_tty(stack, stack.domid_of("echo"))
    child = _xl(stack, "console", "echo")
    child.expect_exact("hello from echo on its console")
    stack.xl_ok("destroy", "echo")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_xl_console_errors_are_xls(stack, backendd, tmp_path):
    r = stack.xl("console", "nosuch")
    assert r.rc == 1 and "nosuch is an invalid domain identifier (rc=-6)" in r.err
    r = stack.xl("console", "-t", "bogus", "Domain-0")
    assert r.rc == 1 and "console type supported are: pv, serial, vuart" in r.err
    r = stack.xl("console", "0")
    assert r.rc == 1 and "Can't specify Domain-0" in r.err and "Unable to attach console" in r.err


def test_debian_xenconsole_attaches_to_our_pty(stack, backendd, tmp_path):
    if not os.access(XENCONSOLE, os.X_OK):
        pytest.skip("needs Debian's xenconsole (apt-get install xen-utils-4.17)")
    stack.xl_ok("create", str(write_guest(tmp_path, "echo", ECHO_GUEST)))
    domid = stack.domid_of("echo")
    wait_tty(stack, domid)
    # --type pv: without it xenconsole asks libxenctrl (privcmd) for the guest type
    child = pexpect.spawn(str(XENCONSOLE), ["--type", "pv", str(domid)], env=_env(stack),
                          timeout=10)
    child.expect_exact("hello from echo on its console")
    child.send("from xenconsole\r")
    child.expect_exact("echo: from xenconsole")
    _detach(child)


def test_xl_console_without_a_console_daemon_gives_up_after_5_s(stack, tmp_path):
    stack.xl_ok("create", str(write_guest(tmp_path, "echo", ECHO_GUEST)))  # no backendd
    t0 = time.monotonic()
    r = stack.xl("console", "echo")
    waited = time.monotonic() - t0
    assert r.rc == 1
    assert "Could not read tty from store" in r.err and "Unable to attach console" in r.err
    assert 5.0 <= waited < 9.0  # xenconsole's get_pty_fd(xs, path, 5)
