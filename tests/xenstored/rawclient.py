"""A blocking raw-socket XenStore client for tests: exact bytes out, exact bytes in.

Deliberately independent of the project's client libraries: it speaks the
``struct xsd_sockmsg`` framing of ``xen/include/public/io/xs_wire.h`` with
``struct`` directly (16-byte little-endian header, then ``len`` payload
bytes), so a test built on it checks the daemon against the spec rather
than against our own encoder.

Two levels:

* raw: :meth:`RawClient.send` any bytes, :meth:`RawClient.recv_msg` one
  whole message (header + payload) exactly as it came off the socket;
* convenience: :meth:`RawClient.call` sends one request and returns its
  reply, setting aside any ``XS_WATCH_EVENT`` that arrives first (they are
  kept in :attr:`RawClient.events`). ``read``/``write``/... wrap ``call``
  and raise :class:`XsReplyError` for an ``XS_ERROR`` reply.
"""

from __future__ import annotations

import select
import socket
import struct
from collections import deque
from dataclasses import dataclass
from pathlib import Path

HEADER = struct.Struct("<IIII")  # type, req_id, tx_id, len
PAYLOAD_MAX = 4096

# enum xsd_sockmsg_type, spelled out here on purpose (see module doc).
XS_CONTROL = 0
XS_DIRECTORY = 1
XS_READ = 2
XS_GET_PERMS = 3
XS_WATCH = 4
XS_UNWATCH = 5
XS_TRANSACTION_START = 6
XS_TRANSACTION_END = 7
XS_INTRODUCE = 8
XS_RELEASE = 9
XS_GET_DOMAIN_PATH = 10
XS_WRITE = 11
XS_MKDIR = 12
XS_RM = 13
XS_SET_PERMS = 14
XS_WATCH_EVENT = 15
XS_ERROR = 16
XS_IS_DOMAIN_INTRODUCED = 17
XS_RESUME = 18
XS_SET_TARGET = 19
XS_RESTRICT = 20
XS_RESET_WATCHES = 21
XS_DIRECTORY_PART = 22
XS_GET_FEATURE = 23
XS_SET_FEATURE = 24
XS_GET_QUOTA = 25
XS_SET_QUOTA = 26
XS_INVALID = 0xFFFF


@dataclass(frozen=True)
class Msg:
    type: int
    req_id: int
    tx_id: int
    payload: bytes
    raw: bytes  # the exact bytes received (header + payload)

    @property
    def strings(self) -> list[bytes]:
        """Payload split at nuls (the final nul, if any, ends the last string)."""
        p = self.payload
        if p.endswith(b"\0"):
            p = p[:-1]
        return p.split(b"\0") if p else []

    @property
    def is_error(self) -> bool:
        return self.type == XS_ERROR

    @property
    def error(self) -> str | None:
        return self.payload.rstrip(b"\0").decode() if self.is_error else None


class XsReplyError(Exception):
    def __init__(self, name: str, msg: Msg) -> None:
        super().__init__(name)
        self.name = name
        self.msg = msg


class ConnectionClosed(Exception):
    """The daemon closed the connection (EOF or reset)."""


def pack(msg_type: int, payload: bytes = b"", req_id: int = 0, tx_id: int = 0,
         length: int | None = None) -> bytes:
    """Header + payload; ``length`` overrides the header's len field."""
    n = len(payload) if length is None else length
    return HEADER.pack(msg_type, req_id, tx_id, n) + payload


def nul(*items: bytes | str) -> bytes:
    """Each item nul-terminated, concatenated."""
    out = b""
    for i in items:
        out += (i.encode() if isinstance(i, str) else i) + b"\0"
    return out


