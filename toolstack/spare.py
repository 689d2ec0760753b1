"""Spare guest processes: confined ahead of time, so that a launch costs little.

Confinement is slow next to a domain creation (~2 ms): joining a cgroup
waits for an RCU grace period (``cgroup.procs``: ``percpu_down_write`` of
``cgroup_threadgroup_rwsem``), measured at 11-14 ms on a loaded 2-CPU host
and 0.03 ms when migrations follow each other; a network namespace with its
loopback up costs ~1 ms and the new root ~3 ms. So the template keeps one
**spare**: a child forked ahead of need (in its own PID namespace) that has
closed every descriptor of the template but its end of a socketpair, joined
a fresh cgroup, entered its namespaces and pivoted into its root
(:meth:`Confinement.enter_early`), and then waits for a domain. A launch
sends it the domain's configuration (a msgpack map in a memfd) and
descriptors (``SCM_RIGHTS``) and does not wait; the spare then does what depends on the
domain (``enter_late``: its uid owns ``/tmp``, limits from its ``maxmem``),
drops privileges, loads seccomp and runs the guest. The template makes the
next spare once it has answered (:meth:`Spares.refill`).

A spare dies with the template (``PR_SET_PDEATHSIG``) until it is given a
domain; a guest then outlives the launcher, as before. A spare whose early
confinement failed exits (its traceback in the template's stderr): the
launch that finds it gone takes a fresh one, and a guest never runs less
confined than the launcher logged.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import msgpack

from libxen import rpc
from toolstack.confine import Confinement, kill_cgroup

_PR_SET_PDEATHSIG = 1
_SPARE_FD = 1000  # the spare's socket, out of the way of the guest's 0..5
_libc = ctypes.CDLL(None, use_errno=True)

#: runs the guest in the spare: (request, descriptors) -> never returns
GuestRunner = Callable[[dict, list[int]], NoReturn]


@dataclass
class Spare:
    pid: int
    sock: socket.socket
    cgroup: Path | None


class SpareGone(OSError):
    """The spare exited before it took its domain."""


def assign(spare: Spare, req: dict, fds: list[int]) -> None:
    """Give ``spare`` its domain; SpareGone if it is no longer there.

    The request (the program's text included) travels in a memfd,
    the first descriptor: one small packet never blocks nor outgrows a
    small socket buffer, whether or not the spare is reading yet.
    """
    body = os.memfd_create("pvxen-launch", os.MFD_CLOEXEC)
    try:
        os.write(body, msgpack.packb(req, use_bin_type=True))
        spare.sock.sendmsg([b"L"], rpc.fds_ancillary([body, *fds]))
    except OSError as e:
        raise SpareGone(e.errno, f"spare {spare.pid}: {e.strerror}") from None
    finally:
        os.close(body)
        spare.sock.close()


class Spares:
    """One spare at a time for a template (the launcher, or a benchmark's)."""

    def __init__(self, conf: Confinement, run: GuestRunner) -> None:
        self.conf = conf
        self.run = run
        self.spare: Spare | None = None

    def take(self) -> Spare:
        spare = self.spare or self._make()
        self.spare = None
        return spare

    def refill(self) -> None:
        if self.spare is None:
            self.spare = self._make()

    def lost(self, pid: int) -> bool:
        """``pid`` (just reaped) was the waiting spare: forget it; True if so."""
        if self.spare is None or self.spare.pid != pid:
            return False
        self.spare.sock.close()
        if self.spare.cgroup is not None:
            kill_cgroup(self.spare.cgroup)
        self.spare = None
        return True

    def close(self) -> None:
        if self.spare is not None:
            spare, self.spare = self.spare, None
            spare.sock.close()  # it reads end-of-file and exits
            if spare.cgroup is not None:
                kill_cgroup(spare.cgroup)  # and its cgroup goes once it has

    def _make(self) -> Spare:
        cgroup = self.conf.new_cgroup()
        ours, theirs = socket.socketpair(socket.AF_UNIX,
                                         socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        parent = os.getpid()
        try:
            pid = self.conf.fork()
        except BaseException:
            ours.close()
            theirs.close()
            if cgroup is not None:
                cgroup.rmdir()
            raise
        if pid == 0:
            _spare_main(self.conf, cgroup, theirs, parent, self.run)
        theirs.close()
        return Spare(pid, ours, cgroup)


def _spare_main(conf: Confinement, cgroup: Path | None, sock: socket.socket, parent: int,
                run: GuestRunner) -> NoReturn:
    code = 98
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() not in (parent, 0):  # 0: our parent is outside our PID namespace
            os._exit(0)  # the template died before the prctl
        os.dup2(sock.fileno(), _SPARE_FD, inheritable=False)
        os.closerange(3, _SPARE_FD)  # nothing of the template's: privcmd, xenstored, clients
        os.closerange(_SPARE_FD + 1, os.sysconf("SC_OPEN_MAX"))
        sock = socket.socket(fileno=_SPARE_FD)
        conf.enter_early(cgroup)
        data, anc, _, _ = sock.recvmsg(16, rpc.ancillary_space())
        fds = rpc.fds_from_ancillary(anc)
        if data != b"L" or not fds:
            os._exit(0)  # the template closed us: not needed
        _libc.prctl(_PR_SET_PDEATHSIG, 0, 0, 0, 0)  # a guest outlives the launcher
        sock.close()
        body = fds.pop(0)
        size = os.fstat(body).st_size
        req = msgpack.unpackb(os.pread(body, size, 0), raw=False)
        os.close(body)
        run(req, fds)
    except BaseException:  # noqa: BLE001 - the spare must reach os._exit
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
    os._exit(code)
