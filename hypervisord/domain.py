"""One domain's record in hypervisord (Xen's ``struct domain``).

Holds identity, limits, run state and the handles of the per-domain parts
other modules own: its memory (``machmem.DomainMemory``), its event-channel
port table (``evtchn``) and its grant table (``gnttab``). The run state
follows what ``XEN_DOMCTL_getdomaininfo`` reports and ``xl list`` shows:
running, blocked, paused, shutdown (with a reason), dying.
"""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass, field
from typing import Any

from daemonkit import procgroup
from hypervisord.machmem import DomainMemory
from hypervisord.public.memfile import SHARED_INFO_SLOT
from hypervisord.public.domctl import (
    XEN_DOMINF_blocked,
    XEN_DOMINF_dying,
    XEN_DOMINF_paused,
    XEN_DOMINF_running,
    XEN_DOMINF_shutdown,
    XEN_DOMINF_shutdownshift,
)
from hypervisord.public.xen import PAGE_SIZE


@dataclass(eq=False)
class Domain:
    domid: int
    handle: bytes  # xen_domain_handle_t: the UUID
    mem: DomainMemory
    max_pages: int
    privileged: bool = False
    max_vcpus: int = 1
    vcpu_affinity: dict[int, list[int]] = field(default_factory=dict)
    pause_count: int = 1  # Xen creates domains paused
    shutdown_code: int | None = None
    dying: bool = False
    target: int | None = None
    pid: int | None = None  # the domain's process, learnt from kernel credentials
    created: float = field(default_factory=time.monotonic)
    cpu_time_ns: int = 0
    shared_info: mmap.mmap | None = None
    shutdown_code_latched: int | None = None  # SCHEDOP_shutdown_code
    evtchn: Any = None  # evtchn.DomainEvtchn (ports + shared_info bits)
    gnttab: Any = None  # the domain's grant-table state (hypervisord.gnttab)
    conns: list = field(default_factory=list)  # attached connections

    def map_shared_info(self) -> None:
        self.shared_info = mmap.mmap(self.mem.fd, PAGE_SIZE, mmap.MAP_SHARED,
                                     mmap.PROT_READ | mmap.PROT_WRITE,
                                     offset=SHARED_INFO_SLOT * PAGE_SIZE)

    @property
    def paused(self) -> bool:
        return self.pause_count > 0

    def blocked(self) -> bool:
        """Whether the domain's process is asleep (``S`` in /proc), like a blocked vCPU;
        a process with ``vcpuN`` threads (an SMP PV guest) is blocked when they all are."""
        stat = _proc_stat(self.pid)
        if stat is None:
            return True
        return stat[0] != b"R" and not _vcpu_thread_running(self.pid)

    def process(self) -> int | None:
        """The process whose threads are the domain's vCPUs: the guest's,
        and for dom0, whose work is spread over the dom0 daemons, the one
        dom0 daemon every host has: hypervisord itself (our main thread is
        Domain-0's vCPU 0)."""
        return os.getpid() if self.domid == 0 and self.privileged else self.pid

    def cpu_time(self) -> int:
        """Nanoseconds of CPU the domain has consumed (``getdomaininfo``'s
        ``cpu_time``): all its threads and the processes it forked, from its
        guest cgroup's ``cpu.stat`` ``usage_usec`` where it has one, else
        its process's ``utime + stime``. Kept when the process is gone."""
        pid = self.process()
        if pid is not None:
            now = procgroup.cgroup_cpu_usage_ns(pid)
            if now is None:
                stat = _proc_stat(pid)
                now = None if stat is None else stat[1]
            if now is not None:
                self.cpu_time_ns = max(self.cpu_time_ns, now)
        return self.cpu_time_ns

    def info_flags(self) -> int:
        flags = 0
        if self.dying:
            flags |= XEN_DOMINF_dying
        if self.shutdown_code is not None:
            flags |= XEN_DOMINF_shutdown | (self.shutdown_code << XEN_DOMINF_shutdownshift)
        if self.paused:
            flags |= XEN_DOMINF_paused
        elif self.shutdown_code is not None:
            pass  # domain_shutdown paused its vCPUs: neither running nor blocked (---s--)
        elif self.blocked():
            flags |= XEN_DOMINF_blocked
        else:
            flags |= XEN_DOMINF_running
        return flags

    def close(self) -> None:
        if self.shared_info is not None:
            self.shared_info.close()
            self.shared_info = None


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _vcpu_thread_running(pid: int) -> bool:
    """A thread ``vcpuN`` of ``pid`` is running (``R``): toolstack/vcpus.py's naming."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.find(b"(") + 1:stat.rfind(b")")]
        if comm.startswith(b"vcpu") and comm[4:].isdigit() \
                and stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3] == b"R":
            return True
    return False


def _proc_stat(pid: int | None) -> tuple[bytes, int] | None:
    """``/proc/<pid>/stat``'s state letter and ``utime + stime`` in ns (proc(5))."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return fields[0], (int(fields[11]) + int(fields[12])) * 1_000_000_000 // _CLK_TCK
