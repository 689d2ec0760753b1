"""Blocking XenStore client on a plain socket, for the ``xenstore-*`` tools.

Owns three things shared with the async client (:mod:`libxen.xenstore.aio`):

* **socket discovery**, as libxenstore's ``xs_open()`` does it
  (``tools/libs/store/xs.c``, ``xs_lib.c``): ``$XENSTORED_PATH`` if set;
  else ``$XENSTORED_RUNDIR/socket``; else pvxen's default
  ``<runtime dir>/xenstored/socket`` and then ``/run/xenstored/socket``.
  Like ``get_handle()`` it ``stat()``s the path first, so a missing socket
  gives ENOENT and a dead one ECONNREFUSED (the tools print that errno);
* :class:`XsError`, the one exception for an ``XS_ERROR`` reply: it carries
  the error name from the wire (``"ENOENT"``) and the errno it maps to
  (unknown names map to EINVAL, as ``get_error()`` does);
* :class:`XsConnectionLost` for a broken or misbehaving connection.

The client itself serialises requests (one outstanding at a time, like
libxenstore) but numbers them, and queues any ``XS_WATCH_EVENT`` that
arrives between a request and its reply for :meth:`XsSyncClient.read_watch`.
It imports nothing heavier than the wire codec, so the tools start fast.
"""

from __future__ import annotations

import collections
import errno
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from hypervisord.public.io.xs_wire import (
    XENSTORE_PAYLOAD_MAX, XSD_ERROR_BY_NAME, XsdSockmsgType as T)
from libxen.paths import default_runtime_dir
from libxen.xenstore.wire import FrameParser, Message, ProtocolError, encode

Pathish = str | bytes

SUN_PATH_MAX = 108  # sizeof(struct sockaddr_un.sun_path) on Linux


class XsError(OSError):
    """The daemon answered ``XS_ERROR``: ``name`` is the wire string."""

    def __init__(self, name: str, detail: str = "") -> None:
        num = XSD_ERROR_BY_NAME.get(name, errno.EINVAL)
        super().__init__(num, os.strerror(num))
        self.name = name
        self.detail = detail

    def __str__(self) -> str:
        where = f" ({self.detail})" if self.detail else ""
        return f"{self.name}: {self.strerror}{where}"


class XsConnectionLost(ConnectionError):
    """The connection closed or broke the protocol; it cannot be used again.

    Its errno is EBADF, which is what libxenstore reports once it has
    closed a broken connection.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(errno.EBADF, os.strerror(errno.EBADF))
        self.reason = reason

    def __str__(self) -> str:
        return f"xenstore connection lost: {self.reason}"


def to_bytes(item: Pathish) -> bytes:
    return item if isinstance(item, bytes) else os.fsencode(item)


def socket_candidates(env: os._Environ[str] | dict[str, str] | None = None) -> list[str]:
    """Socket paths to try, in order (see the module docstring)."""
    env = os.environ if env is None else env
    if "XENSTORED_PATH" in env:
        return [env["XENSTORED_PATH"]]
    if "XENSTORED_RUNDIR" in env:
        return [env["XENSTORED_RUNDIR"] + "/socket"]
    return [str(default_runtime_dir() / "xenstored" / "socket"), "/run/xenstored/socket"]


def check_socket_path(path: str) -> None:
    """``get_handle()``'s checks before connecting; raises OSError like it."""
    st = os.stat(path)  # FileNotFoundError: "No such file or directory"
    if not stat.S_ISSOCK(st.st_mode):
        # libxenstore would open a device node here; pvxen has none.
        raise OSError(errno.ENOTSOCK, os.strerror(errno.ENOTSOCK), path)
    if len(os.fsencode(path)) >= SUN_PATH_MAX:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), path)


