"""A test-only device driver (``backend/vtest``): the handshake with no I/O.

Probe publishes ``feature-vtest``; connect reads the frontend's ``ring-ref``
and ``event-channel`` as a real driver would (guest-written: checked) and
publishes what it read; every call is counted under ``/tool/vtest/<domid>/<devid>``
(outside the device, which may be gone) so tests see what the driver did.

Registered for the real types (``--device-type vbd=tests.backendd.vtest:VTest``)
it stands in for blkback/netback in toolstack tests. Fault injection, read
from the store at each call (a test sets it before or while the device runs):
``/tool/vtest/stall-probe`` and ``/tool/vtest/stall-disconnect`` hold seconds
for probe (the device stays Initialising: no InitWait) or disconnect (it
never reaches Closed) to hang. As a ``vif`` it also writes what netback and
the vif-bridge script write: ``hotplug-status`` = ``connected`` and
``pvxen-link`` (``/tool/vtest/link``, default ``switch``).
"""

from __future__ import annotations

import errno

import trio

from backendd.device import DeviceDriver, DeviceError, DeviceInfo
from libxen.xenstore.aio import XsError

STALL_MAX = 120.0


async def _tool_key(dev: DeviceInfo, key: str) -> str | None:
    try:
        return (await dev.xs.read(f"/tool/vtest/{key}")).decode()
    except XsError:
        return None


async def _stall(dev: DeviceInfo, key: str) -> None:
    text = await _tool_key(dev, key)
    if text:
        await trio.sleep(min(float(text), STALL_MAX))


class VTest(DeviceDriver):
    type = "vtest"

    async def _count(self, dev: DeviceInfo, what: str) -> None:
        n = dev.extra.get(what, 0) + 1
        dev.extra[what] = n
        await dev.xs.write(f"/tool/vtest/{dev.domid}/{dev.devid}/{what}", str(n))

    async def probe(self, dev: DeviceInfo) -> dict[str, str]:
        await self._count(dev, "probes")
        await _stall(dev, "stall-probe")
        keys = {"feature-vtest": "1"}
        if dev.type == "vif":
            keys["hotplug-status"] = "connected"
            keys["pvxen-link"] = await _tool_key(dev, "link") or "switch"
        return keys

    async def connect(self, dev: DeviceInfo) -> dict[str, str]:
        ref = await dev.read_uint("ring-ref")
        port = await dev.read_uint("event-channel", limit=4095)
        if ref == 0:
            raise DeviceError(errno.EINVAL, f"reading {dev.otherend}/ring-ref: grant 0 is reserved")
        await self._count(dev, "connects")
        return {"vtest-ring": f"{ref}:{port}"}

    async def disconnect(self, dev: DeviceInfo) -> None:
        await self._count(dev, "disconnects")
        await _stall(dev, "stall-disconnect")
