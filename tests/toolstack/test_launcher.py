"""The launcher and the builder library: scale, cleanup after a killed guest,
the guest process's confinement, and in-process use (benchmarks)."""

from __future__ import annotations

import json
import os
import signal
import uuid

import pytest

from toolstack import guestproc

from libxen import ctrl
from hypervisord.public.sched import ShutdownReason
from toolstack.builder import create_domain, destroy_domain
from toolstack.domconfig import DomainConfig
from toolstack.launchctl import connect
from toolstack.monitor import Launcher
from tests.toolstack.stack import stack, write_guest  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(90)

IDLE = "import trio\nasync def main(domain):\n    await trio.sleep_forever()\n"


def free_pages(stack) -> int:
    return ctrl.physinfo(stack.ts.xc)[1]["free_pages"]


def store_children(stack, path: str) -> list[bytes]:
    try:
        return stack.ts.xs.directory(path)
    except OSError:
        return []


def test_200_domains_created_and_destroyed(stack, tmp_path):
    prog = tmp_path / "idle.py"
    prog.write_text(IDLE)
    stack.xl_ok("list")  # dom0's entries, as xen-init-dom0 leaves them
    free0, domids0 = free_pages(stack), stack.domids()
    local0 = store_children(stack, "/local/domain")
    built = []
    with connect(stack.rundir) as launcher:
        for i in range(200):
            cfg = DomainConfig(name=f"g{i}", uuid=str(uuid.uuid4()), kernel=str(prog),
                               memory=1, maxmem=1)
            b = create_domain(stack.ts, cfg, unique_name=False)
            try:
                launcher.request({"op": "launch", "domid": b.domid, "config": cfg.to_dict(),
                                  "start_info_gfn": b.layout.start_info_gfn}, b.fds)
            finally:
                b.close_fds()
            ctrl.domain_unpause(stack.ts.xc, b.domid)
            built.append((b.domid, cfg.uuid))
        assert len(stack.domids()) == len(domids0) + 200
        assert free_pages(stack) == free0 - 200 * 256
        assert len(stack.launcher_guests()) == 200
        for domid, vm_uuid in built:
            launcher.request({"op": "destroying", "domid": domid})
            destroy_domain(stack.ts, domid, vm_uuid)
    stack.wait(lambda: not stack.launcher_guests(), "the launcher to reap 200 guests", 30)
    assert stack.domids() == domids0
    assert free_pages(stack) == free0
    assert store_children(stack, "/local/domain") == local0
    assert store_children(stack, "/vm") == [] and store_children(stack, "/libxl") == []
    assert list((stack.xl_dir / "userdata").iterdir()) == []


def test_sigkill_of_a_guest_process_cleans_up(stack, tmp_path):
    cfg = write_guest(tmp_path, "victim", IDLE)
    stack.xl_ok("create", str(cfg))
    domid = stack.domid_of("victim")
    vm = stack.read(f"/local/domain/{domid}/vm")
    pid = stack.launcher_guests()[domid]
    free = free_pages(stack)
    os.kill(pid, signal.SIGKILL)
    stack.wait(lambda: domid not in stack.domids(), "hypervisord to destroy the domain")
    stack.wait(lambda: stack.read(f"/local/domain/{domid}") is None, "the launcher's cleanup")
    assert stack.read(vm) is None and stack.read(f"/libxl/{domid}") is None
    assert free_pages(stack) == free + 4 * 256
    stack.wait(lambda: f"d{domid} (victim) shut down, reason crash" in
               (stack.xl_dir / "log" / "launcher.log").read_text(), "the crash in the log")


