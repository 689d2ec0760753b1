"""Pure parts of the toolstack: domain config checks, the libxl XenStore
layout, start_info, xl's output formats, exit-status/action mapping."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest

from frontends.domain import StartInfo, StartInfoError
from frontends.runtime import exit_code_for, reason_from_status
from libxen.ctrl import DomainInfo
from hypervisord.public.domctl import XEN_DOMINF_blocked, XEN_DOMINF_paused, \
    XEN_DOMINF_shutdown, XEN_DOMINF_shutdownshift
from hypervisord.public.sched import ShutdownReason as R
from hypervisord.public.xen import START_INFO
from toolstack import xenstore_layout as layout
from toolstack import xl_format
from toolstack.builder import MemoryLayout, start_info_bytes
from toolstack.domconfig import DomainConfig, domain_config, parse_mem_size_kb
from toolstack.monitor import action_for
from toolstack.xlcfg import ConfigErrors, parse

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def prog(tmp_path):
    p = tmp_path / "guest.py"
    p.write_text("async def main(domain):\n    pass\n")
    return p


def cfg_text(prog, extra: str = "") -> str:
    return f'name = "g"\nkernel = "{prog}"\n{extra}'


def test_defaults_and_values(prog):
    dc = domain_config(parse(cfg_text(prog, "memory = 64\ncmdline = 'a \"b c\"'\n"), "g.cfg"))
    assert (dc.name, dc.memory, dc.maxmem, dc.vcpus, dc.maxvcpus) == ("g", 64, 64, 1, 1)
    assert (dc.on_poweroff, dc.on_reboot, dc.on_crash) == ("destroy", "restart", "destroy")
    assert dc.kernel == str(prog) and dc.args == ["a", "b c"]
    assert len(dc.uuid) == 36 and DomainConfig.from_dict(dc.to_dict()) == dc
    assert domain_config(parse(cfg_text(prog), "g.cfg")).memory == 32  # libxl's default


def test_root_and_extra_make_the_command_line(prog):
    dc = domain_config(parse(cfg_text(prog, "root='/dev/xvda1'\nextra='quiet'\n"), "g.cfg"))
    assert dc.cmdline == "root=/dev/xvda1 quiet"


def test_kernel_relative_to_the_config_file(prog, tmp_path, monkeypatch):
    monkeypatch.chdir("/")
    (tmp_path / "g.cfg").write_text('name="g"\nkernel="guest.py"\n')
    dc = domain_config(parse((tmp_path / "g.cfg").read_text(), str(tmp_path / "g.cfg")))
    assert dc.kernel == str(prog)


def test_errors_name_file_and_line(prog, tmp_path):
    elf = tmp_path / "vmlinuz"
    elf.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(57))
    text = (f'name = "g"\nmemory = 64\nmaxmem = 32\non_crash = "explode"\n'
            f'kernel = "{elf}"\ntype = "hvm"\nuuid = "nope"\n')
    with pytest.raises(ConfigErrors) as ei:
        domain_config(parse(text, "bad.cfg"))
    got = [str(e) for e in ei.value.errors]
    assert got == [
        "bad.cfg:3: maxmem (32) must not be less than memory (64)",
        'bad.cfg:4: Unknown on_crash action "explode" specified',
        f"bad.cfg:5: kernel: {elf} is a kernel image: a PV kernel needs type = \"pv\" "
        "(a guest program is a .py file)",
        "bad.cfg:6: type: 'hvm' guests are not supported (pv or program)",
        "bad.cfg:7: uuid: failed to parse 'nope'",
    ]


def test_missing_name_kernel_and_bad_names(prog):
    with pytest.raises(ConfigErrors) as ei:
        domain_config(parse("memory = 4\n", "m.cfg"))
    assert [str(e) for e in ei.value.errors] == [
        "m.cfg: Domain name must be specified.",
        "m.cfg: kernel: missing (the guest program to run, a .py file)"]
    for name, why in (("123", "all digits"), ("a/b", "not a valid domain name")):
        with pytest.raises(ConfigErrors, match=why):
            domain_config(parse(f'name = "{name}"\nkernel = "{prog}"\n', "n.cfg"))
    with pytest.raises(ConfigErrors, match="n.cfg:2: kernel: nothere.py: No such file"):
        domain_config(parse('name = "x"\nkernel = "nothere.py"\n', "n.cfg"))
    with pytest.raises(ConfigErrors, match="n.cfg:2: memory: must be a positive number"):
        domain_config(parse(f'name = "x"\nmemory = 0\nkernel = "{prog}"\n', "n.cfg"))


@pytest.mark.parametrize("text,kb", [("256", 256 << 10), ("256m", 256 << 10), ("1g", 1 << 20),
                                     ("1T", 1 << 30), ("512k", 512), ("2048b", 2), ("1x", None),
                                     ("", None), ("-4", None)])
def test_parse_mem_size_kb(text, kb):
    assert parse_mem_size_kb(text) == kb


ENTRIES = layout.DomainEntries(domid=7, name="g", uuid="11111111-2222-3333-4444-555555555555",
                               memory_kb=65536, maxmem_kb=131072, vcpus=1, maxvcpus=2,
                               store_port=3, store_gfn=16383, console_port=4,
                               console_gfn=16382, kernel="/k.py", cmdline="x",
                               start_time=1700000000.5)


def _tree(ops):
    values, perms = {}, {}
    for op in ops:
        if op.kind == "write":
            values[op.path] = op.value
        elif op.kind == "perms":
            perms[op.path] = op.perms
    return values, perms


def test_libxl_layout_values():
    values, _ = _tree(layout.create_ops(ENTRIES))
    d, vm = "/local/domain/7", "/vm/11111111-2222-3333-4444-555555555555"
    expect = {f"{d}/name": "g", f"{d}/domid": "7", f"{d}/vm": vm,
              f"{d}/memory/target": "65536", f"{d}/memory/static-max": "131072",
              f"{d}/memory/videoram": "0", f"{d}/cpu/0/availability": "online",
              f"{d}/cpu/1/availability": "offline", f"{d}/store/port": "3",
              f"{d}/store/ring-ref": "16383", f"{d}/console/port": "4",
              f"{d}/console/ring-ref": "16382", f"{d}/console/type": "xenconsoled",
              f"{d}/console/limit": "1048576", f"{d}/console/output": "pty",
              f"{d}/console/backend": "/local/domain/0/backend/console/7/0",
              f"{d}/console/backend-id": "0", f"{d}/control/shutdown": "",
              f"{d}/control/platform-feature-multiprocessor-suspend": "1",
              f"{d}/control/platform-feature-xs_reset_watches": "1",
              f"{vm}/uuid": ENTRIES.uuid, f"{vm}/name": "g", f"{vm}/image/ostype": "linux",
              f"{vm}/image/kernel": "/k.py", f"{vm}/image/cmdline": "x",
              f"{vm}/start_time": "1700000000.50", "/libxl/7/type": "pv"}
    for path, value in expect.items():
        assert values[path] == value, path
    for sub in ("data", "drivers", "feature", "attr", "error", "device"):
        assert values[f"{d}/{sub}"] == ""


def test_libxl_layout_permissions():
    _, perms = _tree(layout.create_ops(ENTRIES))
    d = "/local/domain/7"
    assert perms[d] == ("n0", "r7")
    assert perms["/vm/" + ENTRIES.uuid] == ("n0", "r7")
    assert perms["/libxl/7"] == ("n0",)
    for sub in ("control", "memory", "cpu", "device"):
        assert perms[f"{d}/{sub}"] == ("n0", "r7")
    for sub in ("data", "drivers", "feature", "attr", "error", "control/shutdown",
                "control/feature-poweroff", "device/suspend/event-channel"):
        assert perms[f"{d}/{sub}"] == ("n7",), sub
    assert perms[f"{d}/console"] == ("n7", "r0")
    assert perms[f"{d}/console/backend-id"] == ("n7", "r0")
    for key in ("limit", "type", "output", "tty", "port", "ring-ref"):
        # what the console daemon trusts is dom0's (libxl's ro_front)
        assert perms[f"{d}/console/{key}"] == ("n0", "r7"), key
    assert perms["/local/domain/0/backend/console/7/0"] == ("n0", "r7")


def test_console_backend_directory_as_libxl():
    values, _ = _tree(layout.create_ops(ENTRIES))
    b = "/local/domain/0/backend/console/7/0"
    assert {k: v for k, v in values.items() if k.startswith(b + "/")} == {
        f"{b}/frontend": "/local/domain/7/console", f"{b}/frontend-id": "7",
        f"{b}/online": "1", f"{b}/state": "1", f"{b}/protocol": "vt100"}
    assert values["/local/domain/7/console/tty"] == ""
    assert values["/libxl/7/device/console/0/backend"] == b


def test_layout_order_removes_before_creating_and_destroy_ops():
    ops = layout.create_ops(ENTRIES)
    assert ops[0] == layout.Op("rm", "/local/domain/7")
    backends = ["/local/domain/0/backend/vbd/7", "/local/domain/0/backend/vif/7",
                "/local/domain/0/backend/console/7"]
    assert [o.path for o in layout.destroy_ops(7, ENTRIES.uuid)] == [
        "/local/domain/7", "/vm/" + ENTRIES.uuid, "/libxl/7", *backends]
    assert [o.path for o in layout.destroy_ops(7, None)] == [
        "/local/domain/7", "/libxl/7", *backends]
    assert {o.kind for o in layout.destroy_ops(7, None)} == {"rm"}
    assert _tree(layout.dom0_ops())[0] == {"/local/domain/0/name": "Domain-0",
                                           "/local/domain/0/domid": "0"}


def test_start_info_round_trip_and_magic_check():
    mem = MemoryLayout(1024)
    assert (mem.start_info_gfn, mem.console_gfn, mem.store_gfn) == (1021, 1022, 1023)
    raw = start_info_bytes(1024, (1023, 5), (1022, 6), "hello world")
    assert len(raw) == START_INFO.size == 1168 and raw.startswith(b"xen-3.0-x86_64\0")
    si = StartInfo.parse(raw + bytes(4096 - len(raw)))
    assert (si.nr_pages, si.store_mfn, si.store_evtchn, si.console_mfn, si.console_evtchn,
            si.cmd_line) == (1024, 1023, 5, 1022, 6, "hello world")
    assert StartInfo.parse(start_info_bytes(4, (3, 1), (2, 2), "x" * 5000)).cmd_line == "x" * 1023
    with pytest.raises(StartInfoError):
        StartInfo.parse(bytes(4096))


def _info(domid, flags, pages=1024, cpu_ns=1_500_000_000, vcpus=2):
    return DomainInfo(domid, flags, pages, pages, cpu_ns, vcpus, bytes(range(16)))


def test_xl_list_format():
    crashed = XEN_DOMINF_shutdown | (R.SHUTDOWN_crash << XEN_DOMINF_shutdownshift)
    text = xl_format.list_table([_info(3, crashed), _info(0, XEN_DOMINF_blocked, 256, 0, 1),
                                 _info(2, XEN_DOMINF_paused)], {0: "Domain-0", 2: "guest"})
    assert text.splitlines() == [
        "Name                                        ID   Mem VCPUs\tState\tTime(s)",
        "Domain-0                                     0     1     1     -b----       0.0",
        "guest                                        2     4     2     --p---       1.5",
        "(null)                                       3     4     2     ---sc-       1.5",
    ]
    verbose = xl_format.list_table([_info(3, crashed)], {}, verbose=True).splitlines()[1]
    assert verbose.endswith(" 00010203-0405-0607-0809-0a0b0c0d0e0f        3                -")


def test_xl_info_format_and_filter():
    v = xl_format.VersionInfo(4, 17, "-pvxen", "xen-3.0-x86_64", "cs", "cc", "by", "", "", 4096)
    uname = SimpleNamespace(nodename="h", release="r", version="v", machine="x86_64")
    phys = {"nr_cpus": 2, "total_pages": 262144, "free_pages": 262144 - 2560, "cpu_khz": 2100500}
    text = xl_format.info_text(uname, phys, v)
    lines = text.splitlines()
    assert lines[0] == "host                   : h"
    assert "cpu_mhz                : 2100.500" in lines
    assert "total_memory           : 1024" in lines and "free_memory            : 1014" in lines
    assert "xen_version            : 4.17-pvxen" in lines
    assert lines[-1] == "xend_config_format     : 4"
    keys = [line.split(":")[0].strip() for line in lines]
    assert keys.index("free_cpus") < keys.index("xen_major") < keys.index("build_id")
    assert xl_format.info_filter(text, "free_memory") == "1014\n"


def test_exit_status_carries_the_shutdown_reason():
    for reason in R:
        code = exit_code_for(reason)
        assert reason_from_status(code << 8) == reason  # a wait status: exit code << 8
    assert reason_from_status(signal.SIGKILL) == R.SHUTDOWN_crash
    assert reason_from_status(1 << 8) == R.SHUTDOWN_crash


def test_actions_by_reason(prog):
    dc = domain_config(parse(cfg_text(prog, "on_poweroff='restart'\non_crash='preserve'\n"),
                             "a.cfg"))
    assert action_for(dc, R.SHUTDOWN_poweroff) == "restart"
    assert action_for(dc, R.SHUTDOWN_reboot) == "restart"
    assert action_for(dc, R.SHUTDOWN_crash) == "preserve"
    assert action_for(dc, R.SHUTDOWN_watchdog) == "destroy"
    assert action_for(dc, R.SHUTDOWN_suspend) == "destroy"


class FakeXc:
    """A hypercall client whose event_channel_op answers ``-rc``."""

    def __init__(self, rc: int) -> None:
        self.rc = rc
        self.calls: list[tuple[int, int, dict]] = []

    def call(self, hypercall, subop, **args):
        from toolstack.hcall import XenError

        self.calls.append((hypercall, subop, args))
        raise XenError(self.rc, f"hypercall {hypercall}/{subop}")


def test_alloc_unbound_without_event_channels_says_so():
    from hypervisord.public.errno import XenErrno
    from hypervisord.public.event_channel import EvtchnOp
    from toolstack.builder import BuildError, alloc_unbound

    xc = FakeXc(-XenErrno.XEN_ENOSYS)
    with pytest.raises(BuildError, match="hypervisord has no event channels"):
        alloc_unbound(xc, 5, "xenstore")
    assert xc.calls == [(32, EvtchnOp.EVTCHNOP_alloc_unbound, {"dom": 5, "remote_dom": 0})]
    with pytest.raises(BuildError, match=r"EVTCHNOP_alloc_unbound \(console\) failed: XEN_EPERM"):
        alloc_unbound(FakeXc(-XenErrno.XEN_EPERM), 5, "console")
