"""``xl vcpu-list``, ``vcpu-pin``, ``sched-credit(2)``, ``list``'s Time(s)
and ``top`` against real daemons, with PV guests whose vCPU spins
(tests/pv/kernels/spin.S) and program guests.

Each vCPU is a thread of its domain's process that the host kernel
schedules (toolstack/vcpus.py); weight and cap are its cgroup's
(toolstack/cpucg.py): cgroup v2 ``cpu.weight``/``cpu.max``, or on a
hybrid host whose cpu controller is on v1, v1's ``cpu.shares`` and
``cpu.cfs_quota_us``.
"""

from __future__ import annotations

import os
import time

import pytest

from daemonkit.procgroup import guest_cgroup
from tests.pv.test_xl_pv import write_pv
from tests.toolstack.stack import stack, write_guest  # noqa: F401 (fixture)
from toolstack import cpucg, xl_sched

pytestmark = pytest.mark.timeout(60)


def spin(stack, tmp_path, name="spin", extra=""):
    stack.xl_ok("create", str(write_pv(tmp_path, name, "spin", extra)))
    stack.wait(lambda: "spinning" in stack.guest_log(name), "the kernel to spin")
    domid = stack.domid_of(name)
    return domid, stack.launcher_guests()[domid]


def vcpu_rows(stack, *domains):
    out = stack.xl_ok("vcpu-list", *domains).out.splitlines()
    assert out[0] == xl_sched.VCPU_HEADER
    return out[1:]


def fields(row: str) -> list[str]:
    name, rest = row[:32], row[32:]
    return [name.strip()] + rest.replace(" / ", " ").split()


def test_vcpu_list_shows_a_spinning_vcpu_running_and_its_time_growing(stack, tmp_path):
    domid, pid = spin(stack, tmp_path)
    rows = vcpu_rows(stack, "spin")
    assert len(rows) == 1
    name, did, vcpu, cpu, state, t1, hard, soft = fields(rows[0])
    assert (name, did, vcpu) == ("spin", str(domid), "0")
    assert state == "r--" and soft == "all"
    assert int(cpu) in os.sched_getaffinity(pid)
    assert hard == xl_sched.vc.format_cpumap(frozenset(os.sched_getaffinity(pid)),
                                             os.cpu_count())
    # the exact shape of xl_vcpu.c's row
    assert rows[0].startswith("%-32s %5u %5u%5u   r-- " % ("spin", domid, 0, int(cpu)))
    # the machine may be busy: the thread's time grows, at whatever rate it gets
    stack.wait(lambda: float(fields(vcpu_rows(stack, str(domid))[0])[5]) >= float(t1) + 0.2,
               "Time(s) to grow", timeout=10)


def test_a_paused_domains_vcpu_shows_p_and_its_time_stands_still(stack, tmp_path):
    spin(stack, tmp_path)
    stack.xl_ok("pause", "spin")
    stack.wait(lambda: fields(vcpu_rows(stack, "spin")[0])[4] == "--p", "the p state")
    t1 = fields(vcpu_rows(stack, "spin")[0])[5]
    time.sleep(0.3)
    assert fields(vcpu_rows(stack, "spin")[0])[5] == t1
    stack.xl_ok("unpause", "spin")
    stack.wait(lambda: fields(vcpu_rows(stack, "spin")[0])[4] == "r--", "running again")


def test_vcpu_list_of_all_domains_has_domain0_first(stack, tmp_path):
    rows = vcpu_rows(stack)
    assert fields(rows[0])[:3] == ["Domain-0", "0", "0"]
    assert fields(rows[0])[4] in ("r--", "-b-")  # hypervisord's main thread


