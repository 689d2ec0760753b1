"""Daemon conventions shared by every pvxen daemon.

* ``run(main, name, argv)``: ``trio.run`` with one top nursery; SIGTERM and
  SIGINT cancel it, and the daemon gets ``stop_deadline`` seconds to finish
  its ``finally`` blocks before the process exits anyway.
* Logging to stderr, one line per event with the level name; under systemd
  (``JOURNAL_STREAM`` set) lines carry the ``<N>`` sd-daemon priority prefix
  instead of a timestamp, so journald records levels.
* ``sd_notify``: READY=1 / STOPPING=1 on ``$NOTIFY_SOCKET`` when set, written
  directly as Xen's ``xen-sd-notify.h`` does (no libsystemd).
* ``runtime_dir``: ``--rundir``, else ``$PVXEN_RUNDIR``, else ``/run/pvxen``
  for root and ``$XDG_RUNTIME_DIR/pvxen`` otherwise.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from libxen.paths import default_runtime_dir

_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def setup_logging(name: str, verbose: bool = False) -> logging.Logger:
    """Configure the root logger for a daemon called ``name``."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(levelname)s %(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"
            )
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return logging.getLogger(name)


def sd_notify(message: str) -> bool:
    """Send ``message`` to systemd's notify socket; False when not under systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError as e:  # systemd gone or the socket removed: never fatal
        logging.getLogger(__name__).warning("sd_notify(%r) failed: %s", message, e)
        return False
    return True


def runtime_dir(arg: str | None) -> Path:
    """The runtime directory: ``--rundir`` first, then the environment."""
    return Path(arg) if arg else default_runtime_dir()


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rundir", help="runtime directory (default: $PVXEN_RUNDIR, "
                        "/run/pvxen for root, $XDG_RUNTIME_DIR/pvxen otherwise)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--stop-deadline", type=float, default=5.0,
                        help="seconds allowed for a graceful stop (default 5)")


#: what SIGHUP does (:func:`on_hangup`): plain functions, run in the daemon's trio thread
_hangup_handlers: list[Callable[[], None]] = []


def on_hangup(handler: Callable[[], None]) -> Callable[[], None]:
    """Run ``handler()`` on each SIGHUP; returns a function that removes it."""
    _hangup_handlers.append(handler)
    return lambda: _hangup_handlers.remove(handler) if handler in _hangup_handlers else None


async def watch_signals(
    cancel_scope: trio.CancelScope, log: logging.Logger, deadline: float = 5.0,
    *, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    """Cancel ``cancel_scope`` on SIGTERM/SIGINT; SIGHUP runs the
    :func:`on_hangup` handlers (xenconsoled reopens its logs there, for
    logrotate), or is logged and ignored when there are none.

    After a stop signal the process has ``deadline`` seconds to finish its
    cleanup; then SIGALRM ends it.
    """
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
        task_status.started()
        async for signum in sigs:
            if signum == signal.SIGHUP:
                if not _hangup_handlers:
                    log.info("received SIGHUP (nothing to reload)")
                for handler in list(_hangup_handlers):
                    handler()
                continue
            log.info("received %s, stopping", signal.Signals(signum).name)
            sd_notify("STOPPING=1")
            signal.setitimer(signal.ITIMER_REAL, deadline)
            cancel_scope.cancel()
            return


DaemonMain = Callable[[trio.Nursery, logging.Logger], Awaitable[None]]


class StartupError(Exception):
    """The daemon could not start; the message says what and why."""


def run(name: str, body: DaemonMain, *, verbose: bool = False, stop_deadline: float = 5.0) -> int:
    """Run ``body(nursery, log)`` as the daemon ``name`` until a stop signal.

    ``body`` starts its services in the nursery (using ``nursery.start`` so
    it returns once they are ready), then returns; readiness is reported to
    systemd after it returns. Cleanup in the services' ``finally`` blocks
    runs under a shield bounded by ``stop_deadline``.
    """
    log = setup_logging(name, verbose)

    async def _main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(watch_signals, nursery.cancel_scope, log, stop_deadline)
            try:
                await body(nursery, log)
            except OSError as e:  # a path, a permission, a socket in use ...
                raise StartupError(f"{name} cannot start: {e}") from e
            sd_notify("READY=1\nSTATUS=running")
            log.info("%s is ready", name)

    def _deadline_alarm(signum, frame):  # pragma: no cover - last resort
        log.error("graceful stop took longer than %.1fs, exiting", stop_deadline)
        os._exit(1)

    signal.signal(signal.SIGALRM, _deadline_alarm)
    failed = False
    try:
        trio.run(_main)
    except* StartupError as group:
        for e in group.exceptions:
            log.error("%s", e)
            sd_notify(f"STATUS={e}")
        failed = True
    except* KeyboardInterrupt:
        pass
    if failed:
        return 1
    log.info("%s stopped", name)
    return 0


def claim_socket_path(path: Path, sock_type: int = socket.SOCK_STREAM) -> None:
    """Make way for a listening socket at ``path`` without stealing it.

    A socket left behind by a daemon that died is removed; a socket some
    live daemon still listens on, or a file that is not a socket, is an
    error (``EADDRINUSE``/``EEXIST``): a second instance must not take over
    the first one's clients.
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, sock_type)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # stale: nobody listens
        return
    except (socket.timeout, BlockingIOError):
        pass  # a listener with a full backlog is alive
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another daemon is listening on {path}")


def lock_directory(directory: Path, what: str) -> int:
    """Hold an exclusive lock on ``directory`` for this process's lifetime.

    Returns the lock file's descriptor (keep it open). A second daemon
    given the same directory gets ``EBUSY`` naming the holder's pid.
    """
    lock_path = directory / "lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise OSError(errno.EBUSY, f"{directory} is the {what} of another running "
                                   f"process (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
