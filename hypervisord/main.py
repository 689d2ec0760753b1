"""``hypervisord``: the hypervisor daemon (``python -m hypervisord``).

Owns machine memory, the domain table, event channels and grant tables,
and serves hypercalls: dom0 processes on ``<rundir>/hypervisord/privcmd``,
each domU on the connection the toolstack handed its process.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
from pathlib import Path

import trio

from hypervisord import domctl, memory, sched, version
from hypervisord.hv import HvConfig, Hypervisor
from hypervisord.hypercall import Dispatcher
from hypervisord.libxen import daemon
from hypervisord.server import HvServer

log = logging.getLogger("hypervisord")

#: hypercall families; each contributes its HANDLERS table (and may hook
#: domain creation/destruction through an ``install(hv, server)`` function)
FAMILIES = [domctl, memory, sched, version]


def _optional_families() -> list:
    mods = []
    for name in ("evtchn", "gnttab"):
        try:
            mods.append(__import__(f"hypervisord.{name}", fromlist=["HANDLERS"]))
        except ModuleNotFoundError as e:
            if e.name != f"hypervisord.{name}":
                raise
    return mods


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    text = text.strip().lower().removesuffix("b")
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text) << 20  # plain numbers are MiB, as xl takes them


def parse_args(argv):
    p = argparse.ArgumentParser(prog="hypervisord", description=__doc__.split("\n")[0])
    daemon.add_common_arguments(p)
    p.add_argument("--memory", default="1G", help="machine memory (default 1G; sparse)")
    p.add_argument("--max-domains", type=int, default=HvConfig.max_domains)
    p.add_argument("--max-ports", type=int, default=HvConfig.max_ports,
                   help="event channels per domain")
    return p.parse_args(argv)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        config = HvConfig(memory_bytes=parse_size(args.memory), max_domains=args.max_domains,
                          max_ports=args.max_ports)
    except ValueError as e:
        print(f"hypervisord: bad option: {e}", file=sys.stderr)
        return 2
    rundir = daemon.runtime_dir(args.rundir)
    raise_fd_limit()

    async def body(nursery: trio.Nursery, log: logging.Logger) -> None:
        hv = Hypervisor(config)
        families = FAMILIES + _optional_families()
        dispatcher = Dispatcher(hv, [m.HANDLERS for m in families])
        server = HvServer(hv, dispatcher, nursery)
        for m in families:
            install = getattr(m, "install", None)
            if install is not None:
                install(hv, server)
        path = Path(rundir) / "hypervisord" / "privcmd"
        await nursery.start(server.listen, path)
        log.info("machine memory %d MiB, listening on %s",
                 config.memory_bytes >> 20, path)

    return daemon.run("hypervisord", body, verbose=args.verbose, stop_deadline=args.stop_deadline)


if __name__ == "__main__":
    sys.exit(main())
