"""A test-only device driver (``backend/vtest``): the handshake with no I/O.

Probe publishes ``feature-vtest``; connect reads the frontend's ``ring-ref``
and ``event-channel`` as a real driver would (guest-written: checked) and
publishes what it read; every call is counted under ``/tool/vtest/<domid>/<devid>``
(outside the device, which may be gone) so tests see what the driver did.
"""

from __future__ import annotations

import errno

from backendd.device import DeviceDriver, DeviceError, DeviceInfo


class VTest(DeviceDriver):
    type = "vtest"

    async def _count(self, dev: DeviceInfo, what: str) -> None:
        n = dev.extra.get(what, 0) + 1
        dev.extra[what] = n
        await dev.xs.write(f"/tool/vtest/{dev.domid}/{dev.devid}/{what}", str(n))

    async def probe(self, dev: DeviceInfo) -> dict[str, str]:
        await self._count(dev, "probes")
        return {"feature-vtest": "1"}

    async def connect(self, dev: DeviceInfo) -> dict[str, str]:
        ref = await dev.read_uint("ring-ref")
        port = await dev.read_uint("event-channel", limit=4095)
        if ref == 0:
            raise DeviceError(errno.EINVAL, f"reading {dev.otherend}/ring-ref: grant 0 is reserved")
        await self._count(dev, "connects")
        return {"vtest-ring": f"{ref}:{port}"}

    async def disconnect(self, dev: DeviceInfo) -> None:
        await self._count(dev, "disconnects")
