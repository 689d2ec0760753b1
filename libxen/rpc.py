"""The one RPC envelope for every hypercall.

Transport: ``AF_UNIX``/``SOCK_SEQPACKET``, one msgpack message per packet,
so framing is the kernel's and file descriptors (a domain's memory file,
an event-channel socket) travel with the reply that announces them as
``SCM_RIGHTS``.

Request: ``[req_id, hypercall, subop, args]``; ``hypercall`` is Xen's
``__HYPERVISOR_*`` number, ``subop`` the family's op number (``EVTCHNOP_*``,
``GNTTABOP_*``, ``XENMEM_*``, ``XEN_DOMCTL_*`` ...), ``args`` a map with
the fields of Xen's op struct under their C names.

Reply: ``[req_id, rc, result]``; ``rc`` is 0 or ``-errno`` as Xen returns
it, ``result`` a map of the op's OUT fields (or nil). File descriptors
that come with a reply are listed in ``result["fds"]`` by name.

The caller's domid is never in the envelope: it is a property of the
connection (hypervisord knows who is on each socket).
"""

from __future__ import annotations

import array
import socket
from typing import Any, NamedTuple

import msgpack

MAX_PACKET = 256 * 1024
MAX_FDS = 16


class RpcError(Exception):
    """A malformed envelope: the peer is broken or hostile."""


class Request(NamedTuple):
    req_id: int
    hypercall: int
    subop: int
    args: dict[str, Any]


class Reply(NamedTuple):
    req_id: int
    rc: int
    result: dict[str, Any] | None = None
    fds: list[int] = []  # never mutated: decode_reply always passes its own list


_packer = msgpack.Packer(use_bin_type=True)


class PacketTooLarge(ValueError):
    """A request that could not travel as one packet (over MAX_PACKET)."""


def encode_request(req: Request) -> bytes:
    packet = _packer.pack((req.req_id, req.hypercall, req.subop, req.args))
    if len(packet) > MAX_PACKET:
        raise PacketTooLarge(f"request of {len(packet)} bytes exceeds the "
                             f"{MAX_PACKET}-byte packet limit; split it")
    return packet


def encode_reply(rep: Reply) -> bytes:
    return _packer.pack((rep.req_id, rep.rc, rep.result))


def _unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise RpcError(f"undecodable packet: {e}") from None


def decode_request(data: bytes) -> Request:
    # Exact type checks: msgpack yields exactly these types, and a bool (an
    # int subclass) is not a valid number here. This runs on every hypercall.
    obj = _unpack(data)
    if type(obj) is not list or len(obj) != 4:
        raise RpcError("request is not [req_id, hypercall, subop, args]")
    req_id, hypercall, subop, args = obj
    if type(req_id) is not int or type(hypercall) is not int or type(subop) is not int:
        raise RpcError("req_id, hypercall and subop must be integers")
    if type(args) is not dict or (args and not all(type(k) is str for k in args)):
        raise RpcError("args must be a map with string keys")
    return Request(req_id, hypercall, subop, args)


def decode_reply(data: bytes, fds: list[int] | None = None) -> Reply:
    obj = _unpack(data)
    if not (isinstance(obj, list) and len(obj) == 3):
        raise RpcError("reply is not [req_id, rc, result]")
    req_id, rc, result = obj
    if not isinstance(req_id, int) or not isinstance(rc, int):
        raise RpcError("bad reply header")
    if result is not None and not isinstance(result, dict):
        raise RpcError("bad reply result")
    return Reply(req_id, rc, result, list(fds or []))


# -- fd passing helpers (work on trio and plain sockets alike) -------------------

def fds_ancillary(fds: list[int]) -> list[tuple[int, int, bytes]]:
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def fds_from_ancillary(ancdata) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    return fds


_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # asm-generic/socket.h
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_SKB_SLACK = 4096  # the kernel's per-packet overhead counts against the buffer


def size_buffers(sock) -> None:
    """Let ``sock`` carry a whole MAX_PACKET packet.

    A SEQPACKET packet must fit the sender's send buffer, whose default is
    the host's ``net.core.wmem_default`` (208 KiB on most machines, far less
    on some). The kernel doubles the value asked for and caps the request at
    ``wmem_max``, so asking for MAX_PACKET is enough wherever that cap is at
    least half of it; below that, a privileged process forces the size.
    """
    for opt, force in ((socket.SO_SNDBUF, _SO_SNDBUFFORCE), (socket.SO_RCVBUF, _SO_RCVBUFFORCE)):
        sock.setsockopt(socket.SOL_SOCKET, opt, MAX_PACKET)
        if sock.getsockopt(socket.SOL_SOCKET, opt) < MAX_PACKET + _SKB_SLACK:
            try:  # past the host's cap: allowed with CAP_NET_ADMIN
                sock.setsockopt(socket.SOL_SOCKET, force, MAX_PACKET)
            except PermissionError:
                pass  # packets near MAX_PACKET may then be refused (EMSGSIZE)


def ancillary_space() -> int:
    return socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)
