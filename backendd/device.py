"""One backend device instance, driven through the XenbusState handshake.

A device is the directory ``/local/domain/<be>/backend/<type>/<domid>/<devid>``
the toolstack wrote (``frontend``, ``frontend-id``, ``online``, ``state``;
``docs/misc/xenstore-paths.pandoc``). :class:`Device` runs it as its own
task: it publishes the driver's features and goes InitWait, then follows
the frontend's ``state`` node as Linux's backends do
(:func:`libxen.xenbus.backend_step`, after ``frontend_changed`` in
``drivers/block/xen-blkback/xenbus.c``) until the device is removed.

A driver (blkback, netback, console ...) plugs in as a :class:`DeviceDriver`
subclass registered for its type with :func:`register`; the handshake
itself is shared. What the driver reads from the frontend's directory is
guest-written: drivers parse it with :func:`read_uint` and friends, and any
:class:`DeviceError` closes that one device (``xenbus_dev_fatal`` in
``drivers/xen/xenbus/xenbus_client.c``: the error goes to
``error/<nodename>/error`` of the backend domain, the state to Closing).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from libxen.xenbus import BackendAction, XenbusState, backend_step, parse_xenbus_state, transition
from libxen.xenstore.aio import XsClient, XsConnectionLost, XsError

log = logging.getLogger("backendd.device")
S = XenbusState
#: how long closing a device on the way out may take (SIGTERM, removal)
CLOSE_TIMEOUT = 2.0


class DeviceError(Exception):
    """A device cannot go on; ``errno`` and the message go to its error node."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


@dataclass
class DeviceInfo:
    """What a driver knows of its device."""

    type: str
    domid: int          #: the frontend domain
    devid: int
    nodename: str       #: the backend directory
    otherend: str       #: the frontend directory (from the backend's ``frontend``)
    xs: XsClient
    hypervisor: object  #: :class:`backendd.main.HypervisorLink`
    extra: dict = field(default_factory=dict)  #: the driver's own state

    async def read_frontend(self, key: str) -> str | None:
        try:
            return (await self.xs.read(f"{self.otherend}/{key}")).decode("ascii", "replace")
        except XsError as e:
            if e.name == "ENOENT":
                return None
            raise

    async def read_uint(self, key: str, *, limit: int = 2**32 - 1) -> int:
        """A guest-written unsigned decimal (``xenbus_scanf("%u")``), checked."""
        text = await self.read_frontend(key)
        if text is None:
            raise DeviceError(errno.EINVAL, f"reading {self.otherend}/{key}: missing")
        if not text.isdigit() or len(text) > 10 or int(text) > limit:
            raise DeviceError(errno.EINVAL, f"reading {self.otherend}/{key}: bad value {text[:32]!r}")
        return int(text)


class DeviceDriver:
    """The per-type part of a backend. Every method may raise DeviceError."""

    #: the directory name under ``backend/`` (``vbd``, ``vif``, ``console``)
    type = ""

    async def probe(self, dev: DeviceInfo) -> dict[str, str]:
        """Open the device; return the keys to publish with InitWait."""
        return {}

    async def connect(self, dev: DeviceInfo) -> dict[str, str]:
        """Read the frontend's ring keys, map and bind; keys to publish with Connected."""
        return {}

    async def disconnect(self, dev: DeviceInfo) -> None:
        """Unmap and unbind (called once after each successful connect)."""

    def counters(self, dev: DeviceInfo) -> dict[str, int]:
        """The device's I/O counters while connected (``xl top``; Linux's
        ``statistics/`` of a vbd, a vif's byte counts); none by default."""
        return {}


DRIVERS: dict[str, Callable[[], DeviceDriver]] = {}


def register(cls: type[DeviceDriver]) -> type[DeviceDriver]:
    """Class decorator: ``cls`` serves ``backend/<cls.type>``."""
    if not cls.type or "/" in cls.type:
        raise ValueError(f"bad device type {cls.type!r}")
    DRIVERS[cls.type] = cls
    return cls


