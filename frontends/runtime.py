"""The domU process main: what a program guest runs as its domain.

The launcher (``toolstack/launcher.py``) forks this process
from its pre-loaded template with exactly three descriptors (hypercall
connection, event-channel stream, the domain's own memory file), privileges
dropped, confined as a domU (``toolstack/confine.py``: pid 1 of
its own PID namespace, no network but its own loopback, a read-only root
with a private ``/tmp``, memory/file/process limits, seccomp), and calls
:func:`run`. The runtime:

1. makes a first hypercall, so that hypervisord learns the process's pid
   from the kernel (and holds it stopped while the domain is paused);
2. reads ``start_info`` from the guest frame the builder wrote it to
   (copy, then validate), and builds the :class:`frontends.domain.Domain`;
3. when the XenStore ring client (``frontends.xenbus``) is available, says
   ``control/feature-poweroff``/``-reboot`` and watches ``control/shutdown``
   as Linux's ``drivers/xen/manage.c`` does: "poweroff"/"halt"/"reboot"/
   "suspend"/"crash" become a shutdown request the program can wait for
   (it gets :data:`SHUTDOWN_GRACE` seconds before it is cancelled);
4. runs the program's ``async def main(domain)``. A normal return shuts the
   domain down with the requested reason (poweroff when none); an exception
   is logged with its traceback on stderr and shuts it down as a crash.

The process exits with a status that carries the reason
(:func:`exit_code_for`), so the launcher knows it even after hypervisord has
torn the domain down (the domain goes when its process closes its
connection).
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import traceback
import types
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from frontends.domain import SHUTDOWN_REQUESTS, Domain, StartInfo
from libxen import ctrl
from libxen.core import XenCall, XenError
from hypervisord.public import memfile
from hypervisord.public.sched import ShutdownReason
from hypervisord.public.xen import PAGE_SIZE

log = logging.getLogger("guest")

SHUTDOWN_EXIT_BASE = 100  # exit status 100 + SHUTDOWN_* for every reason but poweroff
EXIT_LOST = 97  # hypervisord went away: no reason could be recorded
EXIT_BROKEN = 98  # the runtime could not start the program
SHUTDOWN_GRACE = 2.0  # seconds a program gets to return after a shutdown request
WATCHDOG_PERIOD = 1.0  # how often the connection to hypervisord is checked

GuestMain = Callable[[Domain], Awaitable[object]]


def exit_code_for(reason: int) -> int:
    return 0 if reason == ShutdownReason.SHUTDOWN_poweroff else SHUTDOWN_EXIT_BASE + reason


def reason_from_status(status: int) -> int:
    """The shutdown reason a guest process's wait status stands for."""
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        if code == 0:
            return ShutdownReason.SHUTDOWN_poweroff
        if SHUTDOWN_EXIT_BASE < code <= SHUTDOWN_EXIT_BASE + max(ShutdownReason):
            return code - SHUTDOWN_EXIT_BASE
    return ShutdownReason.SHUTDOWN_crash  # killed, or failed in a way we did not plan


@dataclass(frozen=True)
class GuestSpec:
    """Everything the launcher hands the guest process."""

    domid: int
    name: str
    program: str  # path, for tracebacks
    source: str  # the program text, read before privileges were dropped
    start_info_gfn: int
    hypercall_fd: int
    evtchn_fd: int
    memory_fd: int
    args: list[str] = field(default_factory=list)


def load_program(path: str, source: str, args: list[str]) -> GuestMain:
    """Compile the guest program as module ``__guest__``; return its ``main``."""
    module = types.ModuleType("__guest__")
    module.__file__ = path
    sys.modules["__guest__"] = module
    sys.argv = [path, *args]
    exec(compile(source, path, "exec"), module.__dict__)
    main = getattr(module, "main", None)
    if main is None or not inspect.iscoroutinefunction(main):
        raise TypeError(f"{path} defines no async def main(domain)")
    return main


def read_start_info(memory_fd: int, gfn: int) -> StartInfo:
    page = os.pread(memory_fd, PAGE_SIZE, memfile.gfn_offset(gfn))
    return StartInfo.parse(page)


async def _watch_connection(xc: XenCall, scope: trio.CancelScope) -> None:
    """End the guest when hypervisord goes away (its connection breaks)."""
    while getattr(xc, "_broken", None) is None:
        await trio.sleep(WATCHDOG_PERIOD)
    log.error("hypervisord connection lost: %s", xc._broken)
    scope.cancel()