class RawClient:
    def __init__(self, path: str | Path, timeout: float = 10.0) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Blocking connect: with a timeout set, an AF_UNIX connect fails at once with
        # EAGAIN while the listen backlog is full instead of waiting for room.
        self.sock.connect(self.path)
        self.sock.settimeout(timeout)
        self.buf = bytearray()
        self.events: deque[Msg] = deque()
        self.next_req_id = 1

    # -- raw level ------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Send all of ``data``, reading what the daemon answers meanwhile.

        A pipelined batch can be bigger than the two socket buffers: the daemon
        stops reading us while its replies to us wait, so a plain ``sendall``
        would deadlock against it. Whatever arrives while we are blocked on
        sending is kept in the receive buffer for :meth:`recv_msg`.
        """
        view = memoryview(data)
        timeout = self.sock.gettimeout()
        self.sock.setblocking(False)  # Python waits for a timeout socket itself
        try:
            self._send_nonblocking(view, timeout)
        finally:
            self.sock.settimeout(timeout)

    def _send_nonblocking(self, view: memoryview, timeout: float | None) -> None:
        while view:
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                sent = 0
            view = view[sent:]
            if not view or sent:
                continue
            readable, writable, _ = select.select([self.sock], [self.sock], [], timeout)
            if not readable and not writable:
                raise TimeoutError(f"daemon neither read nor wrote for {timeout} s "
                                   f"with {len(view)} bytes left to send")
            if readable:
                try:
                    chunk = self.sock.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError as e:
                    raise ConnectionClosed(str(e)) from None
                if not chunk:
                    raise ConnectionClosed(f"EOF with {len(view)} bytes left to send")
                self.buf += chunk

    def send_msg(self, msg_type: int, payload: bytes = b"", req_id: int | None = None,
                 tx_id: int = 0) -> int:
        if req_id is None:
            req_id = self.next_req_id
            self.next_req_id = (self.next_req_id + 1) & 0xFFFFFFFF
        self.send(pack(msg_type, payload, req_id, tx_id))
        return req_id

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(max(65536, n - len(self.buf)))
            except ConnectionResetError as e:
                raise ConnectionClosed(str(e)) from None
            if not chunk:
                raise ConnectionClosed(f"EOF after {len(self.buf)} of {n} bytes")
            self.buf += chunk

    def recv_exact(self, n: int) -> bytes:
        self._fill(n)
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def recv_msg(self) -> Msg:
        """The next message off the wire, whatever it is."""
        head = self.recv_exact(HEADER.size)
        mtype, req_id, tx_id, length = HEADER.unpack(head)
        assert length <= PAYLOAD_MAX, f"daemon sent a {length}-byte payload (max {PAYLOAD_MAX})"
        payload = self.recv_exact(length)
        return Msg(mtype, req_id, tx_id, payload, head + payload)

    def recv_reply(self) -> Msg:
        """The next non-event message; events met on the way are kept."""
        while True:
            m = self.recv_msg()
            if m.type == XS_WATCH_EVENT:
                self.events.append(m)
                continue
            return m

    def next_event(self) -> Msg:
        if self.events:
            return self.events.popleft()
        m = self.recv_msg()
        assert m.type == XS_WATCH_EVENT, f"expected a watch event, got {m}"
        return m

    def is_closed(self, timeout: float = 5.0) -> bool:
        """True once the daemon has closed this connection (EOF/reset) within
        ``timeout``; any bytes still arriving are discarded."""
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(old)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- request/reply level ---------------------------------------------------------
    def call(self, msg_type: int, payload: bytes = b"", tx_id: int = 0,
             req_id: int | None = None) -> Msg:
        rid = self.send_msg(msg_type, payload, req_id, tx_id)
        reply = self.recv_reply()
        assert reply.req_id == rid, f"reply req_id {reply.req_id} != {rid}"
        assert reply.tx_id == tx_id, f"reply tx_id {reply.tx_id} != {tx_id}"
        assert reply.type in (msg_type, XS_ERROR), f"reply type {reply.type} to {msg_type}"
        return reply

    def ok(self, msg_type: int, payload: bytes = b"", tx_id: int = 0) -> bytes:
        """Payload of a successful reply; XsReplyError otherwise."""
        reply = self.call(msg_type, payload, tx_id)
        if reply.is_error:
            raise XsReplyError(reply.error or "", reply)
        return reply.payload

    def err(self, msg_type: int, payload: bytes = b"", tx_id: int = 0) -> str:
        """The error name of a reply that must be an XS_ERROR."""
        reply = self.call(msg_type, payload, tx_id)
        assert reply.is_error, f"expected an error, got {reply}"
        return reply.error or ""

    def read(self, path: str, tx: int = 0) -> bytes:
        return self.ok(XS_READ, nul(path), tx)

    def write(self, path: str, value: bytes | str, tx: int = 0) -> None:
        v = value.encode() if isinstance(value, str) else value
        assert self.ok(XS_WRITE, path.encode() + b"\0" + v, tx) == b"OK\0"

    def mkdir(self, path: str, tx: int = 0) -> None:
        assert self.ok(XS_MKDIR, nul(path), tx) == b"OK\0"

    def rm(self, path: str, tx: int = 0) -> None:
        assert self.ok(XS_RM, nul(path), tx) == b"OK\0"

    def directory(self, path: str, tx: int = 0) -> list[bytes]:
        p = self.ok(XS_DIRECTORY, nul(path), tx)
        return p[:-1].split(b"\0") if p else []

    def get_perms(self, path: str, tx: int = 0) -> list[bytes]:
        return self.ok(XS_GET_PERMS, nul(path), tx)[:-1].split(b"\0")

    def set_perms(self, path: str, *perms: str, tx: int = 0) -> None:
        assert self.ok(XS_SET_PERMS, nul(path, *perms), tx) == b"OK\0"

    def watch(self, path: str, token: str, depth: int | None = None) -> None:
        args = [path, token] + ([str(depth)] if depth is not None else [])
        assert self.ok(XS_WATCH, nul(*args)) == b"OK\0"

    def unwatch(self, path: str, token: str) -> None:
        assert self.ok(XS_UNWATCH, nul(path, token)) == b"OK\0"

    def start(self) -> int:
        reply = self.ok(XS_TRANSACTION_START, b"\0")
        assert reply.endswith(b"\0")
        return int(reply[:-1])

    def end(self, tx: int, commit: bool = True) -> str:
        """"OK" or the error name (EAGAIN on conflict)."""
        reply = self.call(XS_TRANSACTION_END, b"T\0" if commit else b"F\0", tx)
        return reply.error if reply.is_error else reply.payload.rstrip(b"\0").decode()

    def introduce(self, domid: int, mfn: int = 4096, port: int = 1) -> None:
        assert self.ok(XS_INTRODUCE, nul(str(domid), str(mfn), str(port))) == b"OK\0"

    def release(self, domid: int) -> None:
        assert self.ok(XS_RELEASE, nul(str(domid))) == b"OK\0"

    def control(self, *args: str) -> bytes:
        return self.ok(XS_CONTROL, nul(*args))

    def alive(self) -> bool:
        """One round trip works (a cheap liveness probe)."""
        return self.ok(XS_GET_DOMAIN_PATH, b"0\0") == b"/local/domain/0\0"
