"""xenbus for a domU: the XenStore client over the domain's store ring.

The toolstack gives a domain a store page (``start_info.store_mfn``, a gfn
of its own memory) and an event-channel port (``start_info.store_evtchn``,
allocated unbound for dom0, which xenstored binds after ``XS_INTRODUCE``).
This module turns the two into a :class:`libxen.xenstore.aio.XsClient`, the
same client dom0 tools use over the socket: a guest's requests are
unprivileged, so XenStore permissions and quotas apply to it.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from collections.abc import AsyncIterator

import trio

from libxen.evtchn import XenEvtchn
from libxen.xsring import XsRingStream
from libxen.xenstore.aio import XsClient


@asynccontextmanager
async def open_xenbus(evtchn: XenEvtchn, page: memoryview, port: int) -> AsyncIterator[XsClient]:
    """An XsClient over the ring in ``page`` signalled through ``port``."""
    stream = XsRingStream(page, lambda: evtchn.notify_soon(port), server=False)

    async def pump() -> None:
        while True:
            await evtchn.wait_port(port)
            stream.kick()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump)
        try:
            async with XsClient.over_stream(stream) as xs:
                yield xs
        finally:
            nursery.cancel_scope.cancel()
