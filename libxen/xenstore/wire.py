"""Framing of the XenStore byte stream (``struct xsd_sockmsg`` + payload).

Pure: no sockets, no trio. The same stream runs over the Unix socket and the
shared ring, so both transports feed bytes into :class:`FrameParser` and send
what :func:`encode` returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypervisord.public.io.xs_wire import (
    XENSTORE_PAYLOAD_MAX,
    XSD_SOCKMSG,
    XsdSockmsgType,
)

HEADER_SIZE = XSD_SOCKMSG.size


class ProtocolError(Exception):
    """The peer broke the framing; its connection cannot be trusted further."""


@dataclass(frozen=True, slots=True)
class Message:
    """One message: the header fields and the raw payload."""

    type: int
    req_id: int
    tx_id: int
    payload: bytes

    @property
    def type_name(self) -> str:
        try:
            return XsdSockmsgType(self.type).name
        except ValueError:
            return f"type#{self.type}"


def encode(msg_type: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    """Header + payload, ready for the wire."""
    return XSD_SOCKMSG.pack(msg_type, req_id, tx_id, len(payload)) + payload


def encode_message(msg: Message) -> bytes:
    return encode(msg.type, msg.req_id, msg.tx_id, msg.payload)


def decode_header(data: bytes) -> tuple[int, int, int, int]:
    """(type, req_id, tx_id, len) from the first 16 bytes."""
    return XSD_SOCKMSG.unpack_from(data)


class FrameParser:
    """Incremental parser: feed any chunking of the stream, get whole messages.

    A header announcing more than ``XENSTORE_PAYLOAD_MAX`` bytes breaks the
    stream (xenstored kills such a connection): the messages before it are
    still returned, then :attr:`error` is set and the next :meth:`feed`
    raises :class:`ProtocolError`, so a bad stream is never re-parsed
    (XSA-420) and good requests ahead of it are still answered.
    """

    __slots__ = ("_buf", "_broken", "max_payload", "error")

    def __init__(self, max_payload: int = XENSTORE_PAYLOAD_MAX) -> None:
        self._buf = bytearray()
        self._broken = False
        self.max_payload = max_payload
        self.error: ProtocolError | None = None

    def feed(self, data: bytes) -> list[Message]:
        if self._broken:
            raise self.error or ProtocolError("stream already broken")
        buf = self._buf
        if len(buf) == HEADER_SIZE:
            # A header alone, then its payload: how libxenstore writes every
            # request (two write()s), so the common case takes no copy.
            mtype, req_id, tx_id, length = XSD_SOCKMSG.unpack_from(buf)
            if len(data) == length:  # length was checked when the header came
                buf.clear()
                return [Message(mtype, req_id, tx_id, bytes(data))]
        buf += data
        out: list[Message] = []
        pos = 0
        while len(buf) - pos >= HEADER_SIZE:
            mtype, req_id, tx_id, length = XSD_SOCKMSG.unpack_from(buf, pos)
            if length > self.max_payload:
                self._broken = True
                self.error = ProtocolError(
                    f"payload length {length} exceeds {self.max_payload}")
                if not out:
                    raise self.error
                break
            end = pos + HEADER_SIZE + length
            if len(buf) < end:
                break
            out.append(Message(mtype, req_id, tx_id, bytes(buf[pos + HEADER_SIZE:end])))
            pos = end
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes held for an incomplete message."""
        return len(self._buf)


def split_strings(payload: bytes) -> list[bytes]:
    """Split a payload of nul-terminated strings.

    ``b"a\\0b\\0"`` gives ``[b"a", b"b"]``; a missing final nul keeps the
    tail as a last element, which the request parser then rejects where the
    protocol requires termination.
    """
    if not payload:
        return []
    parts = payload.split(b"\0")
    if parts[-1] == b"":
        parts.pop()
    return parts


def join_strings(items: list[bytes] | list[str]) -> bytes:
    """Each item nul-terminated, concatenated."""
    out = bytearray()
    for item in items:
        out += item.encode() if isinstance(item, str) else item
        out += b"\0"
    return bytes(out)
