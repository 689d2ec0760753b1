"""``python -m bench vcpu``: the PV vCPU layer (hypervisord/vcpu) vs bare Unicorn.

Side by side, in this process (the vCPU layer is the code a PV guest's
process runs; the same engine, hooks and slices):

* a hypercall-free loop (4 instructions per iteration) on a pvxen vCPU
  (guest page tables, ring 3, slices of SLICE_INSNS) vs the same loop on a
  bare Unicorn (flat memory, one emu_start);
* guest-issued null hypercalls (xen_version through the hypercall page,
  served by the vCPU layer between slices) vs a bare Unicorn ``syscall``
  hook round trip (the hook reads and writes RAX);
* event upcall latency: "dom0" notifies the kernel's port as hypervisord
  does for a one-vCPU PV domain (the entry ``port | vcpu << 16`` on the
  guest's event-channel stream; the vCPU sets the 2-level bits itself
  between slices) while the kernel is blocked in
  SCHEDOP_block, and again while it spins with events unmasked; until its
  event handler's first hypercall (median and 90th percentile over
  ``--upcalls`` events each; tests/pv/kernels/upcall.S);
* time from ``xl create`` to Debian's PV GRUB at its ``grub>`` prompt, with
  the real daemons and a partitioned disk (:mod:`bench.vcpu_grub`; median of
  ``--grub-runs``; skipped when grub-xen-host is not installed).

Last line JSON. Needs binutils (as, ld) for the kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import tempfile
import threading
import time
from pathlib import Path

from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_64, UC_PROT_ALL, Uc
from unicorn import x86_const as X

from hypervisord.public import memfile
from hypervisord.vcpu import loop
from hypervisord.vcpu.cpu import SLICE_SECONDS, TCG_BUFFER, VCpu
from hypervisord.vcpu.hypercalls import VcpuHypercalls
from hypervisord.vcpu.memory import GuestMemory
from tests.pv.kernels import assemble
from bench.vcpu_grub import measure_grub
from toolstack import pvbuilder

NR_PAGES = 256
LOOP_BODY = bytes.fromhex("4801c3" "4831d0" "48ffc9" "75f5")  # add rax,rbx; xor rdx,rax; dec; jnz
SYSCALL_BODY = bytes.fromhex("b811000000" "0f05" "48ffc9" "75f4")  # mov $17,%eax; syscall; ...


def pv_guest(kernel: str, tmp: Path) -> tuple[VCpu, VcpuHypercalls]:
    img = pvbuilder.build(assemble(kernel, tmp).read_bytes(), NR_PAGES)
    fd = os.memfd_create(kernel)
    os.ftruncate(fd, memfile.file_size(NR_PAGES))
    for pfn, page in img.frames.items():
        os.pwrite(fd, page, memfile.gfn_offset(pfn))
    cpu = VCpu(GuestMemory(fd, NR_PAGES))
    cpu.boot(img.boot)
    return cpu, VcpuHypercalls(cpu, 1, lambda data: None)


def bare(code: bytes) -> Uc:
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_set_tcg_buffer_size(TCG_BUFFER)
    uc.mem_map(0x1000, 0x1000, UC_PROT_ALL)
    uc.mem_write(0x1000, code)
    return uc


def measure_loop(iters: int, tmp: Path) -> dict:
    cpu, hc = pv_guest("loop", tmp)
    cpu.set_reg("rcx", iters)
    t = time.perf_counter()
    reason = loop.run(cpu, hc)
    pv = time.perf_counter() - t
    assert reason == 0 and cpu.reg("rcx") == 0
    uc = bare(LOOP_BODY)
    uc.reg_write(X.UC_X86_REG_RCX, iters)
    t = time.perf_counter()
    uc.emu_start(0x1000, 0x1000 + len(LOOP_BODY))
    b = time.perf_counter() - t
    assert uc.reg_read(X.UC_X86_REG_RCX) == 0
    insns = 4 * iters
    return {"loop_pv_insn_s": insns / pv, "loop_bare_insn_s": insns / b, "loop_ratio": b / pv}


def measure_hypercalls(n: int, tmp: Path) -> dict:
    cpu, hc = pv_guest("nullcall", tmp)
    cpu.set_reg("r12", n)
    t = time.perf_counter()
    reason = loop.run(cpu, hc)
    pv = time.perf_counter() - t
    assert reason == 0 and hc.count == n + 1
    uc = bare(SYSCALL_BODY)
    uc.reg_write(X.UC_X86_REG_RCX, n)

    def hook(uc: Uc, _data: object) -> None:
        uc.reg_write(X.UC_X86_REG_RAX, uc.reg_read(X.UC_X86_REG_RAX) + 1)

    uc.hook_add(UC_HOOK_INSN, hook, None, 1, 0, X.UC_X86_INS_SYSCALL)
    t = time.perf_counter()
    uc.emu_start(0x1000, 0x1000 + len(SYSCALL_BODY))
    b = time.perf_counter() - t
    return {"null_hypercalls_pv_s": n / pv, "syscall_hook_bare_s": n / b,
            "hypercall_ratio": b / pv}


def _state(g) -> str:
    ev = g.hc.events
    info = g.vcpu_info()
    return (f"pending bit {g.shinfo_bits.is_pending(5)}, upcall_pending {info[0]}, "
            f"mask {info[1]}, sel {int.from_bytes(info[8:16], 'little'):#x}, "
            f"blocked {ev.blocked}, notifications {ev.waker.notifications}, "
            f"upcalls {ev.upcalls}, rip {g.cpu.reg('rip'):#x}")


def measure_upcalls(n: int, tmp: Path, spin: bool = False) -> dict:
    from tests.pv.test_events import EventGuest  # the tests' stand-in for hypervisord

    g = EventGuest("upcall", tmp, cmdline=("s" if spin else "") + str(n))
    seen = threading.Event()
    stamp = [0.0]

    def console(data: bytes) -> None:
        if data.startswith(b"upcall ") and data[7:8].isdigit():
            stamp[0] = time.perf_counter()
            seen.set()
        g.console.append(data)

    g.hc.console = console
    g.hc.events.owns_bits = True  # as guest.run asks (evtchn_vcpu_bits): the vCPU sets the bits
    g.start()
    try:
        g.wait_text("upcall port 5\n")
        lat = []
        for _ in range(n):
            while g.shinfo_bits.is_pending(5) or not (spin or g.hc.events.blocked):
                time.sleep(0.0005)  # the last one consumed, the kernel blocked again
            time.sleep(0.002)  # into the wait for real
            seen.clear()
            t0 = time.perf_counter()
            g.stream.send(struct.pack("<I", 5))  # hypervisord's entry: port | vcpu << 16
            if not seen.wait(5):
                raise RuntimeError(f"no upcall ({_state(g)}): {g.text()!r}")
            lat.append(stamp[0] - t0)
        assert g.join() == 0
    finally:
        g.close()
    lat.sort()
    key = "upcall_spin" if spin else "upcall"
    return {f"{key}_latency_median_us": statistics.median(lat) * 1e6,
            f"{key}_latency_p90_us": lat[int(0.9 * (len(lat) - 1))] * 1e6}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench vcpu", description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=50_000_000, help="loop iterations")
    p.add_argument("--calls", type=int, default=100_000, help="null hypercalls")
    p.add_argument("--upcalls", type=int, default=200, help="events for the upcall latency")
    p.add_argument("--grub-runs", type=int, default=3, help="PV GRUB boots (0: skip the row)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        res = measure_loop(args.iters, Path(d)) | measure_hypercalls(args.calls, Path(d)) \
            | measure_upcalls(args.upcalls, Path(d)) \
            | measure_upcalls(args.upcalls, Path(d), spin=True) \
            | measure_grub(args.grub_runs, Path(d))
    print(f"hypercall-free loop: pvxen vCPU {res['loop_pv_insn_s'] / 1e9:.2f} G insn/s, "
          f"bare Unicorn {res['loop_bare_insn_s'] / 1e9:.2f} G insn/s "
          f"(ratio {res['loop_ratio']:.2f}, target >= 0.7)")
    print(f"null hypercalls: pvxen vCPU {res['null_hypercalls_pv_s'] / 1e3:.0f} k/s, "
          f"bare syscall hook {res['syscall_hook_bare_s'] / 1e3:.0f} k/s "
          f"(ratio {res['hypercall_ratio']:.2f}, target >= 0.5)")
    print(f"event upcall latency (notify -> handler, kernel blocked): median "
          f"{res['upcall_latency_median_us']:.0f} us, p90 {res['upcall_latency_p90_us']:.0f} us; "
          f"kernel spinning: median {res['upcall_spin_latency_median_us']:.0f} us, "
          f"p90 {res['upcall_spin_latency_p90_us']:.0f} us (slices: "
          f"{SLICE_SECONDS * 1e6:.0f} us)")
    if "grub_prompt_s" in res:
        print(f"PV GRUB (xl create -> console): 'Welcome to GRUB!' after "
              f"{res['grub_welcome_s']:.2f} s, 'grub> ' after {res['grub_prompt_s']:.2f} s "
              f"(median of {args.grub_runs}, max {res['grub_prompt_s_max']:.2f} s)")
    print(json.dumps({k: round(v, 3) for k, v in res.items()}))
    return 0