async def _control_watch(domain: Domain, main_scope: trio.CancelScope) -> None:
    """``control/shutdown`` (Linux ``setup_shutdown_watcher``/``shutdown_handler``)."""
    try:
        xs = await domain.open_xenbus()
    except ModuleNotFoundError as e:  # a frontend that is not there: no PV control
        log.warning("no xenbus client (%s missing): no PV control interface", e.name)
        return
    home = f"/local/domain/{domain.domid}/control"
    for feature in ("feature-poweroff", "feature-reboot"):
        await xs.write(f"{home}/{feature}", "1")
    async with xs.watch(f"{home}/shutdown") as events:
        async for _ in events:
            try:
                value = (await xs.read(f"{home}/shutdown")).decode(errors="replace")
            except OSError:
                continue  # removed (domain teardown) or unreadable: not a request
            reason = SHUTDOWN_REQUESTS.get(value)
            if reason is None:
                continue
            await xs.write(f"{home}/shutdown", "")  # acknowledge, as Linux does
            domain.request_shutdown(reason)
            break
    await trio.sleep(SHUTDOWN_GRACE)
    main_scope.cancel()


async def run_program(domain: Domain, main: GuestMain) -> int:
    """Run ``main(domain)`` with the control watcher; returns the SHUTDOWN_* reason.

    Two nurseries: the outer one holds the domain's services (the store and
    event-channel clients, the program's background tasks); the inner one
    the program and the control watcher, which therefore end first, while
    the store ring still works (an UNWATCH in flight gets its reply).
    """
    exit_reason: int | None = None
    try:
        async with trio.open_nursery() as services:
            domain.nursery = services
            services.start_soon(_watch_connection, domain.xc, services.cancel_scope)
            await _open_evtchn(domain)
            async with trio.open_nursery() as inner:
                main_scope = trio.CancelScope()
                inner.start_soon(_control_watch, domain, main_scope)
                with main_scope:
                    exit_reason = await _call_main(domain, main)
                inner.cancel_scope.cancel()
            services.cancel_scope.cancel()
    except Exception:
        traceback.print_exc()
        return ShutdownReason.SHUTDOWN_crash
    if exit_reason == ShutdownReason.SHUTDOWN_crash:
        return exit_reason
    if domain.shutdown_reason is not None:
        return domain.shutdown_reason
    return ShutdownReason.SHUTDOWN_poweroff


async def _open_evtchn(domain: Domain) -> None:
    """``domain.evtchn`` ready before the program runs, when the client exists."""
    try:
        await domain.open_evtchn()
    except ModuleNotFoundError as e:
        log.warning("no event-channel client (%s missing)", e.name)


async def _call_main(domain: Domain, main: GuestMain) -> int | None:
    """``main(domain)``; ``sys.exit()`` in it means poweroff (0) or crash (else)."""
    try:
        await main(domain)
    except SystemExit as e:
        if e.code in (None, 0):
            return ShutdownReason.SHUTDOWN_poweroff
        print(f"guest program exited: {e.code}", file=sys.stderr)
        return ShutdownReason.SHUTDOWN_crash
    return None


async def guest_main(spec: GuestSpec, main: GuestMain) -> int:
    async with XenCall.from_fd(spec.hypercall_fd) as xc:
        await ctrl.xen_version(xc)  # hypervisord learns our pid (and stops us if paused)
        domain = Domain(spec.domid, spec.name, read_start_info(spec.memory_fd,
                                                               spec.start_info_gfn),
                        xc, spec.memory_fd, spec.evtchn_fd, list(spec.args))
        try:
            reason = await run_program(domain, main)
        finally:
            domain.close()
        if getattr(xc, "_broken", None) is not None:
            return EXIT_LOST
        try:
            await ctrl.shutdown(xc, reason)
        except (XenError, ConnectionError) as e:
            log.error("SCHEDOP_shutdown(%d) failed: %s", reason, e)
        return exit_code_for(reason)


def run(spec: GuestSpec) -> int:
    """The guest process's whole life; returns its exit status.

    A duplicate of the hypercall descriptor stays open until the process
    ends: hypervisord destroys the domain (and kills its process) when the
    connection closes, which must not happen before the exit status that
    carries the shutdown reason exists.
    """
    os.dup(spec.hypercall_fd)  # closed by the kernel at exit, never by us
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s d{spec.domid} %(levelname)s %(message)s")
    try:
        main = load_program(spec.program, spec.source, spec.args)
    except Exception:
        traceback.print_exc()
        main = None
    try:
        if main is None:  # still tell hypervisord: the domain crashed
            return trio.run(_crash_only, spec)
        return trio.run(guest_main, spec, main)
    except Exception:
        traceback.print_exc()
        return EXIT_BROKEN


async def _crash_only(spec: GuestSpec) -> int:
    async with XenCall.from_fd(spec.hypercall_fd) as xc:
        await ctrl.shutdown(xc, ShutdownReason.SHUTDOWN_crash)
    return exit_code_for(ShutdownReason.SHUTDOWN_crash)
