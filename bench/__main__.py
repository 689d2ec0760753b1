"""``python -m bench NAME [options]``: run one benchmark.

The registry maps a name to the module that implements it; each module has
``main(argv) -> int`` and is imported only when chosen, so one benchmark's
imports cost nothing to another.
"""

from __future__ import annotations

import importlib
import sys

#: name -> (module, one-line summary)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "xenstore": ("bench.xenstore", "xenstored vs a trio echo server: RTT, scaling, watches"),
    "hypervisor": ("bench.hypervisor", "hypervisord: hypercalls/s, event RTT, domain create"),
    "blk": ("bench.blk", "PV disk (blkfront -> blkback) vs direct preadv/pwritev on the image"),
    "net": ("bench.net", "netfront/netback guest to guest vs a Unix socketpair"),
    "vcpu": ("bench.vcpu", "PV vCPU layer vs bare Unicorn: guest loop, null hypercalls"),
    "vcpu-traps": ("bench.vcpu_traps", "PV vCPU layer: trap bounce + iret vs a null hypercall"),
}


def usage() -> str:
    lines = ["usage: python -m bench NAME [options]   (NAME --help for options)", "",
             "benchmarks:"]
    lines += [f"  {name:<12} {summary}" for name, (_, summary) in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    entry = BENCHMARKS.get(argv[0])
    if entry is None:
        print(f"bench: unknown benchmark {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(entry[0]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
