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

from hypervisord import domctl, evtchn, gnttab, memory, sched, version
from hypervisord.hv import HvConfig, Hypervisor
from hypervisord.hypercall import Dispatcher
from daemonkit import daemon
from hypervisord.public.xen import DOMID_FIRST_RESERVED
from hypervisord.server import HvServer
from libxen.shinfo import NR_PORTS_2L

log = logging.getLogger("hypervisord")

#: hypercall families; each contributes its HANDLERS table (and may hook
#: domain creation/destruction through an ``install(hv, server)`` function)
FAMILIES = [domctl, memory, sched, version, evtchn, gnttab]

MIN_MEMORY = 16 << 20  # dom0's frames and a few small guests
MAX_MEMORY = 1 << 40  # frame numbers stay well inside Xen's 40-bit MFN space


def parse_size(text: str) -> int:
    """``4096`` (MiB, as xl takes memory), ``512M``, ``1G``, ``2GiB``, ``1T``."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    scale = 1 << 20
    if t and t[-1] in units:
        t, scale = t[:-1], units[t[-1]]
    if not (t.isascii() and t.isdigit()) or len(t) > 20:  # "２" and "²" are not sizes
        raise ValueError(f"{text!r} is not a size (e.g. 4096 for MiB, 512M, 1G)")
    return int(t) * scale


def _memory(text: str) -> int:
    try:
        size = parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not MIN_MEMORY <= size <= MAX_MEMORY:
        raise argparse.ArgumentTypeError(f"{text!r}: machine memory must be between "
                                         f"{MIN_MEMORY >> 20} MiB and {MAX_MEMORY >> 40} TiB")
    return size


def _bounded(low: int, high: int):
    def parse(text: str) -> int:
        # ASCII digits only: int() would also take "１", " 1" and "1_0"
        if not (text.isascii() and text.isdigit()) or len(text) > 20:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number")
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}")
        return value
    return parse


def parse_args(argv):
    p = argparse.ArgumentParser(prog="hypervisord", description=__doc__.split("\n")[0])
    daemon.add_common_arguments(p)
    p.add_argument("--memory", type=_memory, default=HvConfig.memory_bytes,
                   help="machine memory: 4096 (MiB), 512M, 1G ... (default 1G; sparse: "
                        "unused frames cost nothing)")
    p.add_argument("--max-domains", type=_bounded(1, DOMID_FIRST_RESERVED - 1),
                   default=HvConfig.max_domains,
                   help=f"live domains, dom0 included (default {HvConfig.max_domains})")
    p.add_argument("--max-ports", type=_bounded(1, NR_PORTS_2L - 1),
                   default=HvConfig.max_ports,
                   help=f"event channels per domU (default {HvConfig.max_ports})")
    return p.parse_args(argv)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv=None) -> int:
    args = parse_args(argv)
    config = HvConfig(memory_bytes=args.memory, max_domains=args.max_domains,
                      max_ports=args.max_ports)
    rundir = daemon.runtime_dir(args.rundir)
    raise_fd_limit()

    async def body(nursery: trio.Nursery, log: logging.Logger) -> None:
        hv = Hypervisor(config)
        dispatcher = Dispatcher(hv, [m.HANDLERS for m in FAMILIES])
        server = HvServer(hv, dispatcher, nursery)
        for m in FAMILIES:
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
