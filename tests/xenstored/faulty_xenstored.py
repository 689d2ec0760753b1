"""``python -m tests.xenstored.faulty_xenstored ARGS``: the real xenstored
with one handler made to fail (a test hook, never part of the daemon).

A ``READ`` whose path contains ``TRIGGER`` raises ``RuntimeError`` inside
the handler, as a bug of ours would; every other request is served by the
real handlers. The table is the one the core dispatches with
(``xenstored.handlers.TABLE``); it is changed before the daemon starts, in
this process only.
"""

from __future__ import annotations

import sys

from hypervisord.public.io.xs_wire import XsdSockmsgType as T
from xenstored import handlers
from xenstored.core import Op

TRIGGER = b"pvxen-test-raise"


def install() -> None:
    real = handlers.TABLE[T.XS_READ]

    def read_or_raise(core, conn, msg, tx, out):
        if TRIGGER in msg.payload:
            raise RuntimeError(f"test hook: a handler bug while serving {conn}")
        return real.handler(core, conn, msg, tx, out)

    handlers.TABLE[T.XS_READ] = Op(read_or_raise, real.privileged, real.uses_tx)


if __name__ == "__main__":
    install()
    from xenstored.main import main

    sys.exit(main(sys.argv[1:]))
