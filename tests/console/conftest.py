"""Console tests: the stack's daemons plus backendd (whose console service is
under test), guests made by ``write_guest``, and a pty reader."""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

import pytest

from tests.toolstack.stack import stack, start_backendd, write_guest  # noqa: F401 (fixtures)

#: a guest that prints one line, then echoes each line typed at it
ECHO_GUEST = """
async def main(domain):
    con = domain.console
    await con.print(f"hello from {domain.name} on its console")
    while True:
        line = (await con.readline()).decode(errors="replace").strip()
        await con.print(f"echo: {line}")
"""


def console_log(stack, name: str) -> Path:
    return stack.rundir / "backendd" / "console" / f"guest-{name}.log"


def wait_tty(stack, domid: int, old: str | None = None, timeout: float = 10.0) -> str:
    """The pty backendd wrote to ``~/console/tty`` (a new one if ``old`` is given)."""
    return stack.wait(lambda: (t := stack.read(f"/local/domain/{domid}/console/tty"))
                      and t != old and t, f"d{domid}'s console tty", timeout)


class Pty:
    """The slave side of a console pty, as a console client holds it."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.seen = b""

    def read_until(self, text: bytes, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} not seen on the pty; got {self.seen[-500:]!r}")
            if select.select([self.fd], [], [], min(left, 0.2))[0]:
                try:
                    self.seen += os.read(self.fd, 65536)
                except BlockingIOError:
                    pass
        return self.seen

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def backendd(stack, start_backendd):
    return start_backendd()
