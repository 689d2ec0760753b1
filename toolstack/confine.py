"""Confining a program guest like a domU: its own cgroup and namespaces, limits, seccomp.

A domU reaches the world only through its devices, and everything it runs
dies with it. A program guest is a Linux process, so the launcher gives it
(Firecracker's jailer is the model):

* **cgroup** (v2): a cgroup of its own, ``<cgroup2>/pvxen/guest-<hex>``;
  whoever ends the domain writes ``cgroup.kill`` (Linux 5.14), so a
  double-forked child cannot outlive it (:func:`kill_cgroup`; hypervisord
  does the same from ``destroy``: ``daemonkit/procgroup.py``);
* **pidns**: the guest is pid 1 of a PID namespace of its own: when it ends
  the kernel kills every process left in it (the containment where no
  cgroup v2 is mounted), and its ``/proc`` shows nobody else;
* **netns** (with IPC and UTS namespaces): a network namespace of its own
  with only a loopback, up, that nobody else shares (a shared loopback would
  be a channel between guests that bypasses the devices); abstract Unix
  sockets are per network namespace too;
* **mountns**: a private mount namespace whose root is a read-only tmpfs
  holding read-only binds of what the runtime needs (``/usr``, the Python
  installation, the project), a minimal ``/dev``, a fresh ``/proc``
  (``hidepid=invisible``) and a private ``/tmp`` (tmpfs, :data:`TMP_SIZE`):
  ``/home``, ``/root``, ``/etc`` (but ``ld.so.cache`` and ``localtime``),
  the runtime directory and every other host path are not there;
* **rlimits**: ``RLIMIT_AS`` = the template's address space + ``maxmem`` +
  :data:`AS_HEADROOM` + :data:`AS_PER_VCPU` per PV vCPU past the first
  (beyond it ``mmap`` fails with ENOMEM, Python raises
  MemoryError), ``RLIMIT_FSIZE`` (its memory file's size + :data:`FSIZE_LIMIT`; stdout is
  a file too), ``RLIMIT_NPROC`` (:data:`NPROC_LIMIT`, + 2 per PV vCPU past
  the first, only with a uid of the domain's own: the count is per uid);
* **seccomp**: a filter compiled once by libseccomp (:mod:`.seccomp`) that
  answers ``EPERM`` to what no domU needs (ptrace, mount, kexec, modules,
  bpf, namespaces...).

:func:`prepare` runs once in the template: it probes each part (a throwaway
child tries the namespaces), logs one line naming what the host refused,
and returns a :class:`Confinement`; ``PVXEN_GUEST_CONFINE_OFF=a,b`` turns
parts off (tests of one part alone; ``all`` for none). Per guest,
:meth:`Confinement.fork` forks the child (in a new PID namespace: the
template unshares ``CLONE_NEWPID`` for that one fork, then ``setns`` back),
:meth:`Confinement.enter_early` (ahead of time, in a spare: :mod:`.spare`)
and :meth:`Confinement.enter_late` confine it as root, before the uid is
dropped, and :meth:`Confinement.lock` loads seccomp last.
Where the launcher is not root, the network and mount namespaces come
through a user namespace (the caller's uid mapped to itself), the guest
has no ``/proc`` and no uid of its own (hence no ``RLIMIT_NPROC``).
A part the probe accepted that then fails in a guest is fatal for that
guest: it never runs less confined than the launcher said.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
import resource
import secrets
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from daemonkit.procgroup import GUEST_CGROUP_DIR, cgroup2_mount
from hypervisord.public.memfile import file_size
from hypervisord.public.xen import PAGE_SIZE
from toolstack import cpucg, seccomp

log = logging.getLogger("xl-launcher")

PARTS = ("cgroup", "pidns", "netns", "mountns", "rlimits", "seccomp")
OFF_ENV = "PVXEN_GUEST_CONFINE_OFF"
#: address space beyond the template's and maxmem. Measured: a 32 MiB guest
#: that mapped all its memory, made 200 XenStore writes and an event channel,
#: ran one trio worker thread (8 MiB stack + a 64 MiB malloc arena) and a
#: Unicorn x86-64 engine with a 32 MiB translation buffer peaked 134 MiB
#: above the two. Unicorn's default buffer reserves 1 GiB and does not fit:
#: vCPU code sets ``Uc.ctl_set_tcg_buffer_size`` before the engine's first use.
AS_HEADROOM = 256 << 20
#: and per PV vCPU past the first (hypervisord/vcpu/smp.py): its engine's
#: 32 MiB translation buffer, two 4 MiB thread stacks (its loop, its ticker)
AS_PER_VCPU = 48 << 20
FSIZE_LIMIT = 64 << 20
NPROC_LIMIT = 64  # tasks (threads count) of the guest's own uid
TMP_SIZE = 16 << 20
STALE_AFTER = 60.0  # seconds an empty guest cgroup must have existed to be swept

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
#: pivot_root has no glibc wrapper before 2.36: its number per machine
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine())

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                        ctypes.c_ulong, ctypes.c_char_p]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), f"setns({nstype:#x})")


def mount(src: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    enc = lambda s: None if s is None else os.fsencode(s)  # noqa: E731
    _check(_libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)),
           f"mount {src} on {target}")


# -- cgroup v2 ---------------------------------------------------------------------------

def _cgroup_base() -> Path:
    """``<cgroup2>/pvxen``, created; OSError when the host refuses."""
    mnt = cgroup2_mount()
    if mnt is None:
        raise OSError(errno.ENOENT, "no cgroup2 mounted")
    if not (mnt / "cgroup.kill").exists() and not any(mnt.glob("*/cgroup.kill")):
        raise OSError(errno.ENOSYS, "no cgroup.kill (Linux < 5.14)")
    base = mnt / GUEST_CGROUP_DIR
    base.mkdir(mode=0o755, exist_ok=True)
    cpucg.enable_cpu_controller(base)  # weights and caps per guest (xl sched-credit)
    trial = base / f"probe-{os.getpid()}"  # that it exists is not that we may use it
    trial.mkdir()
    trial.rmdir()
    for stale in base.iterdir():  # left by a launcher that died: empty old ones go
        try:  # (a young empty one may be another launcher's spare, joining it now)
            if stale.is_dir() and time.time() - stale.stat().st_mtime > STALE_AFTER:
                stale.rmdir()
        except OSError:
            pass  # populated: a live guest (of this or another launcher)
    cpucg.sweep_twins()
    return base


def kill_cgroup(path: str | os.PathLike, timeout: float = 1.0) -> bool:
    """SIGKILL everything in the cgroup, then remove it; False if it would not go."""
    p = Path(path)
    try:
        (p / "cgroup.kill").write_text("1")
    except FileNotFoundError:
        return True
    except OSError as e:
        log.error("%s: cgroup.kill: %s", p, e.strerror)
        return False
    deadline = time.monotonic() + timeout
    while True:
        try:
            p.rmdir()
            cpucg.remove_twin(p.name)  # a hybrid host's cgroup v1 cpu twin, if xl made one
            return True
        except FileNotFoundError:
            return True
        except OSError as e:  # EBUSY: the killed processes have not all exited yet
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                log.error("%s: not removed: %s", p, e.strerror)
                return False
            time.sleep(0.002)


# -- the template's view: what the host allows ----------------------------------------------

@dataclass
class Confinement:
    parts: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)  # part -> why
    cgroup_base: Path | None = None
    stage: Path | None = None  # empty directory the child mounts its new root on
    binds: list[str] = field(default_factory=list)  # host paths bound read-only
    bpf: bytes | None = None  # the compiled seccomp program
    _own_pidns: int | None = None

    def describe(self) -> str:
        on = ", ".join(p for p in PARTS if p in self.parts) or "none"
        off = "; ".join(f"{p} ({self.refused[p]})" for p in PARTS if p in self.refused)
        return f"guest confinement: {on}" + (f"; refused: {off}" if off else "")

    # -- per guest, in the template -------------------------------------------------------
    def new_cgroup(self) -> Path | None:
        if self.cgroup_base is None:
            return None
        path = self.cgroup_base / f"guest-{secrets.token_hex(4)}"  # procgroup.py's pattern
        path.mkdir(mode=0o755)
        return path

    def fork(self) -> int:
        """``os.fork`` whose child is pid 1 of a new PID namespace (when allowed)."""
        if "pidns" not in self.parts:
            return os.fork()
        unshare(CLONE_NEWPID)  # our next child only: pid_for_children
        try:
            pid = os.fork()
        except BaseException:
            setns(self._own_pidns, CLONE_NEWPID)  # type: ignore[arg-type]
            raise
        if pid:  # the parent: its own namespace for later children again
            setns(self._own_pidns, CLONE_NEWPID)  # type: ignore[arg-type]
        return pid

    # -- per guest, in the child, as root --------------------------------------------------
    def enter(self, cgroup: Path | None, uid: int | None, maxmem_bytes: int) -> None:
        """Confine the calling (just forked) process; OSError if a part fails."""
        self.enter_early(cgroup)
        self.enter_late(uid, maxmem_bytes)

    def enter_early(self, cgroup: Path | None) -> None:
        """What needs no domain: cgroup, namespaces, the new root (a spare does it ahead)."""
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text("0")
        flags = 0
        if "netns" in self.parts:
            flags |= CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
        if "mountns" in self.parts:
            flags |= CLONE_NEWNS
        if flags and os.geteuid() != 0:
            flags |= CLONE_NEWUSER
        if flags:
            outer_uid, outer_gid = os.getuid(), os.getgid()
            unshare(flags)
            if flags & CLONE_NEWUSER:  # keep our identity inside (as bwrap does)
                # /proc/self/*_map belong to root while we are not dumpable (after
                # a setuid); drop_privileges makes us undumpable again
                _check(_libc.prctl(4, 1, 0, 0, 0), "PR_SET_DUMPABLE")
                Path("/proc/self/setgroups").write_text("deny")
                Path("/proc/self/uid_map").write_text(f"{outer_uid} {outer_uid} 1")
                Path("/proc/self/gid_map").write_text(f"{outer_gid} {outer_gid} 1")
        if "netns" in self.parts:
            loopback_up()
        if "mountns" in self.parts:
            assert self.stage is not None
            build_root(self.stage, self.binds, proc_private="pidns" in self.parts)

    def enter_late(self, uid: int | None, maxmem_bytes: int, vcpus: int = 1) -> None:
        """What depends on the domain: its uid owns /tmp; limits from its
        maxmem (and its vCPUs: :data:`AS_PER_VCPU`)."""
        if "mountns" in self.parts and uid is not None:
            os.chown("/tmp", uid, uid)
        if "rlimits" in self.parts:
            limits(address_space() + maxmem_bytes + AS_HEADROOM
                   + max(vcpus - 1, 0) * AS_PER_VCPU, uid is not None, maxmem_bytes, vcpus)

    def lock(self) -> None:
        """The last step, after privileges are dropped: the seccomp filter."""
        if "seccomp" in self.parts and self.bpf is not None:
            seccomp.load(self.bpf)


def loopback_up() -> None:
    """``ip link set lo up`` in the new network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        import fcntl

        req = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


