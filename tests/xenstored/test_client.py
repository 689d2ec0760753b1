"""The client libraries: blocking (syncclient) and trio (client) against xenstored.

Pure tests cover socket discovery; the rest talk to the real daemon process
(``xenstored`` fixture): errors, queued watch events, concurrent requests,
watch iterators, transactions retried on EAGAIN, and reconnection with
watches re-registered after the daemon restarts.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest
import trio

from libxen.xenstore import sync as syncclient
from libxen.xenstore.aio import XsClient, XsConnectionLost, XsError, XsTransaction
from libxen.xenstore.protocol import DirectoryParts
from libxen.xenstore.sync import XsSyncClient, connect_socket, socket_candidates


# -- discovery (pure) -------------------------------------------------------
@pytest.mark.timeout(10)
def test_socket_candidates_follow_libxenstore(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XENSTORED_PATH", "/p/sock")
    monkeypatch.setenv("XENSTORED_RUNDIR", "/rundir")
    assert socket_candidates() == ["/p/sock"]
    monkeypatch.delenv("XENSTORED_PATH")
    assert socket_candidates() == ["/rundir/socket"]
    monkeypatch.delenv("XENSTORED_RUNDIR")
    monkeypatch.setenv("PVXEN_RUNDIR", "/pv")
    assert socket_candidates() == ["/pv/xenstored/socket", "/run/xenstored/socket"]


@pytest.mark.timeout(10)
def test_connect_errors_carry_the_errno(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(OSError) as missing:
        connect_socket(str(tmp_path / "none"))
    assert missing.value.errno == errno.ENOENT
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError) as not_sock:
        connect_socket(str(tmp_path / "file"))
    assert not_sock.value.errno == errno.ENOTSOCK
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(tmp_path / "dead"))  # bound, never listening: refused
    with dead, pytest.raises(OSError) as refused:
        connect_socket(str(tmp_path / "dead"))
    assert refused.value.errno == errno.ECONNREFUSED
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(tmp_path / "live"))
    live.listen(1)
    monkeypatch.setattr(syncclient, "socket_candidates",
                        lambda: [str(tmp_path / "none"), str(tmp_path / "live")])
    with live, connect_socket() as conn:  # the next candidate is used
        assert conn.getpeername() == str(tmp_path / "live")


@pytest.mark.timeout(10)
def test_directory_parts_reassemble_and_restart() -> None:
    parts = DirectoryParts()
    assert parts.request("/d") == b"/d\x000\x00"
    assert not parts.feed(b"7\0alpha\0be")
    assert parts.request(b"/d") == b"/d\x008\x00"  # "alpha\\0be" so far
    assert not parts.feed(b"8\0ta\0")  # the directory changed: start again
    assert parts.offset == 0
    assert not parts.feed(b"8\0alpha\0")
    assert parts.feed(b"8\0beta\0\0")
    assert parts.children() == [b"alpha", b"beta"]


# -- blocking client ------------------------------------------------------------
@pytest.mark.timeout(30)
def test_sync_errors_and_queued_watch_events(xenstored) -> None:
    with XsSyncClient.open(str(xenstored.socket)) as xs:
        with pytest.raises(XsError) as exc:
            xs.read("/nope")
        assert (exc.value.name, exc.value.errno) == ("ENOENT", errno.ENOENT)
        xs.watch("/sw", "tok")
        xs.write("/sw/a", b"1")  # its event arrives among the replies
        assert xs.read("/sw/a") == b"1"
        assert xs.read_watch() == (b"/sw", b"tok")  # the initial event
        assert xs.read_watch() == (b"/sw/a", b"tok")


@pytest.mark.timeout(30)
def test_sync_transaction_aborts_on_error(xenstored) -> None:
    with XsSyncClient.open(str(xenstored.socket)) as xs:
        with pytest.raises(KeyError), xs.transaction() as tx:
            xs.write("/stx", b"inside", tx)
            assert xs.read("/stx", tx) == b"inside"
            raise KeyError("boom")
        assert b"stx" not in xs.directory("/")
        with xs.transaction() as tx:
            xs.write("/stx", b"committed", tx)
        assert xs.read("/stx") == b"committed"


# -- trio client --------------------------------------------------------------
@pytest.fixture
async def xs(xenstored):
    async with await XsClient.open(str(xenstored.socket)) as client:
        yield client


@pytest.mark.timeout(30)
async def test_errors_name_and_errno(xs: XsClient) -> None:
    with pytest.raises(XsError) as exc:
        await xs.read("/nope")
    assert (exc.value.name, exc.value.errno) == ("ENOENT", errno.ENOENT)
    with pytest.raises(XsError) as big:
        await xs.write("/big", b"x" * 5000)  # refused before sending, as libxenstore
    assert big.value.name == "E2BIG"
    assert await xs.exists("/nope") is False
    assert await xs.get_domain_path(7) == "/local/domain/7"


@pytest.mark.timeout(30)
async def test_big_directory_in_parts(xs: XsClient) -> None:
    names = [f"child-with-a-longish-name-{i:04d}" for i in range(300)]  # > 4 KiB
    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(xs.write, f"/bigdir/{name}", "")
    assert sorted(await xs.directory("/bigdir")) == names


@pytest.mark.timeout(30)
async def test_discovery_through_environment(xenstored, monkeypatch) -> None:
    monkeypatch.setenv("XENSTORED_PATH", str(xenstored.socket))
    async with await XsClient.open() as xs:
        await xs.write("/env", "found")
        assert await xs.read("/env") == b"found"


@pytest.mark.timeout(60)
async def test_twenty_tasks_share_one_connection(xs: XsClient) -> None:
    peak = 0
    proto = xs._conn.proto
    new_request = proto.request

    def counting(*args):
        nonlocal peak
        peak = max(peak, len(proto.awaited) + 1)
        return new_request(*args)

    proto.request = counting  # type: ignore[method-assign]

    async def worker(n: int) -> None:
        for i in range(10):
            await xs.write(f"/conc/t{n}/k{i}", f"{n}-{i}")
            assert await xs.read(f"/conc/t{n}/k{i}") == f"{n}-{i}".encode()

    async with trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(worker, n)
    assert sorted(await xs.directory("/conc")) == sorted(f"t{n}" for n in range(20))
    assert peak > 1  # requests really were in flight together


@pytest.mark.timeout(30)
async def test_watch_iterator_initial_and_changes(xs: XsClient) -> None:
    await xs.mkdir("/wa")
    async with xs.watch("/wa", "tok") as events:
        with trio.fail_after(10):
            assert await anext(events) == ("/wa", "tok")
            await xs.write("/wa/x", "1")
            assert await anext(events) == ("/wa/x", "tok")
            await xs.rm("/wa/x")
            assert await anext(events) == ("/wa/x", "tok")
            await xs.write("/elsewhere", "1")
            await xs.write("/wa", "v")
            assert await anext(events) == ("/wa", "tok")


@pytest.mark.timeout(30)
async def test_slow_watcher_gets_a_stand_in_event(xs: XsClient) -> None:
    await xs.mkdir("/ov")
    async with xs.watch("/ov", queue_size=2) as events:
        tok = events.token
        with trio.fail_after(10):
            assert await anext(events) == ("/ov", tok)
            for i in range(10):
                await xs.write(f"/ov/k{i}", "x")
            await xs.read("/ov/k9")  # events of our writes came before this reply
            got = [await anext(events) for _ in range(3)]
        assert got == [("/ov/k0", tok), ("/ov/k1", tok), ("/ov", tok)]
        with trio.move_on_after(0.2):
            extra = await anext(events)
            pytest.fail(f"unexpected event {extra}")


@pytest.mark.timeout(30)
async def test_transaction_isolated_and_aborted_on_error(xs: XsClient) -> None:
    with pytest.raises(KeyError):
        async with xs.transaction() as t:
            await t.write("/tx/a", "inside")
            assert await t.read("/tx/a") == b"inside"
            assert not await xs.exists("/tx/a")  # not visible outside yet
            raise KeyError("abort")
    assert not await xs.exists("/tx/a")
    async with xs.transaction() as t:
        assert isinstance(t, XsTransaction) and t.tx_id
        await t.write("/tx/a", "committed")
    assert await xs.read("/tx/a") == b"committed"


@pytest.mark.timeout(30)
async def test_run_transaction_retries_on_eagain(xs: XsClient) -> None:
    await xs.write("/tx/counter", "1")
    attempts = 0

    async def bump(t: XsTransaction) -> int:
        nonlocal attempts
        attempts += 1
        value = int(await t.read("/tx/counter"))
        if attempts == 1:  # someone else changes what we read: conflict
            await xs.write("/tx/counter", "100")
        await t.write("/tx/counter", str(value + 1))
        return value

    assert await xs.run_transaction(bump) == 100
    assert attempts == 2 and await xs.read("/tx/counter") == b"101"
    attempts = 0
    with pytest.raises(XsError) as exc:
        await xs.run_transaction(bump, attempts=1)
    assert exc.value.name == "EAGAIN" and exc.value.errno == errno.EAGAIN


@pytest.mark.timeout(30)
async def test_cancelled_requests_leave_the_connection_usable(xs: XsClient) -> None:
    await xs.write("/cx", "ok")

    async def impatient(i: int) -> None:
        with trio.move_on_after(0.0002 * i):
            await xs.read("/cx")

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(impatient, i)
    assert await xs.read("/cx") == b"ok"
    assert not xs._pending


@pytest.mark.timeout(30)
async def test_body_exception_is_not_wrapped(xenstored) -> None:
    with pytest.raises(KeyError):
        async with await XsClient.open(str(xenstored.socket)):
            raise KeyError("plain")
    client = await XsClient.open(str(xenstored.socket))
    with pytest.raises(RuntimeError):
        await client.read("/")  # not entered: no reader task


@pytest.mark.timeout(60)
async def test_without_reconnect_a_dead_daemon_ends_everything(xenstored) -> None:
    async with await XsClient.open(str(xenstored.socket)) as xs:
        async with xs.watch("/gone") as events:
            assert await anext(events) == ("/gone", events.token)
            xenstored.kill()
            with trio.fail_after(10), pytest.raises(XsConnectionLost):
                await anext(events)
            with pytest.raises(XsConnectionLost):
                await xs.read("/")
            assert not xs.connected


@pytest.mark.timeout(90)
async def test_reconnect_reregisters_watches(xenstored) -> None:
    async with await XsClient.open(str(xenstored.socket), reconnect=True) as xs:
        await xs.write("/rw/before", "1")
        async with xs.watch("/rw") as events:
            tok = events.token
            with trio.fail_after(10):
                assert await anext(events) == ("/rw", tok)
            xenstored.kill()
            await trio.to_thread.run_sync(xenstored.start)
            with trio.fail_after(30):
                # re-registered on the new connection: the initial event again
                assert await anext(events) == ("/rw", tok)
                await xs.write("/rw/after", "2")
                assert await anext(events) == ("/rw/after", tok)
            assert await xs.read("/rw/before") == b"1"  # the store persisted
            assert xs.connected


@pytest.mark.timeout(90)
async def test_transaction_across_a_restart_is_redone(xenstored) -> None:
    async with await XsClient.open(str(xenstored.socket), reconnect=True) as xs:
        await xs.write("/rt/n", "1")
        attempts = 0

        async def bump(t: XsTransaction) -> None:
            nonlocal attempts
            attempts += 1
            value = int(await t.read("/rt/n"))
            if attempts == 1:  # the daemon restarts mid-transaction
                xenstored.kill()
                await trio.to_thread.run_sync(xenstored.start)
            await t.write("/rt/n", str(value + 1))  # old tx_id: EAGAIN, then redo

        with trio.fail_after(30):
            await xs.run_transaction(bump)
        assert attempts == 2 and await xs.read("/rt/n") == b"2"
