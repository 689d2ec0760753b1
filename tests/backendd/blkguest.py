"""Helpers for the blk tests: program guests (as text for ``write_guest``)
and how a test reads what they reported (``RESULT <json>`` lines on the
guest's stderr, kept in its log)."""

from __future__ import annotations

import json

from tests.toolstack.stack import write_guest

#: the top of every guest program: report(...) prints one RESULT line
PRELUDE = """
import json, sys, errno
import trio
from frontends.blkfront import BlockDevice, BlockError

def report(**kw):
    print("RESULT " + json.dumps(kw), file=sys.stderr, flush=True)
"""


def disk_cfg(tmp_path, name: str, body: str, image, *, mode: str = "rw", args: str = "",
             memory: int = 8, extra: str = ""):
    return write_guest(tmp_path, name, PRELUDE + body,
                       f"disk = [ 'format=raw, vdev=xvda, access={mode}, target={image}' ]\n"
                       f'cmdline = "{args}"\n{extra}', memory=memory)


def results(stack, name: str) -> list[dict]:
    return [json.loads(line[7:]) for line in stack.guest_log(name).splitlines()
            if line.startswith("RESULT ")]


def wait_result(stack, name: str, key: str, timeout: float = 20.0) -> dict:
    def find():
        return next((r for r in results(stack, name) if key in r), None)
    return stack.wait(find, f"guest {name} to report {key}", timeout=timeout)
