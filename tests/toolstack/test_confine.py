"""A program guest is confined like a domU with real processes.

Every process a guest makes dies with its domain (a cgroup v2 each and a
PID namespace, each also alone); a guest reaches no host network, files or
``/tmp``; it has memory, file-size and process limits; forbidden syscalls
answer EPERM; and hypercalls, XenStore and event channels still work.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from daemonkit import procgroup
from libxen import ctrl
from hypervisord.public.memfile import file_size
from toolstack import confine
from tests.toolstack.stack import stack, write_guest  # noqa: F401 (fixture)

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(os.geteuid() != 0, reason="confinement as root")]

ORPHAN = r'''
import ctypes, os, time, trio
async def main(domain):
    r, w = os.pipe()
    if os.fork() == 0:  # double fork: a new session, reparented away from the guest
        os.setsid()
        if os.fork() == 0:
            ctypes.CDLL(None).prctl(15, domain.args[0].encode(), 0, 0, 0)
            os.write(w, b"x")
            while True:  # holds the domain's fds (3, 4, 5) as it sleeps
                time.sleep(1)
        os._exit(0)
    os.read(r, 1)
    print("ORPHANED", flush=True)
    await trio.sleep_forever()
'''


def orphans(tag: str) -> list[int]:
    """Live (not zombie: a zombie holds nothing) processes named ``tag``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                name, state = f.read().split(" (", 1)[1].rsplit(") ", 1)
            if name == tag and not state.startswith(("Z", "X")):
                found.append(int(pid))
        except (OSError, IndexError, ValueError):
            pass
    return found


def holders(memfd: tuple[int, int], exclude: set[int]) -> list[int]:
    """Processes (``exclude`` left out) with a descriptor of that memory file (dev, ino)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) in exclude:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == memfd:
                found.append(int(pid))
                break
    return found


def memfd_of(pid: int, domid: int) -> tuple[int, int]:
    path = f"/proc/{pid}/fd/5"
    assert os.readlink(path).startswith(f"/memfd:pvxen-dom{domid} ")
    st = os.stat(path)
    return st.st_dev, st.st_ino


@pytest.mark.parametrize("off", ["", "pidns", "cgroup"], ids=["all", "cgroup-alone",
                                                               "pidns-alone"])
def test_double_forked_child_dies_with_xl_destroy(stack, tmp_path, monkeypatch, off,
                                                  hypervisord, xenstored):
    monkeypatch.setenv(confine.OFF_ENV, off)
    tag = f"orphan-{uuid.uuid4().hex[:8]}"
    cfg = write_guest(tmp_path, "forker", ORPHAN, f"cmdline = '{tag}'\n")
    stack.xl_ok("create", str(cfg))
    domid = stack.domid_of("forker")
    stack.wait(lambda: "ORPHANED" in stack.guest_log("forker"), "the orphan")
    orphan = orphans(tag)
    assert len(orphan) == 1
    daemons = {hypervisord.proc.pid, xenstored.proc.pid}
    cgroup = procgroup.guest_cgroup(orphan[0])
    assert (cgroup is not None) == (off != "cgroup")
    memfd = memfd_of(orphan[0], domid)
    assert holders(memfd, daemons) == sorted([orphan[0], stack.launcher_guests()[domid]])
    stack.xl_ok("destroy", "forker")
    deadline = time.monotonic() + 1.0
    while orphans(tag) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert orphans(tag) == [], "a guest's process outlived xl destroy"
    assert holders(memfd, daemons) == []
    stack.wait(lambda: domid not in stack.domids(), "the domain to go")
    if cgroup is not None:
        stack.wait(lambda: not cgroup.exists(), "the launcher to remove the guest's cgroup")


@pytest.mark.parametrize("off", ["pidns", "cgroup"], ids=["cgroup-alone", "pidns-alone"])
def test_orphan_dies_with_its_guest_when_the_launcher_is_gone(stack, tmp_path, monkeypatch,
                                                             off):
    """No launcher to reap: hypervisord's destroy kills the cgroup (or the kernel the
    PID namespace, as its init dies)."""
    monkeypatch.setenv(confine.OFF_ENV, off)
    tag = f"orphan-{uuid.uuid4().hex[:8]}"
    cfg = write_guest(tmp_path, "forker", ORPHAN, f"cmdline = '{tag}'\n")
    stack.xl_ok("create", str(cfg))
    domid = stack.domid_of("forker")
    stack.wait(lambda: "ORPHANED" in stack.guest_log("forker"), "the orphan")
    launcher = int((stack.xl_dir / "launcher.pid").read_text())
    os.kill(launcher, signal.SIGKILL)
    stack.wait(lambda: not os.path.exists(f"/proc/{launcher}/fd"), "the launcher to die")
    ctrl.domain_destroy(stack.ts.xc, domid)  # what xl destroy asks of hypervisord
    stack.wait(lambda: not orphans(tag), "the orphan to die", 1.0)


def test_orphan_dies_when_the_guest_process_is_killed(stack, tmp_path):
    """hypervisord notices the death only once every descriptor of the connection is
    closed: the launcher's reaping kills the orphan that holds one."""
    tag = f"orphan-{uuid.uuid4().hex[:8]}"
    cfg = write_guest(tmp_path, "victim", ORPHAN, f"cmdline = '{tag}'\n")
    stack.xl_ok("create", str(cfg))
    domid = stack.domid_of("victim")
    stack.wait(lambda: "ORPHANED" in stack.guest_log("victim"), "the orphan")
    os.kill(stack.launcher_guests()[domid], signal.SIGKILL)
    stack.wait(lambda: not orphans(tag), "the orphan to die", 1.0)
    stack.wait(lambda: domid not in stack.domids(), "hypervisord to destroy the domain")


