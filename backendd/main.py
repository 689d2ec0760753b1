"""``backendd``: dom0's device backends (``python -m backendd``).

Watches ``/local/domain/<be>/backend/{vbd,vif,console}`` in XenStore (as
Linux's ``drivers/xen/xenbus/xenbus_probe_backend.c`` watches ``backend``)
and runs each device instance ``backend/<type>/<domid>/<devid>`` it finds
as its own task (:class:`backendd.device.Device`), with the driver
registered for ``<type>``. A device of a type without a driver is logged
and left alone. Drivers register with :func:`backendd.device.register`;
``--device-type TYPE=MODULE:CLASS`` loads one more (tests use it).

Talks to xenstored (reconnecting: the watches fire again after a restart
of xenstored and every device is picked up from the store) and to
hypervisord (reattached whenever it is back). On SIGTERM every device is
closed (state Closed) before the connection to xenstored goes; a
restarted backendd picks the devices up from the store.

Beside the devices runs the console service (:mod:`backendd.consoled`,
xenconsoled's job: every domain's console 0 as a pty and a log file).

``<rundir>/backendd/socket`` answers every connection with one line per
device, ``<type> <domid> <devid> <state>``, then closes (what ``pvxen``
probes; ``xl block-list`` will read it); ``<rundir>/backendd/stats`` the
same with each connected device's counters, ``<type> <domid> <devid>
key=value...`` (what ``xl top`` reads: a vbd's ``rd_req wr_req rd_sect
wr_sect oo_req``, a vif's ``tx_bytes rx_bytes``, as the guest sees them).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
from functools import partial
from pathlib import Path

import trio

from daemonkit import daemon
from libxen import ctrl
from libxen.core import XenCall
from libxen.evtchn import XenEvtchn
from libxen.gnttab import GrantMapper
from libxen.paths import privcmd_path, xenstored_path
from libxen.xenstore.aio import XsClient, XsConnectionLost, XsError
from backendd import bridge, consoled
from backendd.device import DRIVERS, Device, DeviceDriver, DeviceInfo

log = logging.getLogger("backendd")
#: the device classes libxl writes backends for (xenstore-paths.pandoc)
TYPES = ("vbd", "vif", "console")
RETRY_MIN, RETRY_MAX = 0.05, 1.0
PING_INTERVAL = 2.0
_DEVICE = re.compile(r"/(\d{1,5})/(\d{1,10})(?:/|$)")
#: the modules whose DeviceDrivers backendd serves (each registers itself on import)
DRIVER_MODULES: list[str] = [
    "backendd.blkback",
    "backendd.netback",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="backendd", description=__doc__.split("\n")[0])
    daemon.add_common_arguments(p)
    p.add_argument("--xenstored", metavar="PATH", help="xenstored's socket "
                   "(default <rundir>/xenstored/socket)")
    p.add_argument("--hypervisor", metavar="PATH",
                   help="hypervisord's privileged socket (default <rundir>/hypervisord/privcmd)")
    p.add_argument("--backend-domid", type=int, default=0, help="the domain serving (default 0)")
    p.add_argument("--device-type", action="append", default=[], metavar="TYPE=MODULE:CLASS",
                   help="load a DeviceDriver for backend/TYPE")
    p.add_argument("--console-log-dir", metavar="DIR",
                   help="where each guest's console goes, as guest-<name>.log (Xen's "
                   "xenconsoled: /var/log/xen/console; default <rundir>/backendd/console)")
    p.add_argument("--no-console-log", action="store_true",
                   help="keep no console logs (xenconsoled --log=none)")
    p.add_argument("--console-rate-limit", type=int, default=consoled.RATE_LIMIT_ALLOWANCE,
                   metavar="EVENTS", help="console events served per domain each 200 ms "
                   f"(xenconsoled's RATE_LIMIT_ALLOWANCE, {consoled.RATE_LIMIT_ALLOWANCE})")
    args = p.parse_args(argv)
    if args.console_rate_limit < 1:
        p.error("--console-rate-limit: at least 1 event per period")
    return args


def load_driver(spec: str) -> None:
    name, sep, target = spec.partition("=")
    module, sep2, cls = target.partition(":")
    if not (sep and sep2 and name and module and cls):
        raise daemon.StartupError(f"--device-type {spec!r}: expected TYPE=MODULE:CLASS")
    driver = getattr(importlib.import_module(module), cls)
    if not (isinstance(driver, type) and issubclass(driver, DeviceDriver)):
        raise daemon.StartupError(f"--device-type {spec!r}: not a DeviceDriver")
    DRIVERS[name] = driver


class HypervisorLink:
    """The connection to hypervisord, kept up while backendd runs.

    While attached: ``xc`` (hypercalls), ``mapper`` (grant maps and copies
    on that connection) and ``evtchn`` (backendd's event channels, one
    attach per connection). All three are None while hypervisord is away;
    :meth:`ready` waits for them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.xc: XenCall | None = None
        self.mapper: GrantMapper | None = None
        self.evtchn: XenEvtchn | None = None
        self._up = trio.Event()

    async def ready(self) -> None:
        """Wait until hypervisord is attached (xc, mapper and evtchn set)."""
        while self.evtchn is None:
            await self._up.wait()

    async def run(self) -> None:
        said, delay = None, RETRY_MIN
        while True:
            why = None
            try:
                async with XenCall.open(self.path) as xc:
                    await ctrl.physinfo(xc)
                    async with XenEvtchn.attach(xc) as evtchn:
                        self.xc, self.mapper, self.evtchn = xc, GrantMapper(xc), evtchn
                        said, delay = None, RETRY_MIN
                        self._up.set()
                        log.info("attached to hypervisord at %s", self.path)
                        while True:  # a broken connection shows as the next call failing
                            await trio.sleep(PING_INTERVAL)
                            await ctrl.physinfo(xc)
            except OSError as e:
                why = str(e) or type(e).__name__
            finally:
                self.xc = self.mapper = self.evtchn = None
                if self._up.is_set():
                    self._up = trio.Event()
            if said != why:
                log.info("no hypervisord at %s (%s): retrying", self.path, why)
                said = why
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)


