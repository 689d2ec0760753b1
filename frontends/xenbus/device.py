"""The frontend half of a split device's xenbus handshake.

What Linux's ``drivers/xen/xenbus/xenbus_probe_frontend.c`` and
``xenbus_client.c`` do for blkfront and netfront, for a program guest:

1. :meth:`FrontendDevice.open` reads ``~/device/<type>/<devid>/backend``
   and ``backend-id`` (written by the toolstack; the backend path must be
   in the backend domain's ``backend/<type>/<our domid>/<devid>``, as
   ``xenbus_probe_frontend``'s ``read_backend_details`` checks);
2. the driver waits for the backend's InitWait (:meth:`wait_backend`),
   reads its features (:meth:`read_backend`, :meth:`backend_uint`), sets up
   its rings and publishes them with :meth:`switch` (the keys and the new
   state in one transaction, as blkfront's ``talk_to_blkback`` does);
3. it waits for the backend's Connected and switches to Connected;
4. :meth:`close` is the way out: Closing, wait for the backend to close,
   Closed (``xenbus_frontend_closed``).

The backend's keys are written by dom0 and read here as the backend's
word; a missing or malformed key is a :class:`FrontendError` naming it.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from libxen.xenbus import XenbusState, parse_xenbus_state, transition
from libxen.xenstore.aio import XsClient, XsError

S = XenbusState
#: libxl's LIBXL_INIT_TIMEOUT / LIBXL_DESTROY_TIMEOUT, the frontend's default too
DEFAULT_TIMEOUT = 10.0


class FrontendError(Exception):
    """The handshake cannot go on; ``errno`` says why."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


def _short(state: XenbusState) -> str:
    return state.name[len("XenbusState"):]


async def _read(xs: XsClient, path: str) -> str | None:
    try:
        return (await xs.read(path)).decode("ascii", "replace")
    except XsError as e:
        if e.name == "ENOENT":
            return None
        raise


async def find_devices(domain: Any, dtype: str) -> list[int]:
    """The devids the toolstack gave this domain under ``~/device/<dtype>``."""
    xs = await domain.open_xenbus()
    try:
        names = await xs.directory(f"/local/domain/{domain.domid}/device/{dtype}")
    except XsError as e:
        if e.name == "ENOENT":
            return []
        raise
    return sorted(int(n) for n in names if n.isdigit())