def test_orphan_dies_when_the_guest_exits(stack, tmp_path):
    """Guest exit (not destroy): the launcher kills its cgroup as it reaps it."""
    body = ORPHAN.replace("await trio.sleep_forever()", "await trio.sleep(0.2)")
    tag = f"orphan-{uuid.uuid4().hex[:8]}"
    cfg = write_guest(tmp_path, "quitter", body, f"cmdline = '{tag}'\n")
    stack.xl_ok("create", str(cfg))
    domid = stack.domid_of("quitter")
    stack.wait(lambda: "ORPHANED" in stack.guest_log("quitter"), "the orphan")
    assert len(orphans(tag)) == 1
    stack.wait(lambda: domid not in stack.domids(), "the domain to end", 10)
    stack.wait(lambda: not orphans(tag), "the orphan to die", 1.0)


JAIL = r'''
import ctypes, errno, json, mmap, os, socket, sys, trio
def attempt(fn):
    try:
        r = fn()
        return "ok" if r is None else r
    except MemoryError:
        return "MemoryError"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def tcp():  # bytes: a str address needs the idna codec
    with socket.socket() as s:
        s.settimeout(2)
        s.connect((b"127.0.0.1", int(sys.argv[1])))
def write_tmp():
    with open(sys.argv[2], "w") as f:
        f.write("from the guest")
def read_host():
    return open(sys.argv[3]).read()
def big():  # an anonymous mapping: nothing touched, so only the limit can refuse it
    m = mmap.mmap(-1, 4 << 30)
    m.close()
def efbig():
    fd = os.open("/tmp/big", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"x", int(sys.argv[4]))
    finally:
        os.close(fd)
def nproc():
    kids = []
    try:
        for _ in range(int(sys.argv[5]) + 8):
            pid = os.fork()
            if pid == 0:
                os.close(w)
                os.read(r, 1)  # until the guest closes its end
                os._exit(0)
            kids.append(pid)
        return "forked %d" % len(kids)
    finally:
        os.close(w)
        for pid in kids:
            os.waitpid(pid, 0)
def traceme():
    rr, ww = os.pipe()
    pid = os.fork()
    if pid == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.ptrace(0, 0, 0, 0)
        os.write(ww, str(rc if rc == 0 else -ctypes.get_errno()).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    v = int(os.read(rr, 16))
    return "ok" if v == 0 else errno.errorcode[-v]
def unshare_user():
    rr, ww = os.pipe()
    pid = os.fork()
    if pid == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.unshare(0x10000000)
        os.write(ww, str(rc if rc == 0 else -ctypes.get_errno()).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    v = int(os.read(rr, 16))
    return "ok" if v == 0 else errno.errorcode[-v]
r, w = os.pipe()
async def main(domain):
    rep = {"tcp": attempt(tcp), "write_tmp": attempt(write_tmp),
           "read_back": attempt(lambda: open(sys.argv[2]).read()),
           "read_host": attempt(read_host), "passwd": attempt(lambda: open("/etc/passwd").read()),
           "home": attempt(lambda: os.listdir("/home")), "big": attempt(big),
           "efbig": attempt(efbig), "nproc": attempt(nproc), "traceme": attempt(traceme),
           "unshare": attempt(unshare_user),
           "seccomp": [l.split()[1] for l in open("/proc/self/status")
                       if l.startswith("Seccomp:")]}
    home = f"/local/domain/{domain.domid}"
    xs = await domain.open_xenbus()
    await xs.write(f"{home}/data/jail", "still works")
    rep["xenstore"] = (await xs.read(f"{home}/data/jail")).decode()
    rep["evtchn"] = await domain.evtchn.bind_unbound_port(0) > 0
    rep["after_big"] = len(bytearray(1 << 20))
    print("REPORT " + json.dumps(rep), flush=True)
'''


