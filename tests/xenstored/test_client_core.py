"""The one XenStore client: its sans-IO core, and both faces' pipelined
batches against the real daemon (libxen/xenstore/protocol.py, sync.py, aio.py)."""

from __future__ import annotations

import errno
import socket

import pytest

from hypervisord.public.io.xs_wire import XENSTORE_PAYLOAD_MAX, XsdSockmsgType as T
from libxen.xenstore import protocol as ops
from libxen.xenstore.aio import XsClient
from libxen.xenstore.errors import XsConnectionLost, XsError
from libxen.xenstore.protocol import Protocol, step
from libxen.xenstore.sync import XsSyncClient
from libxen.xenstore.wire import encode


def drive(op, replies):
    """Run an operation against scripted replies; returns (requests, result)."""
    sent = []
    request, result = step(op, None)
    replies = iter(replies)
    while request is not None:
        sent.append(request)
        request, result = step(op, next(replies))
    return sent, result


# -- the core, without I/O --------------------------------------------------
@pytest.mark.timeout(10)
def test_directory_falls_back_to_directory_part_after_e2big() -> None:
    sent, result = drive(ops.directory("/big"), [
        XsError("E2BIG"), b"7\0alpha\0be", b"7\0ta\0\0"])
    assert sent == [(T.XS_DIRECTORY, b"/big\0"),
                    (T.XS_DIRECTORY_PART, b"/big\x000\x00"),
                    (T.XS_DIRECTORY_PART, b"/big\x008\x00")]  # "alpha\\0be" so far
    assert result == [b"alpha", b"beta"]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("part_error, raised", [("ENOSYS", "E2BIG"), ("EACCES", "EACCES")])
def test_directory_part_errors(part_error: str, raised: str) -> None:
    """A daemon without DIRECTORY_PART leaves the listing too big (libxenstore)."""
    with pytest.raises(XsError) as exc:
        drive(ops.directory("/big"), [XsError("E2BIG"), XsError(part_error)])
    assert exc.value.name == raised
    assert exc.value.errno == getattr(errno, raised)


@pytest.mark.timeout(10)
def test_other_directory_errors_are_not_retried() -> None:
    with pytest.raises(XsError) as exc:
        drive(ops.directory("/x"), [XsError("ENOENT")])
    assert exc.value.errno == errno.ENOENT


@pytest.mark.timeout(10)
def test_request_ids_skip_zero_and_ids_still_awaited() -> None:
    proto = Protocol()
    proto._next_req_id = 0xFFFFFFFF
    first, _ = proto.request(T.XS_READ, b"/a\0")
    second, _ = proto.request(T.XS_READ, b"/b\0")
    assert (first, second) == (0xFFFFFFFF, 1)  # 0 is never used
    proto._next_req_id = 0xFFFFFFFF
    third, _ = proto.request(T.XS_READ, b"/c\0")
    assert third == 2  # 0xFFFFFFFF and 1 are still awaited


@pytest.mark.timeout(10)
def test_replies_are_matched_events_queued_strangers_refused() -> None:
    proto = Protocol()
    a, _ = proto.request(T.XS_READ, b"/a\0")
    b, _ = proto.request(T.XS_READ, b"/b\0")
    proto.forget(a)  # a cancelled caller
    data = (encode(T.XS_READ, a, 0, b"late") + encode(T.XS_WATCH_EVENT, 0, 0, b"/w\0tok\0")
            + encode(T.XS_READ, b, 0, b"vb"))
    replies = proto.feed(data)
    assert [(m.req_id, m.payload) for m in replies] == [(b, b"vb")]
    assert list(proto.events) == [(b"/w", b"tok")]
    with pytest.raises(XsConnectionLost, match="to no request"):
        proto.feed(encode(T.XS_READ, 999, 0, b"?"))


@pytest.mark.timeout(10)
def test_oversized_payload_is_e2big_before_sending() -> None:
    with pytest.raises(XsError) as exc:
        Protocol().request(T.XS_WRITE, b"x" * (XENSTORE_PAYLOAD_MAX + 1))
    assert exc.value.errno == errno.E2BIG


