"""The XenStore client's protocol core: no sockets, no trio, no clock.

Both faces of the client (:mod:`libxen.xenstore.sync`, blocking, and
:mod:`libxen.xenstore.aio`, trio) are thin drivers over this module, so
each rule below exists once:

* **framing and numbering** (:class:`Protocol`): requests get increasing
  32-bit ``req_id`` s that are never 0 (libxenstore's ``xs_talkv``) and never
  one still awaited; a payload over ``XENSTORE_PAYLOAD_MAX`` is refused
  locally with E2BIG, as ``xs_talkv`` does; incoming bytes become replies,
  matched by ``req_id``, and ``XS_WATCH_EVENT`` s, kept apart;
* **errors**: an ``XS_ERROR`` reply raises :class:`XsError`, a reply of the
  wrong type or for no request breaks the connection
  (:class:`XsConnectionLost`);
* **operations** as generators (*sans-IO*): each yields the requests it
  needs, ``(type, payload)``, receives each reply's payload (or has the
  :class:`XsError` thrown in) and returns its result. ``directory`` falls
  back to ``XS_DIRECTORY_PART`` after E2BIG exactly as libxenstore's
  ``xs_directory`` does, an ENOSYS there meaning the listing stays too big.
  A driver runs an operation with :func:`step`; a *batch* runs many at once,
  pipelined: all first requests go out together, and an operation that needs
  another round trip (a long listing) continues in the next round.

Worked example, ``directory("/big")`` on a 6000-byte listing::

    op yields (XS_DIRECTORY, b"/big\\0")       -> XsError E2BIG thrown in
    op yields (XS_DIRECTORY_PART, b"/big\\0" b"0\\0")    -> b"7\\0a\\0b\\0..."
    op yields (XS_DIRECTORY_PART, b"/big\\0" b"4071\\0") -> b"7\\0...z\\0\\0"
    op returns [b"a", b"b", ..., b"z"]        (same generation 7 both times)
"""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Generator, Iterable
from typing import Any, TypeVar

from hypervisord.public.io.xs_wire import XENSTORE_PAYLOAD_MAX, XsdSockmsgType as T
from libxen.xenstore.errors import XsConnectionLost, XsError
from libxen.xenstore.wire import FrameParser, Message, ProtocolError, encode

Pathish = str | bytes
Request = tuple[int, bytes]  # (XS_* type, payload)
R = TypeVar("R")
#: An operation: yields requests, is sent reply payloads, returns a result.
Op = Generator[Request, bytes, R]


def to_bytes(item: Pathish) -> bytes:
    return item if isinstance(item, bytes) else os.fsencode(item)


def text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def nul_strings(payload: bytes) -> list[bytes]:
    """Strings of a reply, counted by their terminating nuls (``xs_count_strings``)."""
    return payload.split(b"\0")[: payload.count(b"\0")]


def strings(*items: Pathish) -> bytes:
    """``a\\0b\\0``: each item nul-terminated."""
    return b"".join(to_bytes(i) + b"\0" for i in items)


def check_reply(request_type: int, msg: Message) -> bytes:
    """The payload of a reply, or raise."""
    if msg.type == T.XS_ERROR:
        raise XsError(msg.payload.rstrip(b"\0").decode("ascii", "replace"))
    if msg.type != request_type:
        raise XsConnectionLost(
            f"reply type {msg.type_name} to a {T(request_type).name} request")
    return msg.payload