def test_xl_list_time_is_the_domains_cpu_time(stack, tmp_path):
    domid, pid = spin(stack, tmp_path)

    def list_time() -> float:
        row = next(r for r in stack.xl_ok("list").out.splitlines() if r.startswith("spin "))
        return float(row.split()[-1])

    t1, w1 = list_time(), time.monotonic()
    time.sleep(1.0)
    t2, w2 = list_time(), time.monotonic()
    # one spinning vCPU: up to ~1 s of CPU per second (less on a busy machine)
    assert 0.05 <= t2 - t1 <= (w2 - w1) + 0.15, (t1, t2)
    row = next(r for r in stack.xl_ok("list").out.splitlines() if r.startswith("spin "))
    assert row == "%-40s %5d %5d %5d     %s  %8.1f" % ("spin", domid, 4, 1, "r-----",
                                                     float(row.split()[-1])) or \
        row.split()[4] == "-b----"
    # paused: the time stays (xl list reads it also while the process is stopped)
    stack.xl_ok("pause", "spin")
    time.sleep(0.1)
    t3 = list_time()
    time.sleep(0.4)
    assert list_time() == t3 >= t2


def test_vcpu_pin_sets_the_threads_affinity(stack, tmp_path):
    if os.cpu_count() < 2 or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    cpus = sorted(os.sched_getaffinity(0))
    domid, pid = spin(stack, tmp_path)
    stack.xl_ok("vcpu-pin", "spin", "0", str(cpus[1]))
    assert os.sched_getaffinity(pid) == {cpus[1]}
    status = open(f"/proc/{pid}/status").read()
    assert f"Cpus_allowed_list:\t{cpus[1]}\n" in status
    stack.wait(lambda: fields(vcpu_rows(stack, "spin")[0])[3] == str(cpus[1]), "the move")
    assert fields(vcpu_rows(stack, "spin")[0])[6] == str(cpus[1])
    stack.xl_ok("vcpu-pin", "spin", "all", "all")
    assert os.sched_getaffinity(pid) == set(range(os.cpu_count())) & set(
        os.sched_getaffinity(0)) | os.sched_getaffinity(pid)
    assert fields(vcpu_rows(stack, "spin")[0])[6] == "all"


def test_vcpu_pin_errors_are_xls(stack, tmp_path):
    spin(stack, tmp_path)
    r = stack.xl("vcpu-pin", "spin", "x", "0")
    assert r.rc == 1 and "Error: Invalid argument x as VCPU." in r.err
    r = stack.xl("vcpu-pin", "spin", "0", "3-1")
    assert r.rc == 1 and "Invalid pcpu range: 3-1." in r.err
    r = stack.xl("vcpu-pin", "spin", "5", "0")
    assert r.rc == 1 and "Could not set affinity for vcpu `5'." in r.err
    r = stack.xl("vcpu-pin", "nosuch", "0", "0")
    assert r.rc == 1 and "nosuch is an invalid domain identifier (rc=-6)" in r.err
    r = stack.xl("vcpu-pin", "spin", "0", "4096")  # a CPU the host has not: EINVAL
    assert r.rc == 1 and "Could not set affinity for vcpu `0'." in r.err
    r = stack.xl("vcpu-pin", "spin", "0")
    assert r.rc == 2 and "'xl vcpu-pin' requires at least 3 arguments." in r.err
    r = stack.xl("-N", "vcpu-pin", "spin", "0", "0-1,^1")
    assert r.rc == 0 and r.out == "cpumap: 0\n"


def _cpu_cgroup(pid):
    return cpucg.domain_cgroup(pid, create=False)


def _cgroup_or_skip(stack, domid, pid):
    r = stack.xl("sched-credit2", "-d", str(domid), "-w", "512")
    if r.rc != 0:
        assert "cannot set its CPU weight or cap" in r.err and r.err.count("\n") == 1
        pytest.skip(f"no cpu cgroup on this host: {r.err.strip()}")
    cg = _cpu_cgroup(pid)
    assert cg is not None
    return cg


