"""The guest launcher and monitor: a pre-loaded template that forks domains.

A fresh interpreter that imports trio costs ~125 ms; a fork of a process
that already has it costs ~1-2 ms (measured with ``python -m bench hypervisor``). So the
launcher imports trio, msgpack, the frontends and the guest runtime once,
then serves launch requests on ``<rundir>/xl/launcher.sock`` (0600 in a 0700
directory): each request carries the domain's three descriptors
(``SCM_RIGHTS``: hypercall, evtchn, memory) and its configuration, and the
launcher forks the guest process (:mod:`toolstack.guestproc`).

It is also xl's per-domain monitor (``xl create``'s child in Xen): it reaps
each guest process and, from the reason the exit status carries, applies
``on_poweroff``/``on_reboot``/``on_crash``/``on_watchdog`` (``destroy``, the
default, or ``restart``: rebuild from the saved configuration), after
removing what libxl removes for a dead domain (``/local/domain/<id>``,
``/vm/<uuid>``, ``/libxl/<id>``).

Single-threaded and blocking (selectors over the socket, the clients and a
SIGCHLD wakeup pipe): trio is loaded for the children, never run here, so a
fork never happens inside an event loop. ``xl create`` starts it on demand
(``--daemon``: detached, pidfile ``<rundir>/xl/launcher.pid``, lock
``launcher.lock`` so only one runs; clients: :mod:`launchctl`);
benchmarks can run a :class:`~toolstack.monitor.Launcher`
in-process.

Requests (msgpack maps over SOCK_SEQPACKET), replies ``{"ok": true, ...}``
or ``{"ok": false, "error": "..."}``:

    {"op": "launch", "domid", "config", "start_info_gfn", "fds": [names]} + fds
        (+ "boot": {rip, rsp, rsi, cr3, rflags} for a PV kernel: its vCPU 0 state)
    {"op": "destroying", "domid"}     xl destroy: no on_* action for it
    {"op": "ping"} / {"op": "list"}   liveness / [[domid, pid], ...]
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import gc
import logging
import os
import selectors
import signal
import socket
import sys
from pathlib import Path

import msgpack

from libxen import rpc
from toolstack.hcall import xl_dir
from toolstack.launchctl import LOCK_NAME, PIDFILE_NAME, LaunchError, socket_path
from toolstack.monitor import Launcher

log = logging.getLogger("xl-launcher")

# -- server ----------------------------------------------------------------------------

class LauncherServer:
    def __init__(self, launcher: Launcher, path: Path) -> None:
        self.launcher = launcher
        self.path = path
        self.sel = selectors.DefaultSelector()
        self.stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def _bind(self) -> socket.socket:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path.parent, 0o700)
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        sock.listen(64)
        sock.setblocking(False)
        return sock

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True

    def serve(self) -> None:
        listener = self._bind()
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        signal.set_wakeup_fd(self._wake_w)
        self.sel.register(listener, selectors.EVENT_READ, "listen")
        self.sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self.launcher.refill()
        log.info("launcher ready on %s", self.path)
        try:
            while not self.stopping:
                self.launcher.reap()
                for key, _ in self.sel.select(timeout=1.0):
                    self._ready(key, listener)
        finally:
            signal.set_wakeup_fd(-1)
            self.path.unlink(missing_ok=True)
            listener.close()
            self.launcher.reap()  # guests that ended with the stop signal
            log.info("launcher stopped (%d guests keep running)", len(self.launcher.guests))

    def _ready(self, key: selectors.SelectorKey, listener: socket.socket) -> None:
        if key.data == "listen":
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                return
            conn.setblocking(True)
            self.sel.register(conn, selectors.EVENT_READ, "client")
        elif key.data == "wake":
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        else:
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            if not self._client(conn):
                self.sel.unregister(conn)
                conn.close()

    def _client(self, conn: socket.socket) -> bool:
        """Serve one request; False when the client has gone."""
        try:
            data, anc, _, _ = conn.recvmsg(rpc.MAX_PACKET, rpc.ancillary_space())
        except OSError:
            return False
        fds = rpc.fds_from_ancillary(anc)
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        reply = self.handle(data, fds)
        try:
            conn.send(msgpack.packb(reply, use_bin_type=True))
        except OSError:
            return False
        finally:
            self.launcher.refill()  # the next guest's spare, confined while nobody waits
        return True

    def handle(self, data: bytes, fds: list[int]) -> dict:
        try:
            req = msgpack.unpackb(data, raw=False)
            if not isinstance(req, dict):
                raise LaunchError("request is not a map")
            return self.dispatch(req, fds)
        except (LaunchError, ValueError, TypeError, KeyError, msgpack.UnpackException) as e:
            return {"ok": False, "error": str(e)}
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def dispatch(self, req: dict, fds: list[int]) -> dict:
        op = req.get("op")
        if op == "launch":
            names = list(req.get("fds", []))
            if len(names) != len(fds):
                raise LaunchError(f"{len(fds)} descriptors for {len(names)} names")
            pid = self.launcher.launch(int(req["domid"]), req["config"],
                                       int(req["start_info_gfn"]), dict(zip(names, fds)),
                                       boot=_boot_state(req.get("boot")))
            return {"ok": True, "pid": pid}
        if op == "destroying":
            self.launcher.destroying(int(req["domid"]))
            return {"ok": True}
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "guests": len(self.launcher.guests),
                    "confinement": self.launcher.confinement.describe()}
        if op == "list":
            return {"ok": True, "guests": [[g.domid, g.pid] for g in self.launcher.guests.values()]}
        raise LaunchError(f"unknown op {op!r}")


def _boot_state(boot: object) -> dict | None:
    if boot is None:
        return None
    keys = ("rip", "rsp", "rsi", "cr3", "rflags")
    if not isinstance(boot, dict) or set(boot) != set(keys):
        raise LaunchError("boot: a map of rip, rsp, rsi, cr3, rflags")
    return {k: int(boot[k]) & (2**64 - 1) for k in keys}


# -- main ------------------------------------------------------------------------------

def _lock(xl: Path) -> int | None:
    """Hold ``launcher.lock`` for our lifetime; None when another launcher has it."""
    fd = os.open(xl / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xl-launcher", description=__doc__.split("\n")[0])
    p.add_argument("--rundir", help="runtime directory (default: $PVXEN_RUNDIR ...)")
    p.add_argument("--daemon", action="store_true", help="started by xl: detached")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s xl-launcher[%(process)d] %(levelname)s %(message)s")
    xl = xl_dir(args.rundir)
    xl.mkdir(parents=True, exist_ok=True, mode=0o700)
    if args.daemon and os.fork() > 0:
        os._exit(0)  # detach: the daemon is nobody's child but init's (or a subreaper's)
    lock = _lock(xl)
    if lock is None:
        log.info("another launcher is running")
        return 0
    launcher = Launcher(args.rundir)
    launcher.ensure_dom0()
    gc.freeze()  # the template's objects: shared with every guest, never collected
    (xl / PIDFILE_NAME).write_text(f"{os.getpid()}\n")
    try:
        LauncherServer(launcher, socket_path(args.rundir)).serve()
    finally:
        (xl / PIDFILE_NAME).unlink(missing_ok=True)
        launcher.close()
        os.close(lock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
