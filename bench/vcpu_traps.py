"""``python -m bench vcpu-traps``: a trap round trip on the PV vCPU layer
(int3 -> bounce to the guest's #BP handler -> HYPERVISOR_iret) against a
null hypercall round trip on the same layer, in this process.

A trap round trip is two exits (the trap, then the iret hypercall) plus the
bounce frame (hypervisord/vcpu/traps.py); the ratio says what it costs in
null hypercalls. Last line JSON. Needs binutils (as, ld) for the kernels.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.vcpu import pv_guest
from hypervisord.vcpu import loop


def measure(kernel: str, n: int, tmp: Path) -> float:
    cpu, hc = pv_guest(kernel, tmp)
    cpu.set_reg("r12", n)
    t = time.perf_counter()
    reason = loop.run(cpu, hc)
    dt = time.perf_counter() - t
    assert reason == 0
    return dt / n


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench vcpu-traps",
                                description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20_000, help="round trips of each kind")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        null = measure("nullcall", args.n, Path(d))
        trap = measure("trapbench", args.n, Path(d))
    res = {"trap_round_trip_us": trap * 1e6, "null_hypercall_us": null * 1e6,
           "trap_per_null_hypercall": trap / null}
    print(f"trap round trip (int3 -> #BP handler -> iret) {trap * 1e6:.1f} us, "
          f"null hypercall {null * 1e6:.1f} us (ratio {trap / null:.2f})")
    print(json.dumps({k: round(v, 3) for k, v in res.items()}))
    return 0
