"""``pvxen``: start and stop the pvxen daemons where systemd is not running.

``pvxen up`` starts every daemon of :data:`DAEMONS` in order, each with the
command line its unit in ``systemd/`` runs, and waits for each one's
``READY=1`` on a private ``NOTIFY_SOCKET`` before starting the next, as
systemd does for ``Type=notify`` + ``After=``. ``pvxen down`` stops them in
reverse order (SIGTERM, then SIGKILL after a deadline, as ``TimeoutStopSec=``);
``pvxen status`` shows them; ``pvxen install-units`` writes the unit files
with ``ExecStart=`` pointing at this environment's console scripts.

Layout of the runtime directory (``--rundir``, else ``$PVXEN_RUNDIR``, as
every daemon): ``<daemon>.pid`` (written once the daemon is ready),
``log/<daemon>.log`` (its stdout and stderr), ``pvxen.notify`` (the notify
socket, only while pvxen waits), ``pvxen.lock``; the daemons' own
directories (``hypervisord/privcmd``, ``xenstored/socket``, ``backendd/socket``) as usual.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from daemonkit.daemon import runtime_dir

#: seconds a daemon gets to report READY=1 (the units' TimeoutStartSec=)
START_TIMEOUT = 30.0
#: seconds between SIGTERM and SIGKILL (the units' TimeoutStopSec=; the
#: daemons themselves give up after their 5 s --stop-deadline)
STOP_TIMEOUT = 15.0
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
NOT_RUNNING = 3  # LSB status code for "program is not running"


@dataclass(frozen=True)
class DaemonSpec:
    """One daemon of the stack: its unit, script, module and socket."""

    name: str           #: console script, unit ``<name>.service``, pid and log file
    module: str         #: ``python -m <module>`` when the script is not installed
    socket: str         #: where clients connect, relative to the runtime directory
    socket_type: int    #: SOCK_STREAM / SOCK_SEQPACKET, to probe a foreign daemon
    args_env: str       #: extra arguments from xencommons, as ``$<args_env>`` in the unit

    @property
    def unit(self) -> str:
        return f"{self.name}.service"


#: the stack in start order; a later daemon requires the earlier ones
DAEMONS: tuple[DaemonSpec, ...] = (
    DaemonSpec("hypervisord", "hypervisord", "hypervisord/privcmd",
               socket.SOCK_SEQPACKET, "HYPERVISORD_ARGS"),
    DaemonSpec("xenstored", "xenstored", "xenstored/socket",
               socket.SOCK_STREAM, "XENSTORED_ARGS"),
    DaemonSpec("backendd", "backendd", "backendd/socket",
               socket.SOCK_STREAM, "BACKENDD_ARGS"),
)


class PvxenError(Exception):
    """A failure reported to the user as one line (plus a log excerpt)."""


# -- command lines and unit files (pure) ----------------------------------
def find_bindir(specs: Sequence[DaemonSpec] = DAEMONS) -> Path | None:
    """The directory holding every daemon's console script, if installed."""
    candidates = [Path(sys.argv[0]).absolute().parent, Path(sysconfig.get_path("scripts"))]
    for d in candidates:
        if all(os.access(d / s.name, os.X_OK) for s in specs):
            return d
    return None


def command_line(spec: DaemonSpec, rundir: Path, bindir: Path | None,
                 env: dict[str, str] | None = None) -> list[str]:
    """The daemon's argv: the unit's ``ExecStart=`` with ``%t/pvxen`` = rundir."""
    env = os.environ if env is None else env
    head = [str(bindir / spec.name)] if bindir else [sys.executable, "-m", spec.module]
    return [*head, "--rundir", str(rundir), *shlex.split(env.get(spec.args_env, ""))]


def render_unit(text: str, spec: DaemonSpec, bindir: Path) -> str:
    """The unit ``text`` with its ``ExecStart=`` binary moved to ``bindir``."""
    pattern = re.compile(rf"^(ExecStart=[-@:+!]*)\S*/{re.escape(spec.name)}(?=\s|$)", re.M)
    out, n = pattern.subn(lambda m: f"{m.group(1)}{bindir}/{spec.name}", text)
    if n != 1:
        raise PvxenError(f"{spec.unit}: expected one ExecStart= running {spec.name}, found {n}")
    return out