class Device:
    """The task of one device instance (see the module docstring)."""

    def __init__(self, info: DeviceInfo, driver: DeviceDriver) -> None:
        self.info = info
        self.driver = driver
        self.state = S.XenbusStateUnknown
        self.frontend_state = S.XenbusStateUnknown
        self.connected = False
        self.changed = trio.Event()

    @property
    def name(self) -> str:
        return f"{self.info.type}/{self.info.domid}/{self.info.devid}"

    # -- store access ----------------------------------------------------------------
    async def _read(self, path: str) -> str | None:
        try:
            return (await self.info.xs.read(path)).decode("ascii", "replace")
        except XsError as e:
            if e.name == "ENOENT":
                return None
            raise

    async def _switch(self, new: XenbusState, keys: dict[str, str] | None = None) -> bool:
        """``xenbus_switch_state`` (with ``keys`` written alongside): in one
        transaction that first checks the directory is still there, so a
        removed device is never resurrected. False if it is gone."""
        transition(self.state, new)
        node = self.info.nodename

        async def tx(t) -> bool:
            try:
                await t.read(f"{node}/state")
            except XsError as e:
                if e.name == "ENOENT":
                    return False
                raise
            for k, v in (keys or {}).items():
                await t.write(f"{node}/{k}", v)
            if new != self.state or keys:
                await t.write(f"{node}/state", str(int(new)))
            return True

        ok = await self.info.xs.run_transaction(tx)
        if ok and new != self.state:
            log.info("%s: %s -> %s (frontend %s)", self.name, self.state.name[11:], new.name[11:],
                     self.frontend_state.name[11:])
            self.state = new
        return ok

    async def _fatal(self, e: DeviceError) -> None:
        """``xenbus_dev_fatal``: record the error, then Closing."""
        log.warning("%s: %s", self.name, e)
        home = self.info.nodename.split("/backend/")[0]
        try:
            await self.info.xs.write(f"{home}/error{self.info.nodename[len(home):]}/error",
                                     f"{e.errno} {e}")
        except XsError as err:
            log.warning("%s: cannot write its error node: %s", self.name, err)
        await self._disconnect()
        if self.state != S.XenbusStateClosed:
            await self._switch(S.XenbusStateClosing)

    async def _disconnect(self) -> None:
        if self.connected:
            self.connected = False
            await self.driver.disconnect(self.info)

    # -- the handshake ---------------------------------------------------------------
    async def _watch(self, path: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with self.info.xs.watch(path) as events:
            task_status.started()
            async for _ in events:
                self.changed.set()

    async def run(self) -> None:
        """Until the device is removed (or the task cancelled, which closes it)."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._watch, self.info.nodename)
                await nursery.start(self._watch, f"{self.info.otherend}/state")
                await self._start()
                while await self._step():
                    await self.changed.wait()
                    self.changed = trio.Event()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + CLOSE_TIMEOUT
                await self._close_on_exit()

    async def _start(self) -> None:
        """Pick the device up where the store says it is (a restarted backendd
        finds devices mid-handshake or connected)."""
        text = await self._read(f"{self.info.nodename}/state")
        try:
            self.state = parse_xenbus_state(text) if text is not None else S.XenbusStateUnknown
        except ValueError:
            self.state = S.XenbusStateUnknown
        if self.state in (S.XenbusStateUnknown, S.XenbusStateInitialising, S.XenbusStateInitWait):
            await self._probe()
        elif self.state == S.XenbusStateConnected:
            await self._probe(switch=False)
            await self._connect(resume=True)

    async def _probe(self, switch: bool = True) -> None:
        try:
            keys = await self.driver.probe(self.info)
        except DeviceError as e:
            await self._fatal(e)
            return
        if switch:
            if self.state == S.XenbusStateUnknown:
                self.state = S.XenbusStateInitialising
            await self._switch(S.XenbusStateInitWait, keys)

    async def _connect(self, resume: bool = False) -> None:
        try:
            keys = await self.driver.connect(self.info)
        except DeviceError as e:
            await self._fatal(e)
            return
        self.connected = True
        if resume:
            log.info("%s: resumed Connected", self.name)
        await self._switch(S.XenbusStateConnected, keys)

    async def _step(self) -> bool:
        """React to the current store contents; False when the device is gone."""
        node = self.info.nodename
        if await self._read(f"{node}/state") is None:
            log.info("%s: backend directory removed", self.name)
            await self._disconnect()
            return False
        text = await self._read(f"{self.info.otherend}/state")
        try:
            # A node that is missing or not a number reads as Unknown, as
            # xenbus_read_driver_state does.
            self.frontend_state = parse_xenbus_state(text) if text is not None else S.XenbusStateUnknown
        except ValueError:
            self.frontend_state = S.XenbusStateUnknown
        online = (await self._read(f"{node}/online")) == "1"
        action = backend_step(self.state, self.frontend_state, online)
        if action is BackendAction.INIT_WAIT:
            await self._probe()
        elif action is BackendAction.CONNECT:
            await self._connect()
        elif action is BackendAction.CLOSE:
            await self._switch(S.XenbusStateClosing)
        elif action in (BackendAction.CLOSED, BackendAction.REMOVE):
            await self._disconnect()
            await self._switch(S.XenbusStateClosed)
            if action is BackendAction.REMOVE:
                log.info("%s: frontend %s with the device offline: removed", self.name,
                         self.frontend_state.name[11:])
                return False
        elif action is BackendAction.FATAL:
            await self._fatal(DeviceError(errno.EINVAL, f"saw state {int(self.frontend_state)} at frontend"))
        return True

    async def _close_on_exit(self) -> None:
        """Close the device on the way out (SIGTERM): disconnect, state Closed."""
        try:
            await self._disconnect()
            if self.state not in (S.XenbusStateClosed, S.XenbusStateUnknown):
                await self._switch(S.XenbusStateClosed)
        except (XsError, XsConnectionLost, DeviceError, OSError) as e:
            log.warning("%s: not closed cleanly: %s", self.name, e)
