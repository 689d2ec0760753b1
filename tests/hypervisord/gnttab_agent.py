"""A domU process for grant-table and isolation tests, driven over stdin.

``python -m tests.hypervisord.gnttab_agent HYPERCALL_FD MEMORY_FD [UID]``
runs as a domain's process with the descriptors ``connect_domain`` gave
the toolstack (the test). With UID it first drops to that user, as a
guest process does where the host allows. Each stdin line is a JSON
command, each reply one JSON line:

* ``setup {nr_frames}``, ``grant {domid, gfn, readonly}`` -> ``{ref}``,
  ``flags {ref}``, ``end_access {ref}`` -> ``{ok}``: the granting side
  (:class:`libxen.gnttab.GrantTable`);
* ``write {gfn, offset, data}`` / ``read {gfn, offset, len}``: its own
  frames, through its own memory file (``data`` is latin-1 text);
* ``call {hypercall, sub, args}`` -> ``{rc, result, fds}``: any raw
  hypercall; ``fds`` counts the descriptors that came with the reply
  (they are closed at once);
* ``open {path}`` -> ``{errno}`` (0 if the path could be opened).
"""

from __future__ import annotations

import mmap
import os
import socket
import sys

import trio

from libxen.core import XenCall
from libxen.gnttab import GrantTable, preload
from hypervisord.public import memfile
from hypervisord.public.xen import PAGE_SIZE
from tests.hypervisord.agent import serve_json_lines


class Agent:
    def __init__(self, xc: XenCall, memory_fd: int) -> None:
        self.xc = xc
        self.memory_fd = memory_fd
        self.gt: GrantTable | None = None

    def _page(self, gfn: int) -> mmap.mmap:
        return mmap.mmap(self.memory_fd, PAGE_SIZE, offset=memfile.gfn_offset(gfn))

    async def handle(self, cmd: dict) -> dict:
        op = cmd["op"]
        if op == "setup":
            self.gt = await GrantTable.open(self.xc, self.memory_fd, cmd.get("nr_frames", 1))
            return {"nr_entries": self.gt.nr_entries}
        if op == "grant":
            assert self.gt is not None
            ref = self.gt.grant_access(cmd["domid"], cmd["gfn"], cmd.get("readonly", False))
            return {"ref": ref}
        if op == "flags":
            assert self.gt is not None
            return {"flags": self.gt.flags(cmd["ref"])}
        if op == "end_access":
            assert self.gt is not None
            return {"ok": self.gt.try_end_access(cmd["ref"])}
        if op == "write":
            with self._page(cmd["gfn"]) as page:
                data = cmd["data"].encode("latin-1")
                page[cmd["offset"]:cmd["offset"] + len(data)] = data
            return {}
        if op == "read":
            with self._page(cmd["gfn"]) as page:
                return {"data": page[cmd["offset"]:cmd["offset"] + cmd["len"]].decode("latin-1")}
        if op == "call":
            reply = await self.xc.call_raw(cmd["hypercall"], cmd["sub"], **cmd["args"])
            for fd in reply.fds:
                os.close(fd)
            result = reply.result or {}
            result.pop("fds", None)
            return {"rc": reply.rc, "result": result, "fds": len(reply.fds)}
        if op == "open":
            return {"errno": _try_open(cmd["path"])}
        raise ValueError(f"unknown op {op}")


def _try_open(path: str) -> int:
    """Try every way in: as a socket to connect to, or as a file or directory."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.connect(path)
        return 0
    except OSError as e:
        if e.errno not in (111, 88, 91):  # ECONNREFUSED, ENOTSOCK, EPROTOTYPE: not a socket
            return e.errno or -1
    try:
        os.close(os.open(path, os.O_RDONLY))
        return 0
    except OSError as e:
        return e.errno or -1


async def main(hcall_fd: int, memory_fd: int) -> None:
    async with XenCall.from_fd(hcall_fd) as xc:
        agent = Agent(xc, memory_fd)

        async def handle(cmd: dict) -> dict:
            try:
                return await agent.handle(cmd)
            except OSError as e:
                return {"oserror": e.errno, "message": str(e)}

        await serve_json_lines(handle)


if __name__ == "__main__":
    if len(sys.argv) > 3:  # drop to an unprivileged user, as a jailed guest does
        preload()
        uid = int(sys.argv[3])
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    trio.run(main, int(sys.argv[1]), int(sys.argv[2]))