def matches(cmdline: Sequence[str], spec: DaemonSpec, rundir: Path) -> bool:
    """Whether ``cmdline`` is ``spec``'s daemon serving ``rundir``.

    Guards against pid reuse: a pidfile names our daemon only if that
    process runs the script (or ``-m module``) with ``--rundir rundir``.
    """
    args = list(cmdline)
    named = any(Path(a).name == spec.name for a in args[:2]) or any(
        a == "-m" and b == spec.module for a, b in zip(args, args[1:]))
    served = any(a == "--rundir" and Path(b) == rundir for a, b in zip(args, args[1:]))
    return named and served


# -- process inspection --------------------------------------------------
def pidfile(rundir: Path, spec: DaemonSpec) -> Path:
    return rundir / f"{spec.name}.pid"


def logfile(rundir: Path, spec: DaemonSpec) -> Path:
    return rundir / "log" / f"{spec.name}.log"


def process_alive(pid: int) -> bool:
    """True unless ``pid`` is gone or a zombie (exited, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def running_pid(rundir: Path, spec: DaemonSpec) -> int | None:
    """The pid from ``spec``'s pidfile if that process is our daemon."""
    try:
        pid = int(pidfile(rundir, spec).read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None
    if not process_alive(pid) or not matches(cmdline.split("\0"), spec, rundir):
        return None
    return pid


def foreign_daemon(rundir: Path, spec: DaemonSpec) -> bool:
    """True if something not started by pvxen (systemd?) serves the socket."""
    path = rundir / spec.socket
    if not path.is_socket():
        return False
    with socket.socket(socket.AF_UNIX, spec.socket_type) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def log_tail(path: Path, start: int = 0, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# -- readiness (the systemd side of sd_notify) -----------------------------
@contextmanager
def notify_socket(rundir: Path) -> Iterator[socket.socket]:
    """A datagram socket at ``<rundir>/pvxen.notify`` that sees senders' pids."""
    path = rundir / "pvxen.notify"
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(str(path))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        yield sock
    finally:
        sock.close()
        path.unlink(missing_ok=True)


def recv_notify(sock: socket.socket, timeout: float) -> tuple[int, list[str]] | None:
    """One message: (sender pid, its lines), or None after ``timeout``."""
    sock.settimeout(timeout)
    try:
        data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    except TimeoutError:
        return None
    pid = 0
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = int.from_bytes(payload[:4], sys.byteorder)
    return pid, data.decode(errors="replace").split("\n")


def wait_ready(sock: socket.socket, proc: subprocess.Popen, timeout: float) -> None:
    """Until ``proc`` itself sends READY=1 (NotifyAccess=main semantics)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        msg = recv_notify(sock, min(left, 0.05))
        if msg is not None and msg[0] == proc.pid and "READY=1" in msg[1]:
            return
        if proc.poll() is not None:
            raise PvxenError(f"exited with status {proc.returncode} before it was ready")
    raise PvxenError(f"not ready after {timeout:g} s")


# -- starting and stopping -------------------------------------------------
def start_daemon(spec: DaemonSpec, rundir: Path, bindir: Path | None, timeout: float) -> int:
    """Start ``spec`` detached, wait for its READY=1, write its pidfile."""
    log = logfile(rundir, spec)
    env = dict(os.environ, PVXEN_RUNDIR=str(rundir), NOTIFY_SOCKET=str(rundir / "pvxen.notify"))
    env.pop("JOURNAL_STREAM", None)  # its output goes to a file, not to journald
    if bindir is None:  # running from a source tree: let `-m` find the packages
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if p)
    start = log.stat().st_size if log.exists() else 0
    with notify_socket(rundir) as sock, open(log, "ab") as out:
        proc = subprocess.Popen(
            command_line(spec, rundir, bindir), stdin=subprocess.DEVNULL, stdout=out,
            stderr=out, env=env, cwd="/", start_new_session=True)
        try:
            wait_ready(sock, proc, timeout)
        except PvxenError as e:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise PvxenError(f"{spec.name}: {e}; {log}:\n{log_tail(log, start)}") from None
    tmp = pidfile(rundir, spec).with_suffix(".pid.tmp")
    tmp.write_text(f"{proc.pid}\n")
    tmp.rename(pidfile(rundir, spec))
    proc.returncode = 0  # detached: pvxen will not wait for it (no ResourceWarning)
    return proc.pid


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def stop_daemon(spec: DaemonSpec, rundir: Path, pid: int, timeout: float) -> str:
    """SIGTERM ``pid``, SIGKILL after ``timeout``; returns how it ended."""
    log = logfile(rundir, spec)
    start = log.stat().st_size if log.exists() else 0
    # Listen where the daemon's NOTIFY_SOCKET points, so that its STOPPING=1
    # is received (as by systemd) rather than logged as a failed send.
    how: str | None = None
    with notify_socket(rundir), suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        if not wait_gone(pid, timeout):
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 5.0)
            how = f"killed with SIGKILL after {timeout:g} s"
    pidfile(rundir, spec).unlink(missing_ok=True)
    tail = log_tail(log, start, lines=200)
    if how is None and (f"{spec.name} stopped" not in tail or "Traceback" in tail):
        how = f"did not stop cleanly, see {log}"
    return how or "stopped cleanly"


def stop_launcher(rundir: Path, timeout: float) -> None:
    """xl's guest launcher (started on demand by ``xl create``) goes first:
    it is a client of both daemons, like xl's per-domain monitors."""
    pidpath = rundir / "xl" / "launcher.pid"
    try:
        pid = int(pidpath.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return
    if b"launcher" not in cmdline:
        return  # a stale pidfile naming somebody else
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        if not wait_gone(pid, timeout):
            os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 5.0)
    print(f"xl launcher: stopped (pid {pid})")


@contextmanager
def locked(rundir: Path) -> Iterator[None]:
    """One ``pvxen up``/``down`` at a time per runtime directory."""
    with open(rundir / "pvxen.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# -- commands --------------------------------------------------------------
def cmd_up(rundir: Path, timeout: float, specs: Sequence[DaemonSpec] = DAEMONS) -> int:
    rundir.mkdir(mode=0o755, parents=True, exist_ok=True)  # RuntimeDirectoryMode=
    (rundir / "log").mkdir(mode=0o700, exist_ok=True)
    bindir = find_bindir(specs)
    with locked(rundir):
        for spec in specs:
            pid = running_pid(rundir, spec)
            if pid is not None:
                print(f"{spec.name}: already running (pid {pid})")
                continue
            pidfile(rundir, spec).unlink(missing_ok=True)
            if foreign_daemon(rundir, spec):
                print(f"{spec.name}: already served by a process pvxen did not start "
                      f"(systemd?) on {rundir / spec.socket}")
                continue
            t0 = time.monotonic()
            try:
                pid = start_daemon(spec, rundir, bindir, timeout)
            except PvxenError as e:
                print(f"pvxen: {e}", file=sys.stderr)
                return 1
            print(f"{spec.name}: started (pid {pid}), ready in {time.monotonic() - t0:.2f} s\n"
                  f"    socket {rundir / spec.socket}\n    log    {logfile(rundir, spec)}")
        remove_stale_configs(rundir)
    print(f"clients: export PVXEN_RUNDIR={shlex.quote(str(rundir))}")
    return 0


def remove_stale_configs(rundir: Path) -> None:
    """The toolstack starts: forget the saved configs of domains that are gone."""
    if not (rundir / "xl" / "userdata").is_dir():
        return
    from toolstack import builder
    from toolstack.hcall import XenError

    try:
        with builder.Toolstack(rundir) as ts:
            gone = builder.remove_stale_configs(ts)
    except (OSError, XenError, builder.ConnectError) as e:
        print(f"pvxen: cannot check the saved domain configs: {e}", file=sys.stderr)
        return
    if gone:
        print(f"removed the saved configs of {len(gone)} domains that no longer exist")


def cmd_down(rundir: Path, timeout: float, specs: Sequence[DaemonSpec] = DAEMONS) -> int:
    if not rundir.is_dir():
        print(f"pvxen: nothing runs in {rundir}")
        return 0
    rc = 0
    with locked(rundir):
        stop_launcher(rundir, timeout)
        for spec in reversed(specs):
            pid = running_pid(rundir, spec)
            if pid is None:
                pidfile(rundir, spec).unlink(missing_ok=True)
                foreign = foreign_daemon(rundir, spec)
                print(f"{spec.name}: " + ("not started by pvxen, left running"
                                          if foreign else "not running"))
                continue
            how = stop_daemon(spec, rundir, pid, timeout)
            print(f"{spec.name}: {how} (pid {pid})")
            rc = rc or int(how != "stopped cleanly")
    return rc


def cmd_status(rundir: Path, specs: Sequence[DaemonSpec] = DAEMONS) -> int:
    rc = 0
    for spec in specs:
        pid = running_pid(rundir, spec)
        if pid is not None:
            state = f"running  pid {pid}  {rundir / spec.socket}"
        elif foreign_daemon(rundir, spec):
            state = f"running  (not started by pvxen)  {rundir / spec.socket}"
        else:
            stale = " (stale pidfile)" if pidfile(rundir, spec).exists() else ""
            state, rc = f"stopped{stale}", NOT_RUNNING
        print(f"{spec.name:<12} {state}")
    return rc


def cmd_install_units(args: argparse.Namespace) -> int:
    units = Path(args.units) if args.units else PACKAGE_ROOT / "systemd"
    bindir = Path(args.bindir).absolute() if args.bindir else find_bindir()
    if bindir is None:
        raise PvxenError("console scripts not found next to pvxen; pip install the "
                         "package or pass --bindir")
    if args.dest:
        dest = Path(args.dest)
    elif args.user:
        config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        dest = Path(config) / "systemd" / "user"
    else:
        dest = Path("/etc/systemd/system")
    dest.mkdir(parents=True, exist_ok=True)
    for spec in DAEMONS:
        try:
            text = (units / spec.unit).read_text()
        except FileNotFoundError:
            raise PvxenError(f"{units / spec.unit} not found; pass --units "
                             "<source tree>/systemd") from None
        (dest / spec.unit).write_text(render_unit(text, spec, bindir))
        print(f"wrote {dest / spec.unit} (ExecStart={bindir / spec.name})")
    user = " --user" if args.user else ""
    print(f"then: systemctl{user} daemon-reload && systemctl{user} start xenstored.service")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="pvxen", description="start and stop the pvxen daemons where systemd is not running")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("up", "start the daemons, each once the previous one is ready"),
                       ("down", "stop the daemons in reverse order"),
                       ("status", "show each daemon's pid and state")):
        c = sub.add_parser(name, help=text, description=text)
        c.add_argument("--rundir", help="runtime directory (default: $PVXEN_RUNDIR, "
                       "/run/pvxen for root, $XDG_RUNTIME_DIR/pvxen otherwise)")
        if name != "status":
            c.add_argument("--timeout", type=float,
                           default=START_TIMEOUT if name == "up" else STOP_TIMEOUT,
                           help="seconds per daemon to become ready / to exit")
    c = sub.add_parser("install-units", help="write the systemd units for this install")
    c.add_argument("--user", action="store_true", help="user units (~/.config/systemd/user)")
    c.add_argument("--dest", help="directory to write the units to")
    c.add_argument("--bindir", help="directory of the console scripts")
    c.add_argument("--units", help="directory of the unit templates (the source's systemd/)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "install-units":
            return cmd_install_units(args)
        rundir = runtime_dir(args.rundir).absolute()
        if args.command == "up":
            return cmd_up(rundir, args.timeout)
        if args.command == "down":
            return cmd_down(rundir, args.timeout)
        return cmd_status(rundir)
    except (PvxenError, OSError) as e:
        print(f"pvxen: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
