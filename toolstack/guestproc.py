"""The first moments of a guest process, between fork and the runtime.

Runs in a spare the launcher forked and confined ahead of time (its own
cgroup, PID, network and mount namespaces: :mod:`.spare`, :mod:`.confine`)
once it is given its domain, as root when the launcher is, and leaves it as
a process that can reach nothing but its own domain (Firecracker's jailer
is the model):

* stdout/stderr go to the guest's log file (opened by the launcher), stdin
  is ``/dev/null``;
* the domain's three descriptors move to fds 3, 4, 5 (hypercall, evtchn,
  memory) and every other descriptor is closed;
* as root: supplementary groups dropped, gid/uid set to a uid of the
  domain's own (``GUEST_UID_BASE + domid``, as Firecracker's jailer gives
  each microVM its own uid), so the 0700 runtime directory (privcmd,
  xenstored's socket) is out of reach and no guest can signal or trace
  another; in every case ``PR_SET_NO_NEW_PRIVS``, not dumpable, no core
  files, umask 077, cwd ``/``, a session of its own;
* its ``/tmp`` owned by that uid, ``RLIMIT_AS``/``FSIZE``/``NPROC`` set
  (``Confinement.enter_late``), and, last, the seccomp filter.

Then :func:`frontends.runtime.run` runs the program; the process ends with
``os._exit`` and never returns into the launcher's code.
"""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import signal
import sys
import traceback

from frontends import runtime
from toolstack.confine import Confinement

#: Guest uids/gids: one per domain, above the range distributions hand out.
GUEST_UID_BASE = 0x30000


def guest_uid(domid: int) -> int:
    return GUEST_UID_BASE + domid

HYPERCALL_FD, EVTCHN_FD, MEMORY_FD = 3, 4, 5
_PR_SET_NAME = 15
_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int | bytes) -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def place_fds(fds: dict[str, int], log_fd: int) -> None:
    """stdio and the three domain descriptors at fixed numbers; all else closed."""
    wanted = [fds["hypercall"], fds["evtchn"], fds["memory"]]
    high = [fcntl_dup_high(fd) for fd in wanted + [log_fd]]  # out of the way of 0..5
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(high[3], 1)
    os.dup2(high[3], 2)
    for target, fd in zip((HYPERCALL_FD, EVTCHN_FD, MEMORY_FD), high):
        os.dup2(fd, target, inheritable=False)
    os.closerange(MEMORY_FD + 1, os.sysconf("SC_OPEN_MAX"))


def fcntl_dup_high(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 64)


def drop_privileges(domid: int) -> None:
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(guest_uid(domid))
        os.setuid(guest_uid(domid))
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    _prctl(_PR_SET_DUMPABLE, 0)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.umask(0o077)
    os.chdir("/")


def from_spare(conf: Confinement, req: dict, fds: list[int]) -> None:
    """A spare (:mod:`.spare`) was given its domain: the request :func:`spare_request` made."""
    names = list(req["fds"])
    if len(names) != len(fds) or "log" not in names:
        os._exit(runtime.EXIT_BROKEN)
    by_name = dict(zip(names, fds))
    child(int(req["domid"]), req["name"], req["program"], req["source"], list(req["args"]),
          int(req["start_info_gfn"]), by_name, by_name["log"], conf, int(req["maxmem"]),
          boot=req.get("boot"), preserve=[int(r) for r in req.get("preserve", ())],
          vcpus=int(req.get("vcpus", 1)))


def spare_request(domid: int, name: str, program: str, source: str, args: list[str],
                  start_info_gfn: int, maxmem_bytes: int, fd_names: list[str],
                  boot: dict | None = None, preserve: list[int] | None = None,
                  vcpus: int = 1) -> dict:
    return {"domid": domid, "name": name, "program": program, "source": source,
            "args": list(args), "start_info_gfn": start_info_gfn, "maxmem": maxmem_bytes,
            "fds": list(fd_names), "boot": boot, "preserve": list(preserve or ()),
            "vcpus": vcpus}


def child(domid: int, name: str, program: str, source: str, args: list[str],
          start_info_gfn: int, fds: dict[str, int], log_fd: int,
          confinement: Confinement | None = None, maxmem_bytes: int = 0,
          boot: dict | None = None, preserve: list[int] | None = None,
          vcpus: int = 1) -> None:
    """The forked child: set up, run the guest, exit. Never returns."""
    code = runtime.EXIT_BROKEN
    try:
        gc.freeze()  # the template's objects: never finalised (their fds are gone)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        place_fds(fds, log_fd)
        # Fresh line-buffered streams on fds 1 and 2: the template's may be
        # anything (a test runner's capture object, say).
        sys.stdout = sys.__stdout__ = open(1, "w", buffering=1, closefd=False)
        sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, closefd=False)
        sys.stdin = sys.__stdin__ = open(0, "r", closefd=False)
        _prctl(_PR_SET_NAME, f"d{domid}-{name}".encode()[:15])
        if confinement is not None:  # as root; the spare did cgroup, namespaces, root
            confinement.enter_late(guest_uid(domid) if os.geteuid() == 0 else None,
                                   maxmem_bytes, vcpus if boot is not None else 1)
        drop_privileges(domid)
        if confinement is not None:
            confinement.lock()  # seccomp, last: it forbids what the steps above did
        if boot is not None:  # a PV kernel: this process runs its vCPU
            from hypervisord.vcpu import guest as pvguest

            reason = pvguest.run(domid, start_info_gfn, boot, HYPERCALL_FD, EVTCHN_FD,
                                 MEMORY_FD, preserve=frozenset(preserve or ()))
            code = runtime.EXIT_LOST if reason is None else runtime.exit_code_for(reason)
        else:
            spec = runtime.GuestSpec(domid, name, program, source, start_info_gfn,
                                     HYPERCALL_FD, EVTCHN_FD, MEMORY_FD, list(args))
            code = runtime.run(spec)
    except BaseException:  # noqa: BLE001 - the child must reach os._exit whatever happens
        try:
            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
