"""A raw hypercall client for tests: msgpack envelopes packed by hand.

Independent of ``libxen/rpc.py`` and ``libxen`` on purpose, so tests
built on it check hypervisord against the documented envelope (request
``[req_id, hypercall, subop, args]``, reply ``[req_id, rc, result]``, one
per ``SOCK_SEQPACKET`` packet) rather than against our own encoder.
Replies are read with ``recv``: descriptors that come along are dropped by
the kernel, never installed in the test process.
"""

from __future__ import annotations

import array
import socket

import msgpack

SO_SNDBUFFORCE = 32  # asm-generic/socket.h


class RawCall:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(10)
        self.req_id = 0

    @classmethod
    def connect(cls, path) -> "RawCall":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:  # room for an oversized packet, past the host's cap when we may
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, 1 << 20)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        sock.connect(str(path))
        return cls(sock)

    def send(self, packet: bytes, fds: list[int] = ()) -> None:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.sock.sendmsg([packet], anc)

    def recv(self):
        data = self.sock.recv(1 << 20)
        return msgpack.unpackb(data, raw=False) if data else None

    def call_args(self, hypercall: int, subop: int, args: dict,
                  req_id: int | None = None) -> tuple:
        """``(rc, result)`` of one call; replies to other requests are skipped."""
        if req_id is None:
            self.req_id = (self.req_id + 1) & 0xFFFFFFFF
            req_id = self.req_id
        self.send(msgpack.packb([req_id, hypercall, subop, args], use_bin_type=True))
        while True:
            reply = self.recv()
            assert reply is not None, \
                f"hypervisord dropped the connection on {hypercall}/{subop} {args!r}"
            if reply[0] == req_id:
                return reply[1], reply[2]

    def call(self, hypercall: int, subop: int, req_id: int | None = None, **args) -> tuple:
        """``(rc, result map)``, the arguments as keywords."""
        rc, result = self.call_args(hypercall, subop, args, req_id)
        return rc, result or {}

    def closed(self) -> bool:
        try:
            return self.sock.recv(1 << 20) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()