def fsize_limit(memory_mib: int) -> int:
    """The guest's RLIMIT_FSIZE: its memory file (maxmem = memory here, plus
    the reserved slots) and FSIZE_LIMIT more."""
    return file_size(memory_mib << 8) + confine.FSIZE_LIMIT


def test_guest_reaches_nothing_of_the_host_and_has_limits(stack, tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    tag = uuid.uuid4().hex
    host_tmp = f"/tmp/pvxen-guest-wrote-{tag}"
    secret = f"/tmp/pvxen-secret-{tag}"  # world-readable, in a world-readable place
    with open(secret, "w") as f:
        f.write("host secret")
    os.chmod(secret, 0o644)
    try:
        cfg = write_guest(tmp_path, "jail", JAIL, f"cmdline = '{port} {host_tmp} {secret} "
                          f"{fsize_limit(4)} {confine.NPROC_LIMIT}'\n")
        stack.xl_ok("create", str(cfg))
        line = stack.wait(lambda: [x for x in stack.guest_log("jail").splitlines()
                                   if x.startswith("REPORT ")], "the jail's report", 30)
        rep = json.loads(line[0][len("REPORT "):])
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody came
        assert rep["tcp"] == "ECONNREFUSED"  # its own loopback: nothing listens there
        assert rep["write_tmp"] == "ok" and rep["read_back"] == "from the guest"
        assert not os.path.exists(host_tmp), "a guest wrote in the host's /tmp"
        assert rep["read_host"] == "ENOENT" and rep["passwd"] == "ENOENT"
        assert rep["home"] == "ENOENT"
        assert rep["big"] == "ENOMEM"
        assert rep["efbig"] == "EFBIG"
        assert rep["nproc"] == "EAGAIN"
        assert rep["traceme"] == "EPERM" and rep["unshare"] == "EPERM"
        assert rep["seccomp"] == ["2"]
        assert rep["xenstore"] == "still works" and rep["evtchn"] is True
        assert rep["after_big"] == 1 << 20
    finally:
        listener.close()
        for p in (host_tmp, secret):
            if os.path.exists(p):
                os.unlink(p)


def test_launcher_names_what_was_refused(stack, tmp_path, monkeypatch):
    monkeypatch.setenv(confine.OFF_ENV, "netns,seccomp")
    cfg = write_guest(tmp_path, "lax", "async def main(domain):\n    print('RAN', flush=True)\n")
    stack.xl_ok("create", str(cfg))
    stack.wait(lambda: "RAN" in stack.guest_log("lax"), "the guest")
    lines = [x for x in (stack.xl_dir / "log" / "launcher.log").read_text().splitlines()
             if "guest confinement:" in x]
    assert len(lines) == 1
    assert lines[0].endswith(f"guest confinement: cgroup, pidns, mountns, rlimits; refused: "
                             f"netns (off by {confine.OFF_ENV}); seccomp (off by "
                             f"{confine.OFF_ENV})")


def test_unprivileged_host_refusal_is_one_line():
    """As nobody: no cgroup, no PID namespace; what user namespaces allow is used."""
    stage = f"/tmp/pvxen-stage-{uuid.uuid4().hex}"  # nobody's own, as a launcher's xl dir
    os.mkdir(stage, 0o700)
    os.chown(stage, 65534, 65534)
    code = ("import logging, os, sys\nfrom pathlib import Path\n"
            "from toolstack import confine  # read as root: /root is 0700\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(message)s')\n"
            f"c = confine.prepare(Path({stage!r}))\n"
            "print('PARTS', sorted(c.parts))\n")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=30, cwd="/", env=dict(os.environ, **{confine.OFF_ENV: ""}))
    finally:
        os.rmdir(stage)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    said = [x for x in lines if x.startswith("guest confinement:")]
    assert len(said) == 1, out.stdout
    assert "refused:" in said[0] and "cgroup (" in said[0] and "pidns (" in said[0]
    parts = [x for x in lines if x.startswith("PARTS")][0]
    assert "'cgroup'" not in parts and "'pidns'" not in parts and "'rlimits'" in parts
