"""Hostile input against the real daemon process.

Every test here follows one rule (the one behind Xen's XenStore advisories): a bad client
gets an error or loses its own connection; the daemon keeps serving everyone
else and loses nothing. So after each attack a second client checks that the
daemon answers and that data written before the attack still reads back
(:func:`survives`). Nothing here asserts on time: bounds are on counts and
on the daemon's resident memory, read from /proc.
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.framework.daemons import Xenstored
from tests.xenstored.rawclient import (
    XS_CONTROL,
    XS_DIRECTORY,
    XS_DIRECTORY_PART,
    XS_ERROR,
    XS_GET_DOMAIN_PATH,
    XS_GET_FEATURE,
    XS_GET_PERMS,
    XS_GET_QUOTA,
    XS_INTRODUCE,
    XS_IS_DOMAIN_INTRODUCED,
    XS_MKDIR,
    XS_READ,
    XS_RELEASE,
    XS_RESET_WATCHES,
    XS_RESUME,
    XS_RM,
    XS_SET_FEATURE,
    XS_SET_PERMS,
    XS_SET_QUOTA,
    XS_SET_TARGET,
    XS_TRANSACTION_END,
    XS_TRANSACTION_START,
    XS_UNWATCH,
    XS_WATCH,
    XS_WATCH_EVENT,
    XS_WRITE,
    RawClient,
    nul,
    pack,
)

MiB = 1024 * 1024
SENTINEL = "/survivor/value"
SENTINEL_VALUE = b"written before the attack"


# -- helpers ---------------------------------------------------------------------------
def rss(daemon: Xenstored) -> int:
    """Resident memory of the daemon process, in bytes."""
    with open(f"/proc/{daemon.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def plant(daemon: Xenstored) -> None:
    with RawClient(daemon.socket) as c:
        c.write(SENTINEL, SENTINEL_VALUE)


def survives(daemon: Xenstored) -> None:
    """The daemon runs, answers a new client, kept earlier data and is consistent."""
    assert daemon.alive, daemon.log()[-3000:]
    with RawClient(daemon.socket) as c:
        assert c.alive()
        assert c.read(SENTINEL) == SENTINEL_VALUE
        c.write("/survivor/after", "x")
        assert c.read("/survivor/after") == b"x"
        assert c.control("check") == b"OK\0"


def raw_socket(daemon: Xenstored) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(daemon.socket))  # blocking: waits while the backlog is full
    s.settimeout(10)
    return s


@pytest.fixture
def d(xenstored):
    plant(xenstored)
    return xenstored


@pytest.fixture
def fast_daemon(tmp_path):
    """A daemon without the journal, for floods where fsync is not the point."""
    daemon = Xenstored(tmp_path, ["--no-persist"]).start()
    try:
        plant(daemon)
        yield daemon
    finally:
        daemon.kill()


# ======================================================================================
# Framing
# ======================================================================================
@pytest.mark.timeout(20)
@pytest.mark.parametrize("junk", [
    b"", b"\x00", b"\x02\x00\x00", b"\x02\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00",
    pack(XS_READ, b"/survivor/value\0")[:-3],  # header + part of the payload
    pack(XS_WRITE, b"/survivor/value\0overwritten"[:10], length=100),
], ids=["nothing", "1-byte", "3-bytes", "15-bytes", "cut-payload", "len-beyond-data"])
def test_short_or_truncated_message_then_close(d, junk):
    s = raw_socket(d)
    s.sendall(junk)
    s.close()
    survives(d)


@pytest.mark.timeout(20)
def test_partial_message_waits_and_other_clients_go_on(d):
    s = raw_socket(d)
    msg = pack(XS_READ, nul(SENTINEL), req_id=9)
    s.sendall(msg[:10])
    survives(d)  # a half-sent header blocks nobody
    s.sendall(msg[10:])
    head = s.recv(16)
    assert struct.unpack("<IIII", head)[:2] == (XS_READ, 9)
    s.close()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("length", [4097, 8192, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])
def test_len_over_payload_max_closes_the_connection(d, length):
    with RawClient(d.socket) as c:
        c.send(pack(XS_WRITE, b"/survivor/value\0pwned", length=length))
        assert c.is_closed(10)
    survives(d)
    with RawClient(d.socket) as c:
        assert c.read(SENTINEL) == SENTINEL_VALUE  # the bad write did nothing


@pytest.mark.timeout(20)
def test_len_over_max_after_answered_requests(d):
    with RawClient(d.socket) as c:
        c.write("/survivor/first", "ok")
        c.send(pack(XS_READ, b"", length=5000))
        assert c.is_closed(10)
    with RawClient(d.socket) as c:
        assert c.read("/survivor/first") == b"ok"
    survives(d)


@pytest.mark.timeout(20)
def test_len_over_max_after_good_requests_answers_those_first(d):
    with RawClient(d.socket) as c:
        c.send(pack(XS_WRITE, b"/survivor/first\0ok", req_id=1)
               + pack(XS_READ, nul("/survivor/first"), req_id=2)
               + pack(XS_READ, b"", length=5000))
        assert c.recv_msg().raw == pack(XS_WRITE, b"OK\0", req_id=1)
        assert c.recv_msg().raw == pack(XS_READ, b"ok", req_id=2)
        assert c.is_closed(10)
    survives(d)


@pytest.mark.timeout(20)
def test_exactly_payload_max_is_accepted(d):
    with RawClient(d.socket) as c:
        path = b"/survivor/max\0"
        c.send(pack(XS_WRITE, path + b"v" * (4096 - len(path)), req_id=3))
        assert c.recv_msg().raw == pack(XS_WRITE, b"OK\0", req_id=3)
        assert len(c.read("/survivor/max")) == 4096 - len(path)
    survives(d)


@pytest.mark.timeout(20)
def test_missing_nuls_for_every_type(d):
    with RawClient(d.socket) as c:
        for t in range(27):
            for payload in (b"/survivor", b"/survivor/value", b"5", b"T", b"check"):
                reply = c.call(t, payload)
                if t == XS_GET_FEATURE or t == XS_GET_QUOTA or t == XS_TRANSACTION_START \
                        or t == XS_RESET_WATCHES:
                    continue  # these take optional/ignored arguments
                assert reply.type == XS_ERROR, (t, payload, reply)
    survives(d)


@pytest.mark.timeout(20)
def test_overlong_paths(d):
    with RawClient(d.socket) as c:
        for n in (2049, 3073, 3500, 4000, 4094):
            path = "/" + "a" * (n - 1)
            for t in (XS_READ, XS_MKDIR, XS_RM, XS_DIRECTORY, XS_GET_PERMS):
                assert c.err(t, nul(path)) == "EINVAL"
            if n + 3 <= 4096:  # the WATCH payload must itself fit
                assert c.err(XS_WATCH, nul(path, "t")) == "EINVAL"
            rel = "r" * n  # the part below the home: over 2048
            assert c.err(XS_WRITE, rel.encode() + b"\0") == "EINVAL"
        # deep but legal: 1024 components, 2048 bytes (XENSTORE_REL_PATH_MAX)
        deep = "/" + "/".join("x" * 1024)
        assert len(deep) == 2048
        c.write(deep, "v")
        assert c.read(deep) == b"v"
        c.rm("/x")
    survives(d)


# ======================================================================================
# Every message type x every kind of tx_id (CVE-2026-23557 and friends)
# ======================================================================================
PAYLOADS = {
    XS_CONTROL: [nul("check"), nul("help"), nul("bogus")],
    XS_DIRECTORY: [nul("/survivor"), nul("/nope")],
    XS_READ: [nul(SENTINEL), nul("/nope")],
    XS_GET_PERMS: [nul("/survivor")],
    XS_WATCH: [nul("/survivor", "tok"), nul("@releaseDomain", "r")],
    XS_UNWATCH: [nul("/survivor", "tok"), nul("/survivor", "never")],
    XS_TRANSACTION_START: [b"\0", b""],
    XS_TRANSACTION_END: [nul("T"), nul("F"), nul("X")],
    XS_INTRODUCE: [nul("9", "4096", "3")],
    XS_RELEASE: [nul("9")],
    XS_GET_DOMAIN_PATH: [nul("9")],
    XS_WRITE: [b"/scratch/w\0value"],
    XS_MKDIR: [nul("/scratch/m")],
    XS_RM: [nul("/scratch/m"), nul("/scratch/absent")],
    XS_SET_PERMS: [nul("/scratch", "b0", "r9")],
    XS_WATCH_EVENT: [nul("/survivor", "tok")],
    XS_ERROR: [nul("EINVAL")],
    XS_IS_DOMAIN_INTRODUCED: [nul("9")],
    XS_RESUME: [nul("9")],
    XS_SET_TARGET: [nul("9", "9")],
    20: [nul("9")],
    XS_RESET_WATCHES: [b"\0", b""],
    XS_DIRECTORY_PART: [nul("/survivor", "0"), nul("/survivor", "3")],
    XS_GET_FEATURE: [b"", nul("9")],
    XS_SET_FEATURE: [nul("9", "0")],
    XS_GET_QUOTA: [b"", nul("nodes"), nul("9", "nodes")],
    XS_SET_QUOTA: [nul("nodes", "1000"), nul("9", "nodes", "1000")],
    27: [b""],
    0xFFFF: [b""],
}
#: types that look the transaction up: all of cxenstored's wire_funcs but WATCH and
#: UNWATCH (its only XS_FLAG_NOTID ones); an unknown tx_id must then be ENOENT
TX_LOOKUP = {t for t in PAYLOADS if t <= 26 and t not in (XS_WATCH, XS_UNWATCH, XS_WATCH_EVENT,
                                                          XS_ERROR, 20)}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("msg_type", sorted(PAYLOADS), ids=lambda t: f"type{t}")
def test_every_type_with_every_kind_of_tx_id(d, msg_type):
    with RawClient(d.socket) as c:
        c.write("/scratch/seed", "")
        stale = c.start()
        assert c.end(stale, commit=False) == "OK"
        kinds = {"zero": lambda: 0, "valid": c.start, "stale": lambda: stale,
                 "random": lambda: 0x5EED1234, "max": lambda: 0xFFFFFFFF}
        for kind, make in kinds.items():
            for payload in PAYLOADS[msg_type]:
                tx = make()
                c.send(pack(msg_type, payload, req_id=0xC0DE, tx_id=tx))
                reply = c.recv_reply()
                where = (kind, payload)
                assert (reply.req_id, reply.tx_id) == (0xC0DE, tx), where
                assert reply.type in (msg_type, XS_ERROR), where
                if kind in ("stale", "random", "max") and msg_type in TX_LOOKUP:
                    assert reply.payload == b"ENOENT\0", where
                if msg_type > 26 or msg_type in (XS_WATCH_EVENT, XS_ERROR, 20):
                    assert reply.payload == b"ENOSYS\0", where
                if kind == "valid":
                    # the transaction is still usable unless the request ended it
                    r = c.call(XS_READ, nul("/scratch/seed"), tx_id=tx)
                    ended = msg_type in (XS_TRANSACTION_END, XS_RESET_WATCHES) and \
                        reply.type != XS_ERROR
                    assert (r.payload == b"ENOENT\0") == ended, where
                    if not ended:
                        c.end(tx, commit=False)
        c.events.clear()
        assert c.alive()
    survives(d)


@pytest.mark.timeout(20)
def test_reset_watches_inside_a_transaction_over_the_socket(d):
    """CVE-2026-23557: RESET_WATCHES carrying a live tx_id crashed cxenstored."""
    with RawClient(d.socket) as c:
        c.watch("/survivor", "t")
        c.next_event()
        tx = c.start()
        c.write("/survivor/in-tx", "x", tx=tx)
        reply = c.call(XS_RESET_WATCHES, b"\0", tx_id=tx)
        assert (reply.type, reply.payload) == (XS_RESET_WATCHES, b"OK\0")
        assert c.err(XS_TRANSACTION_END, nul("T"), tx_id=tx) == "ENOENT"
        assert c.err(XS_READ, nul("/survivor/in-tx")) == "ENOENT"
        with RawClient(d.socket) as other:
            other.write("/survivor/poke", "")
        assert c.alive() and not c.events  # the watch went too
    survives(d)


# ======================================================================================
# Watches in bulk, oversized events
# ======================================================================================
@pytest.mark.timeout(60)
def test_10000_watches_then_events_still_delivered(fast_daemon):
    d = fast_daemon
    n = 10_000
    with RawClient(d.socket) as w:
        w.send(b"".join(pack(XS_WATCH, nul(f"/many/{i}", f"t{i}"), req_id=i) for i in range(n)))
        replies = events = 0
        while replies < n or events < n:
            m = w.recv_msg()
            if m.type == XS_WATCH_EVENT:
                events += 1
            else:
                assert (m.type, m.payload) == (XS_WATCH, b"OK\0")
                replies += 1
        with RawClient(d.socket) as c:
            for i in (0, 4321, n - 1):
                c.write(f"/many/{i}/x", "")
            c.rm("/many")
        got = [w.next_event().strings for _ in range(3)]
        assert sorted(got) == sorted([[f"/many/{i}/x".encode(), f"t{i}".encode()]
                                      for i in (0, 4321, n - 1)])
        # the rm of the parent reaches the watches of the nodes that existed, each told
        # its own watched path; other watches below may fire spuriously (xenstore.txt)
        assert w.alive()
        rm_events = [e.strings for e in w.events]
        w.events.clear()
        assert {p for p, _ in rm_events} >= {f"/many/{i}".encode() for i in (0, 4321, n - 1)}
        assert all(p == b"/many/" + t[1:] for p, t in rm_events)
        assert len(rm_events) == len({tuple(e) for e in rm_events}) <= n
        # unwatch them all again
        w.send(b"".join(pack(XS_UNWATCH, nul(f"/many/{i}", f"t{i}"), req_id=i) for i in range(n)))
        for i in range(n):
            assert w.recv_msg().raw == pack(XS_UNWATCH, b"OK\0", req_id=i)
    survives(d)


@pytest.mark.timeout(60)
def test_watch_reset_cycles_leave_memory_flat(fast_daemon):
    """XSA-330: 10^4 WATCH/RESET_WATCHES cycles leave nothing behind."""
    d = fast_daemon
    with RawClient(d.socket) as c:
        def cycles(k):
            batch = b"".join(pack(XS_WATCH, nul(f"/cyc/{i}", "tok" * 30), req_id=i)
                             + pack(XS_RESET_WATCHES, b"\0", req_id=i) for i in range(k))
            c.send(batch)
            for _ in range(3 * k):  # WATCH reply, initial event, RESET reply
                c.recv_msg()
        cycles(2000)
        before = rss(d)
        for _ in range(5):
            cycles(2000)
        assert rss(d) - before < 16 * MiB
    survives(d)


@pytest.mark.timeout(20)
def test_no_message_over_payload_max_even_for_huge_tokens(d):
    with RawClient(d.socket) as w:
        reply = w.call(XS_WATCH, nul("/big", "T" * 4000))
        if reply.type == XS_WATCH:  # the watch may also be refused up front
            assert w.next_event().payload == nul("/big", "T" * 4000)
        with RawClient(d.socket) as c:
            c.write("/big/" + "b" * 200, "x")
            c.write("/big", "y")
        # every message on the connection stays within the limit (recv_msg asserts
        # it); the short event may come, the long one must not
        assert w.alive()
        for ev in w.events:
            assert len(ev.payload) <= 4096
    survives(d)


# ======================================================================================
# Clients that do not read
# ======================================================================================
def _stuff(sock: socket.socket, chunk: bytes, limit: int) -> int:
    """Send ``chunk`` repeatedly without blocking until the kernel refuses; bytes sent."""
    sock.setblocking(False)
    sent = 0
    try:
        while sent < limit:
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                break
    finally:
        sock.setblocking(True)
    return sent


@pytest.mark.timeout(60)
def test_client_that_never_reads_replies_harms_nobody(d):
    with RawClient(d.socket) as c:
        c.write("/survivor/big", "v" * 4000)
    base = rss(d)
    hog = raw_socket(d)
    req = pack(XS_READ, nul("/survivor/big"))  # 30 bytes in, 4 KB out
    sent = _stuff(hog, req * 1000, 64 * MiB)
    assert 0 < sent < 64 * MiB  # the daemon stopped reading from the hog
    with RawClient(d.socket) as c:
        for i in range(500):
            c.write(f"/survivor/busy/{i}", str(i))
            assert c.read(f"/survivor/busy/{i}") == str(i).encode()
        assert len(c.directory("/survivor/busy")) == 500
        # the hog is still stuck (or gone); keep pushing and check again
        _stuff(hog, req * 1000, 64 * MiB)
        assert c.alive()
    assert rss(d) - base < 100 * MiB, "memory held for a client that does not read"
    hog.close()
    survives(d)


@pytest.mark.timeout(60)
def test_watch_event_flood_to_a_non_reading_watcher(fast_daemon):
    d = fast_daemon
    base = rss(d)
    lazy = RawClient(d.socket)
    for i in range(20):  # 20 watches: each write makes 20 events for it
        lazy.send(pack(XS_WATCH, nul("/flood", f"token-{i}")))
    writes = 0
    with RawClient(d.socket) as c:
        while writes < 6000:  # 120000 events: more than any bound allows
            batch = 500
            # every path new: an event identical to one still waiting is
            # dropped (cxenstored send_event), so only distinct ones pile up
            c.send(b"".join(pack(XS_WRITE, f"/flood/k{writes + j}\0v".encode(), req_id=j)
                            for j in range(batch)))
            for j in range(batch):
                assert c.recv_msg().raw == pack(XS_WRITE, b"OK\0", req_id=j)
            writes += batch
        assert c.alive()
    assert writes == 6000  # the writer was never refused or stuck
    assert lazy.is_closed(10), "the non-reading watcher should have been disconnected"
    assert rss(d) - base < 150 * MiB
    lazy.close()
    survives(d)


@pytest.mark.timeout(60)
def test_big_watch_event_flood_is_bounded_in_bytes(fast_daemon):
    d = fast_daemon
    base = rss(d)
    lazy = RawClient(d.socket)
    for i in range(10):
        lazy.send(pack(XS_WATCH, nul("/flood", f"{i}-" + "T" * 2000)))
    path = "/flood/" + "p" * 1400
    peak = 0
    with RawClient(d.socket) as c:
        for round_ in range(16):  # up to 80000 events of ~3.4 KB
            c.send(b"".join(pack(XS_WRITE, f"{path}{j}\0v".encode(), req_id=j)
                            for j in range(500)))
            for j in range(500):
                c.recv_msg()
            peak = max(peak, rss(d) - base)
    lazy.close()
    assert peak < 64 * MiB, f"daemon grew by {peak // MiB} MiB for one non-reading client"
    survives(d)


# ======================================================================================
# Random garbage (hypothesis)
# ======================================================================================
def _message():
    return st.builds(
        lambda t, rid, tx, payload: pack(t, payload, rid, tx),
        st.one_of(st.integers(0, 30), st.sampled_from([0xFFFF, 0xFFFFFFFF])),
        st.integers(0, 2**32 - 1),
        st.sampled_from([0, 1, 2, 0xFFFFFFFF]),
        st.one_of(
            st.binary(max_size=64),
            st.lists(st.sampled_from([b"/", b"/scratch", b"/scratch/x", b"/tool", b"x", b"@",
                                      b"@releaseDomain", b"5", b"T", b"F", b"b0", b"r5", b"0",
                                      b"check", b"nodes", b"", b"//", b"/a/"]),
                     max_size=4).map(lambda parts: b"\0".join(parts) + b"\0"),
        ),
    )


GARBAGE = st.lists(
    st.one_of(
        _message(),
        st.binary(min_size=1, max_size=40),  # raw noise, may desynchronise the framing
        st.builds(lambda t, n: struct.pack("<IIII", t, 0, 0, n),
                  st.integers(0, 30), st.integers(4097, 2**32 - 1)),  # oversized len
    ),
    min_size=1, max_size=12,
)


@pytest.mark.timeout(90)
@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(chunks=GARBAGE, read_back=st.booleans())
def test_random_garbage_never_kills_the_daemon(fast_daemon, chunks, read_back):
    d = fast_daemon
    s = raw_socket(d)
    try:
        for chunk in chunks:
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # the daemon closed us: allowed
        if read_back:
            s.settimeout(0.2)
            try:
                while s.recv(65536):
                    pass
            except (socket.timeout, ConnectionResetError):
                pass
    finally:
        s.close()
    with RawClient(d.socket) as c:  # the cheap part of survives(), every example
        assert c.alive()
        assert c.read(SENTINEL) == SENTINEL_VALUE


@pytest.mark.timeout(30)
def test_after_garbage_the_store_is_consistent(fast_daemon):
    d = fast_daemon
    import random

    rng = random.Random(1234)
    for _ in range(50):
        s = raw_socket(d)
        try:
            s.sendall(bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))))
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.close()
    survives(d)


# ======================================================================================
# Deep trees, domain churn, connection churn
# ======================================================================================
DEPTH = 1020  # about the deepest a path allows: 2048 bytes (XENSTORE_REL_PATH_MAX)


def _deep_path(depth: int) -> str:
    return "/" + "/".join(["d"] * depth)  # 1020 levels: 2040 bytes


@pytest.mark.timeout(60)
def test_1020_deep_tree_written_read_listed_removed(d):
    """XSA-418: nothing recurses with the depth of the tree."""
    deepest = _deep_path(DEPTH)
    levels = [_deep_path(k) for k in range(1, DEPTH + 1)]
    with RawClient(d.socket) as c:
        c.write(deepest, "bottom")  # creates all 1020 nodes in one request
        c.watch(deepest, "bottom")
        c.next_event()
        c.send(b"".join(pack(XS_READ, nul(p), req_id=i) for i, p in enumerate(levels)))
        for i in range(DEPTH):
            m = c.recv_msg()
            assert (m.type, m.req_id) == (XS_READ, i)
            assert m.payload == (b"bottom" if i == DEPTH - 1 else b"")
        c.send(b"".join(pack(XS_DIRECTORY, nul(p), req_id=i) for i, p in enumerate(levels)))
        for i in range(DEPTH):
            m = c.recv_msg()
            assert m.payload == (b"" if i == DEPTH - 1 else b"d\0")
        assert c.control("check") == b"OK\0"
        # the same inside a transaction
        tx = c.start()
        assert c.read(deepest, tx=tx) == b"bottom"
        c.write(deepest + "/more", "x", tx=tx)
        assert c.end(tx) == "OK"
        c.next_event()
        c.rm("/d")
        assert c.next_event().strings == [deepest.encode(), b"bottom"]
        assert c.err(XS_READ, nul("/d")) == "ENOENT"
        assert c.control("check") == b"OK\0"
    survives(d)


@pytest.mark.timeout(60)
def test_1020_deep_tree_survives_a_crash_and_restart(xenstored):
    """The journal and its replay do not recurse either (XSA-418: dump/restore)."""
    plant(xenstored)
    deepest = _deep_path(DEPTH)
    with RawClient(xenstored.socket) as c:
        c.write(deepest, "bottom")
    xenstored.kill()
    xenstored.start()
    with RawClient(xenstored.socket) as c:
        assert c.read(deepest) == b"bottom"
        assert c.directory(_deep_path(DEPTH - 1)) == [b"d"]
        c.rm("/d")
    survives(xenstored)


@pytest.mark.timeout(30)
def test_sigterm_stops_cleanly_when_the_notify_socket_is_gone(xenstored):
    """sd_notify is never fatal: STOPPING=1 to a vanished $NOTIFY_SOCKET is ignored."""
    # the framework removes its notify socket once READY=1 has arrived
    plant(xenstored)
    assert xenstored.stop() == 0
    assert "Traceback" not in xenstored.log()


@pytest.mark.timeout(60)
def test_release_introduce_same_domid_1000_times(d):
    """XSA-425: RELEASE then INTRODUCE of one domid, 1000 times: no crash, no leak."""
    rounds = 1000
    with RawClient(d.socket) as w, RawClient(d.socket) as c:
        w.watch("@releaseDomain", "rel")
        w.watch("@introduceDomain", "intro")
        w.next_event(), w.next_event()
        c.introduce(5, 4096, 7)
        w.next_event()

        def churn(k: int) -> None:
            batch = b"".join(
                pack(XS_WRITE, f"/local/domain/5/data{i}\0v".encode(), req_id=4 * i)
                + pack(XS_SET_PERMS, nul(f"/local/domain/5/data{i}", "b5"), req_id=4 * i + 1)
                + pack(XS_RELEASE, nul("5"), req_id=4 * i + 2)
                + pack(XS_INTRODUCE, nul("5", "4096", "7"), req_id=4 * i + 3)
                for i in range(k))
            c.send(batch)
            for i in range(4 * k):
                m = c.recv_msg()
                assert m.req_id == i and m.type != XS_ERROR, m

        churn(100)
        base = rss(d)
        churn(rounds - 100)
        assert rss(d) - base < 32 * MiB
        kinds = [w.next_event().strings[0] for _ in range(2 * rounds)]
        assert kinds.count(b"@releaseDomain") == rounds
        assert kinds.count(b"@introduceDomain") == rounds
        assert c.ok(XS_IS_DOMAIN_INTRODUCED, nul("5")) == b"T\0"
        assert c.directory("/local/domain/5") == []  # each incarnation's nodes went with it
        assert c.control("check") == b"OK\0"
    survives(d)


@pytest.mark.timeout(60)
def test_connection_churn_leaks_no_descriptors(d):
    fd_dir = Path(f"/proc/{d.proc.pid}/fd")
    before = len(os.listdir(fd_dir))
    for round_ in range(3):
        socks = [raw_socket(d) for _ in range(200)]
        for i, s in enumerate(socks):
            if i % 3 == 0:
                s.sendall(pack(XS_WATCH, nul("/survivor", f"t{i}")))
            elif i % 3 == 1:
                s.sendall(pack(XS_TRANSACTION_START, b"\0"))
        for s in socks:
            s.close()
    survives(d)  # also makes sure the daemon has seen the closes
    with RawClient(d.socket) as c:
        for _ in range(20):
            if len(os.listdir(fd_dir)) <= before + 2:
                break
            c.alive()
    assert len(os.listdir(fd_dir)) <= before + 2
    with RawClient(d.socket) as c:  # the 200 watchers are gone: a write reaches only us
        c.watch("/survivor", "me")
        c.next_event()
        c.write("/survivor/value", SENTINEL_VALUE)
        assert c.next_event().strings == [b"/survivor/value", b"me"]


@pytest.mark.timeout(30)
def test_abrupt_disconnect_mid_transaction_leaves_nothing(d):
    s = raw_socket(d)
    s.sendall(pack(XS_TRANSACTION_START, b"\0", req_id=1))
    head = s.recv(16)
    _, _, _, n = struct.unpack("<IIII", head)
    tx = int(s.recv(n)[:-1])
    s.sendall(pack(XS_WRITE, b"/survivor/uncommitted\0x", tx_id=tx)
              + pack(XS_WATCH, nul("/survivor", "gone")))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    s.close()
    with RawClient(d.socket) as c:
        assert c.err(XS_READ, nul("/survivor/uncommitted")) == "ENOENT"
    survives(d)


@pytest.mark.timeout(30)
def test_unprivileged_only_errors_are_not_fatal_to_the_socket(d):
    """Many consecutive errors on one connection never get it closed."""
    with RawClient(d.socket) as c:
        batch = b"".join(pack(t, b"\xff" * 7, req_id=i) for i, t in
                         enumerate([XS_READ, XS_WRITE, XS_SET_PERMS, XS_INTRODUCE, 99] * 200))
        c.send(batch)
        for i in range(1000):
            m = c.recv_msg()
            assert m.type == XS_ERROR and m.req_id == i
        assert c.alive()
    survives(d)

