"""Guest time for a PV vCPU: system time, ``vcpu_time_info``, wallclock, timers.

What Xen gives a PV guest (``xen/include/public/xen.h``, ``struct
vcpu_time_info`` and ``shared_info.wc_*``; ``xen/arch/x86/time.c``):

* **system time**: nanoseconds, monotonic. Here: ns since this domain's
  clock was made (the guest process's start), from ``time.monotonic_ns``.
* **vcpu_time_info**, so the guest reads time without a hypercall::

      ns = system_time + ((((rdtsc - tsc_timestamp) << tsc_shift)
                           * tsc_to_system_mul) >> 32)     (shift < 0: right)

  Under Unicorn ``rdtsc`` returns the **host** TSC (measured: 2.44 ticks/ns
  on the dev VM, the same counter in every engine), so the scale is the
  host TSC's rate, calibrated against ``monotonic_ns`` (:class:`TscScale`)
  and re-calibrated over a growing baseline at each update.
* **version protocol** (Xen's ``update_vcpu_system_time``): ``version`` is
  made odd before the fields change and even after (write barriers
  between: x86 stores are not reordered with other stores, and a Python
  ``memoryview`` write is a plain store), so a reader that sees an odd or
  changed version retries.
* **monotonic across updates**: a new ``system_time`` is never below what
  the previous parameters gave at that TSC (a calibration error would
  otherwise step the guest's clock back); Xen keeps the same promise with
  ``XEN_PVCLOCK_TSC_STABLE_BIT``, which we set.
* **wallclock** (``wc_sec``/``wc_nsec``, ``wc_version`` the same protocol):
  the wall time at system time 0.

Timers (:class:`VcpuTimers`, ``xen/common/sched/core.c``): one singleshot
deadline (``set_timer_op``, ``VCPUOP_set_singleshot_timer``) and one
periodic timer (``VCPUOP_set_periodic_timer``); on expiry Xen sends
``VIRQ_TIMER`` to the vCPU (``send_timer_event``). Pure: the caller passes
``now``. :class:`RunstateClock`: ``struct vcpu_runstate_info``
(``xen/include/public/vcpu.h``), what VCPUOP_get_runstate_info returns.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
import time
from dataclasses import dataclass

from hypervisord.public.vcpu import VCPU_RUNSTATE_INFO, Runstate
from hypervisord.public.xen import (SHARED_INFO_WALLCLOCK, SHARED_INFO_WC_VERSION_OFF,
                                    VCPU_TIME_INFO, XEN_PVCLOCK_TSC_STABLE_BIT)

#: how often the time info is refreshed at most (Xen re-calibrates every second)
UPDATE_SECONDS = 1.0
CALIBRATION_SECONDS = 0.005
STIME_DELTA_MAX = (1 << 62) - 1  # Xen: (s_time_t)((uint64_t)~0 >> 2)
MILLISECS = 1_000_000

# rdtsc; shl $32,%rdx; or %rdx,%rax; ret   (host code, called through ctypes)
_RDTSC_CODE = bytes.fromhex("0f31" "48c1e220" "4809d0" "c3")


class _HostTsc:
    """The host's TSC from Python: the three instructions above in an
    executable page (a Unicorn engine per read would cost ~10 us)."""

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE
                               | mmap.PROT_EXEC)
        self._page.write(_RDTSC_CODE)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(self._page))
        self.read = ctypes.CFUNCTYPE(ctypes.c_uint64)(addr)


_host_tsc: _HostTsc | None = None


def rdtsc() -> int:
    """What the guest's ``rdtsc`` returns right now (the host TSC)."""
    global _host_tsc
    if _host_tsc is None:
        _host_tsc = _HostTsc()
    return _host_tsc.read()


def time_scale(ns_per_tick: float) -> tuple[int, int]:
    """(tsc_to_system_mul, tsc_shift) for ``ns_per_tick``, as Xen's
    ``set_time_scale``: the multiplier in [2^31, 2^32)."""
    shift = 0
    scale = ns_per_tick
    while scale >= 1.0:
        scale /= 2
        shift += 1
    while scale < 0.5:
        scale *= 2
        shift -= 1
    return min(int(scale * (1 << 32)), 0xFFFF_FFFF), shift


def scale_delta(delta: int, mul: int, shift: int) -> int:
    """Xen's ``scale_delta``: the guest's formula, exactly."""
    delta = delta << shift if shift >= 0 else delta >> -shift
    return (delta * mul) >> 32


@dataclass(slots=True)
class TimeParams:
    tsc_timestamp: int
    system_time: int
    mul: int
    shift: int

    def at(self, tsc: int) -> int:
        return self.system_time + scale_delta(tsc - self.tsc_timestamp, self.mul, self.shift)