def test_sched_credit2_weight_round_trips_through_the_cgroup(stack, tmp_path):
    domid, pid = spin(stack, tmp_path)
    out = stack.xl_ok("sched-credit2", "-d", "spin").out
    assert out == xl_sched.SCHED_HEADER + "\n" + "%-33s %4d %6d %4d\n" % ("spin", domid, 256, 0)
    cg = _cgroup_or_skip(stack, domid, pid)
    if cg.kind == "v2":
        assert (cg.path / "cpu.weight").read_text().strip() == "200"
    else:
        assert (cg.path / "cpu.shares").read_text().strip() == "2048"
    assert str(pid) in (cg.path / "cgroup.procs").read_text().split()
    stack.xl_ok("sched-credit2", "-d", "spin", "-w", "300")
    out = stack.xl_ok("sched-credit2", "-d", "spin").out.splitlines()[1]
    assert out.split()[-2:] == ["300", "0"]
    listing = stack.xl_ok("sched-credit2").out.splitlines()
    assert listing[0] == "Cpupool Pool-0: [sched params unavailable]"
    assert listing[1] == xl_sched.SCHED_HEADER
    assert listing[2].split()[:4] == ["Domain-0", "0", "256", "0"]
    assert listing[3].split() == ["spin", str(domid), "300", "0"]


def test_a_cap_limits_a_spinning_guest(stack, tmp_path):
    domid, pid = spin(stack, tmp_path)
    cg = _cgroup_or_skip(stack, domid, pid)
    stack.xl_ok("sched-credit", "-d", "spin", "-c", "20")
    if cg.kind == "v2":
        assert (cg.path / "cpu.max").read_text().split() == ["20000", "100000"]
    else:
        assert (cg.path / "cpu.cfs_quota_us").read_text().strip() == "20000"
    assert stack.xl_ok("sched-credit", "-d", "spin").out.splitlines()[1].split()[-1] == "20"
    used = _cpu_share(pid, 1.0)
    print(f"cap 20: the spinning guest used {used * 100:.0f}% of a CPU")
    assert used < 0.6
    stack.xl_ok("sched-credit", "-d", "spin", "-c", "0")
    assert stack.xl_ok("sched-credit", "-d", "spin").out.splitlines()[1].split()[-1] == "0"
    if cg.kind == "v2":
        assert (cg.path / "cpu.max").read_text().split()[0] == "max"
    else:
        assert (cg.path / "cpu.cfs_quota_us").read_text().strip() == "-1"
    print(f"no cap: {_cpu_share(pid, 1.0) * 100:.0f}% of a CPU")


def _cpu_share(pid: int, seconds: float) -> float:
    def cpu() -> float:
        fields_ = open(f"/proc/{pid}/stat", "rb").read().rsplit(b")", 1)[1].split()
        return (int(fields_[11]) + int(fields_[12])) / os.sysconf("SC_CLK_TCK")

    c0, t0 = cpu(), time.monotonic()
    time.sleep(seconds)
    return (cpu() - c0) / (time.monotonic() - t0)


def test_sched_errors_are_xls(stack, tmp_path):
    spin(stack, tmp_path)
    r = stack.xl("sched-credit2", "-w", "5")
    assert r.rc == 1 and "Must specify a domain." in r.err
    r = stack.xl("sched-credit2", "-d", "spin", "-w", "0")
    assert r.rc == 1 and "Cpu weight out of range" in r.err
    assert "libxl_domain_sched_params_set failed." in r.err
    r = stack.xl("sched-credit", "-d", "spin", "-c", "101")  # one vCPU: 0..100
    assert r.rc == 1 and "Cpu cap out of range, valid range is from 0 to 100" in r.err
    r = stack.xl("sched-credit2", "-d", "0", "-w", "512")
    assert r.rc == 1 and "no guest cgroup" in r.err
    r = stack.xl("sched-credit2", "-p", "Pool-7")
    assert r.rc == 1 and "unknown cpupool 'Pool-7'" in r.err
    r = stack.xl("sched-credit", "-d", "nosuch")
    assert r.rc == 1 and "nosuch is an invalid domain identifier (rc=-6)" in r.err


