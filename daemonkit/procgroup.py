"""A domain's processes, all of them: the cgroup v2 its guest process runs in.

Destroying a Xen domain stops every vCPU it has; destroying a pvxen domain
must end every process its guest made, a double-forked one in a session of
its own included. The launcher
(``toolstack/confine.py``) puts each guest process in a cgroup v2
of its own, ``<cgroup2>/pvxen/guest-<8 hex digits>``; :func:`kill_domain_processes`
writes ``cgroup.kill`` there (Linux 5.14, ``Documentation/admin-guide/
cgroup-v2.rst``), which SIGKILLs every process in it at once, even while new
ones fork. Only a cgroup that has that exact shape is touched: never
hypervisord's own, nor a dom0 process's, whatever pid a domain reported.
Where there is no such cgroup (no cgroup v2, or the launcher could not make
one), the guest's PID namespace is the containment: the kernel kills its
processes when the guest process, its init, dies.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

GUEST_CGROUP_DIR = "pvxen"
_GUEST_CGROUP = re.compile(rf"/{GUEST_CGROUP_DIR}/guest-[0-9a-f]{{8}}")


@functools.lru_cache(maxsize=1)
def cgroup2_mount() -> Path | None:
    """Where cgroup v2 is mounted (``/sys/fs/cgroup``, or a hybrid host's ``unified``).

    Read once (a long mount table costs ~0.5 ms, on every destroy otherwise).
    """
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return Path(left.split()[4])
    except OSError:
        pass
    return None


def guest_cgroup(pid: int) -> Path | None:
    """The guest cgroup ``pid`` runs in, or None (not a guest's, or already gone)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::") and _GUEST_CGROUP.fullmatch(line[3:]):
            mnt = cgroup2_mount()
            return None if mnt is None else mnt / line[4:]
    return None


def kill_cgroup_of(pid: int) -> bool:
    """SIGKILL every process in ``pid``'s guest cgroup; False if there was none."""
    path = guest_cgroup(pid)
    if path is None:
        return False
    try:
        (path / "cgroup.kill").write_text("1")
    except OSError:
        return False  # gone already, or not ours to kill (an unprivileged hypervisord)
    return True


def cgroup_cpu_usage_ns(pid: int) -> int | None:
    """CPU time consumed in ``pid``'s guest cgroup, in ns (``cpu.stat``'s
    ``usage_usec``: every thread and process that ran there, the dead ones
    included); None where ``pid`` has no guest cgroup."""
    path = guest_cgroup(pid)
    if path is None:
        return None
    try:
        with open(path / "cpu.stat") as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) * 1000
    except (OSError, ValueError):
        pass
    return None
