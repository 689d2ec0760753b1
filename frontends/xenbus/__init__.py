"""xenbus for a domU: the XenStore client over the domain's store ring.

The toolstack gives a domain a store page (``start_info.store_mfn``, a gfn
of its own memory) and an event-channel port (``start_info.store_evtchn``,
allocated unbound for dom0, which xenstored binds after ``XS_INTRODUCE``).
This module turns the two into a :class:`libxen.xenstore.aio.XsClient`, the
same client dom0 tools use over the socket: a guest's requests are
unprivileged, so XenStore permissions and quotas apply to it.

xenstored restarts: the new daemon binds the same port again and sets the
ring's connection error indicator (``docs/misc/xenstore-ring.txt``). The
stream breaks with ``server_error`` set; the client then resets the ring
(the guest half of the reconnection) and registers its watches again, which
fire once more, as Linux's ``xs_resume`` (``drivers/xen/xenbus/xenbus_xs.c``)
does after a resume. Requests that were in flight fail with
``XsConnectionLost``: the server dropped them, the caller may redo them.
A break for any other reason (the ring's indices corrupted) is final.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from collections.abc import AsyncIterator

import trio

from libxen.evtchn import XenEvtchn
from libxen.xsring import XsRingStream
from hypervisord.public.io.xs_wire import XENSTORE_ERROR_NONE
from libxen.xenstore.aio import XsClient


@asynccontextmanager
async def open_xenbus(evtchn: XenEvtchn, page: memoryview, port: int) -> AsyncIterator[XsClient]:
    """An XsClient over the ring in ``page`` signalled through ``port``."""
    def new_stream() -> XsRingStream:
        return XsRingStream(page, lambda: evtchn.notify_soon(port), server=False)

    current = [new_stream()]  # the stream the event channel's kicks go to

    async def pump() -> None:
        while True:
            await evtchn.wait_port(port)
            current[0].kick()

    async def reopen(old: trio.abc.Stream) -> XsRingStream | None:
        assert isinstance(old, XsRingStream)
        if old.server_error == XENSTORE_ERROR_NONE:
            return None  # not a server asking for a reset: nothing to reconnect
        stream = current[0] = new_stream()
        await stream.reconnect()
        return stream

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump)
        try:
            async with XsClient.over_stream(current[0], reopen=reopen) as xs:
                yield xs
        finally:
            nursery.cancel_scope.cancel()