class Protocol:
    """One connection's framing and request numbering (see the module doc)."""

    def __init__(self) -> None:
        self._parser = FrameParser()
        self._next_req_id = 1
        #: req_id -> request type, for every request sent and not answered
        self.awaited: dict[int, int] = {}
        self._forgotten: set[int] = set()
        self.events: deque[tuple[bytes, bytes]] = deque()

    def request(self, msg_type: int, payload: bytes, tx_id: int = 0) -> tuple[int, bytes]:
        """``(req_id, bytes to send)``; E2BIG for a payload the wire cannot carry."""
        if len(payload) > XENSTORE_PAYLOAD_MAX:
            raise XsError("E2BIG", f"{len(payload)}-byte payload")
        while True:  # 32 bits wrap; never 0, never one in use
            req_id = self._next_req_id
            self._next_req_id = (req_id + 1) & 0xFFFFFFFF or 1
            if req_id not in self.awaited and req_id not in self._forgotten:
                break
        self.awaited[req_id] = msg_type
        return req_id, encode(msg_type, req_id, tx_id, payload)

    def forget(self, req_id: int) -> None:
        """The caller gave up on ``req_id`` (cancelled): drop its reply when it comes."""
        if self.awaited.pop(req_id, None) is not None:
            self._forgotten.add(req_id)

    def feed(self, data: bytes) -> list[Message]:
        """Bytes from the daemon -> its replies, in order; events are queued.

        Raises :class:`XsConnectionLost` when the daemon broke the framing or
        answered a request never sent. A reply to a forgotten request is dropped.
        """
        try:
            msgs = self._parser.feed(data)
        except ProtocolError as exc:
            raise XsConnectionLost(f"protocol error: {exc}") from exc
        replies = []
        for msg in msgs:
            if msg.type == T.XS_WATCH_EVENT:
                parts = nul_strings(msg.payload)
                if len(parts) >= 2:
                    self.events.append((parts[0], parts[1]))
            elif self.awaited.pop(msg.req_id, None) is not None:
                replies.append(msg)
            elif msg.req_id in self._forgotten:
                self._forgotten.discard(msg.req_id)
            else:
                raise XsConnectionLost(f"reply req_id {msg.req_id} to no request")
        return replies


def step(op: Op[R], reply: bytes | BaseException | None) -> tuple[Request | None, R | None]:
    """Advance ``op`` with a reply (None to start it).

    Returns ``(next request, None)`` while it needs one, else ``(None, result)``.
    Exceptions the operation does not handle propagate.
    """
    try:
        if reply is None:
            return next(op), None
        if isinstance(reply, BaseException):
            return op.throw(reply), None
        return op.send(reply), None
    except StopIteration as done:
        return None, done.value


class Batch:
    """Many operations run together, pipelined (the faces' ``batch()``).

    Each round is every operation's next request; an operation that needs
    another round trip (a long listing) is in the next round. An operation's
    :class:`XsError` becomes its result; a broken connection propagates.
    """

    def __init__(self, ops: Iterable[Op[Any]]) -> None:
        self._ops = list(ops)
        self.results: list[Any] = [None] * len(self._ops)
        self._todo: dict[int, Request] = {}
        for i in range(len(self._ops)):
            self.answer(i, None)

    @property
    def done(self) -> bool:
        return not self._todo

    def round(self) -> list[tuple[int, Request]]:
        """The requests to send now: ``(operation index, request)``."""
        requests = list(self._todo.items())
        self._todo.clear()
        return requests

    def answer(self, i: int, reply: bytes | BaseException | None) -> None:
        """Operation ``i``'s reply (payload, or the XsError to throw in)."""
        try:
            request, result = step(self._ops[i], reply)
        except XsError as exc:
            self.results[i] = exc
            return
        if request is None:
            self.results[i] = result
        else:
            self._todo[i] = request


# -- operations ---------------------------------------------------------
# Paths and values are bytes or str; results are bytes (the faces decode).

def read(path: Pathish) -> Op[bytes]:
    return (yield T.XS_READ, strings(path))


def write(path: Pathish, value: Pathish) -> Op[None]:
    yield T.XS_WRITE, strings(path) + to_bytes(value)


def mkdir(path: Pathish) -> Op[None]:
    yield T.XS_MKDIR, strings(path)


def rm(path: Pathish) -> Op[None]:
    yield T.XS_RM, strings(path)


class DirectoryParts:
    """Reassembles an ``XS_DIRECTORY_PART`` listing (libxenstore's fallback).

    Each reply is ``<gencnt>\\0`` and a chunk of the ``child\\0`` list; the
    list ends with an extra nul. A changed generation means the directory
    changed: start again from offset 0.
    """

    def __init__(self) -> None:
        self.generation: bytes | None = None
        self.strings = bytearray()

    @property
    def offset(self) -> int:
        return len(self.strings)

    def request(self, path: Pathish) -> bytes:
        return strings(path, b"%d" % self.offset)

    def feed(self, reply: bytes) -> bool:
        """Take one reply; True once the listing is complete."""
        generation, _, chunk = reply.partition(b"\0")
        if self.strings and generation != self.generation:
            self.strings.clear()  # changed under us: from the top again
            return False
        if not self.strings:
            self.generation = generation
        self.strings += chunk
        return len(self.strings) <= 1 or self.strings[-2] == 0

    def children(self) -> list[bytes]:
        data = bytes(self.strings)
        return nul_strings(data[:-1] if len(data) > 1 else data)


