"""The outstanding-requests quota: a domain gets at most N requests handled
before their replies go out (cxenstored's ``outstanding``, default 20)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from hypervisord.public.io.xs_wire import XsdSockmsgType as T
from xenstored.core import XenstoreCore
from xenstored.handlers import TABLE
from libxen.xenstore.wire import FrameParser, encode
from xenstored.quota import Quotas
from xenstored.service import XenstoreService


class CountingStream(trio.abc.Stream):
    """Delivers one burst of requests; records how many were handled per send."""

    def __init__(self, data: bytes, core: XenstoreCore) -> None:
        self.data = data
        self.core = core
        self.handled_at_send: list[int] = []
        self.sent = b""

    async def receive_some(self, max_bytes=None) -> bytes:
        await trio.lowlevel.checkpoint()
        data, self.data = self.data, b""
        return data  # then EOF

    async def send_all(self, data) -> None:
        self.handled_at_send.append(self.core.handled)
        self.sent += bytes(data)
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class CountingCore(XenstoreCore):
    handled = 0

    def handle(self, conn, msg):
        self.handled += 1
        return super().handle(conn, msg)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("privileged, limit", [(False, 20), (False, 3), (True, 20)])
async def test_requests_beyond_the_quota_wait_for_replies(privileged, limit):
    core = CountingCore(TABLE, quotas=Quotas(outstanding=limit))
    conn = core.connect(5, privileged=privileged)
    burst = b"".join(encode(T.XS_GET_DOMAIN_PATH, i, 0, b"5\0") for i in range(100))
    stream = CountingStream(burst, core)
    await XenstoreService(core).serve(conn, stream)
    replies = FrameParser().feed(stream.sent)
    assert [m.req_id for m in replies] == list(range(100))  # all answered, in order
    if privileged:
        assert stream.handled_at_send == [100]  # dom0 is not limited
    else:
        assert stream.handled_at_send[0] == limit
        steps = [b - a for a, b in zip([0] + stream.handled_at_send, stream.handled_at_send)]
        assert max(steps) <= limit
