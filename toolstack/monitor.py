"""The launcher's core: fork guests, reap them, act on their shutdown.

:class:`Launcher` has no socket of its own (``launcher.py`` serves one), so
benchmarks and tests can use it in-process: ``launch()`` forks a guest
process from the calling process, ``reap()`` collects the ones that ended.
Neither may be called from inside ``trio.run`` (the child runs its own).

What a guest's end means (``xl_vmcontrol.c``, ``handle_domain_death``): the
exit status carries the SHUTDOWN_* reason (``frontends.runtime``); a process
that died any other way crashed. The configured action for that reason is
then applied: ``destroy`` (and ``preserve``, ``coredump-destroy``: the
domain is already gone with its process; a PV kernel's process is told the
``preserve`` reasons, :func:`preserved_reasons`, and stays with its domain
shut down until ``xl destroy``) cleans up; ``restart`` (and
``rename-restart``, ``coredump-restart``, ``soft-reset``) cleans up and
builds the domain again from its configuration, at most
:data:`MAX_RESTARTS` times in :data:`RESTART_WINDOW` seconds. A domain that
``xl destroy`` announced (``destroying``) is only cleaned up.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from frontends import runtime
from libxen import ctrl
from hypervisord.public.sched import ShutdownReason
from toolstack import confine, device_ops, guestproc, spare
from toolstack.builder import BuildError, ConnectError, Toolstack, \
    create_domain, destroy_domain, ensure_dom0
from toolstack.domconfig import DomainConfig
from toolstack.hcall import XenError, xl_dir
from toolstack.launchctl import LaunchError
from libxen.xenstore.sync import XsConnectionLost, XsError

log = logging.getLogger("xl-launcher")

MAX_RESTARTS = 5
RESTART_WINDOW = 10.0
RESTART_ACTIONS = ("restart", "rename-restart", "coredump-restart", "soft-reset")
REASON_NAMES = {r.value: r.name.removeprefix("SHUTDOWN_") for r in ShutdownReason}
ACTION_KEYS = {
    ShutdownReason.SHUTDOWN_poweroff: "on_poweroff",
    ShutdownReason.SHUTDOWN_reboot: "on_reboot",
    ShutdownReason.SHUTDOWN_crash: "on_crash",
    ShutdownReason.SHUTDOWN_watchdog: "on_watchdog",
}


#: What the template loads once so that guests never import them again: the
#: runtime and every frontend, and the standard modules programs commonly
#: use. After the fork a guest runs as ``nobody`` and may not be able to
#: read the interpreter's own files (a Python under /root, say).
PRELOAD = ("trio", "msgpack", "frontends.domain", "frontends.runtime",
           "libxen.core", "libxen.ctrl", "libxen.evtchn",
           "libxen.gnttab", "libxen.foreignmemory",
           "libxen.xsring", "libxen.xenstore.aio",
           "asyncio", "base64", "collections", "contextlib", "dataclasses", "enum",
           "functools", "hashlib", "inspect", "itertools", "json", "logging", "math",
           "random", "re", "shlex", "struct", "textwrap", "time", "traceback", "typing",
           "uuid", "zlib")


def preload() -> list[str]:
    """Import :data:`PRELOAD` and every ``frontends`` module; returns what failed."""
    import importlib
    import pkgutil

    import frontends

    names = list(PRELOAD) + [m.name for m in pkgutil.walk_packages(
        frontends.__path__, "frontends.")]
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:  # a part not written yet: guests will do without
            failed.append(f"{name} ({e})")
    _warm_atomics()
    return failed


def _warm_atomics() -> None:
    """``atomics`` loads its C library on first use: do that use here, as root."""
    try:
        from libxen.shinfo import AtomicWord
    except ImportError:
        return
    buf = bytearray(8)
    word = AtomicWord(memoryview(buf))
    try:
        word.test_and_set(0)
        word.test_and_clear(0)
        word.test(0)
        word.load()
    finally:
        word.close()


@dataclass
class Guest:
    domid: int
    pid: int
    config: DomainConfig
    start_info_gfn: int
    restarts: list[float] = field(default_factory=list)  # when it was restarted
    cgroup: Path | None = None  # its own cgroup v2 (confine.py), killed when it ends


def action_for(config: DomainConfig, reason: int) -> str:
    """The configured action for a shutdown reason (suspend: the domain is gone)."""
    if reason == ShutdownReason.SHUTDOWN_soft_reset:
        return "restart"
    key = ACTION_KEYS.get(reason)  # type: ignore[call-overload]
    return getattr(config, key) if key else "destroy"


def preserved_reasons(config: DomainConfig) -> list[int]:
    """The SHUTDOWN_* reasons whose action is ``preserve``: a PV guest process
    keeps its domain (shut down, e.g. ``xl list`` state ``c``) until ``xl destroy``."""
    return [int(r) for r in ACTION_KEYS if action_for(config, r) == "preserve"]


class Launcher:
    def __init__(self, rundir: str | os.PathLike | None = None) -> None:
        self.rundir = rundir
        self.guests: dict[int, Guest] = {}  # by pid
        self._destroying: set[int] = set()
        self._ts: Toolstack | None = None
        for missing in preload():
            log.debug("not preloaded: %s", missing)
        #: what the host lets us confine guests with (logged once: what it refused)
        self.confinement = confine.prepare(xl_dir(rundir) / "guest-root")
        self.spares = spare.Spares(self.confinement, self._run_in_spare(self.confinement))

    # -- launching --------------------------------------------------------------------------
    def log_path(self, name: str) -> str:
        logs = xl_dir(self.rundir) / "log"
        logs.mkdir(parents=True, exist_ok=True, mode=0o700)
        return str(logs / f"guest-{name}.log")

    def launch(self, domid: int, config: dict | DomainConfig, start_info_gfn: int,
               fds: dict[str, int], boot: dict | None = None) -> int:
        """Fork the guest process of ``domid``; the caller keeps (and closes) ``fds``."""
        cfg = config if isinstance(config, DomainConfig) else DomainConfig.from_dict(config)
        missing = {"hypercall", "evtchn", "memory"} - fds.keys()
        if missing:
            raise LaunchError(f"missing descriptors: {sorted(missing)}")
        try:
            source = ""  # a PV kernel is in the domain's memory already
            if boot is None:
                with open(cfg.kernel, encoding="utf-8") as f:
                    source = f.read()
            log_fd = os.open(self.log_path(cfg.name),
                             os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise LaunchError(f"{cfg.kernel}: {e.strerror}") from None
        req = guestproc.spare_request(domid, cfg.name, cfg.kernel, source, cfg.args,
                                      start_info_gfn, cfg.maxmem_kb * 1024,
                                      ["hypercall", "evtchn", "memory", "log"], boot=boot,
                                      preserve=preserved_reasons(cfg), vcpus=cfg.maxvcpus)
        passed = [fds["hypercall"], fds["evtchn"], fds["memory"], log_fd]
        try:
            for attempt in range(2):  # a spare that died waiting: once more, with a new one
                s = self.spares.take()
                try:
                    spare.assign(s, req, passed)
                    break
                except spare.SpareGone as e:
                    log.warning("d%d: %s", domid, e)
                    if s.cgroup is not None:
                        confine.kill_cgroup(s.cgroup)
                    if attempt:
                        raise LaunchError(f"cannot start the guest process: {e}") from None
        except OSError as e:
            raise LaunchError(f"cannot start the guest process: {e.strerror}") from None
        finally:
            os.close(log_fd)
        pid = s.pid
        self.guests[pid] = Guest(domid, pid, cfg, start_info_gfn, cgroup=s.cgroup)
        log.info("d%d (%s): guest process %d", domid, cfg.name, pid)
        return pid

    @staticmethod
    def _run_in_spare(conf: confine.Confinement) -> spare.GuestRunner:
        return lambda req, fds: guestproc.from_spare(conf, req, fds)  # type: ignore[return-value]

    def refill(self) -> None:
        """Have the next guest's spare ready (after a reply: off the launch's path)."""
        try:
            self.spares.refill()
        except OSError as e:
            log.error("cannot fork a spare guest process: %s", e)

    def destroying(self, domid: int) -> None:
        """``xl destroy`` is taking ``domid`` down: no on_* action for it."""
        if any(g.domid == domid for g in self.guests.values()):
            self._destroying.add(domid)

    # -- reaping ------------------------------------------------------------------------------
    def reap(self) -> list[tuple[Guest, int]]:
        """Collect ended guests and act on each; returns (guest, reason) pairs."""
        ended = []
        while self.guests:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            guest = self.guests.pop(pid, None)
            if guest is None:
                self.spares.lost(pid)
                continue
            reason = runtime.reason_from_status(status)
            ended.append((guest, reason))
            self._ended(guest, reason, status)
        return ended

    def _ended(self, guest: Guest, reason: int, status: int) -> None:
        if guest.cgroup is not None:  # whatever it forked dies with it, before cleanup
            confine.kill_cgroup(guest.cgroup)
        destroyed = guest.domid in self._destroying
        self._destroying.discard(guest.domid)
        action = "destroy" if destroyed else action_for(guest.config, reason)
        log.info("d%d (%s) %s (wait status %#x): %s", guest.domid, guest.config.name,
                 "destroyed" if destroyed else f"shut down, reason {REASON_NAMES.get(reason)}",
                 status, action)
        try:
            ts = self.toolstack()
            destroy_domain(ts, guest.domid, guest.config.uuid)
            if action in RESTART_ACTIONS:
                self._restart(ts, guest)
        except (XenError, XsError, XsConnectionLost, OSError, BuildError, LaunchError,
                ConnectError) as e:
            log.error("d%d: cleanup/%s failed: %s", guest.domid, action, e)
            self._drop_toolstack()

    def _restart(self, ts: Toolstack, guest: Guest) -> None:
        now = time.monotonic()
        recent = [t for t in guest.restarts if now - t < RESTART_WINDOW]
        if len(recent) >= MAX_RESTARTS:
            log.error("%s: restarted %d times in %.0fs, not restarting", guest.config.name,
                      len(recent), RESTART_WINDOW)
            return
        built = create_domain(ts, guest.config)
        try:
            device_ops.wait_created(ts.xs, built.domid, guest.config.disks, guest.config.nics)
        except device_ops.DeviceError as e:
            built.close_fds()
            destroy_domain(ts, built.domid, guest.config.uuid, quiet=True)
            raise BuildError(device_ops.creation_error(built.domid, e)) from None
        try:
            pid = self.launch(built.domid, guest.config, built.layout.start_info_gfn, built.fds,
                             boot=built.boot)
        except LaunchError:
            destroy_domain(ts, built.domid, guest.config.uuid, quiet=True)
            raise
        finally:
            built.close_fds()
        self.guests[pid].restarts = recent + [now]
        ctrl.domain_unpause(ts.xc, built.domid)
        log.info("%s restarted as d%d", guest.config.name, built.domid)

    # -- connections ---------------------------------------------------------------------------
    def toolstack(self) -> Toolstack:
        if self._ts is None:
            self._ts = Toolstack(self.rundir)
        return self._ts

    def _drop_toolstack(self) -> None:
        if self._ts is not None:
            self._ts.close()
            self._ts = None

    def ensure_dom0(self) -> None:
        """dom0's name and id in the store (xen-init-dom0's job), if xenstored is up."""
        try:
            ensure_dom0(self.toolstack().xs)
        except (ConnectError, XsError, XsConnectionLost) as e:
            log.warning("cannot write dom0's XenStore entries: %s", e)
            self._drop_toolstack()

    def kill_all(self, sig: int = 9) -> None:
        """Tests and benchmarks: end every guest process (hypervisord then destroys)."""
        for pid, guest in list(self.guests.items()):
            if sig == 9 and guest.cgroup is not None:
                confine.kill_cgroup(guest.cgroup, timeout=0)
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        self.spares.close()
        self._drop_toolstack()
