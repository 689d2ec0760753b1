"""Adding and removing a domain's devices, waiting for the backend as libxl does.

Follows ``tools/libs/light/libxl_device.c`` (``libxl__wait_device_connection``,
``libxl__initiate_device_generic_remove``, ``device_backend_callback``,
``libxl__device_destroy``) with libxl's timeouts (``libxl_internal.h``)::

    add     both directories in one transaction (xenstore_layout.device_add),
            then the backend must reach InitWait within LIBXL_INIT_TIMEOUT;
            a vif's hotplug-status must then say "connected" within
            LIBXL_HOTPLUG_TIMEOUT (backendd's netback does what the
            vif-bridge script does, and writes it as the script would).
            A device that does not get there is removed again.
    remove  online=0 and, unless already Closed, state=5 (Closing) in one
            transaction; the backend must reach Closed (6) within
            LIBXL_DESTROY_TIMEOUT; then the backend, frontend and /libxl
            directories go. Forced (``-f``, or a dead domain): the frontend
            directory goes in that same transaction (libxl's force path),
            so the backend sees its frontend gone (Unknown) and closes.

Who answers is backendd, so every timeout names it, with the device, the
state seen and the state wanted. Waiting polls the backend's ``state``
nodes (one batched read per round for all devices): the sync client has
no timed watch read, and a poll cannot miss a state that a watch would
report only as "changed".

A dead domain's devices are torn down (:func:`teardown_domain`) by whoever
destroys it: ``xl destroy``, the launcher when a guest process ends, a
failed ``xl create``. A backend that never reaches Closed is removed anyway
after the timeout, with one log line naming it: no zombie domain.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hypervisord.public.io.xenbus import XenbusState
from libxen.xenstore import protocol as xsops
from libxen.xenstore.errors import XsError
from libxen.xenstore.sync import XsSyncClient
from toolstack import xenstore_layout as layout
from toolstack import xsbatch

#: ``libxl_internal.h``: seconds for a backend to reach InitWait / Closed,
#: and for a hotplug script to report
LIBXL_INIT_TIMEOUT = 10.0
LIBXL_DESTROY_TIMEOUT = 10.0
LIBXL_HOTPLUG_TIMEOUT = 40.0
#: tests only: seconds that replace all three (waiting 10 s for a backend
#: that is made to hang would make the suite slow)
TIMEOUT_ENV = "PVXEN_DEVICE_TIMEOUT"
POLL = 0.02
DAEMON = "backendd"  # who serves backend/<kind> for domain 0
S = XenbusState
_BACKEND = re.compile(r"/local/domain/(\d{1,5})/backend/[a-z]+/\d{1,5}/\d{1,10}")

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def timeout(default: float) -> float:
    """``default``, unless the test-only :data:`TIMEOUT_ENV` says otherwise."""
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(text)
    except ValueError:
        return default
    return value if 0 < value < default else default


def state_name(value: int | None) -> str:
    if value is None:
        return "none (the node is gone)"
    try:
        return f"{value} ({S(value).name.removeprefix('XenbusState')})"
    except ValueError:
        return str(value)


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """One device instance: ``kind`` (vbd, vif) ``devid`` of domain ``domid``."""

    kind: str
    domid: int
    devid: int
    backend_domid: int = 0

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.domid}/{self.devid}"

    @property
    def frontend(self) -> str:
        return layout.frontend_path(self.kind, self.domid, self.devid)

    @property
    def backend(self) -> str:
        return layout.backend_path(self.kind, self.domid, self.devid, self.backend_domid)

    @property
    def libxl(self) -> str:
        return f"{layout.libxl_path(self.domid)}/device/{self.kind}/{self.devid}"


class DeviceError(Exception):
    """A device could not be added or removed; the message says why."""

    def __init__(self, ref: DeviceRef, message: str) -> None:
        super().__init__(message)
        self.ref = ref


class DeviceTimeout(DeviceError):
    """The backend did not get where it should within ``seconds``."""

    def __init__(self, ref: DeviceRef, what: str, seen: str, wanted: str,
                 seconds: float) -> None:
        super().__init__(ref, f"device {ref.name} ({ref.backend}): {DAEMON} did not bring "
                              f"its {what} to {wanted} within {seconds:g} s: it is {seen}")
        self.seen, self.wanted, self.seconds = seen, wanted, seconds


# -- reading the store --------------------------------------------------------------------

def _uint(text: str | None) -> int | None:
    return int(text) if text is not None and text.isascii() and text.isdigit() \
        and len(text) < 6 else None


def backend_states(xs: XsSyncClient, refs: list[DeviceRef]) -> list[int | None]:
    """Each backend's ``state`` (None when gone; an unreadable value reads as Unknown)."""
    values = xsbatch.read_many(xs, [f"{r.backend}/state" for r in refs])
    return [None if v is None else (_uint(v) if _uint(v) is not None else 0) for v in values]


