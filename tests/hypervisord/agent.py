"""The test side of a domU agent process (shared by the evtchn and gnttab tests).

The test is the toolstack: it creates the domain, asks ``connect_domain``
for the process's descriptors and starts an agent module with only those
inherited; :meth:`AgentProcess.cmd` then sends it one JSON command a line
and reads one JSON reply a line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[2]


class AgentProcess:
    def __init__(self, domid: int, proc: trio.Process) -> None:
        self.domid = domid
        self.proc = proc
        self._buf = b""

    @staticmethod
    async def spawn(module: str, args: list[str], fds: dict[str, int], inherit: list[str],
                    **env: str) -> trio.Process:
        """Start ``python -m module args`` with ``fds[inherit]``; our copies close."""
        argv = [sys.executable, "-m", module, *args]
        environ = dict(os.environ, PYTHONPATH=str(REPO), **env)
        try:
            return await trio.lowlevel.open_process(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, env=environ,
                pass_fds=tuple(fds[name] for name in inherit))
        finally:
            for fd in fds.values():
                os.close(fd)

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

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    async def aclose(self) -> None:
        self.kill()
        with trio.move_on_after(5):
            await self.proc.wait()


async def serve_json_lines(handle) -> None:
    """The agent's side: one JSON command a line on stdin, ``await handle(cmd)``,
    one JSON reply a line on stdout; returns at EOF."""
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    buf = b""
    while True:
        data = await stdin.receive_some(65536)
        if not data:
            return
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            reply = await handle(json.loads(line))
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