def directory(path: Pathish) -> Op[list[bytes]]:
    """Children's names; a listing over 4 KiB comes in XS_DIRECTORY_PART chunks."""
    try:
        return nul_strings((yield T.XS_DIRECTORY, strings(path)))
    except XsError as exc:
        if exc.errno != errno.E2BIG:
            raise
    parts = DirectoryParts()
    while True:
        try:
            reply = yield T.XS_DIRECTORY_PART, parts.request(path)
        except XsError as exc:
            if exc.name == "ENOSYS":  # a daemon without DIRECTORY_PART
                raise XsError("E2BIG", "no XS_DIRECTORY_PART") from None
            raise
        if parts.feed(reply):
            return parts.children()


def get_perms(path: Pathish) -> Op[list[bytes]]:
    """``[b"b0", b"r5"]``: the owner (and default) first."""
    return nul_strings((yield T.XS_GET_PERMS, strings(path)))


def set_perms(path: Pathish, perms: Iterable[Pathish]) -> Op[None]:
    yield T.XS_SET_PERMS, strings(path, *perms)


def watch(path: Pathish, token: Pathish, depth: int | None = None) -> Op[None]:
    extra = () if depth is None else (str(depth),)
    yield T.XS_WATCH, strings(path, token, *extra)


def unwatch(path: Pathish, token: Pathish) -> Op[None]:
    yield T.XS_UNWATCH, strings(path, token)


def reset_watches() -> Op[None]:
    yield T.XS_RESET_WATCHES, b"\0"


def transaction_start() -> Op[int]:
    """A new tx_id (parsed like libxenstore's ``strtoul(id, NULL, 0)``)."""
    reply = yield T.XS_TRANSACTION_START, b"\0"
    raw = reply.split(b"\0", 1)[0].strip()
    try:
        return int(raw, 0) & 0xFFFFFFFF
    except ValueError:
        raise XsConnectionLost(f"bad transaction id {raw!r}") from None


def transaction_end(commit: bool = True) -> Op[None]:
    """Commit (``T``) or abort (``F``); a conflicting commit raises EAGAIN."""
    yield T.XS_TRANSACTION_END, b"T\0" if commit else b"F\0"


def introduce(domid: int, gfn: int, port: int) -> Op[None]:
    yield T.XS_INTRODUCE, strings(str(domid), str(gfn), str(port))


def release(domid: int) -> Op[None]:
    yield T.XS_RELEASE, strings(str(domid))


def resume(domid: int) -> Op[None]:
    yield T.XS_RESUME, strings(str(domid))


def set_target(domid: int, target: int) -> Op[None]:
    yield T.XS_SET_TARGET, strings(str(domid), str(target))


def get_domain_path(domid: int) -> Op[bytes]:
    return (yield T.XS_GET_DOMAIN_PATH, strings(str(domid))).rstrip(b"\0")


def is_domain_introduced(domid: int) -> Op[bool]:
    return (yield T.XS_IS_DOMAIN_INTRODUCED, strings(str(domid))).rstrip(b"\0") != b"F"


def control(command: str, *args: Pathish) -> Op[bytes]:
    """``XS_CONTROL``: the reply payload as the daemon sent it."""
    return (yield T.XS_CONTROL, strings(command, *args))


def raw(msg_type: int, payload: bytes) -> Op[bytes]:
    """Any request, its reply payload unparsed."""
    return (yield msg_type, payload)


def exists(path: Pathish) -> Op[bool]:
    try:
        yield T.XS_READ, strings(path)
    except XsError:
        return False
    return True


def ignore_enoent(op: Op[Any]) -> Op[None]:
    """``op``, with ENOENT taken as success (an ``rm`` of what is gone)."""
    try:
        yield from op
    except XsError as exc:
        if exc.name != "ENOENT":
            raise