class DomainClock:
    """System time of one domain and the TSC scale its vCPUs publish."""

    def __init__(self, calibrate: float = CALIBRATION_SECONDS) -> None:
        self.t0_ns = time.monotonic_ns()
        self.tsc0 = rdtsc()
        time.sleep(calibrate)  # a first rate; refined over the growing baseline later
        self.params: TimeParams | None = None
        self.refresh()

    def now(self) -> int:
        """System time (ns since the domain's clock started)."""
        return time.monotonic_ns() - self.t0_ns

    def refresh(self) -> TimeParams:
        """New parameters from (tsc, ns) now and the baseline since start."""
        ns, tsc = time.monotonic_ns() - self.t0_ns, rdtsc()
        mul, shift = time_scale(ns / max(tsc - self.tsc0, 1))
        old = self.params
        if old is not None:
            ns = max(ns, old.at(tsc))  # never behind what the guest computed so far
        self.params = TimeParams(tsc, ns, mul, shift)
        return self.params

    def wallclock(self) -> tuple[int, int]:
        """(sec, nsec) of the wall time at system time 0."""
        boot = time.time_ns() - self.now()
        return divmod(boot, 1_000_000_000)


def write_time_info(view: memoryview, off: int, p: TimeParams) -> None:
    """``vcpu_time_info`` at ``view[off:]`` under the version protocol."""
    (version,) = struct.unpack_from("<I", view, off)
    if version & 1:  # never leave it odd: a half-done earlier update
        version += 1
    struct.pack_into("<I", view, off, (version + 1) & 0xFFFF_FFFF)  # odd: updating
    # smp_wmb(): x86 keeps stores in order
    VCPU_TIME_INFO.pack_into(view, off, (version + 1) & 0xFFFF_FFFF, p.tsc_timestamp,
                             p.system_time, p.mul, p.shift, XEN_PVCLOCK_TSC_STABLE_BIT)
    # smp_wmb()
    struct.pack_into("<I", view, off, (version + 2) & 0xFFFF_FFFF)  # even: consistent


def write_wallclock(shared_info: memoryview, sec: int, nsec: int) -> None:
    """``shared_info.wc_*`` under the same protocol (``update_domain_wallclock_time``)."""
    off = SHARED_INFO_WC_VERSION_OFF
    (version,) = struct.unpack_from("<I", shared_info, off)
    version |= 1
    struct.pack_into("<I", shared_info, off, version)
    SHARED_INFO_WALLCLOCK.pack_into(shared_info, off, version, sec & 0xFFFF_FFFF, nsec,
                                    (sec >> 32) & 0xFFFF_FFFF)
    struct.pack_into("<I", shared_info, off, (version + 1) & 0xFFFF_FFFF)


@dataclass(slots=True)
class VcpuTimers:
    """A vCPU's singleshot and periodic timers (absolute system time, ns)."""

    singleshot: int | None = None
    period: int = 0
    periodic_last: int = 0  # Xen's periodic_last_event: kept across set/stop

    def set_timer_op(self, timeout: int, now: int) -> None:
        """``do_set_timer_op``: 0 stops; a negative or absurdly far timeout
        (Linux's wrapped jiffies) fires in 100 ms, as Xen does."""
        if timeout == 0:
            self.singleshot = None
            return
        if timeout >= 1 << 63:  # s_time_t is signed
            timeout -= 1 << 64
        offset = timeout - now
        if timeout < 0 or (offset > 0 and (offset >> 50) != 0):
            self.singleshot = now + 100 * MILLISECS
        else:
            self.singleshot = timeout

    def set_periodic(self, period: int, now: int) -> bool:
        """``vcpu_set_periodic_timer``: 0 stops; else the periodic work runs at
        once, so a tick is due now if a period passed since the last one
        (True: send VIRQ_TIMER)."""
        self.period = period
        return self._periodic_work(now) if period else False

    def _periodic_work(self, now: int) -> bool:
        """``vcpu_periodic_timer_work_locked``."""
        if now >= self.periodic_last + self.period:
            self.periodic_last = now
            return True
        return False

    @property
    def periodic_next(self) -> int | None:
        return self.periodic_last + self.period if self.period else None

    def next_deadline(self) -> int | None:
        times = [t for t in (self.singleshot, self.periodic_next) if t is not None]
        return min(times) if times else None

    def expire(self, now: int) -> bool:
        """Fire what is due at ``now``; True when VIRQ_TIMER must be sent."""
        fired = False
        if self.singleshot is not None and self.singleshot <= now:
            self.singleshot = None
            fired = True
        if self.period and self._periodic_work(now):
            fired = True
        return fired


class RunstateClock:
    """The vCPU's runstate, when it began, and ns spent in each RUNSTATE_*."""

    def __init__(self, now: int) -> None:
        self.state = Runstate.RUNSTATE_running
        self.entry = now
        self.time = [0, 0, 0, 0]

    def enter(self, state: Runstate, now: int) -> None:
        self.time[self.state] += now - self.entry
        self.state, self.entry = state, now

    def info(self, now: int) -> bytes:
        times = list(self.time)
        times[self.state] += now - self.entry
        return VCPU_RUNSTATE_INFO.pack(self.state, self.entry, *times)
