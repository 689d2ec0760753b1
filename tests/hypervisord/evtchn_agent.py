"""A domU process for event-channel tests, driven line by line over stdin.

``python -m tests.hypervisord.evtchn_agent HYPERCALL_FD EVTCHN_FD MEMORY_FD``
runs as a domain's process with the descriptors ``connect_domain`` gave
the toolstack (the test). Each stdin line is a JSON command; each reply is
one JSON line on stdout:

* ``{"op": "call", "sub": N, "args": {...}}`` -> ``{"rc": rc, "result": {...}}``
  (a raw EVTCHNOP_N, errors included: hostile cases need the rc);
* ``{"op": "listen"}``: start reading the event-channel stream (until then
  notifications pile up unread, as for a receiver that has not looked);
* ``{"op": "counts"}`` -> events handled per port and raw notifications read;
* ``{"op": "wait_port", "port": p, "timeout": s}`` -> ``{"fired": bool}``:
  whether the port had an event since the last wait_port on it;
* ``{"op": "mask", "port": p}`` / ``{"op": "bits", "port": p}``: shared_info;
* ``{"op": "sends", "port": p, "n": n}``: n EVTCHNOP_send, back to back.
"""

from __future__ import annotations

import sys
from collections import Counter

import trio
import trio.testing

from libxen.core import XenCall
from libxen.evtchn import XenEvtchn, map_shared_info
from hypervisord.public.xen import Hypercall
from libxen.shinfo import SharedInfoBits
from tests.hypervisord.agent import serve_json_lines


class Agent:
    def __init__(self, xc: XenCall, evtchn_fd: int, memory_fd: int) -> None:
        self.xc = xc
        self.evtchn_fd = evtchn_fd
        self.page = map_shared_info(memory_fd)
        self.bits = SharedInfoBits(self.page)
        self.xe: XenEvtchn | None = None
        self.events: Counter[int] = Counter()  # events handled per port
        self.seen: Counter[int] = Counter()  # ... of which wait_port reported
        self.changed = trio.Event()

    async def listen(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with XenEvtchn.open(self.xc, self.evtchn_fd, shared_info=self.page) as xe:
            self.xe = xe
            task_status.started()
            async for port in xe.pending():
                self.events[port] += 1
                self.changed.set()
                self.changed = trio.Event()

    async def handle(self, cmd: dict, nursery: trio.Nursery) -> dict:
        op = cmd["op"]
        if op == "call":
            reply = await self.xc.call_raw(Hypercall.event_channel_op, cmd["sub"], **cmd["args"])
            return {"rc": reply.rc, "result": reply.result or {}}
        if op == "sends":
            rcs = Counter()
            for _ in range(cmd["n"]):
                reply = await self.xc.call_raw(Hypercall.event_channel_op, 4, port=cmd["port"])
                rcs[reply.rc] += 1
            return {"rcs": {str(k): v for k, v in rcs.items()}}
        if op == "listen":
            await nursery.start(self.listen)
            return {}
        if op == "counts":
            # Let the reader drain what already arrived (hypervisord writes a
            # notification before it replies to the send that caused it).
            await trio.sleep(0.02)
            await trio.testing.wait_all_tasks_blocked(cushion=0.02)
            return {"events": {str(p): n for p, n in self.events.items()},
                    "received": self.xe.received if self.xe else 0}
        if op == "wait_port":
            port = cmd["port"]
            with trio.move_on_after(cmd.get("timeout", 5)):
                while self.events[port] <= self.seen[port]:
                    await self.changed.wait()
                self.seen[port] = self.events[port]
                return {"fired": True}
            return {"fired": False}
        if op == "mask":
            return {"was": self.bits.mask(cmd["port"])}
        if op == "bits":
            p = cmd["port"]
            return {"pending": self.bits.is_pending(p), "masked": self.bits.is_masked(p)}
        raise ValueError(f"unknown op {op}")


async def main(hcall_fd: int, evtchn_fd: int, memory_fd: int) -> None:
    async with XenCall.from_fd(hcall_fd) as xc, trio.open_nursery() as nursery:
        agent = Agent(xc, evtchn_fd, memory_fd)
        await serve_json_lines(lambda cmd: agent.handle(cmd, nursery))
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, *map(int, sys.argv[1:4]))
