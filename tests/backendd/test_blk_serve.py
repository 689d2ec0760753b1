"""blkback's request loop (``backendd/blkback/serve.py``) on an in-memory
ring with a real image file: the lost-wakeup interleaving of ``io/ring.h``
(the frontend pushes between the backend's last look and its ``req_event``
store, so it sends no notification) strands no request, and data goes
between the image and the mapped page."""

from __future__ import annotations

import trio

from backendd.blkback.grants import Grants
from backendd.blkback.io import Image
from backendd.blkback.ring import Limits
from backendd.blkback.serve import Blkif
from hypervisord.public.io.blkif import BLKIF_RESPONSE, BLKIF_SRING_ENTRY_SIZE
from hypervisord.public.io.ring import SRING_REQ_EVENT_OFF, BackRing, FrontRing, SharedRing
from libxen.gnttab import GrantMap
from tests.backendd.blkraw import rw_request


class Evtchn:
    def __init__(self) -> None:
        self.sent = 0
        self.kicked = trio.Event()

    def notify_soon(self, port: int) -> None:
        self.sent += 1

    async def wait_port(self, port: int) -> None:
        await self.kicked.wait()  # the frontend in this test never kicks


class Mapper:
    def __init__(self, pages: dict[int, bytearray]) -> None:
        self.pages = pages

    async def map_batch(self, refs):
        return [GrantMap(d, r, r, ro, memoryview(self.pages[r]), None) for d, r, ro in refs]


class RacyRing(SharedRing):
    """Runs ``hook`` just before the backend stores ``req_event``: the
    frontend pushes then, and still sees the old event index."""

    hook = None

    def _store(self, off: int, value: int) -> None:
        if off == SRING_REQ_EVENT_OFF and RacyRing.hook is not None:
            hook, RacyRing.hook = RacyRing.hook, None
            hook()
        super()._store(off, value)


def test_request_pushed_during_the_final_check_is_served_without_a_notification(tmp_path):
    image_path = tmp_path / "disk.img"
    image_path.write_bytes(b"D" * 8192)
    area = bytearray(4096)
    sring = RacyRing(area, BLKIF_SRING_ENTRY_SIZE)
    front = FrontRing.init(sring)
    back = BackRing.init(sring)
    page = bytearray(4096)
    ev = Evtchn()
    image = Image.open(str(image_path), readonly=False)
    blkif = Blkif("vbd/1/0", image, Limits(16, False, 256), back,
                  Grants(Mapper({9: page}), 1, persistent=True), ev, 5)
    notified = []

    def frontend_pushes() -> None:
        front.put_request(rw_request(0, 42, 0, [(9, 0, 7)]))
        notified.append(front.push_requests_and_check_notify())

    # A first request (its kick is not needed: the loop looks at the ring
    # first); the backend serves it, then, going idle, stores req_event: the
    # second request comes just before that store.
    front.put_request(rw_request(0, 41, 8, [(9, 0, 7)]))
    front.push_requests()
    RacyRing.hook = frontend_pushes

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(blkif.run)
            with trio.fail_after(5):
                while front.nr_unconsumed_responses() < 2:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert notified == [False]  # the frontend sent nothing: the old req_event was behind it
    assert [BLKIF_RESPONSE.unpack_from(r) for r in front.take_responses()] == [(41, 0, 0), (42, 0, 0)]
    assert ev.kicked.is_set() is False
    assert page == b"D" * 4096
    image.close()
