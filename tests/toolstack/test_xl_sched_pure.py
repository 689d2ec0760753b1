"""The pure parts of vcpu-list/-pin, sched-credit and top: cpumaps as xl
prints and parses them, Xen's weight and cap on cgroup files, /proc's
thread stat, vCPU threads found by name, the row formats."""

from __future__ import annotations

import ctypes
import os
import threading

import pytest

from libxen.ctrl import DomainInfo
from hypervisord.public.domctl import XEN_DOMINF_blocked, XEN_DOMINF_paused, XEN_DOMINF_running
from toolstack import cpucg, xl_sched, xl_top
from toolstack import vcpus as vc


@pytest.mark.parametrize("cpus,n,text", [
    ({0, 1, 2, 3}, 4, "all"), (set(), 4, "none"), ({1}, 4, "1"), ({0, 1}, 4, "0-1"),
    ({0, 2, 3}, 4, "0,2-3"), ({1, 2, 3}, 4, "1-3"), ({0, 5}, 8, "0,5"), ({0}, 1, "all"),
])
def test_format_cpumap_is_print_bitmaps(cpus, n, text):
    assert vc.format_cpumap(frozenset(cpus), n) == text


@pytest.mark.parametrize("text,cpus", [
    ("all", {0, 1, 2, 3}), ("1", {1}), ("0-2", {0, 1, 2}), ("0-3,^1", {0, 2, 3}),
    ("all,^0", {1, 2, 3}), ("nodes:0", {0, 1, 2, 3}), ("node:0,^3", {0, 1, 2}), ("2,2", {2}),
])
def test_parse_cpurange_is_xls(text, cpus):
    assert vc.parse_cpurange(text, 4) == cpus


@pytest.mark.parametrize("text,message", [
    ("3-1", "Invalid pcpu range: 3-1."), ("x", "Invalid pcpu range: x."),
    ("^all", 'Can\'t combine "^" and "all".'), ("1-", "Invalid pcpu range: 1-."),
    ("node:1", "Invalid pcpu range: node:1."), ("-1", "Invalid pcpu range: -1."),
    ("²", "Invalid pcpu range: ²."),
])
def test_parse_cpurange_refuses_what_xl_refuses(text, message):
    with pytest.raises(vc.CpumapError) as e:
        vc.parse_cpurange(text, 4)
    assert str(e.value) == message


def test_weight_maps_to_cgroup_weight_and_shares():
    assert cpucg.weight_to_v2(256) == 100 and cpucg.weight_from_v2(100) == 256
    assert cpucg.weight_to_v2(512) == 200 and cpucg.weight_from_v2(200) == 512
    assert cpucg.weight_to_v2(1) == 1 and cpucg.weight_to_v2(65535) == 10000
    assert cpucg.weight_from_v2(10000) == 25600 and cpucg.weight_from_v2(1) == 3
    for w in (1, 2, 255, 256, 257, 1000, 65535):  # v1: exact
        assert cpucg.weight_from_shares(cpucg.weight_to_shares(w)) == w
    assert cpucg.weight_to_shares(256) == 1024


def test_cap_maps_to_cpu_max():
    assert cpucg.cap_to_cpu_max(0) == "max"
    assert cpucg.cap_to_cpu_max(20) == "20000 100000"
    assert cpucg.cap_to_cpu_max(250) == "250000 100000"
    assert cpucg.parse_cpu_max("max 100000\n") == (None, 100000)
    assert cpucg.parse_cpu_max("50000 100000") == (50000, 100000)
    assert cpucg.cap_from_quota(None, 100000) == 0
    assert cpucg.cap_from_quota(20000, 100000) == 20
    assert cpucg.cap_from_quota(500, 100000) == 1  # never shown as no cap
    assert cpucg.cap_from_quota(5000, 10000) == 50


def test_a_v2_cgroup_round_trip_on_its_files(tmp_path):
    (tmp_path / "cpu.weight").write_text("100\n")
    (tmp_path / "cpu.max").write_text("max 100000\n")
    cg = cpucg.CpuCgroup("v2", tmp_path)
    assert cg.read() == (256, 0)
    cg.write(weight=512, cap=50)
    assert (tmp_path / "cpu.weight").read_text() == "200"
    assert (tmp_path / "cpu.max").read_text() == "50000 100000"
    assert cg.read() == (512, 50)
    cg.write(cap=0)
    assert (tmp_path / "cpu.max").read_text() == "max" and cg.read() == (512, 0)


def test_a_v1_cgroup_round_trip_on_its_files(tmp_path):
    for name, value in (("cpu.shares", "1024"), ("cpu.cfs_quota_us", "-1"),
                        ("cpu.cfs_period_us", "100000")):
        (tmp_path / name).write_text(value + "\n")
    cg = cpucg.CpuCgroup("v1", tmp_path)
    assert cg.read() == (256, 0)
    cg.write(weight=300, cap=150)
    assert (tmp_path / "cpu.shares").read_text() == "1200"
    assert (tmp_path / "cpu.cfs_quota_us").read_text() == "150000"
    assert cg.read() == (300, 150)
    cg.write(cap=0)
    assert (tmp_path / "cpu.cfs_quota_us").read_text() == "-1"


