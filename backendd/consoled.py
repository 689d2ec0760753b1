"""backendd's console service: xenconsoled's job (``tools/console/daemon/io.c``).

One service for all domains, not a per-device driver: like xenconsoled it
reads console 0 from ``~/console`` (``ring-ref``, ``port``, ``limit``,
written by the toolstack as ``libxl__device_console_add`` does) and leaves
``backend/console`` alone. It watches ``@introduceDomain`` (whose initial
event makes it scan every domain: a restarted backendd picks running
guests up) and ``@releaseDomain``; for each domain with a console it

* maps the console page (``xenforeignmemory_map`` of ``ring-ref``) and binds
  an interdomain port to the guest's ``port``;
* opens a pty pair in raw mode (``cfmakeraw``), keeps the slave open (so a
  client that goes does not hang the master up) and writes the slave's path
  to ``~/console/tty`` (``console_create_tty``), where ``xl console`` and
  Debian's ``xenconsole`` find it;
* copies guest output to the pty and, as soon as it is read, to
  ``<log_dir>/guest-<name>.log`` (``--log=guest``; Xen's default directory
  is ``/var/log/xen/console``, backendd's ``<rundir>/backendd/console``),
  reopened by name on SIGHUP (``handle_log_reload``: logrotate moves them);
* copies pty input into the ring's ``in`` half, as much as the guest left
  room for, and notifies.

Costs are bounded as in xenconsoled: at most ``RATE_LIMIT_ALLOWANCE``
events per ``RATE_LIMIT_PERIOD`` per domain (:class:`~backendd.console.RateLimit`),
at most 5/4 of ``~/console/limit`` buffered for a pty nobody reads
(:class:`~backendd.console.OutputBuffer`); input waits in the pty while the
guest's ring is full. Each console is its own task: a flooding guest
delays nobody else.

Everything the guest can touch is hostile: a ``ring-ref``/``port`` that is
not a number, a frame it does not own, a port it did not offer, or ring
indices that are not believable close that one console with a log line
(the domain is then left alone until it is released). When the domain
goes (``@releaseDomain``, or its ``~/console`` disappears) the port is
unbound, the page unmapped and the pty closed; nothing is removed from
the store.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import tty
from dataclasses import dataclass
from pathlib import Path

import trio

from daemonkit.daemon import on_hangup
from libxen import ctrl
from libxen.core import XenError
from libxen.foreignmemory import ForeignMemory
from hypervisord.public.errno import XenErrno
from libxen.xenstore.aio import XsClient, XsConnectionLost, XsError
from backendd.console import (RATE_LIMIT_ALLOWANCE, RATE_LIMIT_PERIOD, ConsoleRing,
                              OutputBuffer, RateLimit)

log = logging.getLogger("backendd.consoled")

#: the largest ``~/console/limit`` honoured (libxl writes LIBXL_XENCONSOLE_LIMIT, 1 MiB)
MAX_LIMIT = 1 << 20
PTY_CHUNK = 4096
#: how often input waiting for room in a full ``in`` ring looks again
INPUT_RETRY = 0.05
_NAME_SAFE = re.compile(r"[^A-Za-z0-9_.+-]")


@dataclass(frozen=True, slots=True)
class ConsoledConfig:
    log_dir: Path | None  #: guest-<name>.log files; None: no logs (xenconsoled --log=none)
    backend_domid: int = 0
    rate_allowance: int = RATE_LIMIT_ALLOWANCE
    rate_period: float = RATE_LIMIT_PERIOD


class ConsoleError(Exception):
    """What the guest (or its store keys) did that closes its console."""


@dataclass(frozen=True, slots=True)
class ConsoleKeys:
    name: str
    gfn: int
    port: int
    limit: int


def _uint(text: bytes | None, what: str, bound: int) -> int:
    if text is None:
        raise ConsoleError(f"no {what}")
    if not (text.isascii() and text.isdigit() and len(text) <= 20) or int(text) >= bound:
        raise ConsoleError(f"{what} {text[:40]!r} is not a number below {bound}")
    return int(text)


class Consoled:
    def __init__(self, xs: XsClient, hypervisor, config: ConsoledConfig) -> None:
        self.xs = xs
        self.hypervisor = hypervisor  #: backendd.main.HypervisorLink
        self.config = config
        self.consoles: dict[int, trio.CancelScope] = {}
        self.ttys: dict[int, str] = {}
        self.names: dict[int, str] = {}
        #: domains whose console was closed for cause: left alone until released
        self.closed: set[int] = set()
        #: the live consoles' pumps, whose log files SIGHUP reopens
        self.pumps: dict[int, "_Pump"] = {}
        self._nursery: trio.Nursery | None = None

    # -- domains coming and going ---------------------------------------------------
    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        if self.config.log_dir is not None:
            self.config.log_dir.mkdir(parents=True, exist_ok=True)
        remove_handler = on_hangup(self.reopen_logs)
        try:
            await self._serve(task_status)
        finally:
            remove_handler()

    async def _serve(self, task_status) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            async with self.xs.watch("@releaseDomain") as released:
                nursery.start_soon(self._releases, released)
                async with self.xs.watch("@introduceDomain") as introduced:
                    first = True
                    async for _ in introduced:  # the initial event: scan all
                        await self._scan()
                        if first:
                            task_status.started()
                            first = False

    async def _scan(self) -> None:
        try:
            children = await self.xs.directory("/local/domain")
        except XsError as e:
            if e.name != "ENOENT":  # ENOENT: no domain yet
                log.warning("cannot list domains: %s", e)
            return
        except XsConnectionLost as e:
            log.warning("cannot list domains: %s", e)
            return
        for child in children:
            if not (child.isdigit() and len(child) <= 5):
                continue
            domid = int(child)
            if domid == self.config.backend_domid or domid in self.consoles \
                    or domid in self.closed:
                continue
            assert self._nursery is not None
            self.consoles[domid] = trio.CancelScope()
            self._nursery.start_soon(self._serve_domain, domid)

    async def _releases(self, released) -> None:
        async for _ in released:
            for domid in sorted(self.consoles.keys() | self.closed):
                if not await self._alive(domid):
                    self.closed.discard(domid)
                    scope = self.consoles.get(domid)
                    if scope is not None:
                        scope.cancel()

    async def _alive(self, domid: int) -> bool:
        xc = self.hypervisor.xc
        if xc is None:
            return True  # cannot tell: the store watch notices a destroy anyway
        try:
            _, r = await ctrl.domain_getinfo(xc, domid)
        except XenError as e:
            if e.rc == -XenErrno.XEN_ESRCH:
                return False
            log.warning("d%d: getdomaininfo: %s", domid, e)
            return True
        except OSError:
            return True  # hypervisord away: the store tells when the domain goes
        info = ctrl.DomainInfo.from_result(r)
        return info.domid == domid and not info.dying

    # -- one domain -----------------------------------------------------------------
    async def _serve_domain(self, domid: int) -> None:
        scope = self.consoles[domid]
        try:
            with scope:
                cp = f"/local/domain/{domid}/console"
                async with self.xs.watch(cp) as events:
                    async for _ in events:
                        keys = await self._read_keys(domid)
                        if keys is None:
                            if not await self._exists(f"/local/domain/{domid}"):
                                return
                            continue  # no console yet
                        self.names[domid] = keys.name
                        await self._attach(domid, keys, events)
                        break  # its ~/console went with it
                    else:
                        return
                log.info("d%d (%s): console closed (domain gone)", domid, keys.name)
            if scope.cancelled_caught and domid in self.names:  # @releaseDomain
                log.info("d%d (%s): console closed (domain gone)", domid, self.names[domid])
        except ConsoleError as e:
            self.closed.add(domid)
            log.warning("d%d: console closed: %s", domid, e)
        except (XsError, XsConnectionLost) as e:
            log.warning("d%d: console: store error (%s): picked up again at the next scan",
                        domid, e)
        except OSError as e:  # hypervisord went (its domains with it)
            log.warning("d%d: console closed: %s", domid, e)
        except Exception:  # a bug here costs this console alone
            self.closed.add(domid)
            log.exception("d%d: console failed", domid)
        finally:
            if self.consoles.get(domid) is scope:
                del self.consoles[domid]
            self.ttys.pop(domid, None)
            self.names.pop(domid, None)

    async def _exists(self, path: str) -> bool:
        try:
            await self.xs.read(path)
            return True
        except XsError as e:
            if e.name == "ENOENT":
                return False
            raise

    async def _read(self, path: str) -> bytes | None:
        try:
            return await self.xs.read(path)
        except XsError as e:
            if e.name == "ENOENT":
                return None
            raise

    async def _read_keys(self, domid: int) -> ConsoleKeys | None:
        dp = f"/local/domain/{domid}"
        ring_ref = await self._read(f"{dp}/console/ring-ref")
        port = await self._read(f"{dp}/console/port")
        if ring_ref is None or port is None:
            return None
        limit_text = await self._read(f"{dp}/console/limit")
        limit = MAX_LIMIT
        if limit_text is not None:
            limit = min(_uint(limit_text, "limit", 1 << 64), MAX_LIMIT) or MAX_LIMIT
        name = (await self._read(f"{dp}/name") or b"").decode("utf-8", "replace")
        return ConsoleKeys(_NAME_SAFE.sub("_", name)[:64] or f"d{domid}",
                           _uint(ring_ref, "ring-ref", 1 << 52), _uint(port, "port", 1 << 32),
                           limit)

    async def _attach(self, domid: int, keys: ConsoleKeys, events) -> None:
        await self.hypervisor.ready()
        xc, evtchn = self.hypervisor.xc, self.hypervisor.evtchn
        try:
            view = await ForeignMemory(xc).map(domid, [keys.gfn])
        except OSError as e:
            raise ConsoleError(f"cannot map ring-ref {keys.gfn:#x}: {e}") from None
        try:
            try:
                local = await evtchn.bind_interdomain(domid, keys.port)
            except OSError as e:
                raise ConsoleError(f"cannot bind port {keys.port}: {e}") from None
            try:
                await self._run_console(domid, keys, ConsoleRing(view, f"d{domid} console"),
                                        evtchn, local, events)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        await evtchn.unbind(local)
                    except OSError as e:
                        log.debug("d%d: unbind port %d: %s", domid, local, e)
        finally:
            ForeignMemory.unmap(view)

    def _open_log(self, keys: ConsoleKeys) -> tuple[int, Path | None]:
        if self.config.log_dir is None:
            return -1, None
        path = self.config.log_dir / f"guest-{keys.name}.log"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                           0o644), path
        except OSError as e:  # io.c: "Failed to open log": the console works without
            log.error("failed to open log %s: %s", path, e)
            return -1, None

    async def _run_console(self, domid: int, keys: ConsoleKeys, ring: ConsoleRing,
                           evtchn, local: int, events) -> None:
        master, slave = os.openpty()
        logfd, logpath = -1, None
        try:
            tty.setraw(slave)
            os.set_blocking(master, False)
            ttyname = os.ttyname(slave)
            logfd, logpath = self._open_log(keys)
            await self.xs.write(f"/local/domain/{domid}/console/tty", ttyname)
            self.ttys[domid] = ttyname
            log.info("d%d (%s): console on %s%s", domid, keys.name, ttyname,
                     f", log {logpath}" if logpath else "")
            pump = _Pump(domid, ring, evtchn, local, master, logfd,
                         OutputBuffer(keys.limit), self.config)
            pump.logpath = logpath
            self.pumps[domid] = pump
            failed: list[Exception] = []
            async with trio.open_nursery() as nursery:
                for job in (pump.ring_to_buffer, pump.buffer_to_pty, pump.pty_to_ring,
                            lambda: self._until_gone(domid, keys, events)):
                    nursery.start_soon(_first_failure, job, failed, nursery.cancel_scope)
            if failed:  # one plain exception, not a group: the caller names it
                raise failed[0]
        finally:
            pump_now = self.pumps.pop(domid, None)
            if pump_now is not None:
                logfd = pump_now.logfd  # SIGHUP may have replaced it
            for fd in (master, slave, logfd):
                if fd >= 0:
                    os.close(fd)

    def reopen_logs(self) -> None:
        """SIGHUP: every console's log file closed and opened again by its
        name (xenconsoled's ``handle_log_reload``), so logrotate can move
        ``guest-<name>.log`` away; output goes to the new file from now on."""
        for domid, pump in list(self.pumps.items()):
            if pump.logpath is None:
                continue
            try:
                fd = os.open(pump.logpath, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                             0o644)
            except OSError as e:
                log.error("d%d: failed to reopen log %s: %s", domid, pump.logpath, e)
                continue
            old, pump.logfd = pump.logfd, fd
            if old >= 0:
                os.close(old)
        log.info("SIGHUP: reopened %d console log(s)", len(self.pumps))

    async def _until_gone(self, domid: int, keys: ConsoleKeys, events) -> None:
        """Return when ``~/console`` no longer names this ring (destroy removes it)."""
        async for _ in events:
            now = await self._read(f"/local/domain/{domid}/console/ring-ref")
            if now is None:
                raise _Gone()
            if now != str(keys.gfn).encode():
                raise ConsoleError(f"ring-ref changed to {now[:40]!r} while connected")


class _Gone(Exception):
    """The domain's console went from the store: the console ends, no error."""


async def _first_failure(job, failed: list[Exception], scope: trio.CancelScope) -> None:
    """Run one of a console's tasks; whatever ends it ends the others too."""
    try:
        await job()
    except _Gone:
        pass
    except (ConsoleError, OSError, XsError, XsConnectionLost) as e:
        failed.append(e)
    scope.cancel()


class _Pump:
    """The three copies of one console; each raises ConsoleError on a bad ring."""

    def __init__(self, domid: int, ring: ConsoleRing, evtchn, local: int, master: int,
                 logfd: int, buf: OutputBuffer, config: ConsoledConfig) -> None:
        self.domid, self.ring, self.evtchn, self.local = domid, ring, evtchn, local
        self.master, self.logfd, self.buf = master, logfd, buf
        self.logpath: Path | None = None
        self.limit = RateLimit(config.rate_allowance, config.rate_period)
        self._more = trio.Event()

    def _check(self) -> None:
        if self.ring.illegal:
            raise ConsoleError("the guest's ring indices are not believable "
                               "(producer more than a ring ahead of the consumer)")

    async def ring_to_buffer(self) -> None:
        """``handle_ring_read`` + ``buffer_append``: one event, one drain."""
        while True:
            await self.evtchn.wait_port(self.local)
            pause = self.limit.event(trio.current_time())
            data = self.ring.read_output()
            self._check()
            if data:
                self.evtchn.notify_soon(self.local)  # room in out[] again
                if self.logfd >= 0:
                    try:
                        os.write(self.logfd, data)
                    except OSError as e:
                        log.error("d%d: write to log failed: %s", self.domid, e)
                self.buf.append(data)
                self._more.set()
            if pause:
                await trio.sleep(pause)

    async def buffer_to_pty(self) -> None:
        while True:
            if not len(self.buf):
                await self._more.wait()
                self._more = trio.Event()
                continue
            try:
                n = os.write(self.master, self.buf.peek(PTY_CHUNK))
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.master)
                continue
            self.buf.advance(n)

    async def pty_to_ring(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.master)
            space = self.ring.in_space()
            self._check()
            if not space:  # the guest reads no input now: it waits in the pty
                await trio.sleep(INPUT_RETRY)
                continue
            try:
                data = os.read(self.master, min(space, PTY_CHUNK))
            except BlockingIOError:
                continue
            except OSError as e:
                if e.errno != errno.EIO:
                    raise
                await trio.sleep(INPUT_RETRY)  # no slave open (never: we hold one)
                continue
            self.ring.write_input(data)
            self._check()
            self.evtchn.notify_soon(self.local)