def connect_socket(path: str | None = None) -> socket.socket:
    """A connected blocking socket, found as :func:`socket_candidates` says.

    Raises the OSError of the first candidate that exists, else ENOENT.
    """
    candidates = [path] if path is not None else socket_candidates()
    first_error: OSError | None = None
    for cand in candidates:
        try:
            check_socket_path(cand)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(cand)
            except OSError:
                sock.close()
                raise
            return sock
        except FileNotFoundError as exc:
            first_error = first_error or exc
        except OSError as exc:
            if first_error is None or isinstance(first_error, FileNotFoundError):
                first_error = exc
    assert first_error is not None
    raise first_error


def check_reply(request_type: int, msg: Message) -> bytes:
    """The payload of a reply, or raise: shared by both clients."""
    if msg.type == T.XS_ERROR:
        raise XsError(msg.payload.rstrip(b"\0").decode("ascii", "replace"))
    if msg.type != request_type:
        raise XsConnectionLost(
            f"reply type {msg.type_name} to a {T(request_type).name} request")
    return msg.payload


def nul_strings(payload: bytes) -> list[bytes]:
    """Strings of a reply, counted by their terminating nuls (``xs_count_strings``)."""
    return payload.split(b"\0")[: payload.count(b"\0")]


class DirectoryParts:
    """Reassembles an ``XS_DIRECTORY_PART`` listing (libxenstore's fallback).

    After ``XS_DIRECTORY`` fails with E2BIG, the client asks for chunks at
    increasing byte offsets. Each reply is ``<gencnt>\0`` and a chunk of the
    ``child\0`` list; the list ends with an extra nul. A changed generation
    means the directory changed: start again from offset 0.
    """

    def __init__(self) -> None:
        self.generation: bytes | None = None
        self.strings = bytearray()

    @property
    def offset(self) -> int:
        """The offset to ask for next."""
        return len(self.strings)

    def request(self, path: Pathish) -> bytes:
        return to_bytes(path) + b"\0" + b"%d\0" % self.offset

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


def directory_part_error(exc: XsError) -> XsError:
    """A server without DIRECTORY_PART (ENOSYS) leaves the listing too big."""
    return XsError("E2BIG", "no XS_DIRECTORY_PART") if exc.name == "ENOSYS" else exc


