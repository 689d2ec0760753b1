"""Test-side handle of a domU process running :mod:`tests.hypervisord.evtchn_agent`.

The test is the toolstack: it creates the domain (dom0 hypercalls),
unpauses it (a paused domain's process is stopped as soon as it speaks),
asks ``connect_domain`` for the domain's descriptors and starts the agent
with them inherited, then drives it with :meth:`Guest.cmd`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from hypervisord.libxen import ctrl
from hypervisord.libxen.core import XenCall

REPO = Path(__file__).resolve().parents[2]


class Guest:
    def __init__(self, domid: int, proc: trio.Process) -> None:
        self.domid = domid
        self.proc = proc
        self._buf = b""

    @classmethod
    async def start(cls, xc: XenCall) -> "Guest":
        _, r = await ctrl.domain_create(xc)
        domid = r["domain"]
        await ctrl.domain_unpause(xc, domid)
        _, r = await ctrl.connect_domain(xc, domid)
        fds = r["fds"]
        argv = [sys.executable, "-m", "tests.hypervisord.evtchn_agent",
                str(fds["hypercall"]), str(fds["evtchn"]), str(fds["memory"])]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        try:
            proc = await trio.lowlevel.open_process(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, env=env,
                pass_fds=tuple(fds.values()))
        finally:
            for fd in fds.values():
                os.close(fd)
        return cls(domid, proc)

    async def cmd(self, op: str, **kw) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        await self.proc.stdin.send_all(json.dumps({"op": op, **kw}).encode() + b"\n")
        while b"\n" not in self._buf:
            data = await self.proc.stdout.receive_some(65536)
            if not data:
                raise EOFError(f"agent of d{self.domid} exited ({await self.proc.wait()})")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    async def call(self, sub: int, **args) -> tuple[int, dict]:
        r = await self.cmd("call", sub=int(sub), args=args)
        return r["rc"], r["result"]

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    async def aclose(self) -> None:
        self.kill()
        with trio.move_on_after(5):
            await self.proc.wait()
