"""backendd's console service against real guests: output on the pty and in
``guest-<name>.log``, input typed on the pty reaches the guest, domain
destroy closes the console and a restarted backendd attaches again."""

from __future__ import annotations

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