class Backendd:
    def __init__(self, xs: XsClient, hypervisor: HypervisorLink, domid: int) -> None:
        self.xs = xs
        self.hypervisor = hypervisor
        self.root = f"/local/domain/{domid}/backend"
        self.devices: dict[tuple[str, int, int], Device] = {}
        self.ignored: set[tuple[str, int, int]] = set()
        self.nursery: trio.Nursery | None = None

    async def watch_type(self, dtype: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
        base = f"{self.root}/{dtype}"
        async with self.xs.watch(base) as events:
            first = True
            async for path, _ in events:
                if path == base:  # the initial event (again after a reconnection): scan all
                    await self.scan(dtype)
                    if first:
                        task_status.started()
                        first = False
                elif m := _DEVICE.match(path, len(base)):
                    await self.found(dtype, int(m[1]), int(m[2]))

    async def scan(self, dtype: str) -> None:
        base = f"{self.root}/{dtype}"
        for d in await self._list(base):
            if d.isdigit():
                for n in await self._list(f"{base}/{d}"):
                    if n.isdigit():
                        await self.found(dtype, int(d), int(n))

    async def _list(self, path: str) -> list[str]:
        try:
            return await self.xs.directory(path)
        except XsError as e:
            if e.name == "ENOENT":
                return []
            raise

    async def found(self, dtype: str, domid: int, devid: int) -> None:
        key = (dtype, domid, devid)
        if key in self.devices:
            return
        node = f"{self.root}/{dtype}/{domid}/{devid}"
        try:
            frontend = (await self.xs.read(f"{node}/frontend")).decode()
            frontend_id = (await self.xs.read(f"{node}/frontend-id")).decode()
        except XsError as e:
            if e.name == "ENOENT":
                return  # not (or no longer) a complete device directory
            raise
        if dtype == "console" and frontend == f"/local/domain/{domid}/console":
            return  # console 0: the console service's (backendd.consoled), as xenconsoled's
        if frontend_id != str(domid) or not frontend.startswith(f"/local/domain/{domid}/device/"):
            log.warning("%s: frontend %r of domain %r does not belong to d%d: ignored",
                        node, frontend, frontend_id, domid)
            return
        driver = DRIVERS.get(dtype)
        if driver is None:
            if key not in self.ignored:
                self.ignored.add(key)
                log.warning("%s: no %s driver yet: device left alone", node, dtype)
            return
        info = DeviceInfo(dtype, domid, devid, node, frontend, self.xs, self.hypervisor)
        dev = self.devices[key] = Device(info, driver())
        assert self.nursery is not None
        self.nursery.start_soon(self._run_device, key, dev)

    async def _run_device(self, key, dev: Device) -> None:
        try:
            await dev.run()
        except (XsConnectionLost, XsError) as e:
            # Picked up again from the store once xenstored is back.
            log.warning("%s: lost its store connection (%s)", dev.name, e)
        except Exception:  # one device's bug costs that device alone
            log.exception("%s: failed", dev.name)
        finally:
            if self.devices.get(key) is dev:
                del self.devices[key]

    def status(self) -> str:
        return "".join(f"{t} {d} {n} {dev.state.name[11:]}\n"
                       for (t, d, n), dev in sorted(self.devices.items()))

    def stats(self) -> str:
        """``<type> <domid> <devid> key=value...``: each connected device's counters."""
        out = []
        for (t, d, n), dev in sorted(self.devices.items()):
            counters = dev.driver.counters(dev.info)
            if counters:
                out.append(f"{t} {d} {n} " + " ".join(f"{k}={v}" for k, v in counters.items()))
        return "".join(line + "\n" for line in out)


async def serve_status(backendd: Backendd, path: Path, task_status=trio.TASK_STATUS_IGNORED,
                       render=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    daemon.claim_socket_path(path)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(str(path))
    os.chmod(path, 0o600)
    sock.listen(16)

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.move_on_after(2):
                    await stream.send_all((render or backendd.status)().encode())
            except trio.BrokenResourceError:
                pass

    try:
        await trio.serve_listeners(answer, [trio.SocketListener(sock)], task_status=task_status)
    finally:
        path.unlink(missing_ok=True)


async def serve(args: argparse.Namespace, rundir: Path, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The whole daemon. Its store connection is shielded from the stop
    signal, so that the devices close (their state written) before it goes."""
    stop = trio.Event()

    async def stack(task_status=trio.TASK_STATUS_IGNORED) -> None:
        with trio.CancelScope(shield=True):
            xs_path = args.xenstored or xenstored_path(rundir)
            async with await XsClient.open(xs_path, reconnect=True) as xs:
                link = HypervisorLink(Path(args.hypervisor) if args.hypervisor else privcmd_path(rundir))
                b = Backendd(xs, link, args.backend_domid)
                async with trio.open_nursery() as services:
                    services.start_soon(link.run)
                    async with trio.open_nursery() as devices:
                        b.nursery = devices
                        for dtype in sorted(set(TYPES) | set(DRIVERS)):
                            await devices.start(b.watch_type, dtype)
                        await services.start(serve_status, b, rundir / "backendd" / "socket")
                        await services.start(partial(serve_status, render=b.stats),
                                             b, rundir / "backendd" / "stats")
                        # beside the devices: the consoles too unbind their ports
                        # before the hypervisord link goes
                        await devices.start(consoled.Consoled(xs, link, _consoled_config(
                            args, rundir)).run)
                        task_status.started()
                        await stop.wait()
                        log.info("closing %d devices", len(b.devices))
                        devices.cancel_scope.cancel()
                    services.cancel_scope.cancel()
                # Every device is closed: the TAPs went with them; the bridges
                # backendd created go too (``make stop`` leaves the host as it was).
                removed = await trio.to_thread.run_sync(bridge.cleanup, rundir)
                if removed:
                    log.info("removed %s", ", ".join(removed))

    async with trio.open_nursery() as nursery:
        await nursery.start(stack)
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            stop.set()


def _consoled_config(args: argparse.Namespace, rundir: Path) -> consoled.ConsoledConfig:
    log_dir = None if args.no_console_log else Path(
        args.console_log_dir or rundir / "backendd" / "console")
    return consoled.ConsoledConfig(log_dir, backend_domid=args.backend_domid,
                                   rate_allowance=args.console_rate_limit)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rundir = daemon.runtime_dir(args.rundir)

    async def body(nursery: trio.Nursery, log: logging.Logger) -> None:
        for module in DRIVER_MODULES:
            importlib.import_module(module)
        for spec in args.device_type:
            load_driver(spec)
        await nursery.start(serve, args, rundir)

    return daemon.run("backendd", body, verbose=args.verbose, stop_deadline=args.stop_deadline)