class XsSyncClient:
    """One blocking connection; use as a context manager or call :meth:`close`."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._parser = FrameParser()
        self._inbox: collections.deque[Message] = collections.deque()
        self._events: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._next_req_id = 1
        self._broken: str | None = None

    @classmethod
    def open(cls, path: str | None = None) -> "XsSyncClient":
        return cls(connect_socket(path))

    def __enter__(self) -> "XsSyncClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    # -- transport ------------------------------------------------------
    def _fail(self, reason: str) -> XsConnectionLost:
        self._broken = reason
        self._sock.close()
        return XsConnectionLost(reason)

    def _receive(self) -> Message:
        """The next message from the daemon, blocking."""
        while not self._inbox:
            try:
                data = self._sock.recv(65536)
            except OSError as exc:
                raise self._fail(f"recv: {exc}") from exc
            if not data:
                raise self._fail("daemon closed the connection")
            try:
                self._inbox.extend(self._parser.feed(data))
            except ProtocolError as exc:
                raise self._fail(str(exc)) from exc
        return self._inbox.popleft()

    def request(self, msg_type: int, payload: bytes, tx_id: int = 0) -> bytes:
        """Send one request and return the reply payload (raises XsError)."""
        if self._broken is not None:
            raise XsConnectionLost(self._broken)
        if len(payload) > XENSTORE_PAYLOAD_MAX:  # refused locally, as xs_talkv does
            raise XsError("E2BIG", f"{len(payload)}-byte payload")
        req_id = self._next_req_id
        self._next_req_id = (req_id + 1) & 0xFFFFFFFF or 1
        try:
            self._sock.sendall(encode(msg_type, req_id, tx_id, payload))
        except OSError as exc:
            raise self._fail(f"send: {exc}") from exc
        while True:
            msg = self._receive()
            if msg.type == T.XS_WATCH_EVENT:
                self._queue_event(msg)
                continue
            if msg.req_id != req_id:
                raise self._fail(f"reply req_id {msg.req_id}, expected {req_id}")
            try:
                return check_reply(msg_type, msg)
            except XsConnectionLost as exc:
                raise self._fail(exc.reason) from None

    def _queue_event(self, msg: Message) -> None:
        parts = nul_strings(msg.payload)
        if len(parts) >= 2:
            self._events.append((parts[0], parts[1]))

    def read_watch(self) -> tuple[bytes, bytes]:
        """Block until a watch event arrives: ``(path, token)``."""
        while not self._events:
            msg = self._receive()
            if msg.type == T.XS_WATCH_EVENT:
                self._queue_event(msg)
            # A stray reply cannot happen: requests wait for their own.
        return self._events.popleft()

    # -- operations (paths and values are bytes or str) -------------------
    def read(self, path: Pathish, tx_id: int = 0) -> bytes:
        return self.request(T.XS_READ, to_bytes(path) + b"\0", tx_id)

    def write(self, path: Pathish, value: Pathish, tx_id: int = 0) -> None:
        self.request(T.XS_WRITE, to_bytes(path) + b"\0" + to_bytes(value), tx_id)

    def mkdir(self, path: Pathish, tx_id: int = 0) -> None:
        self.request(T.XS_MKDIR, to_bytes(path) + b"\0", tx_id)

    def rm(self, path: Pathish, tx_id: int = 0) -> None:
        self.request(T.XS_RM, to_bytes(path) + b"\0", tx_id)

    def directory(self, path: Pathish, tx_id: int = 0) -> list[bytes]:
        """Children's names; a listing over 4 KiB comes in XS_DIRECTORY_PART chunks."""
        try:
            return nul_strings(self.request(T.XS_DIRECTORY, to_bytes(path) + b"\0", tx_id))
        except XsError as exc:
            if exc.errno != errno.E2BIG:
                raise
        parts = DirectoryParts()
        while True:
            try:
                reply = self.request(T.XS_DIRECTORY_PART, parts.request(path), tx_id)
            except XsError as exc:
                raise directory_part_error(exc) from None
            if parts.feed(reply):
                return parts.children()

    def get_perms(self, path: Pathish, tx_id: int = 0) -> list[bytes]:
        return nul_strings(self.request(T.XS_GET_PERMS, to_bytes(path) + b"\0", tx_id))

    def set_perms(self, path: Pathish, perms: list[bytes] | list[str], tx_id: int = 0) -> None:
        payload = to_bytes(path) + b"\0" + b"".join(to_bytes(p) + b"\0" for p in perms)
        self.request(T.XS_SET_PERMS, payload, tx_id)

    def watch(self, path: Pathish, token: Pathish) -> None:
        self.request(T.XS_WATCH, to_bytes(path) + b"\0" + to_bytes(token) + b"\0")

    def unwatch(self, path: Pathish, token: Pathish) -> None:
        self.request(T.XS_UNWATCH, to_bytes(path) + b"\0" + to_bytes(token) + b"\0")

    # -- transactions ---------------------------------------------------
    def transaction_start(self) -> int:
        """A new tx_id (parsed like libxenstore's ``strtoul(id, NULL, 0)``)."""
        reply = self.request(T.XS_TRANSACTION_START, b"\0")
        text = reply.split(b"\0", 1)[0].strip()
        try:
            return int(text, 0) & 0xFFFFFFFF
        except ValueError:
            raise self._fail(f"bad transaction id {text!r}") from None

    def transaction_end(self, tx_id: int, commit: bool = True) -> None:
        """Commit (``T``) or abort (``F``); a conflicting commit raises EAGAIN."""
        self.request(T.XS_TRANSACTION_END, b"T\0" if commit else b"F\0", tx_id)

    @contextmanager
    def transaction(self) -> Iterator[int]:
        """``with xs.transaction() as tx_id``: commit on success, abort on error."""
        tx_id = self.transaction_start()
        try:
            yield tx_id
        except BaseException:
            if self._broken is None:
                try:
                    self.transaction_end(tx_id, commit=False)
                except XsError:
                    pass  # the original exception is the one to report
            raise
        self.transaction_end(tx_id, commit=True)
