"""A process that holds a domain's hypercall connection, driven over stdin
(as a guest's double-forked child holds the one it inherited).

``python -m tests.hypervisord.holder HYPERCALL_FD``: each stdin line is a
JSON command, each reply one JSON line; ``reservation`` makes
``XENMEM_current_reservation(DOMID_SELF)`` and answers ``{rc}``, or
``{closed: "EOF"|"EPIPE"|...}`` when hypervisord closed the connection.
Nothing reads the connection between commands, so processes sharing it
never take each other's replies.
"""

from __future__ import annotations

import errno
import socket
import sys

import trio

from hypervisord.public.memory import XenMemOp
from hypervisord.public.xen import DOMID_SELF, Hypercall
from tests.hypervisord.agent import serve_json_lines
from tests.hypervisord.rawcall import RawCall


def main(fd: int) -> None:
    raw = RawCall(socket.socket(fileno=fd))

    async def handle(cmd: dict) -> dict:
        if cmd["op"] != "reservation":
            raise ValueError(f"unknown op {cmd['op']}")
        try:
            rc, _ = raw.call(Hypercall.memory_op, XenMemOp.XENMEM_current_reservation,
                             domid=DOMID_SELF)
        except AssertionError:  # RawCall: the connection ended before a reply
            return {"closed": "EOF"}
        except OSError as e:
            return {"closed": errno.errorcode.get(e.errno, str(e))}
        return {"rc": rc}

    trio.run(serve_json_lines, handle)


if __name__ == "__main__":
    main(int(sys.argv[1]))