def backend_domid_of(path: str | None) -> int | None:
    """``libxl__backendpath_parse_domid``: the domain in a backend path."""
    m = _BACKEND.fullmatch(path or "")
    return int(m[1]) if m else None


def _devids(children: list[bytes] | XsError) -> list[int]:
    if isinstance(children, XsError):
        return []
    return sorted(int(c) for c in children if c.isascii() and c.isdigit() and len(c) <= 10)


def list_devids(xs: XsSyncClient, path: str) -> list[int]:
    return _devids(xs.batch([xsops.directory(path)])[0])


def domain_devices(xs: XsSyncClient, domid: int,
                   kinds: Iterable[str] = layout.DEVICE_KINDS) -> list[DeviceRef]:
    """Every device of ``domid``: the toolstack's copies under ``/libxl`` and
    any backend directory for it in dom0 (one written by hand counts too).
    One round trip when there are none (every destroy asks)."""
    kinds = list(kinds)
    dirs = [p for kind in kinds for p in (f"{layout.libxl_path(domid)}/device/{kind}",
                                          f"{layout.dom_path(0)}/backend/{kind}/{domid}")]
    listed = [_devids(r) for r in xs.batch([xsops.directory(p) for p in dirs])]
    in_libxl = [(kind, devid) for kind, devids in zip(kinds, listed[0::2]) for devid in devids]
    backends = xsbatch.read_many(xs, [f"{layout.libxl_path(domid)}/device/{k}/{d}/backend"
                                      for k, d in in_libxl]) if in_libxl else []
    found: dict[tuple[str, int], DeviceRef] = {
        (kind, devid): DeviceRef(kind, domid, devid, backend_domid_of(backend) or 0)
        for (kind, devid), backend in zip(in_libxl, backends)}
    for kind, devids in zip(kinds, listed[1::2]):
        for devid in devids:
            found.setdefault((kind, devid), DeviceRef(kind, domid, devid))
    return sorted(found.values(), key=lambda r: (kinds.index(r.kind), r.devid))


# -- waiting ------------------------------------------------------------------------------

def wait_states(xs: XsSyncClient, refs: list[DeviceRef], done: Callable[[int | None], bool],
                seconds: float, failed: Callable[[int | None], bool] = lambda s: False
                ) -> dict[DeviceRef, int | None]:
    """Poll until every backend state satisfies ``done``; returns the devices
    that did not in ``seconds`` (or that ``failed``), with the state seen."""
    pending = list(refs)
    deadline = time.monotonic() + seconds
    while pending:
        states = backend_states(xs, pending)
        bad = {r: s for r, s in zip(pending, states) if failed(s)}
        if bad:
            return bad
        late = {r: s for r, s in zip(pending, states) if not done(s)}
        if late and time.monotonic() >= deadline:
            return late
        pending = list(late)
        if pending:
            time.sleep(POLL)
    return {}


def _connected_enough(state: int | None) -> bool:
    # A fast frontend may take the backend past InitWait between two polls.
    return state in (S.XenbusStateInitWait, S.XenbusStateInitialised, S.XenbusStateConnected)


def _closing_or_gone(state: int | None) -> bool:
    return state is None or state in (S.XenbusStateClosing, S.XenbusStateClosed)