class FrontendDevice:
    """One device instance as its frontend sees it (see the module docstring)."""

    def __init__(self, domain: Any, xs: XsClient, dtype: str, devid: int,
                 backend: str, backend_id: int, state: XenbusState) -> None:
        self.domain = domain
        self.xs = xs
        self.type = dtype
        self.devid = devid
        self.nodename = f"/local/domain/{domain.domid}/device/{dtype}/{devid}"
        self.backend = backend
        self.backend_id = backend_id
        self.state = state

    def __repr__(self) -> str:
        return f"<FrontendDevice {self.type}/{self.devid} -> {self.backend}>"

    @property
    def name(self) -> str:
        return f"{self.type}/{self.devid}"

    @classmethod
    async def open(cls, domain: Any, dtype: str, devid: int) -> "FrontendDevice":
        xs = await domain.open_xenbus()
        node = f"/local/domain/{domain.domid}/device/{dtype}/{devid}"
        backend = await _read(xs, f"{node}/backend")
        backend_id = await _read(xs, f"{node}/backend-id")
        if backend is None or backend_id is None:
            raise FrontendError(errno.ENODEV, f"{node}: no such device (backend or backend-id missing)")
        if not backend_id.isdigit() or int(backend_id) > 0x7FEF:
            raise FrontendError(errno.EINVAL, f"{node}/backend-id: bad value {backend_id!r}")
        expected = f"/local/domain/{int(backend_id)}/backend/{dtype}/{domain.domid}/{devid}"
        if backend != expected:
            raise FrontendError(errno.EINVAL, f"{node}/backend: {backend!r} is not {expected!r}")
        text = await _read(xs, f"{node}/state")
        try:
            state = parse_xenbus_state(text) if text is not None else S.XenbusStateUnknown
        except ValueError:
            state = S.XenbusStateUnknown
        return cls(domain, xs, dtype, devid, backend, int(backend_id), state)

    # -- the backend's keys ---------------------------------------------------------
    async def read_backend(self, key: str) -> str | None:
        return await _read(self.xs, f"{self.backend}/{key}")

    async def backend_uint(self, key: str, default: int | None = None,
                           limit: int = 2**32 - 1) -> int:
        text = await self.read_backend(key)
        if text is None:
            if default is None:
                raise FrontendError(errno.ENOENT, f"{self.backend}/{key}: missing")
            return default
        if not text.isdigit() or len(text) > 20 or int(text) > limit:
            raise FrontendError(errno.EINVAL, f"{self.backend}/{key}: bad value {text[:32]!r}")
        return int(text)

    async def backend_state(self) -> XenbusState:
        text = await self.read_backend("state")
        try:
            return parse_xenbus_state(text) if text is not None else S.XenbusStateUnknown
        except ValueError:
            return S.XenbusStateUnknown

    @asynccontextmanager
    async def watch_backend_state(self) -> AsyncIterator[AsyncIterator[XenbusState]]:
        """The backend's state, at once and after every change of it."""
        async with self.xs.watch(f"{self.backend}/state") as events:
            async def states() -> AsyncIterator[XenbusState]:
                async for _ in events:
                    yield await self.backend_state()
            yield states()

    async def wait_backend(self, *states: XenbusState,
                           timeout: float = DEFAULT_TIMEOUT) -> XenbusState:
        """Until the backend is in one of ``states``. A backend that closes
        instead (or never gets there in ``timeout`` seconds) is an error that
        names the state seen and the states wanted."""
        wanted = ", ".join(_short(s) for s in states)
        seen = S.XenbusStateUnknown
        with trio.move_on_after(timeout):
            async with self.watch_backend_state() as changes:
                async for seen in changes:
                    if seen in states:
                        return seen
                    if seen in (S.XenbusStateClosing, S.XenbusStateClosed) and \
                            self.state not in (S.XenbusStateClosing, S.XenbusStateClosed):
                        try:
                            error = await _read(self.xs, self._error_node())
                        except XsError:  # dom0's error node is usually not ours to read
                            error = None
                        raise FrontendError(errno.ENXIO, f"{self.name}: backend {self.backend} "
                                            f"is {_short(seen)}, expected {wanted}"
                                            + (f" (backend error: {error})" if error else ""))
        raise FrontendError(errno.ETIMEDOUT, f"{self.name}: backend {self.backend} still "
                            f"{_short(seen)} after {timeout:g} s, expected {wanted}")

    def _error_node(self) -> str:
        """Where ``xenbus_dev_fatal`` in the backend domain leaves its message."""
        home, _, rest = self.backend.partition("/backend/")
        return f"{home}/error/backend/{rest}/error"

    # -- our own state --------------------------------------------------------------
    async def switch(self, new: XenbusState, keys: dict[str, str] | None = None) -> None:
        """``xenbus_switch_state``, with ``keys`` written in the same transaction."""
        transition(self.state, new)
        node = self.nodename

        async def tx(t: Any) -> None:
            for k, v in (keys or {}).items():
                await t.write(f"{node}/{k}", v)
            await t.write(f"{node}/state", str(int(new)))

        await self.xs.run_transaction(tx)
        self.state = new

    async def close(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Closing; wait for the backend to close; Closed."""
        if self.state in (S.XenbusStateClosed, S.XenbusStateUnknown):
            return
        if self.state != S.XenbusStateClosing:
            await self.switch(S.XenbusStateClosing)
        try:
            await self.wait_backend(S.XenbusStateClosing, S.XenbusStateClosed, timeout=timeout)
        finally:
            if await _read(self.xs, f"{self.nodename}/state") is not None:
                await self.switch(S.XenbusStateClosed)
