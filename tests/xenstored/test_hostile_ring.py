"""A hostile domain on its XenStore ring harms nobody else.

The domain's process (forked, holding only what ``connect_domain`` gave
it) maps its own store page and writes whatever it likes there: indices
that claim more bytes than the ring holds, a header announcing a payload
over XENSTORE_PAYLOAD_MAX, a message type nobody knows. xenstored must
answer the last with an error as on the socket, cut the domain off for the
first two (cxenstored ignores such a connection), and keep serving dom0
and the domain's nodes, never crash.
"""

from __future__ import annotations

import os
import time

import pytest

from libxen.core import SyncXenCall
from hypervisord.public.io.xs_wire import XS_RING_REQ_PROD_OFF, XS_RING_RSP_CONS_OFF, \
    XS_RING_RSP_PROD_OFF
from tests.xenstored.rawring import HEADER, RawRing, run_ring_guest
from tests.xenstored.test_domain_ring import STORE_GFN
from libxen.xenstore.sync import XsSyncClient

pytestmark = pytest.mark.timeout(60)
XS_READ = 2


def _guest(fds: dict, port: int, mode: str, result_w: int) -> None:
    import trio

    from libxen.core import XenCall
    from libxen.evtchn import XenEvtchn

    ring = RawRing(fds["memory"], STORE_GFN)
    get, put, put_request = ring.get, ring.put, ring.put_request

    async def reply_within(xe, seconds: float) -> bytes:
        with trio.move_on_after(seconds):
            while True:
                data = ring.take_response()
                if len(data) >= HEADER.size:
                    return data
                await trio.sleep(0.01)
        return b""

    async def main() -> None:
        async with XenCall.from_fd(fds["hypercall"]) as xc, \
                XenEvtchn.open(xc, fds["evtchn"], memory_fd=fds["memory"]) as xe:
            if mode == "indices":  # claims 5000 bytes in a 1024-byte ring
                put(XS_RING_REQ_PROD_OFF, get(XS_RING_REQ_PROD_OFF) + 5000)
            elif mode == "oversized":
                put_request(HEADER.pack(XS_READ, 1, 0, 5000))
            elif mode == "unknown-type":
                put_request(HEADER.pack(999, 7, 0, 0))
            elif mode == "response-indices":  # "I consumed 5000 bytes you never wrote"
                put(XS_RING_RSP_CONS_OFF, get(XS_RING_RSP_PROD_OFF) + 5000)
                put_request(HEADER.pack(XS_READ, 7, 0, 5) + b"data\0")
            await xe.notify(port)
            first = await reply_within(xe, 2.0)
            # then an honest request: is anybody still listening?
            put_request(HEADER.pack(XS_READ, 8, 0, 5) + b"data\0")
            await xe.notify(port)
            second = await reply_within(xe, 1.0)
            os.write(result_w, repr((first, second)).encode())
            await trio.sleep(30)  # stay alive: the test looks at the store meanwhile

    try:
        trio.run(main)
    except BaseException as e:
        os.write(result_w, f"error: {e!r}".encode())
    os._exit(0)


@pytest.mark.parametrize("mode", ["indices", "oversized", "unknown-type", "response-indices"])
def test_hostile_ring_contents(hypervisord, xenstored, mode):
    xc = SyncXenCall(hypervisord.privcmd)
    xs = XsSyncClient.open(str(xenstored.socket))
    domid, child, (first, second) = run_ring_guest(xc, xs, _guest, mode)
    try:
        if mode == "unknown-type":
            assert first == HEADER.pack(16, 7, 0, 7) + b"ENOSYS\0"  # XS_ERROR
            assert second[:HEADER.size] == HEADER.pack(XS_READ, 8, 0, 0)  # still served
        else:
            assert (first, second) == (b"", b""), "a broken ring must be cut off"
            reason = {"indices": "closing its connection: peer corrupted the ring indices",
                      "response-indices": "closing its connection: peer corrupted the ring "
                                          "indices",
                      "oversized": "protocol error, closing: payload length 5000"}[mode]
            assert f"WARNING d{domid}-ring: {reason}" in xenstored.log()
        # nobody else noticed
        assert xenstored.alive
        xs.write(f"/local/domain/{domid}/data/dom0-wrote", b"fine")
        assert xs.read(f"/local/domain/{domid}/data/dom0-wrote") == b"fine"
        assert xs.read("/local/domain/0/secret") == b"dom0 only"
    finally:
        child.kill()
        child.join(10)
        xs.close()
        xc.close()
    deadline = time.monotonic() + 10
    while xs_introduced(xenstored, domid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not xs_introduced(xenstored, domid), "the dead domain was not released"


def xs_introduced(xenstored, domid: int) -> bool:
    with XsSyncClient.open(str(xenstored.socket)) as xs:
        return xs.request(17, f"{domid}\0".encode()) == b"T\0"  # IS_DOMAIN_INTRODUCED
