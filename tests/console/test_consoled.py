"""backendd's console service against real guests: output on the pty and in
``guest-<name>.log``, input typed on the pty reaches the guest, domain
destroy closes the console and a restarted backendd attaches again."""

from __future__ import annotations

import os
import time

import pytest

from tests.console.conftest import ECHO_GUEST, Pty, console_log, wait_tty
from tests.toolstack.stack import write_guest

pytestmark = pytest.mark.timeout(60)


def test_guest_output_on_pty_and_log_and_input_reaches_guest(stack, backendd, tmp_path):
    stack.xl_ok("create", str(write_guest(tmp_path, "echo", ECHO_GUEST)))
    domid = stack.domid_of("echo")
    pty = Pty(wait_tty(stack, domid))
    try:
        pty.read_until(b"hello from echo on its console\r\n")
        pty.write(b"ping 42\r")
        pty.read_until(b"echo: ping 42\r\n")
    finally:
        pty.close()
    log = console_log(stack, "echo")
    stack.wait(lambda: b"echo: ping 42" in log.read_bytes() if log.exists() else False,
               "the console log")
    assert log.read_bytes().startswith(b"hello from echo on its console\r\n")


FLOOD_GUEST = """
async def main(domain):
    line = b"flood " * 170 + b"\\r\\n"
    while True:
        await domain.console.write(line)
"""

HOSTILE_GUEST = """
import struct
from hypervisord.public.io.console import XENCONS_OUT_PROD_OFF

async def main(domain):
    page = domain.console.ring.page
    struct.pack_into("<I", page, XENCONS_OUT_PROD_OFF, 5000)   # out_cons is 0: > a ring ahead
    domain.evtchn.notify_soon(domain.start_info.console_evtchn)
    await domain.wait_for_shutdown()
"""


def _echo_works(stack, tmp_path, name: str) -> None:
    stack.xl_ok("create", str(write_guest(tmp_path, name, ECHO_GUEST)))
    pty = Pty(wait_tty(stack, stack.domid_of(name)))
    try:
        pty.read_until(f"hello from {name} on its console".encode())
        pty.write(b"still here\r")
        pty.read_until(b"echo: still here", timeout=5)
    finally:
        pty.close()


def test_flooding_guest_is_rate_limited_and_others_are_served(stack, start_backendd, tmp_path):
    allowance = 5  # events per 200 ms, each at most a 2048-byte ring
    start_backendd("--console-rate-limit", str(allowance))
    stack.xl_ok("create", str(write_guest(tmp_path, "flood", FLOOD_GUEST)))
    log = console_log(stack, "flood")
    stack.wait(lambda: log.exists() and log.stat().st_size > 0, "the flood to start")
    t0, n0 = time.monotonic(), log.stat().st_size
    time.sleep(2.0)
    t1, n1 = time.monotonic(), log.stat().st_size
    periods = (t1 - t0) / 0.2 + 2
    assert 0 < n1 - n0 <= allowance * 2048 * periods, (n1 - n0, t1 - t0)
    _echo_works(stack, tmp_path, "calm")  # nobody reads flood's pty: calm is served anyway


def test_hostile_ring_closes_only_that_console(stack, backendd, tmp_path):
    stack.xl_ok("create", str(write_guest(tmp_path, "evil", HOSTILE_GUEST)))
    domid = stack.domid_of("evil")
    stack.wait(lambda: f"d{domid}: console closed: the guest's ring indices are not believable"
               in backendd.log(), "backendd to close the hostile console")
    _echo_works(stack, tmp_path, "good")
    assert backendd.alive


def test_bogus_ring_ref_and_port_close_only_that_console(stack, start_backendd, tmp_path):
    stack.xl_ok("create", "-p", str(write_guest(tmp_path, "badref", ECHO_GUEST)))
    stack.xl_ok("create", "-p", str(write_guest(tmp_path, "badport", ECHO_GUEST)))
    ref_dom, port_dom = stack.domid_of("badref"), stack.domid_of("badport")
    stack.ts.xs.write(f"/local/domain/{ref_dom}/console/ring-ref", "99999999")  # not its frame
    stack.ts.xs.write(f"/local/domain/{port_dom}/console/port", "2x")
    backendd = start_backendd()
    stack.wait(lambda: f"d{ref_dom}: console closed: cannot map ring-ref 0x5f5e0ff"
               in backendd.log(), "the bad ring-ref to be refused")
    stack.wait(lambda: f"d{port_dom}: console closed: port b'2x' is not a number"
               in backendd.log(), "the bad port to be refused")
    _echo_works(stack, tmp_path, "good")
    assert backendd.alive


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_destroy_closes_the_console_and_backendd_restart_attaches_again(
        stack, start_backendd, tmp_path):
    backendd = start_backendd()
    stack.xl_ok("create", str(write_guest(tmp_path, "echo", ECHO_GUEST)))
    domid = stack.domid_of("echo")
    first = wait_tty(stack, domid)
    Pty(first).read_until(b"hello from echo")
    # a restarted backendd finds the running guest and gives it a new pty
    assert backendd.stop() == 0
    backendd = start_backendd()
    # (both backendds log to one file: the second "console on" is the new one's)
    stack.wait(lambda: backendd.log().count(f"d{domid} (echo): console on") == 2, "the re-attach")
    pty = Pty(wait_tty(stack, domid))
    pty.write(b"after restart\r")
    pty.read_until(b"echo: after restart")
    pty.close()
    assert b"echo: after restart" in console_log(stack, "echo").read_bytes()
    # destroy: port unbound, page unmapped, pty closed (backendd's fds as before)
    pid = backendd.proc.pid
    before = _fds(pid)
    other = write_guest(tmp_path, "other", ECHO_GUEST)
    stack.xl_ok("create", str(other))
    other_id = stack.domid_of("other")
    wait_tty(stack, other_id)
    with_two = _fds(pid)
    stack.xl_ok("destroy", "other")
    stack.wait(lambda: f"d{other_id} (other): console closed (domain gone)" in backendd.log(),
               "the console to close")
    assert with_two >= before + 3  # pty master and slave, log file (and the port's doorbell)
    stack.wait(lambda: _fds(pid) == before, "backendd to close the pty, log and port")
    assert f"/dev/pts/" in first


def test_sighup_reopens_the_logs_as_logrotate_needs(stack, start_backendd, tmp_path):
    """xenconsoled's handle_log_reload: the old file (moved away) keeps what was
    written before, the new one at the log's name gets what comes after."""
    import signal

    be = start_backendd()
    stack.xl_ok("create", str(write_guest(tmp_path, "echo", ECHO_GUEST)))
    pty = Pty(wait_tty(stack, stack.domid_of("echo")))
    log = console_log(stack, "echo")
    try:
        pty.read_until(b"hello from echo on its console")
        stack.wait(lambda: log.exists() and b"hello from echo" in log.read_bytes(), "the log")
        rotated = log.with_name(log.name + ".1")
        os.rename(log, rotated)
        be.proc.send_signal(signal.SIGHUP)
        stack.wait(lambda: "reopened 1 console log(s)" in be.log(), "backendd's reopen")
        pty.write(b"after rotation\r")
        pty.read_until(b"echo: after rotation")
        stack.wait(lambda: log.exists() and b"echo: after rotation" in log.read_bytes(),
                   "the new log")
    finally:
        pty.close()
    assert b"after rotation" not in rotated.read_bytes()
    assert rotated.read_bytes().startswith(b"hello from echo on its console")
    assert be.alive
