"""Pipelined XenStore requests for the domain builder.

Creating a domain writes ~40 nodes in one transaction; one request at a
time that is ~40 round trips through xenstored, most of the builder's time
(``reference/performance.md``: XenStore dominates creation, as LightVM
found for xl). ``xs_wire.h`` lets a client have many requests outstanding
on a connection (replies carry the request's ``req_id`` and xenstored
answers a connection's requests in order), so :class:`XsPipe` sends a
whole batch at once (reading replies whenever the socket is full) and then
reads the rest: three round trips for a
transaction (start, the batch, commit) however many nodes it writes.

Built only on the public pieces of :mod:`xenstored.syncclient` and
:mod:`xenstored.protocol.wire`; watch events are not expected here (the
builder sets none) and are dropped.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from hypervisord.public.io.xs_wire import XsdSockmsgType as T
from hypervisord.toolstack import xenstore_layout as layout
from xenstored.protocol.wire import FrameParser, Message, ProtocolError, encode
from xenstored.syncclient import DirectoryParts, XsConnectionLost, XsError, check_reply, \
    connect_socket, nul_strings

Request = tuple[int, bytes]  # (XS_* type, payload)


class XsPipe:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._parser = FrameParser()
        self._inbox: list[Message] = []
        self._next = 1

    @classmethod
    def open(cls, path: str | None = None) -> "XsPipe":
        return cls(connect_socket(path))

    def close(self) -> None:
        self._sock.close()

    def _receive(self) -> None:
        """One read's worth of messages into the inbox (blocking unless the
        socket is in non-blocking mode)."""
        try:
            data = self._sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            raise XsConnectionLost(f"recv: {e}") from e
        if not data:
            raise XsConnectionLost("daemon closed the connection")
        try:
            msgs = self._parser.feed(data)
        except ProtocolError as e:
            raise XsConnectionLost(str(e)) from e
        self._inbox += [m for m in msgs if m.type != T.XS_WATCH_EVENT]

    def _replies(self, count: int) -> list[Message]:
        while len(self._inbox) < count:
            self._receive()
        replies, self._inbox = self._inbox[:count], self._inbox[count:]
        return replies

    def _send(self, data: bytes) -> None:
        """Send a whole batch, reading replies while the socket is full.

        xenstored stops reading a connection whose replies are not being
        read (back-pressure), so a batch bigger than the socket buffers
        would deadlock a plain ``sendall``.
        """
        view = memoryview(data)
        timeout = self._sock.gettimeout()
        self._sock.setblocking(False)
        try:
            while view:
                try:
                    view = view[self._sock.send(view):]
                    continue
                except BlockingIOError:
                    pass
                except OSError as e:
                    raise XsConnectionLost(f"send: {e}") from e
                readable, writable, _ = select.select([self._sock], [self._sock], [], timeout)
                if not (readable or writable):
                    raise XsConnectionLost(f"xenstored neither read nor answered for {timeout} s")
                if readable:
                    self._receive()
        finally:
            self._sock.settimeout(timeout)

    def batch(self, requests: list[Request], tx_id: int = 0) -> list[bytes | XsError]:
        """Send every request, then read every reply: payloads or XsErrors, in order."""
        ids = [(self._next + i) & 0xFFFFFFFF or 1 for i in range(len(requests))]
        self._next = (ids[-1] + 1) & 0xFFFFFFFF or 1 if ids else self._next
        data = b"".join(encode(t, rid, tx_id, payload)
                        for rid, (t, payload) in zip(ids, requests))
        self._send(data)
        results: list[bytes | XsError] = []
        for rid, (t, _), msg in zip(ids, requests, self._replies(len(requests))):
            if msg.req_id != rid:
                raise XsConnectionLost(f"reply req_id {msg.req_id}, expected {rid}")
            try:
                results.append(check_reply(t, msg))
            except XsError as e:
                results.append(e)
        return results

    def request(self, msg_type: int, payload: bytes, tx_id: int = 0) -> bytes:
        result = self.batch([(msg_type, payload)], tx_id)[0]
        if isinstance(result, XsError):
            raise result
        return result

    @contextmanager
    def transaction(self) -> Iterator[int]:
        """Commit on success (EAGAIN raises XsError), abort on any error."""
        reply = self.request(T.XS_TRANSACTION_START, b"\0")
        tx_id = int(reply.split(b"\0", 1)[0], 0)
        try:
            yield tx_id
        except BaseException:
            try:
                self.request(T.XS_TRANSACTION_END, b"F\0", tx_id)
            except (XsError, XsConnectionLost):
                pass
            raise
        self.request(T.XS_TRANSACTION_END, b"T\0", tx_id)


def op_request(op: layout.Op) -> Request:
    path = op.path.encode()
    if op.kind == "write":
        return T.XS_WRITE, path + b"\0" + op.value.encode()
    if op.kind == "perms":
        return T.XS_SET_PERMS, path + b"\0" + b"".join(p.encode() + b"\0" for p in op.perms)
    if op.kind == "rm":
        return T.XS_RM, path + b"\0"
    raise ValueError(f"unknown store op {op.kind}")


def apply_ops(pipe: XsPipe, ops: list[layout.Op], tx_id: int = 0) -> None:
    """All of ``ops`` in one batch; the first error (but an rm's ENOENT) raises."""
    for op, result in zip(ops, pipe.batch([op_request(op) for op in ops], tx_id)):
        if isinstance(result, XsError) and not (op.kind == "rm" and result.name == "ENOENT"):
            raise result


def directory(pipe: XsPipe, path: str, tx_id: int = 0) -> list[bytes]:
    """Children of ``path``; past 4 KiB in XS_DIRECTORY_PART chunks, as libxenstore."""
    raw = path.encode()
    try:
        return nul_strings(pipe.request(T.XS_DIRECTORY, raw + b"\0", tx_id))
    except XsError as e:
        if e.name != "E2BIG":
            raise
    parts = DirectoryParts()
    while not parts.feed(pipe.request(T.XS_DIRECTORY_PART, parts.request(raw), tx_id)):
        pass
    return parts.children()


def domain_names(pipe: XsPipe, tx_id: int = 0) -> dict[int, str]:
    """Every domain's name (two round trips for up to ~1000 domains)."""
    try:
        children = directory(pipe, "/local/domain", tx_id)
    except XsError:
        return {}
    domids = [int(c) for c in children if c.isascii() and c.isdigit()]
    reads = pipe.batch([(T.XS_READ, f"/local/domain/{d}/name\0".encode()) for d in domids],
                       tx_id)
    return {d: r.decode("utf-8", "replace") for d, r in zip(domids, reads)
            if not isinstance(r, XsError)}


def read(pipe: XsPipe, path: str, tx_id: int = 0) -> str | None:
    """A node's value, or None when it cannot be read."""
    result = pipe.batch([(T.XS_READ, path.encode() + b"\0")], tx_id)[0]
    return None if isinstance(result, XsError) else result.decode("utf-8", "replace")


def read_many(pipe: XsPipe, paths: list[str], tx_id: int = 0) -> list[str | None]:
    """Several nodes in one round trip (None for those that cannot be read)."""
    results = pipe.batch([(T.XS_READ, p.encode() + b"\0") for p in paths], tx_id) if paths else []
    return [None if isinstance(r, XsError) else r.decode("utf-8", "replace") for r in results]