@pytest.mark.timeout(10)
def test_one_error_class_for_daemon_and_clients() -> None:
    """The daemon's handlers and the clients raise the same XsError."""
    from xenstored import core

    assert core.XsError is XsError
    e = XsError("ENOSPC", "too many nodes")
    assert (e.errno, e.payload(), str(e)) == (errno.ENOSPC, b"ENOSPC\0",
                                              "ENOSPC: No space left on device (too many nodes)")
    assert XsError("EWHATEVER").errno == errno.EINVAL  # as libxenstore's get_error()


# -- batches against the real daemon ------------------------------------------
def _big_listing(xs: XsSyncClient, n: int = 400) -> list[bytes]:
    names = [b"child-%04d-%s" % (i, b"x" * 20) for i in range(n)]  # > 4 KiB listing
    xs.batch([ops.write(b"/big/" + name, b"") for name in names])
    return names


@pytest.mark.timeout(60)
def test_sync_batch_mixes_errors_and_multi_round_operations(xenstored) -> None:
    with XsSyncClient.open(str(xenstored.socket)) as xs:
        names = _big_listing(xs)
        xs.write("/a", "va")
        results = xs.batch([ops.read("/a"), ops.read("/missing"), ops.directory("/big"),
                            ops.write("/b", "vb"), ops.exists("/b"),
                            ops.write("/x" * 3000, "v")])
        assert results[0] == b"va"
        assert isinstance(results[1], XsError) and results[1].errno == errno.ENOENT
        assert results[2] == names  # took DIRECTORY_PART rounds inside the batch
        assert results[3:5] == [None, True]
        assert isinstance(results[5], XsError) and results[5].errno in (errno.EINVAL, errno.E2BIG)
        assert xs.read("/b") == b"vb"  # the connection is still good


@pytest.mark.timeout(60)
def test_sync_batch_bigger_than_the_socket_buffers(xenstored) -> None:
    """Replies are read while the batch is still going out (xenstored stops
    reading a connection whose replies are not read)."""
    with XsSyncClient.open(str(xenstored.socket)) as xs:
        xs._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        xs._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        xs._sock.settimeout(20)
        value = b"v" * 3000
        n = 2000
        assert xs.batch([ops.write(b"/many/%d" % i, value) for i in range(n)]) == [None] * n
        assert xs.batch([ops.read(b"/many/%d" % i) for i in range(n)]) == [value] * n


@pytest.mark.timeout(60)
def test_sync_run_transaction_redoes_on_eagain(xenstored) -> None:
    with XsSyncClient.open(str(xenstored.socket)) as xs, \
            XsSyncClient.open(str(xenstored.socket)) as other:
        xs.write("/counter", "0")
        tries = []

        def bump(tx_id: int) -> int:
            value = int(xs.read("/counter", tx_id))
            tries.append(value)
            if len(tries) == 1:
                other.write("/counter", "10")  # a conflicting write
            xs.write("/counter", str(value + 1), tx_id)
            return value + 1

        assert xs.run_transaction(bump) == 11
        assert xs.read("/counter") == b"11"
        assert len(tries) == 2


async def test_aio_batch_and_transaction_batch(xenstored) -> None:
    with XsSyncClient.open(str(xenstored.socket)) as sync:
        names = [n.decode() for n in _big_listing(sync)]
    async with await XsClient.open(str(xenstored.socket)) as xs:
        results = await xs.batch([ops.write("/t/a", "1"), ops.read("/t/a"), ops.read("/t/no"),
                                  ops.directory("/big")])
        assert results[:2] == [None, b"1"]
        assert isinstance(results[2], XsError) and results[2].errno == errno.ENOENT
        assert [n.decode() for n in results[3]] == names
        assert await xs.directory("/big") == names

        async def body(t) -> None:
            await t.batch([ops.write("/t/b", "2"), ops.write("/t/c", "3")])

        await xs.run_transaction(body)
        assert await xs.batch([ops.read("/t/b"), ops.read("/t/c")]) == [b"2", b"3"]
