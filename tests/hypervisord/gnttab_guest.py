"""Test-side handle of a domU process running :mod:`tests.hypervisord.gnttab_agent`.

The test is the toolstack: it creates the domain, gives it memory
(``max_mem`` and ``populate_physmap`` for gfns ``0 .. pages-1``), unpauses
it, asks ``connect_domain`` for the process's descriptors and starts the
agent with only those inherited.
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
from hypervisord.public.grant_table import GnttabOp
from hypervisord.public.xen import PAGE_SIZE, Hypercall

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


class Guest:
    def __init__(self, domid: int, proc: trio.Process) -> None:
        self.domid = domid
        self.proc = proc
        self._buf = b""

    @classmethod
    async def start(cls, xc: XenCall, pages: int = 8, max_pages: int | None = None,
                    uid: int | None = None) -> "Guest":
        _, r = await ctrl.domain_create(xc)
        domid = r["domain"]
        await ctrl.domain_max_mem(xc, domid, (max_pages or pages) * PAGE_SIZE // 1024)
        rc, _ = await ctrl.populate_physmap(xc, list(range(pages)), domid=domid)
        assert rc == pages
        await ctrl.domain_unpause(xc, domid)
        _, r = await ctrl.connect_domain(xc, domid)
        fds = r["fds"]
        argv = [sys.executable, "-m", "tests.hypervisord.gnttab_agent",
                str(fds["hypercall"]), str(fds["memory"])]
        if uid is not None:
            argv.append(str(uid))
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
        try:
            proc = await trio.lowlevel.open_process(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, env=env,
                pass_fds=(fds["hypercall"], fds["memory"]))
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

    async def call(self, hypercall: int, sub: int, **args) -> dict:
        return await self.cmd("call", hypercall=int(hypercall), sub=int(sub), args=args)

    async def gnttab(self, sub: GnttabOp, **args) -> dict:
        return await self.call(Hypercall.grant_table_op, sub, **args)

    async def grant(self, domid: int, gfn: int, readonly: bool = False) -> int:
        r = await self.cmd("grant", domid=domid, gfn=gfn, readonly=readonly)
        assert "ref" in r, r
        return r["ref"]

    async def flags(self, ref: int) -> int:
        return (await self.cmd("flags", ref=ref))["flags"]

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    async def aclose(self) -> None:
        self.kill()
        with trio.move_on_after(5):
            await self.proc.wait()
