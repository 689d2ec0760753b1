"""Restart loses nothing: acknowledged writes survive SIGKILL of xenstored.

Writes are acknowledged only after their journal record is written (a plain
write(), in the page cache, which outlives the killed process), so
everything the client saw "OK" for must be there after a SIGKILL and a
restart, permissions included.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from hypervisord.public.io.xs_wire import XsdSockmsgType as T
from tests.xenstored.rawclient import ConnectionClosed, RawClient, nul

N = 10_000


def _write_many(client: RawClient, n: int) -> None:
    """Pipeline n writes (plus a SET_PERMS for every 10th) and wait for all acks."""
    batch = 500
    for start in range(0, n, batch):
        sent = 0
        for i in range(start, min(n, start + batch)):
            client.send_msg(T.XS_WRITE, f"/restart/d{i // 100}/n{i}".encode() + b"\0" + str(i).encode())
            sent += 1
            if i % 10 == 0:
                client.send_msg(T.XS_SET_PERMS, nul(f"/restart/d{i // 100}/n{i}", f"b{i % 7}", "r0"))
                sent += 1
        for _ in range(sent):
            reply = client.recv_reply()
            assert not reply.is_error, reply.error


@pytest.mark.timeout(180)
def test_10000_nodes_survive_sigkill(xenstored):
    client = RawClient(xenstored.socket)
    _write_many(client, N)
    client.close()  # every write above was acknowledged

    xenstored.kill()  # SIGKILL: no chance to flush anything more
    xenstored.start()

    client = RawClient(xenstored.socket)
    for start in range(0, N, 500):  # pipelined, in batches that fit the socket buffers
        batch = range(start, min(N, start + 500))
        for i in batch:
            path = f"/restart/d{i // 100}/n{i}"
            client.send_msg(T.XS_READ, nul(path))
            if i % 10 == 0:
                client.send_msg(T.XS_GET_PERMS, nul(path))
        for i in batch:
            reply = client.recv_reply()
            assert not reply.is_error, (i, reply.error)
            assert reply.payload == str(i).encode()
            if i % 10 == 0:
                perms = client.recv_reply()
                assert perms.strings == [f"b{i % 7}".encode(), b"r0"], (i, perms.payload)
    client.send_msg(T.XS_CONTROL, nul("check"))
    assert client.recv_reply().payload == b"OK\0"
    client.close()


@pytest.mark.timeout(60)
def test_rm_and_transaction_survive_sigkill(xenstored):
    client = RawClient(xenstored.socket)
    _write_many(client, 300)
    client.send_msg(T.XS_RM, nul("/restart/d1"))
    assert not client.recv_reply().is_error
    client.send_msg(T.XS_TRANSACTION_START, b"\0")
    tx_id = int(client.recv_reply().strings[0])
    client.send_msg(T.XS_WRITE, b"/restart/tx\0committed", tx_id=tx_id)
    assert not client.recv_reply().is_error
    client.send_msg(T.XS_TRANSACTION_START, b"\0")
    aborted = int(client.recv_reply().strings[0])
    client.send_msg(T.XS_WRITE, b"/restart/aborted\0x", tx_id=aborted)
    assert not client.recv_reply().is_error
    client.send_msg(T.XS_TRANSACTION_END, b"T\0", tx_id=tx_id)
    assert client.recv_reply().payload == b"OK\0"
    client.close()  # the second transaction dies with its connection

    xenstored.kill()
    xenstored.start()

    client = RawClient(xenstored.socket)
    client.send_msg(T.XS_READ, nul("/restart/tx"))
    assert client.recv_reply().payload == b"committed"
    for path in ("/restart/d1", "/restart/d1/n150", "/restart/aborted"):
        client.send_msg(T.XS_READ, nul(path))
        assert client.recv_reply().error == "ENOENT", path
    client.send_msg(T.XS_READ, nul("/restart/d2/n250"))
    assert client.recv_reply().payload == b"250"
    client.send_msg(T.XS_CONTROL, nul("check"))
    assert client.recv_reply().payload == b"OK\0"
    client.close()


@pytest.mark.timeout(60)
def test_store_survives_xenstored_restart_but_not_a_new_boot(hypervisord, xenstored):
    client = RawClient(xenstored.socket)
    client.send_msg(T.XS_WRITE, b"/local/domain/7/name\0ghost")
    assert not client.recv_reply().is_error
    client.close()

    xenstored.kill()  # xenstored alone restarts: the same host, nothing lost
    xenstored.start()
    client = RawClient(xenstored.socket)
    client.send_msg(T.XS_READ, nul("/local/domain/7/name"))
    assert client.recv_reply().payload == b"ghost"
    client.close()

    xenstored.kill()  # hypervisord restarts too: a new boot, no old domain exists
    hypervisord.kill()
    hypervisord.start()
    xenstored.start()
    client = RawClient(xenstored.socket)
    client.send_msg(T.XS_READ, nul("/local/domain/7/name"))
    assert client.recv_reply().error == "ENOENT"
    client.send_msg(T.XS_DIRECTORY, nul("/"))
    assert client.recv_reply().strings == [b"tool"]
    client.send_msg(T.XS_CONTROL, nul("check"))
    assert client.recv_reply().payload == b"OK\0"
    client.close()


# --- SIGKILL at random moments under load -------------------------------------

class _LoadClient(threading.Thread):
    """One synchronous client: writes of a counter, and transactions that set
    two nodes to one value, until the daemon dies; it keeps what was acked."""

    def __init__(self, socket_path, prefix: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.client = RawClient(socket_path)
        self.prefix, self.rng = prefix, random.Random(seed)
        self.acked_writes: list[int] = []
        self.acked_tx = -1  # the value of the newest committed transaction

    def run(self) -> None:
        c, n = self.client, 0
        try:
            while True:
                n += 1
                if self.rng.random() < 0.8:
                    c.write(f"{self.prefix}/n{n}", str(n))
                    self.acked_writes.append(n)
                    continue
                tx = c.start()
                c.write(f"{self.prefix}/ta", str(n), tx=tx)
                c.write(f"{self.prefix}/tb", str(n), tx=tx)
                if c.end(tx) == "OK":
                    self.acked_tx = n
        except (ConnectionClosed, OSError):
            return  # killed: whatever was not acknowledged may be lost
        finally:
            c.close()


def _check_round(client: RawClient, load: _LoadClient) -> None:
    for start in range(0, len(load.acked_writes), 500):  # pipelined, bounded
        batch = load.acked_writes[start:start + 500]
        for n in batch:
            client.send_msg(T.XS_READ, nul(f"{load.prefix}/n{n}"))
        for n in batch:
            reply = client.recv_reply()
            assert not reply.is_error and reply.payload == str(n).encode(), \
                (load.prefix, n, reply.error)
    if load.acked_tx >= 0:  # a transaction is all there or not at all
        a, b = client.read(f"{load.prefix}/ta"), client.read(f"{load.prefix}/tb")
        assert a == b and int(a) >= load.acked_tx, (load.prefix, a, b, load.acked_tx)


@pytest.mark.timeout(240)
def test_sigkill_at_random_moments_under_4_clients_loses_nothing(xenstored):
    """The issue-6 check kept: SIGKILL of xenstored at random moments under a
    4-client load; every acknowledged write and transaction survives, no
    transaction half-applied (the journal record is written before the reply,
    with no fsync)."""
    rng = random.Random(2024)
    rounds: list[_LoadClient] = []
    for round_ in range(12):
        loads = [_LoadClient(xenstored.socket, f"/kill/r{round_}/c{k}", rng.random())
                 for k in range(4)]
        for load in loads:
            load.start()
        time.sleep(rng.uniform(0.05, 0.6))
        xenstored.kill()
        for load in loads:
            load.join(10)
            assert not load.is_alive()
        rounds += loads
        xenstored.start()
        with RawClient(xenstored.socket) as client:
            for load in loads:
                _check_round(client, load)
    with RawClient(xenstored.socket) as client:  # every round, after all restarts
        for load in rounds:
            _check_round(client, load)
        assert client.control("check") == b"OK\0"
    acked = sum(len(load.acked_writes) for load in rounds)
    print(f"12 SIGKILLs under 4 clients: {acked} acknowledged writes, none lost")
    assert acked > 1000  # the kills came under load
