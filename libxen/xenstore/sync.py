"""The blocking face of the XenStore client, for the ``xenstore-*`` tools and ``xl``.

Socket discovery is libxenstore's ``xs_open()`` (``tools/libs/store/xs.c``,
``xs_lib.c``): ``$XENSTORED_PATH`` if set; else ``$XENSTORED_RUNDIR/socket``;
else pvxen's default ``<runtime dir>/xenstored/socket`` and then
``/run/xenstored/socket``. Like ``get_handle()`` it ``stat()``s the path
first, so a missing socket gives ENOENT and a dead one ECONNREFUSED (the
tools print that errno).

:class:`XsSyncClient` drives the operations of
:mod:`libxen.xenstore.protocol` over a blocking socket: one at a time
(:meth:`XsSyncClient.run`, like libxenstore) or many pipelined
(:meth:`XsSyncClient.batch`: every request of the batch goes out before
the first reply is awaited, and replies are read while the batch is still
being sent, because xenstored stops reading a connection whose replies are
not read). ``XS_WATCH_EVENT`` s that arrive meanwhile are queued for
:meth:`XsSyncClient.read_watch`. It imports nothing heavier than the wire
codec, so the tools start fast.
"""

from __future__ import annotations

import errno
import os
import random
import select
import socket
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from libxen.paths import default_runtime_dir
from libxen.xenstore import protocol as ops
from libxen.xenstore.errors import XsConnectionLost, XsError
from libxen.xenstore.protocol import Batch, Op, Pathish, Protocol, check_reply

__all__ = ["XsSyncClient", "XsError", "XsConnectionLost", "connect_socket", "socket_candidates"]

R = TypeVar("R")
SUN_PATH_MAX = 108  # sizeof(struct sockaddr_un.sun_path) on Linux


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




class XsSyncClient:
    """One blocking connection; use as a context manager or call :meth:`close`."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._proto = Protocol()
        self._inbox: dict[int, Any] = {}  # req_id -> reply Message
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

    def _check(self) -> None:
        if self._broken is not None:
            raise XsConnectionLost(self._broken)

    def _receive(self) -> None:
        """One read's worth of messages (blocking unless the socket is not)."""
        try:
            data = self._sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            raise self._fail(f"recv: {exc}") from exc
        if not data:
            raise self._fail("daemon closed the connection")
        try:
            replies = self._proto.feed(data)
        except XsConnectionLost as exc:
            raise self._fail(exc.reason) from None
        for msg in replies:
            self._inbox[msg.req_id] = msg

    def _send(self, data: bytes) -> None:
        """Send it all, reading replies whenever the socket is full."""
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
                except OSError as exc:
                    raise self._fail(f"send: {exc}") from exc
                readable, writable, _ = select.select([self._sock], [self._sock], [], timeout)
                if not (readable or writable):
                    raise self._fail(f"xenstored neither read nor answered for {timeout} s")
                if readable:
                    self._receive()
        finally:
            if self._broken is None:
                self._sock.settimeout(timeout)

    def _reply(self, req_id: int) -> Any:
        while req_id not in self._inbox:
            self._receive()
        return self._inbox.pop(req_id)

    # -- operations -----------------------------------------------------
    def batch(self, batch: Iterable[Op[Any]], tx_id: int = 0) -> list[Any]:
        """Run every operation, pipelined: a result or an :class:`XsError` each, in order.

        All first requests are sent at once; an operation that needs more
        round trips (a long directory listing) continues in the next round.
        """
        self._check()
        run = Batch(batch)
        while not run.done:
            sent = []
            for i, (msg_type, payload) in run.round():
                try:
                    req_id, data = self._proto.request(msg_type, payload, tx_id)
                except XsError as exc:  # refused before sending
                    sent.append((i, msg_type, None, exc))
                    continue
                sent.append((i, msg_type, req_id, data))
            self._send(b"".join(d for _, _, rid, d in sent if rid is not None))
            for i, msg_type, req_id, data in sent:
                reply = data if req_id is None else self._answer(msg_type, req_id)
                try:
                    run.answer(i, reply)
                except XsConnectionLost as exc:
                    raise self._fail(exc.reason) from None
        return run.results

    def _answer(self, msg_type: int, req_id: int) -> bytes | XsError:
        msg = self._reply(req_id)
        try:
            return check_reply(msg_type, msg)
        except XsError as exc:
            return exc
        except XsConnectionLost as exc:
            raise self._fail(exc.reason) from None

    def run(self, op: Op[R], tx_id: int = 0) -> R:
        """One operation, its requests one at a time; raises its XsError."""
        result = self.batch([op], tx_id)[0]
        if isinstance(result, XsError):
            raise result
        return result

    def request(self, msg_type: int, payload: bytes, tx_id: int = 0) -> bytes:
        """Send one request and return the reply payload (raises XsError)."""
        return self.run(ops.raw(msg_type, payload), tx_id)

    def read_watch(self) -> tuple[bytes, bytes]:
        """Block until a watch event arrives: ``(path, token)``."""
        self._check()
        while not self._proto.events:
            self._receive()
        return self._proto.events.popleft()

    # paths and values are bytes or str; results are bytes
    def read(self, path: Pathish, tx_id: int = 0) -> bytes:
        return self.run(ops.read(path), tx_id)

    def write(self, path: Pathish, value: Pathish, tx_id: int = 0) -> None:
        self.run(ops.write(path, value), tx_id)

    def mkdir(self, path: Pathish, tx_id: int = 0) -> None:
        self.run(ops.mkdir(path), tx_id)

    def rm(self, path: Pathish, tx_id: int = 0) -> None:
        self.run(ops.rm(path), tx_id)

    def directory(self, path: Pathish, tx_id: int = 0) -> list[bytes]:
        return self.run(ops.directory(path), tx_id)

    def get_perms(self, path: Pathish, tx_id: int = 0) -> list[bytes]:
        return self.run(ops.get_perms(path), tx_id)

    def set_perms(self, path: Pathish, perms: Iterable[Pathish], tx_id: int = 0) -> None:
        self.run(ops.set_perms(path, perms), tx_id)

    def watch(self, path: Pathish, token: Pathish) -> None:
        self.run(ops.watch(path, token))

    def unwatch(self, path: Pathish, token: Pathish) -> None:
        self.run(ops.unwatch(path, token))

    # -- transactions ---------------------------------------------------
    def transaction_start(self) -> int:
        return self.run(ops.transaction_start())

    def transaction_end(self, tx_id: int, commit: bool = True) -> None:
        """Commit (``T``) or abort (``F``); a conflicting commit raises EAGAIN."""
        self.run(ops.transaction_end(commit), tx_id)

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

    def run_transaction(self, fn: Callable[[int], R], *, attempts: int | None = None) -> R:
        """``fn(tx_id)`` in a transaction, all of it redone while commits hit EAGAIN."""
        attempt = 0
        while True:
            attempt += 1
            try:
                with self.transaction() as tx_id:
                    result = fn(tx_id)
                return result
            except XsError as exc:
                if exc.name != "EAGAIN" or (attempts is not None and attempt >= attempts):
                    raise
            time.sleep(random.uniform(0, min(0.001 * 2 ** attempt, 0.1)))