def test_xl_top_batch_shows_xentops_columns_and_cpu(stack, tmp_path):
    domid, _ = spin(stack, tmp_path)
    out = stack.xl_ok("top", "-b", "-i", "2", "-d", "0.5").out.splitlines()
    header = out[0].split()
    assert header == ["NAME", "STATE", "CPU(sec)", "CPU(%)", "MEM(k)", "MEM(%)", "MAXMEM(k)",
                      "MAXMEM(%)", "VCPUS", "NETS", "NETTX(k)", "NETRX(k)", "VBDS", "VBD_OO",
                      "VBD_RD", "VBD_WR", "VBD_RSECT", "VBD_WSECT", "SSID"]
    assert out.count(out[0]) == 2  # a header each iteration
    second = out[out.index(out[0], 1) + 1:]
    row = next(r.split() for r in second if r.split()[0] == "spin")
    assert row[1] == "-----r"
    assert float(row[3]) > 5.0, row  # a spinning vCPU: most of a CPU (of a busy host's)
    assert row[4] == str(4 * 1024) and row[8] == "1"
    first = next(r.split() for r in out[1:out.index(out[0], 1)] if r.split()[0] == "spin")
    assert first[3] == "0.0"  # no earlier sample: xentop's 0


def test_xl_top_errors(stack):
    r = stack.xl("top", "-d", "x", "-b", "-i", "1")
    assert r.rc == 2 and "delay (-d) must be a non-negative number: x" in r.err
    r = stack.xl("top", "-z")
    assert r.rc == 2 and "option `z' not supported." in r.err


def test_cpus_in_the_config_pins_the_new_domain(stack, tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    cpu = sorted(os.sched_getaffinity(0))[-1]
    domid, pid = spin(stack, tmp_path, extra=f'cpus = "{cpu}"\n')
    tids = os.listdir(f"/proc/{pid}/task")
    assert all(os.sched_getaffinity(int(t)) == {cpu} for t in tids), tids
    assert fields(vcpu_rows(stack, "spin")[0])[6] == str(cpu)


def test_a_bad_cpus_in_the_config_is_refused_before_anything_is_made(stack, tmp_path):
    r = stack.xl("create", str(write_pv(tmp_path, "bad", "spin", 'cpus = "3-1"\n')))
    assert r.rc == 1 and "Invalid pcpu range: 3-1." in r.err
    r = stack.xl("create", str(write_pv(tmp_path, "far", "spin", 'cpus = "4000"\n')))
    assert r.rc == 1 and 'cpus="4000": no CPU of this host' in r.err
    assert stack.domids() == [0]


IDLE = """
import sys, trio

async def main(domain):
    print("idle", file=sys.stderr, flush=True)
    await trio.sleep_forever()
"""


def test_a_program_guests_vcpu0_is_its_main_thread(stack, tmp_path):
    stack.xl_ok("create", str(write_guest(tmp_path, "idle", IDLE)))
    stack.wait(lambda: "idle" in stack.guest_log("idle"), "the guest to start")
    domid = stack.domid_of("idle")
    pid = stack.launcher_guests()[domid]
    stack.wait(lambda: fields(vcpu_rows(stack, "idle")[0])[4] == "-b-", "the guest to sleep")
    name, did, vcpu, cpu, state, t, hard, soft = fields(vcpu_rows(stack, "idle")[0])
    assert (did, vcpu) == (str(domid), "0")
    expected = xl_sched.vc.thread_stat(pid, pid)
    assert expected is not None and abs(float(t) - expected.cpu_ns / 1e9) < 0.2
    cg = guest_cgroup(pid)
    if cg is not None:  # xl list's Time(s): the whole cgroup's usage
        usage = int(next(line.split()[1] for line in (cg / "cpu.stat").read_text().splitlines()
                         if line.startswith("usage_usec"))) / 1e6
        row = next(r for r in stack.xl_ok("list").out.splitlines() if r.startswith("idle "))
        assert abs(float(row.split()[-1]) - usage) < 0.2, (row, usage)
