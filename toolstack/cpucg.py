"""A domain's share of the host's CPUs: Xen's weight and cap on a cgroup.

Xen's credit and credit2 schedulers give each domain a **weight** (1 ..
65535, default 256: CPU is shared in proportion to it among domains that
want it) and a **cap** (percent of one physical CPU the whole domain may use,
0 = no cap; ``xl sched-credit``, ``xen/common/sched/credit2.c``). The host
kernel's scheduler has both for a cgroup, and every guest process runs in
a cgroup of its own (``<cgroup2>/pvxen/guest-<hex>``, :mod:`toolstack.confine`):

=============  ===============================  =================================
Xen            cgroup v2 (``cpu`` controller)    cgroup v1 ``cpu`` (hybrid hosts)
=============  ===============================  =================================
weight W       ``cpu.weight`` = W*100/256        ``cpu.shares`` = W*4
               (1..10000, default 100 = 256)     (default 1024 = 256; exact)
cap C (%)      ``cpu.max`` = "C*1000 100000"     ``cpu.cfs_quota_us`` = C*1000,
               (0: "max")                        ``cpu.cfs_period_us`` = 100000
=============  ===============================  =================================

The v2 weight is rounded (10000 steps for 65535): ``xl`` remembers the
weight it set (``/libxl/<domid>/sched-weight``) and shows it while the
cgroup still has the value it mapped to. The cap, like Xen's, covers the
whole domain: every vCPU thread and every process a program guest forks.

Where the guest cgroup's parent offers ``cpu`` but does not pass it on,
:func:`enable_cpu_controller` turns it on in ``pvxen``'s
``cgroup.subtree_control`` (``pvxen`` is ours: the launcher made it). A
hybrid host whose ``cpu`` controller is bound to cgroup v1 (as this
project's CI machine) gets a twin of the guest cgroup in the v1 ``cpu``
hierarchy, ``<v1 cpu>/pvxen/guest-<hex>``, made when a weight or cap is
first set, with the domain's processes moved in. With neither, or for a
process that has no guest cgroup (dom0's daemons; a guest launched
without cgroup confinement), setting fails with :class:`NoCpuCgroup`,
reading shows Xen's defaults (nothing limits the domain).
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

from daemonkit.procgroup import GUEST_CGROUP_DIR, cgroup2_mount, guest_cgroup

DEFAULT_WEIGHT = 256  # Xen's CSCHED_DEFAULT_WEIGHT / CSCHED2_DEFAULT_WEIGHT
MAX_WEIGHT = 65535
V2_DEFAULT_WEIGHT, V2_MAX_WEIGHT = 100, 10000
SHARES_PER_WEIGHT = 4  # v1: cpu.shares default 1024 = Xen's 256
PERIOD_US = 100_000  # the kernel's default CFS period
STALE_AFTER = 60.0


class NoCpuCgroup(Exception):
    """The domain has no cgroup through which its CPU share can be set."""


# -- the mappings (pure) ------------------------------------------------------------------

def weight_to_v2(weight: int) -> int:
    return max(1, min(V2_MAX_WEIGHT, round(weight * V2_DEFAULT_WEIGHT / DEFAULT_WEIGHT)))


def weight_from_v2(value: int) -> int:
    return max(1, min(MAX_WEIGHT, round(value * DEFAULT_WEIGHT / V2_DEFAULT_WEIGHT)))


def weight_to_shares(weight: int) -> int:
    return weight * SHARES_PER_WEIGHT


def weight_from_shares(shares: int) -> int:
    return max(1, min(MAX_WEIGHT, round(shares / SHARES_PER_WEIGHT)))


def cap_to_cpu_max(cap: int, period_us: int = PERIOD_US) -> str:
    return "max" if cap == 0 else f"{cap * period_us // 100} {period_us}"


def cap_from_quota(quota_us: int | None, period_us: int) -> int:
    """Percent of one CPU (rounded up: a cap of 1% is never shown as 0)."""
    if quota_us is None or quota_us < 0 or period_us <= 0:
        return 0
    return max(1, -(-quota_us * 100 // period_us))


def parse_cpu_max(text: str) -> tuple[int | None, int]:
    """``cpu.max``: ``"$MAX $PERIOD"``, ``$MAX`` may be ``max``."""
    quota, _, period = text.strip().partition(" ")
    return (None if quota == "max" else int(quota)), int(period or PERIOD_US)


# -- the cgroups ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CpuCgroup:
    kind: str  # "v2" or "v1"
    path: Path

    def read(self) -> tuple[int, int]:
        """(Xen weight, Xen cap)."""
        if self.kind == "v2":
            weight = weight_from_v2(int(_read(self.path / "cpu.weight")))
            quota, period = parse_cpu_max(_read(self.path / "cpu.max"))
            return weight, cap_from_quota(quota, period)
        weight = weight_from_shares(int(_read(self.path / "cpu.shares")))
        quota = int(_read(self.path / "cpu.cfs_quota_us"))
        period = int(_read(self.path / "cpu.cfs_period_us"))
        return weight, cap_from_quota(None if quota < 0 else quota, period)

    def write(self, weight: int | None = None, cap: int | None = None) -> None:
        if self.kind == "v2":
            if weight is not None:
                _write(self.path / "cpu.weight", str(weight_to_v2(weight)))
            if cap is not None:
                _write(self.path / "cpu.max", cap_to_cpu_max(cap))
            return
        if weight is not None:
            _write(self.path / "cpu.shares", str(weight_to_shares(weight)))
        if cap is not None:
            _write(self.path / "cpu.cfs_period_us", str(PERIOD_US))
            _write(self.path / "cpu.cfs_quota_us", str(cap * PERIOD_US // 100 if cap else -1))

    def raw_weight(self) -> int:
        return int(_read(self.path / ("cpu.weight" if self.kind == "v2" else "cpu.shares")))


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def controllers(path: Path, name: str = "cgroup.controllers") -> set[str]:
    try:
        return set(_read(path / name).split())
    except OSError:
        return set()


def enable_cpu_controller(base: Path) -> bool:
    """Pass ``cpu`` on to ``base``'s children where ``base`` has it (the
    launcher's ``pvxen``, which nobody else runs in); True if they have it."""
    if "cpu" in controllers(base, "cgroup.subtree_control"):
        return True
    if "cpu" not in controllers(base):
        return False
    try:
        _write(base / "cgroup.subtree_control", "+cpu")
    except OSError:
        return False
    return True