def test_enable_cpu_controller_only_where_the_parent_offers_it(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("hugetlb\n")
    (tmp_path / "cgroup.subtree_control").write_text("\n")
    assert not cpucg.enable_cpu_controller(tmp_path)
    assert (tmp_path / "cgroup.subtree_control").read_text() == "\n"
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    assert cpucg.enable_cpu_controller(tmp_path)
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu"


def test_parse_stat_counts_fields_from_the_last_parenthesis():
    tail = " ".join(["S"] + ["0"] * 10 + ["150", "50"] + ["0"] * 23 + ["3"] + ["0"] * 12)
    st = vc.parse_stat(77, b"77 (a) (b c) " + tail.encode())
    hz = os.sysconf("SC_CLK_TCK")
    assert (st.tid, st.state, st.processor, st.cpu_ns) == (77, "S", 3, 200 * 10**9 // hz)


def _named_thread(name: bytes, ready: threading.Event, stop: threading.Event, tids: list):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, name, 0, 0, 0)  # PR_SET_NAME: this thread's comm
    tids.append(threading.get_native_id())
    ready.set()
    stop.wait()


def test_vcpu_threads_are_found_by_name_and_vcpu0_defaults_to_the_main_thread():
    stop, tids, threads = threading.Event(), [], []
    try:
        for name in (b"vcpu1", b"vcpu7", b"vcpu01"):
            ready = threading.Event()
            t = threading.Thread(target=_named_thread, args=(name, ready, stop, tids))
            t.start()
            threads.append(t)
            ready.wait(5)
        pid = os.getpid()
        assert vc.vcpu_threads(pid, 2) == {0: pid, 1: tids[0]}  # vcpu7 beyond, vcpu01 no name
        assert vc.vcpu_threads(pid, 1) == {0: pid}
        assert vc.vcpu_threads(pid, 8) == {0: pid, 1: tids[0], 7: tids[1]}
        infos = vc.vcpu_infos(pid, 3)
        assert [i.online for i in infos] == [True, True, False]  # vCPU 2 has no thread
        assert infos[1].blocked and not infos[1].running and infos[1].tid == tids[0]
        assert infos[1].hard == frozenset(os.sched_getaffinity(tids[0]))
        assert infos[0].running  # this thread, reading its own stat
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert vc.vcpu_threads(0, 1) == {}


def test_vcpu_rows_are_print_vcpuinfos():
    online = vc.VcpuInfo(0, True, cpu=1, running=True, time_ns=12_340_000_000,
                         hard=frozenset({0, 1}))
    assert xl_sched.vcpu_row("g", 3, online, 2) == \
        "g                                    3     0    1   r--      12.3  all / all"
    offline = vc.VcpuInfo(1, False)
    assert xl_sched.vcpu_row("g", 3, offline, 2) == \
        "g                                    3     1    -   --p       0.0  all / all"
    paused = vc.VcpuInfo(0, True, cpu=0, paused=True, hard=frozenset({1}))
    assert xl_sched.vcpu_row("g", 3, paused, 4).endswith("    0   --p       0.0  1 / all")
    assert xl_sched.VCPU_HEADER == ("Name".ljust(32) + "    ID  VCPU   CPU State   "
                                    "Time(s) Affinity (Hard / Soft)")


def test_strtol_reads_as_c_does():
    assert [xl_sched._strtol(t) for t in ("12", " 7x", "-3", "x", "+5", "")] == [12, 7, -3, 0, 5, 0]


def test_top_header_and_row_have_xentops_widths():
    assert xl_top.header() == (
        "      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) MAXMEM(%) VCPUS NETS "
        "NETTX(k) NETRX(k) VBDS   VBD_OO   VBD_RD   VBD_WR  VBD_RSECT  VBD_WSECT SSID")
    info = DomainInfo(4, XEN_DOMINF_running, 1024, 2048, 7_500_000_000, 2, bytes(16))
    d = xl_top.DomainSample(4, "a-very-long-name", info, nets=1, vbds=1, net_tx=4096,
                            net_rx=10240, vbd={"oo_req": 0, "rd_req": 5, "wr_req": 6,
                                               "rd_sect": 40, "wr_sect": 48})
    line = xl_top.row(d, 12.34, 1 << 20)
    assert line.split() == ["a-very-lon", "-----r", "7", "12.3", "4096", "0.4", "8192", "0.8",
                            "2", "1", "4", "10", "1", "0", "5", "6", "40", "48", "0"]
    assert len(line) == len(xl_top.header())
    assert xl_top.state_letters(DomainInfo(1, XEN_DOMINF_paused | XEN_DOMINF_blocked, 0, 0, 0,
                                           1, b"")) == "--b-p-"


def test_cpu_pct_is_the_cpu_time_over_the_wall_time():
    def s(ns):
        return xl_top.DomainSample(1, "x", DomainInfo(1, 0, 0, 0, ns, 1, b""))

    prev = xl_top.Sample(0.0, 0, [s(1_000_000_000)])
    assert xl_top.cpu_pct(s(1_500_000_000), prev, 2.0) == pytest.approx(25.0)
    assert xl_top.cpu_pct(s(1_500_000_000), None, 2.0) == 0.0