def backend_error_path(backend: str) -> str:
    """Where ``xenbus_dev_fatal`` records why a backend closed its device:
    ``<backend domain>/error/backend/<type>/<domid>/<devid>/error``."""
    home, _, rest = backend.partition("/backend/")
    return f"{home}/error/backend/{rest}/error"


def wait_connection(xs: XsSyncClient, refs: list[DeviceRef]) -> None:
    """``libxl__wait_device_connection``, then the vifs' hotplug status;
    DeviceTimeout for the first device that did not get there."""
    seconds = timeout(LIBXL_INIT_TIMEOUT)
    late = wait_states(xs, refs, _connected_enough, seconds, failed=_closing_or_gone)
    for ref, state in late.items():
        if _closing_or_gone(state):
            # The backend gave up (xenbus_dev_fatal): its reason is in the
            # backend domain's error/ directory, as Linux's backends leave it.
            why = xsbatch.read(xs, backend_error_path(ref.backend))
            raise DeviceError(ref, f"device {ref.name} ({ref.backend}): {DAEMON} closed it "
                                   f"before InitWait (state {state_name(state)})"
                                   + (f": {why}" if why else ""))
        raise DeviceTimeout(ref, "state", f"in state {state_name(state)}",
                            f"state {state_name(S.XenbusStateInitWait)}", seconds)
    vifs = [r for r in refs if r.kind == "vif"]
    if vifs:
        wait_hotplug(xs, vifs)


def wait_hotplug(xs: XsSyncClient, refs: list[DeviceRef]) -> None:
    """``hotplug-status`` = ``connected``, as the vif-bridge script reports it
    (``error`` with ``hotplug-error`` when it failed)."""
    seconds = timeout(LIBXL_HOTPLUG_TIMEOUT)
    deadline = time.monotonic() + seconds
    pending = list(refs)
    while pending:
        values = xsbatch.read_many(xs, [f"{r.backend}/hotplug-status" for r in pending])
        for ref, value in zip(pending, values):
            if value == "error":
                why = xsbatch.read(xs, f"{ref.backend}/hotplug-error") or "no hotplug-error"
                raise DeviceError(ref, f"device {ref.name} ({ref.backend}): {DAEMON} reports "
                                       f"hotplug-status error: {why}")
        late = [(r, v) for r, v in zip(pending, values) if v != "connected"]
        if late and time.monotonic() >= deadline:
            ref, value = late[0]
            raise DeviceTimeout(ref, "hotplug-status", repr(value if value is not None else ""),
                                "'connected'", seconds)
        pending = [r for r, _ in late]
        if pending:
            time.sleep(POLL)


# -- adding -------------------------------------------------------------------------------

def add(xs: XsSyncClient, ref: DeviceRef, ops: list[layout.Op]) -> None:
    """``libxl__device_add``: write, wait for the backend, undo on failure."""
    def check(tx_id: int) -> None:
        if xsbatch.read(xs, layout.dom_path(ref.domid), tx_id) is None:
            raise DeviceError(ref, f"domain {ref.domid} has no XenStore directory")
        if xsbatch.read(xs, f"{ref.libxl}/backend", tx_id) is not None:
            raise DeviceError(ref, f"device {ref.name} already exists in xenstore "
                                   f"({ref.libxl})")

    def body(tx_id: int) -> None:
        check(tx_id)
        xsbatch.apply_ops(xs, ops, tx_id)

    xs.run_transaction(body, attempts=20)
    try:
        wait_connection(xs, [ref])
    except BaseException:
        destroy(xs, [ref])
        raise


# -- removing -----------------------------------------------------------------------------

def initiate_remove(xs: XsSyncClient, refs: list[DeviceRef], force: bool) -> list[DeviceRef]:
    """online=0, state=Closing unless Closed, for the devices whose backend
    is still there (never recreating a removed one); forced: the frontend
    directories too. Returns the devices that had a backend."""
    def body(tx_id: int) -> list[DeviceRef]:
        states = xsbatch.read_many(xs, [f"{r.backend}/state" for r in refs], tx_id)
        present = []
        ops: list[layout.Op] = []
        for ref, state in zip(refs, states):
            if force:
                ops.append(layout.Op("rm", ref.frontend))
            if state is None:
                continue
            present.append(ref)
            ops.append(layout.Op("write", f"{ref.backend}/online", "0"))
            if state != str(int(S.XenbusStateClosed)):
                ops.append(layout.Op("write", f"{ref.backend}/state",
                                     str(int(S.XenbusStateClosing))))
        xsbatch.apply_ops(xs, ops, tx_id)
        return present

    return xs.run_transaction(body, attempts=20)