def limits(as_bytes: int, own_uid: bool, maxmem_bytes: int = 0, vcpus: int = 1) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (as_bytes, as_bytes))
    # RLIMIT_FSIZE counts offsets, in every file: the guest must still
    # pwrite() the top of its own memory file (maxmem plus the reserved
    # slots), so the limit is that size plus FSIZE_LIMIT; growing the sealed
    # file is refused by its seals whatever this limit is.
    fsize = file_size(-(-maxmem_bytes // PAGE_SIZE)) + FSIZE_LIMIT
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    if own_uid:  # two threads per PV vCPU past the first (hypervisord/vcpu/smp.py)
        nproc = NPROC_LIMIT + 2 * max(vcpus - 1, 0)
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def address_space() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


# -- the new root ---------------------------------------------------------------------------

DEV_NODES = ("null", "zero", "full", "random", "urandom")
ETC_FILES = ("ld.so.cache", "localtime")


def runtime_paths(stage: Path) -> list[str]:
    """Host paths the guest runtime reads: the Python installation(s) and the project.

    Never ``/`` nor a directory holding ``stage`` (``sys.path[0]`` can be
    any working directory): those would bring the whole host back.
    """
    import hypervisord

    project = Path(hypervisord.__file__).resolve().parents[1]
    want = ["/usr", sys.prefix, sys.base_prefix, sys.exec_prefix, str(project),
            str(Path(sys.executable).resolve().parent)]
    want += [p for p in sys.path if p and os.path.isdir(p)]
    paths = sorted({os.path.realpath(p) for p in want if os.path.isdir(p)})
    stage_s = os.path.realpath(stage)
    out: list[str] = []
    for p in paths:  # drop what an earlier (parent) path already brings
        if p == "/" or stage_s == p or stage_s.startswith(p + "/"):
            continue
        if not any(p == q or p.startswith(q + "/") for q in out):
            out.append(p)
    return out


def _bind_ro(src: str, dst: str, nodev: bool = True) -> None:
    mount(src, dst, None, MS_BIND | MS_REC)
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | (MS_NODEV if nodev else 0)
    mount(None, dst, None, flags)


def build_root(stage: Path, binds: list[str], proc_private: bool) -> None:
    """Make a read-only root of ``binds`` + /dev, /proc, /tmp and pivot into it."""
    if SYS_PIVOT_ROOT is None:
        raise OSError(errno.ENOSYS, f"pivot_root number unknown on {platform.machine()}")
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we do propagates to the host
    root = str(stage)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    os.makedirs(f"{root}/tmp", mode=0o700)
    mount("tmpfs", f"{root}/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
          f"size={TMP_SIZE},mode=0700")  # its owner: the domain's uid (enter_late)
    for src in binds:  # after /tmp: a project under the host's /tmp stays visible

        dst = root + src
        os.makedirs(dst, mode=0o755, exist_ok=True)
        _bind_ro(src, dst)
    for name in ("bin", "sbin", "lib", "lib64"):  # usr-merged hosts: /bin -> usr/bin
        host = "/" + name
        if os.path.islink(host) and not os.path.exists(root + host):
            os.symlink(os.readlink(host), root + host)
    for sub, names in (("dev", DEV_NODES), ("etc", ETC_FILES)):
        os.makedirs(f"{root}/{sub}", mode=0o755, exist_ok=True)
        for name in names:
            host = os.path.realpath(f"/{sub}/{name}")
            if os.path.exists(host):
                open(f"{root}/{sub}/{name}", "w").close()
                _bind_ro(host, f"{root}/{sub}/{name}", nodev=sub != "dev")
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{fd}", f"{root}/dev/{name}")
    os.symlink("/proc/self/fd", f"{root}/dev/fd")
    os.makedirs(f"{root}/proc", mode=0o555)
    try:
        mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              None if proc_private else "hidepid=invisible")
    except PermissionError:
        # in a user namespace a proc needs a PID namespace it owns: none, then
        # (a user namespace is only used when not root): the guest has no /proc
        if os.geteuid() == 0 and os.getuid() == 0:
            raise
    os.chdir(root)
    # pivot_root(".", "."): the old root ends up on top of the new one, and is
    # detached at once (pivot_root(2), NOTES): no put_old directory is needed
    _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount the old root")
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


# -- the probe ----------------------------------------------------------------------------

def _disabled() -> set[str]:
    off = {p.strip() for p in os.environ.get(OFF_ENV, "").split(",") if p.strip()}
    return set(PARTS) if "all" in off else off & set(PARTS)


def prepare(stage: Path) -> Confinement:
    """Decide, once, what guests get; logs one line saying what the host refused."""
    c = Confinement(stage=stage)
    off = _disabled()
    for part in off:
        c.refused[part] = f"off by {OFF_ENV}"
    if "cgroup" not in off:
        try:
            c.cgroup_base = _cgroup_base()
            c.parts.add("cgroup")
        except OSError as e:
            c.refused["cgroup"] = e.strerror or str(e)
    if "seccomp" not in off:
        try:
            c.bpf = seccomp.compile_filter()
            c.parts.add("seccomp")
        except OSError as e:
            c.refused["seccomp"] = e.strerror or str(e)
    if "rlimits" not in off:
        c.parts.add("rlimits")
    c.parts |= {"pidns", "netns", "mountns"} - off
    if "mountns" not in off:
        try:
            stage.mkdir(mode=0o700, parents=True, exist_ok=True)
            c.binds = runtime_paths(stage)
        except OSError as e:
            c.parts.discard("mountns")
            c.refused["mountns"] = f"{stage}: {e.strerror}"
    _probe(c)
    log.info("%s", c.describe())
    return c


def _probe(c: Confinement) -> None:
    """Try the namespaces in a throwaway child; drop each part it could not enter."""
    if "pidns" in c.parts:
        try:
            c._own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            c.parts.discard("pidns")
            c.refused["pidns"] = e.strerror
    for part in ("pidns", "netns", "mountns"):
        if part not in c.parts:
            continue
        trial = Confinement(parts={part} | ({"pidns"} & c.parts if part == "mountns" else set()),
                            stage=c.stage, binds=c.binds, _own_pidns=c._own_pidns)
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = trial.fork() if part == "pidns" or "pidns" in trial.parts else os.fork()
        except OSError as e:
            os.close(r)
            os.close(w)
            c.parts.discard(part)
            c.refused[part] = e.strerror
            continue
        if pid == 0:
            msg = b""
            try:
                trial.enter(None, None, 0)
            except BaseException as e:  # noqa: BLE001 - report whatever failed
                msg = str(e).encode()[:200] or b"failed"
            os.write(w, msg)
            os._exit(0)
        os.close(w)
        why = os.read(r, 256)
        os.close(r)
        os.waitpid(pid, 0)
        if why:
            c.parts.discard(part)
            c.refused[part] = why.decode(errors="replace")
