"""Domain creation and destruction for ``python -m bench hypervisor``.

Two parts:

**The fork template** (``python -m bench.hv_domains template SOCKET``): a
process that has imported trio, msgpack and ``libxen`` once
(then ``gc.freeze()``, so children share those pages copy-on-write) and
forks one child per request. A request (msgpack map over SOCK_SEQPACKET)
carries a domain's three descriptors (``SCM_RIGHTS``: hypercall, evtchn,
memory); the child is that domain's **guest**: ``XenCall.from_fd``, its
first hypercall (``XENVER_version``, which also tells hypervisord its pid),
a datagram "ready" to the driver, then it idles in trio until hypervisord
kills it (``destroydomain``). A ``bare`` child is the yardstick: the same
fork and ``trio.run``, no domain, ready at once, then it exits. Children
die with the template (``PR_SET_PDEATHSIG``) and the template kills them
on SIGTERM. A guest child is confined as the launcher confines program
guests (``toolstack/confine.py``: its own cgroup, PID, network and mount
namespaces, rlimits, seccomp), so creation is timed with that cost;
``PVXEN_GUEST_CONFINE_OFF=all`` times it without (the bare child never is). (The toolstack's own launcher, ``toolstack/monitor.py``, runs
guests through ``frontends.runtime``, which needs xenstored and a
start_info; this benchmark measures hypervisord alone.)

**The driver** (worker commands ``dom_*``), the toolstack's part, as dom0
with blocking hypercalls. Creating a domain, timed from the first call to
the guest's ready datagram::

    XEN_DOMCTL_createdomain, XEN_DOMCTL_max_mem (1 MiB),
    XENMEM_populate_physmap (4 pages), pvxen connect_domain,
    launch request to the template (fork), XEN_DOMCTL_unpausedomain,
    the guest's first hypercall -> ready

Destroying: ``XEN_DOMCTL_destroydomain``, then ``getdomaininfo`` until the
domain is gone. The background population that makes N live domains is
built the same way (with a guest process each) as long as the host keeps
``reserve`` of MemAvailable; beyond ``max_procs`` or that reserve,
background domains are created without a process, and the driver says how
many.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
import statistics
import struct
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import msgpack

from bench.common import _die_with_parent
from bench.hv_proc import mem_available_kb, schedstat, smaps_rollup_kb
from libxen import rpc
from libxen import ctrl
from libxen.core import SyncXenCall, XenError

GUEST_PAGES = 4  # populated per domain
MAX_MEM_KB = 1024
READY = struct.Struct("<ii")  # (tag: domid, or -k for a bare child; pid)
READY_TIMEOUT = 10.0
FD_NAMES = ("hypercall", "evtchn", "memory")
#: the parts of a creation, as the driver times them
STEPS = ("domctl+populate", "connect_domain", "fork", "unpause", "guest to 1st hypercall")


# ---------------------------------------------------------------------------
# The template and its children.
# ---------------------------------------------------------------------------

async def _guest(domid: int, fds: dict[str, int], ready: socket.socket) -> None:
    import trio

    from libxen.core import XenCall

    async with XenCall.from_fd(fds["hypercall"]) as xc:
        await ctrl.xen_version(xc)  # hypervisord learns our pid here
        ready.send(READY.pack(domid, os.getpid()))
        await trio.sleep_forever()  # until destroydomain's SIGKILL


async def _bare(tag: int, ready: socket.socket) -> None:
    ready.send(READY.pack(tag, os.getpid()))


def _spare_guest(conf: Any, req: dict, fds: list[int]) -> None:
    """A confined spare was given its domain (``toolstack/spare.py``)."""
    code = 1
    try:
        named = dict(zip(req["fds"], fds))
        conf.enter_late(None, MAX_MEM_KB * 1024)
        _no_new_privs()
        conf.lock()
        import trio
        trio.run(_guest, int(req["tag"]), named, socket.socket(fileno=fds[-1]))
        code = 0
    except BaseException:  # noqa: BLE001 - the child must reach os._exit
        traceback.print_exc()
    finally:
        os._exit(code)


def _child(template_pid: int, kind: str, tag: int, fds: dict[str, int],
           ready_fd: int, close: list[int]) -> None:
    """The forked child: never returns into the template."""
    code = 1
    try:
        _die_with_parent()
        if os.getppid() not in (template_pid, 0):  # 0: our parent is outside our PID ns
            os._exit(0)  # the template died between fork and prctl
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for fd in close:
            os.close(fd)
        import trio
        ready = socket.socket(fileno=ready_fd)
        if kind == "guest":
            trio.run(_guest, tag, fds, ready)
        else:
            trio.run(_bare, tag, ready)
        code = 0
    except BaseException:  # noqa: BLE001 - the child must reach os._exit
        traceback.print_exc()
    finally:
        os._exit(code)


def _no_new_privs() -> None:
    import ctypes

    if ctypes.CDLL(None).prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError("PR_SET_NO_NEW_PRIVS failed")


@dataclass
class Template:
    listener: socket.socket
    conns: list[socket.socket] = field(default_factory=list)
    children: set[int] = field(default_factory=set)
    ready_fd: int | None = None
    spares: Any = None  # toolstack.spare.Spares: guest children, confined ahead
    cgroups: dict[int, Any] = field(default_factory=dict)  # pid -> its cgroup

    def reap(self) -> None:
        while self.children:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            if self.spares is not None:
                self.spares.lost(pid)
            cgroup = self.cgroups.pop(pid, None)
            if cgroup is not None:
                from toolstack.confine import kill_cgroup

                kill_cgroup(cgroup)

    def launch(self, req: dict, fds: list[int]) -> dict:
        kind, tag = req["kind"], int(req["tag"])
        named = dict(zip(req.get("fds", []), fds))
        if self.ready_fd is None or (kind == "guest" and set(named) != set(FD_NAMES)):
            raise ValueError("launch needs the ready socket first, and a guest its 3 fds")
        close = [self.listener.fileno()] + [c.fileno() for c in self.conns]
        me = os.getpid()
        if kind == "guest" and self.spares is not None:  # as the launcher: a spare
            from toolstack.spare import assign

            s = self.spares.take()
            assign(s, {"tag": tag, "fds": list(FD_NAMES)},
                   [named[n] for n in FD_NAMES] + [self.ready_fd])
            self.children.add(s.pid)
            if s.cgroup is not None:
                self.cgroups[s.pid] = s.cgroup
            return {"pid": s.pid}
        pid = os.fork()
        if pid == 0:
            _child(me, kind, tag, named, self.ready_fd, close)
        self.children.add(pid)
        return {"pid": pid}

    def handle(self, conn: socket.socket) -> bool:
        data, anc, _, _ = conn.recvmsg(rpc.MAX_PACKET, rpc.ancillary_space())
        fds = rpc.fds_from_ancillary(anc)
        if not data:
            return False
        req = msgpack.unpackb(data, raw=False)
        try:
            if req["op"] == "ready":
                self.ready_fd = os.dup(fds[0])
                reply: dict = {}
            elif req["op"] == "launch":
                reply = self.launch(req, fds)
            else:
                reply = {"children": len(self.children)}
        except (KeyError, ValueError, OSError) as e:
            reply = {"error": f"{type(e).__name__}: {e}"}
        finally:
            for fd in fds:
                os.close(fd)
        try:
            conn.send(msgpack.packb(reply, use_bin_type=True))
        except OSError:
            return False  # the driver went away
        return True

    def kill_children(self) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.005)
        if self.cgroups:  # guests reaped without us (ChildProcessError): their cgroups
            from toolstack.confine import kill_cgroup

            for cgroup in self.cgroups.values():
                kill_cgroup(cgroup, timeout=0.2)
            self.cgroups.clear()


def template_main(path: str) -> int:
    import trio  # noqa: F401 - preloaded for the children

    import libxen.evtchn  # noqa: F401
    from daemonkit.daemon import sd_notify

    gc.collect()
    gc.freeze()  # template objects stay put: the GC never dirties their pages
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(0))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(16)
    from pathlib import Path

    from toolstack import confine

    conf = confine.prepare(Path(path).parent / "guest-root")
    print(f"bench template: {conf.describe()}", file=sys.stderr, flush=True)
    from toolstack.spare import Spares

    tpl = Template(listener, spares=Spares(conf, lambda req, fds: _spare_guest(conf, req, fds)))
    tpl.spares.refill()
    sd_notify("READY=1")
    try:
        while True:
            tpl.reap()
            readable, _, _ = select.select([listener, *tpl.conns], [], [], 0.2)
            for s in readable:
                if s is listener:
                    tpl.conns.append(listener.accept()[0])
                elif not tpl.handle(s):
                    tpl.conns.remove(s)
                    s.close()
            tpl.spares.refill()  # after the reply, as the launcher does
    finally:
        tpl.spares.close()
        tpl.kill_children()
    return 0


# ---------------------------------------------------------------------------
# The driver (in a worker process).
# ---------------------------------------------------------------------------

class Driver:
    def __init__(self, privcmd: str, template: str) -> None:
        self.xc = SyncXenCall(privcmd)
        self.tpl = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.tpl.connect(template)
        self.ready, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._request({"op": "ready"}, [theirs.fileno()])
        finally:
            theirs.close()
        self.background: list[tuple[int, int | None]] = []  # (domid, guest pid)
        self.bare_seq = 0

    def _request(self, req: dict, fds: list[int]) -> dict:
        self.tpl.sendmsg([msgpack.packb(req, use_bin_type=True)], rpc.fds_ancillary(fds))
        reply = msgpack.unpackb(self.tpl.recv(65536), raw=False)
        if "error" in reply:
            raise RuntimeError(f"template: {reply['error']}")
        return reply

    def _wait_ready(self, tag: int) -> int:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.ready], [], [], left)[0]:
                raise TimeoutError(f"no ready from {tag} in {READY_TIMEOUT}s")
            got, pid = READY.unpack(self.ready.recv(64))
            if got == tag:
                return pid

    def create(self, process: bool = True) -> tuple[int, int | None, list[float]]:
        """One domain, as the toolstack builds it: (domid, pid, step end times).

        The times (seconds from the start) end the steps of :data:`STEPS`;
        the last one is the whole creation.
        """
        xc, t0 = self.xc, time.perf_counter()
        domid = ctrl.domain_create(xc)[1]["domain"]
        ctrl.domain_max_mem(xc, domid, MAX_MEM_KB)
        ctrl.populate_physmap(xc, list(range(GUEST_PAGES)), domid=domid)
        marks, pid = [time.perf_counter()], None
        if process:
            fds = ctrl.connect_domain(xc, domid)[1]["fds"]
            marks.append(time.perf_counter())
            try:  # the pid as we see it (the guest may be pid 1 of its own namespace)
                host_pid = self._request({"op": "launch", "kind": "guest", "tag": domid,
                                          "fds": list(fds)}, list(fds.values()))["pid"]
            finally:
                for fd in fds.values():
                    os.close(fd)
            marks.append(time.perf_counter())
        ctrl.domain_unpause(xc, domid)
        marks.append(time.perf_counter())
        if process:
            self._wait_ready(domid)
            pid = host_pid
            marks.append(time.perf_counter())
        return domid, pid, [t - t0 for t in marks]

    def destroy(self, domid: int) -> float:
        t0 = time.perf_counter()
        ctrl.domain_destroy(self.xc, domid)
        while True:
            try:
                if ctrl.domain_getinfo(self.xc, domid)[1]["domain"] != domid:
                    break  # Xen's getdomaininfo answers with the next domain
            except XenError:
                break  # ESRCH: no domain at or above it
        return time.perf_counter() - t0

    def bare(self) -> float:
        self.bare_seq += 1
        tag = -self.bare_seq
        t0 = time.perf_counter()
        self._request({"op": "launch", "kind": "bare", "tag": tag}, [])
        self._wait_ready(tag)
        return time.perf_counter() - t0


_driver: Driver | None = None


def grow(cmd: dict[str, Any]) -> dict[str, Any]:
    """Worker command ``dom_grow``: background domains up to ``n``."""
    d = _driver
    assert d is not None
    reserve_kb, t0, times = cmd["reserve_mb"] * 1024, time.perf_counter(), []
    while len(d.background) < cmd["n"] and time.perf_counter() - t0 < cmd["time_limit"]:
        procs = sum(1 for _, pid in d.background if pid is not None)
        process = procs < cmd["max_procs"] and mem_available_kb() > reserve_kb
        domid, pid, marks = d.create(process)
        d.background.append((domid, pid))
        if process:
            times.append(marks[-1])
    return {"live": len(d.background),
            "with_process": sum(1 for _, pid in d.background if pid is not None),
            "elapsed": time.perf_counter() - t0,
            "create_ms_p50": statistics.median(times) * 1e3 if times else None}


def measure(cmd: dict[str, Any]) -> dict[str, Any]:
    """Worker command ``dom_measure``: create+destroy and bare forks, alternating."""
    d = _driver
    assert d is not None
    create, destroy, bare = [], [], []
    steps: list[list[float]] = []
    cpu_pids = {k: cmd[f"{k}_pid"] for k in ("hv", "template") if cmd.get(f"{k}_pid")}
    cpu0 = {k: schedstat(pid)[0] for k, pid in cpu_pids.items()}
    t0 = time.perf_counter()
    for r in range(cmd["repeats"]):
        if time.perf_counter() - t0 > cmd["time_limit"]:
            break
        if r % 2:
            bare.append(d.bare())
        domid, _, marks = d.create(True)
        create.append(marks[-1])
        steps.append([b - a for a, b in zip([0.0] + marks, marks)])
        destroy.append(d.destroy(domid))
        if not r % 2:
            bare.append(d.bare())
    ms = lambda xs: [x * 1e3 for x in xs]  # noqa: E731
    # hypervisord's CPU per create+destroy; the template's per guest fork + bare fork
    cpu = {f"{k}_cpu_ms": (schedstat(pid)[0] - cpu0[k]) / max(1, len(create)) / 1e6
           for k, pid in cpu_pids.items()}
    hv_steps = [s[0] + s[1] + s[3] for s in steps]  # the hypercalls of a creation
    return {"create_ms": ms(create), "destroy_ms": ms(destroy), "bare_ms": ms(bare),
            "hv_steps_ms": ms(hv_steps), **cpu,
            "steps_ms_p50": {name: statistics.median(s[i] for s in steps) * 1e3
                             for i, name in enumerate(STEPS)} if steps else {}}


def guest_memory(pids: list[int]) -> dict[str, float]:
    """Sum and median of Pss, and median Private_Dirty, over ``pids`` (KiB)."""
    rows = [r for r in (smaps_rollup_kb(pid) for pid in pids) if r]
    pss = [r["Pss"] for r in rows]
    return {"guests": len(rows), "pss_total_mb": sum(pss) / 1024,
            "pss_kb": statistics.median(pss) if pss else float("nan"),
            "private_dirty_kb": statistics.median(r["Private_Dirty"] for r in rows)
            if rows else float("nan")}


def command(cmd: dict[str, Any]) -> dict[str, Any]:
    global _driver
    op = cmd["op"]
    if op == "dom_open":
        _driver = Driver(cmd["privcmd"], cmd["template"])
        return {}
    if op == "dom_grow":
        return grow(cmd)
    if op == "dom_measure":
        return measure(cmd)
    assert _driver is not None
    if op == "dom_memory":
        return guest_memory([pid for _, pid in _driver.background if pid is not None])
    if op == "dom_close":
        t0, n = time.perf_counter(), len(_driver.background)
        for domid, _ in _driver.background:
            _driver.destroy(domid)
        _driver.background.clear()
        return {"destroyed": n, "elapsed": time.perf_counter() - t0}
    raise ValueError(f"unknown op {op}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["template"] and len(sys.argv) == 3:
        sys.exit(template_main(sys.argv[2]))
    sys.exit("usage: python -m bench.hv_domains template SOCKET")