def destroy(xs: XsSyncClient, refs: list[DeviceRef]) -> None:
    """``libxl__device_destroy``: backend, frontend and /libxl directories, at once."""
    ops = [layout.Op("rm", p) for r in refs for p in (r.backend, r.frontend, r.libxl)]
    if ops:
        xs.run_transaction(lambda tx_id: xsbatch.apply_ops(xs, ops, tx_id), attempts=20)


def wait_closed(xs: XsSyncClient, refs: list[DeviceRef],
                seconds: float | None = None) -> dict[DeviceRef, int | None]:
    """The devices whose backend is not Closed (nor gone) after ``seconds``."""
    seconds = timeout(LIBXL_DESTROY_TIMEOUT) if seconds is None else seconds
    return wait_states(xs, refs, lambda s: s is None or s == S.XenbusStateClosed, seconds)


def remove(xs: XsSyncClient, ref: DeviceRef, *, force: bool = False,
           force_on_timeout: bool = False, log: Log = _stderr) -> None:
    """``libxl__initiate_device_generic_remove`` and what follows for one
    device: DeviceTimeout if its backend does not close (unless
    ``force_on_timeout``: then, as libxl does for a vif, removed anyway)."""
    present = initiate_remove(xs, [ref], force)
    if present and not force:
        seconds = timeout(LIBXL_DESTROY_TIMEOUT)
        late = wait_closed(xs, present, seconds)
        if late:
            state = late[ref]
            if not force_on_timeout:
                raise DeviceTimeout(ref, "state", f"in state {state_name(state)}",
                                    f"state {state_name(S.XenbusStateClosed)}", seconds)
            log(f"libxl: warning: device {ref.name}: {DAEMON} did not close it within "
                f"{seconds:g} s (state {state_name(state)}): initiating forced remove")
            initiate_remove(xs, [ref], True)
    destroy(xs, [ref])


def teardown_domain(xs: XsSyncClient, domid: int, *, log: Log = _stderr) -> list[DeviceRef]:
    """A dead (or dying) domain's devices, all at once: forced removal (its
    frontend cannot answer), then up to LIBXL_DESTROY_TIMEOUT for each
    backend to reach Closed; every directory goes either way. Returns the
    devices whose backend never closed (one log line each)."""
    refs = domain_devices(xs, domid)
    if not refs:
        return []
    present = initiate_remove(xs, refs, force=True)
    seconds = timeout(LIBXL_DESTROY_TIMEOUT)
    late = wait_closed(xs, present, seconds)
    for ref, state in late.items():
        log(f"libxl: warning: device {ref.name}: {DAEMON} did not close it within "
            f"{seconds:g} s (state {state_name(state)}); its directories are removed anyway")
    destroy(xs, refs)
    return list(late)


def config_devices(domid: int, disks=(), nics=()) -> list[DeviceRef]:
    """The devices ``xenstore_layout.devices_ops`` writes for a configuration."""
    return ([DeviceRef("vbd", domid, d.devid, d.backend_domid) for d in disks]
            + [DeviceRef("vif", domid, n.devid, n.backend_domid) for n in nics])


def wait_created(xs: XsSyncClient, domid: int, disks=(), nics=()) -> None:
    """``xl create``: the configuration's devices, written with the domain,
    must reach InitWait (vifs: hotplug connected) before it is unpaused.
    DeviceError names the first that did not; the caller destroys the domain."""
    refs = config_devices(domid, disks, nics)
    if refs:
        wait_connection(xs, refs)


def creation_error(domid: int, e: DeviceError) -> str:
    """libxl's lines for a device that failed at creation (``libxl_create.c``)."""
    what = "disk" if e.ref.kind == "vbd" else "nic"
    return (f"libxl: error: {e}\nlibxl: error: Domain {domid}:unable to add {what} devices")
