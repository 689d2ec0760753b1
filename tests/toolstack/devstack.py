"""The toolstack stack plus backendd, for device tests.

backendd runs with the test-only driver (``tests/backendd/vtest.py``)
registered for the real types ``vbd`` and ``vif``, so the handshake and
teardown are real while blkback/netback are not needed. The test plays the
guest's frontend where one must answer (:class:`FrontendPlayer`): it writes
the ring keys and Initialised, and answers a backend's Closing with Closed,
as blkfront/netfront do.
"""

from __future__ import annotations

import threading
import time

import pytest

from libxen.xenstore.sync import XsSyncClient
from tests.toolstack.stack import stack, start_backendd, write_guest  # noqa: F401 (fixtures)
from toolstack.builder import read_or_none

VTEST_REAL_TYPES = ["--device-type", "vbd=tests.backendd.vtest:VTest",
                    "--device-type", "vif=tests.backendd.vtest:VTest"]
SLEEPER = "async def main(domain):\n    import trio\n    await trio.sleep_forever()\n"


@pytest.fixture
def backendd(stack, start_backendd):
    """backendd beside the stack's hypervisord and xenstored (same rundir)."""
    return start_backendd(*VTEST_REAL_TYPES)


@pytest.fixture
def devstack(stack, backendd):
    stack.backendd = backendd
    return stack


def start_guest(stack, tmp_path, name: str = "g", extra: str = "") -> int:
    cfg = write_guest(tmp_path, name, SLEEPER, extra)
    stack.xl_ok("create", str(cfg))
    return stack.domid_of(name)


def state(stack, path: str) -> str | None:
    return read_or_none(stack.ts.xs, f"{path}/state")


def connect_frontend(stack, frontend: str, keys: dict[str, str], backend: str) -> None:
    """What a frontend writes (one transaction), then Initialised; waits for
    the backend to be Connected."""
    def tx(tx_id: int) -> None:
        for k, v in keys.items():
            stack.ts.xs.write(f"{frontend}/{k}", v, tx_id)
        stack.ts.xs.write(f"{frontend}/state", "3", tx_id)

    stack.ts.xs.run_transaction(tx)
    stack.wait(lambda: state(stack, backend) == "4", f"{backend} Connected")


class FrontendPlayer:
    """A thread answering backend Closing (5) with frontend Closed (6) for
    the given (frontend, backend) pairs, as blkfront's ``blkback_changed``."""

    def __init__(self, socket_path, pairs: list[tuple[str, str]]) -> None:
        self.xs = XsSyncClient.open(str(socket_path))
        self.pairs = pairs
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for frontend, backend in self.pairs:
                self.xs.run_transaction(lambda tx: self._answer(tx, frontend, backend))
            time.sleep(0.01)

    def _answer(self, tx: int, frontend: str, backend: str) -> None:
        # In a transaction: never recreate a frontend directory that went.
        if read_or_none(self.xs, f"{backend}/state", tx) == "5" and \
                read_or_none(self.xs, f"{frontend}/state", tx) not in (None, "6"):
            self.xs.write(f"{frontend}/state", "6", tx)

    def __enter__(self) -> "FrontendPlayer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.xs.close()


def xs_socket(stack):
    return stack.rundir / "xenstored" / "socket"