def v1_cpu_mount() -> Path | None:
    """Where a cgroup v1 hierarchy with the ``cpu`` controller is mounted."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fstype, _, opts = right.split(" ", 2) if right.count(" ") >= 2 else ("", "", "")
                if fstype == "cgroup" and "cpu" in opts.strip().split(","):
                    return Path(left.split()[4])
    except OSError:
        pass
    return None


def domain_cgroup(pid: int, create: bool) -> CpuCgroup | None:
    """The cgroup that holds the domain's CPU share; None (reading only)
    when it has none yet; :class:`NoCpuCgroup` when none can be made."""
    v2 = guest_cgroup(pid) if pid > 0 else None
    if v2 is None:
        if not create:
            return None
        raise NoCpuCgroup("the domain's process is in no guest cgroup (dom0's daemons, or a "
                          "guest launched without cgroup confinement)")
    if (v2 / "cpu.weight").exists():
        return CpuCgroup("v2", v2)
    if create and enable_cpu_controller(v2.parent) and (v2 / "cpu.weight").exists():
        return CpuCgroup("v2", v2)
    v1 = v1_cpu_mount()
    if v1 is None:
        if not create:
            return None
        offered = " ".join(sorted(controllers(v2.parent))) or "none"
        raise NoCpuCgroup(f"no cgroup with the cpu controller can be made: cgroup2 at "
                          f"{cgroup2_mount()} offers {GUEST_CGROUP_DIR}/ only: {offered}; "
                          "no cgroup v1 cpu hierarchy")
    twin = v1 / GUEST_CGROUP_DIR / v2.name
    if _holds(twin, pid):
        return CpuCgroup("v1", twin)
    if not create:
        return None
    try:
        _sweep(v1 / GUEST_CGROUP_DIR)
        twin.mkdir(mode=0o755, parents=True, exist_ok=True)
        for member in _read(v2 / "cgroup.procs").split():
            try:
                _write(twin / "cgroup.procs", member)
            except ProcessLookupError:
                pass  # exited meanwhile
    except OSError as e:
        raise NoCpuCgroup(f"cannot make {twin} (cgroup v1 cpu): {e.strerror}") from None
    return CpuCgroup("v1", twin)


def _holds(cgroup: Path, pid: int) -> bool:
    try:
        return str(pid) in _read(cgroup / "cgroup.procs").split()
    except OSError:
        return False


def _sweep(base: Path) -> None:
    """Remove v1 twins of guests that are gone: empty, and their guest
    cgroup removed (or old enough: a twin is only made for a live guest)."""
    if not base.is_dir():
        return
    mnt = cgroup2_mount()
    for stale in base.iterdir():
        try:
            if not stale.is_dir() or _read(stale / "cgroup.procs"):
                continue
            gone = mnt is None or not (mnt / GUEST_CGROUP_DIR / stale.name).exists()
            if gone or time.time() - stale.stat().st_mtime > STALE_AFTER:
                stale.rmdir()
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.ENOENT, errno.ENOTEMPTY):
                raise


def sweep_twins() -> None:
    """Best effort (the launcher, at start): v1 twins whose guests are gone."""
    v1 = v1_cpu_mount()
    if v1 is not None:
        try:
            _sweep(v1 / GUEST_CGROUP_DIR)
        except OSError:
            pass


def remove_twin(cgroup_name: str) -> None:
    """Best effort, when a guest's cgroup goes: its v1 twin goes too."""
    v1 = v1_cpu_mount()
    if v1 is not None:
        try:
            os.rmdir(v1 / GUEST_CGROUP_DIR / cgroup_name)
        except OSError:
            pass