PROBE = r'''
import ctypes, json, os, socket
async def main(domain):
    report = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
              "groups": os.getgroups(), "cwd": os.getcwd()}
    status = open("/proc/self/status").read()
    report["no_new_privs"] = [l.split()[1] for l in status.splitlines()
                              if l.startswith("NoNewPrivs")][0]
    report["dumpable"] = ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(domain.args[0])
        report["privcmd"] = "connected"
    except OSError as e:
        report["privcmd"] = type(e).__name__
    try:
        os.listdir(domain.args[1])
        report["rundir"] = "listed"
    except OSError as e:
        report["rundir"] = type(e).__name__
    report["fds"], report["named_sockets"] = {}, []
    for fd in os.listdir("/proc/self/fd"):
        try:
            report["fds"][fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if report["fds"][fd].startswith("socket:"):
            s = socket.socket(fileno=os.dup(int(fd)))
            try:
                if s.family == socket.AF_UNIX:  # path names are dom0 endpoints
                    names = [s.getsockname(), s.getpeername()]
                    if any(isinstance(n, str) and n for n in names):
                        report["named_sockets"].append([fd, *map(repr, names)])
                else:
                    report["named_sockets"].append([fd, str(s.family)])
            except OSError:
                pass
            finally:
                s.close()
    report["maps"] = sorted({l.split(None, 5)[5] for l in open("/proc/self/maps")
                             if len(l.split(None, 5)) > 5 and "memfd:" in l})
    print("REPORT " + json.dumps(report), flush=True)
'''


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to a guest uid needs root")
def test_guest_process_is_confined(stack, tmp_path):
    privcmd = stack.rundir / "hypervisord" / "privcmd"
    cfg = write_guest(tmp_path, "probe", PROBE,
                      f"cmdline = '{privcmd} {stack.rundir}'\non_poweroff = 'destroy'\n")
    prog = tmp_path / "probe.py"
    os.chmod(tmp_path, 0o700)  # the launcher reads the program as root: nobody need not
    stack.xl_ok("create", str(cfg))
    line = stack.wait(lambda: [x for x in stack.guest_log("probe").splitlines()
                               if x.startswith("REPORT ")], "the probe's report")
    report = json.loads(line[0][len("REPORT "):])
    domid_line = [x for x in (stack.xl_dir / "log" / "launcher.log").read_text().splitlines()
                  if "(probe): guest process" in x][0]
    domid = int(domid_line.split(" d", 1)[1].split(" ", 1)[0])
    uid = guestproc.guest_uid(domid)
    assert (report["uid"], report["euid"], report["gid"], report["groups"]) == \
        (uid, uid, uid, [])
    assert report["no_new_privs"] == "1" and report["dumpable"] == 0
    assert report["cwd"] == "/"
    # not merely unreadable: outside the guest's mount namespace altogether
    assert report["privcmd"] == "FileNotFoundError" and report["rundir"] == "FileNotFoundError"
    fds = report["fds"]
    assert fds["0"] == "/dev/null"
    assert fds["1"] == fds["2"] == str(stack.xl_dir / "log" / "guest-probe.log")
    assert fds["3"].startswith("socket:") and fds["4"].startswith("socket:")
    assert fds["5"].startswith(f"/memfd:pvxen-dom{domid} ")
    memfds = {t for t in fds.values() if "memfd:" in t}
    assert memfds == {fds["5"]}, "a descriptor of another domain's memory"
    assert all(f"memfd:pvxen-dom{domid} " in m for m in report["maps"]), report["maps"]
    assert not any(str(stack.rundir) in t for k, t in fds.items() if k not in ("1", "2"))
    # socketpairs only (autobound, abstract names at most): no connection to a
    # dom0 endpoint (privcmd, xenstored, the launcher) leaked in
    assert report["named_sockets"] == []
    assert prog.exists()


def test_in_process_launcher_reaps_and_cleans(stack, tmp_path):
    prog = tmp_path / "quick.py"
    prog.write_text("async def main(domain):\n    print('done', domain.domid)\n")
    launcher = Launcher(stack.rundir)
    free0 = free_pages(stack)
    try:
        domids = []
        for i in range(3):
            cfg = DomainConfig(name=f"q{i}", uuid=str(uuid.uuid4()), kernel=str(prog),
                               memory=1, maxmem=1)
            b = create_domain(stack.ts, cfg)
            try:
                launcher.launch(b.domid, cfg, b.layout.start_info_gfn, b.fds)
            finally:
                b.close_fds()
            ctrl.domain_unpause(stack.ts.xc, b.domid)
            domids.append(b.domid)
        ended: list = []
        stack.wait(lambda: ended.extend(launcher.reap()) or len(ended) == 3, "3 guests to end")
        assert sorted(g.domid for g, _ in ended) == sorted(domids)
        assert {reason for _, reason in ended} == {ShutdownReason.SHUTDOWN_poweroff}
        assert stack.domids() == [0] and free_pages(stack) == free0
        assert all(stack.read(f"/local/domain/{d}") is None for d in domids)
        assert "done" in stack.guest_log("q0")
    finally:
        launcher.kill_all()
        launcher.close()


def test_program_sees_its_domain(stack, tmp_path):
    """What ``main(domain)`` gets: ids, start_info, its own memory, event channels."""
    body = (
        "import sys\n"
        "async def main(domain):\n"
        "    si = domain.start_info\n"
        "    page = domain.map_gfn(0)\n"
        "    page[:5] = b'hello'\n"
        "    port = await domain.evtchn.bind_unbound_port(0)\n"
        "    print('SEEN', domain.domid, domain.name, si.nr_pages, si.cmd_line, domain.args,\n"
        "          domain.read_gfn(0, 0, 5), port > 0, sys.argv[1:], flush=True)\n"
        "    try:\n"
        "        domain.read_gfn(si.nr_pages)\n"
        "    except ValueError:\n"
        "        print('BOUNDED', flush=True)\n")
    cfg = write_guest(tmp_path, "seer", body, "cmdline = 'x=1 y'\n", memory=2)
    stack.xl_ok("create", "-p", str(cfg))
    domid = stack.domid_of("seer")
    stack.xl_ok("unpause", "seer")
    stack.wait(lambda: "BOUNDED" in stack.guest_log("seer"), "the program's report")
    seen = [x for x in stack.guest_log("seer").splitlines() if x.startswith("SEEN")][0]
    assert seen == f"SEEN {domid} seer 512 x=1 y ['x=1', 'y'] b'hello' True ['x=1', 'y']"
