"""The program guest's seccomp filter, compiled by libseccomp through ctypes.

libseccomp (``libseccomp.so.2``, Debian's ``libseccomp2``) is the kept part:
it knows each architecture's syscall numbers and writes the BPF program,
with the architecture check first (a syscall made through another ABI, such
as ``int 0x80`` or x32, kills the process: libseccomp's default
``SCMP_FLTATR_ACT_BADARCH``). The template compiles the program once
(:func:`compile_filter`, ``seccomp_export_bpf``); each guest only loads the
bytes (:func:`load`: ``prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)``, after
``PR_SET_NO_NEW_PRIVS``), which costs microseconds.

The policy allows by default and answers ``EPERM`` to what a domU never
needs and a hostile one could use against the host or its neighbours: other
processes (ptrace, process_vm_*, kcmp, pidfd_getfd), the kernel (modules,
kexec, reboot, bpf, perf, keys, syslog, swap, clocks, iopl), file systems
and namespaces (mount and the new mount API, pivot_root, chroot, unshare,
setns, clone with any ``CLONE_NEW*`` flag; clone3 gets ``ENOSYS``, since
a filter cannot read its flags, and glibc then falls back to clone, as
with Docker's profile), handles (open_by_handle_at), userfaultfd and
io_uring (whose operations a filter never sees).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2


def SCMP_ACT_ERRNO(err: int) -> int:  # noqa: N802 - libseccomp's macro
    return 0x00050000 | (err & 0xFFFF)


DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "reboot", "bpf", "perf_event_open", "keyctl", "add_key", "request_key", "syslog",
    "swapon", "swapoff", "acct", "settimeofday", "clock_settime", "clock_adjtime",
    "adjtimex", "sethostname", "setdomainname", "iopl", "ioperm", "quotactl",
    "quotactl_fd", "lookup_dcookie", "vhangup", "uselib", "nfsservctl",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr", "unshare", "setns",
    "open_by_handle_at", "name_to_handle_at", "userfaultfd", "fanotify_init",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
)
#: clone flags that make a namespace (linux/sched.h)
CLONE_NEW_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000,
                   0x20000000, 0x40000000)


class _ArgCmp(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class _SockFprog(ctypes.Structure):  # struct sock_fprog
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        raise OSError(errno.ENOENT, "libseccomp not installed") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def compile_filter() -> bytes:
    """The policy as raw ``struct sock_filter`` instructions; OSError if impossible."""
    lib = _library()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init failed")
    try:
        def rule(action: int, name: str, *cmps: _ArgCmp) -> None:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                return  # not a syscall on this architecture
            arr = (_ArgCmp * len(cmps))(*cmps) if cmps else None
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
            if rc < 0:
                raise OSError(-rc, f"seccomp_rule_add({name}): {os.strerror(-rc)}")

        eperm = SCMP_ACT_ERRNO(errno.EPERM)
        for name in DENIED:
            rule(eperm, name)
        for flag in CLONE_NEW_FLAGS:  # rules for one syscall are OR'ed
            rule(eperm, "clone", _ArgCmp(0, SCMP_CMP_MASKED_EQ, flag, flag))
        rule(SCMP_ACT_ERRNO(errno.ENOSYS), "clone3")
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise OSError(-rc, f"seccomp_export_bpf: {os.strerror(-rc)}")
            size = os.fstat(fd).st_size
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


_libc = ctypes.CDLL(None, use_errno=True)


def load(bpf: bytes) -> None:
    """Install the program on the calling thread (no new privileges must be set)."""
    if not bpf or len(bpf) % 8:
        raise OSError(errno.EINVAL, "not a BPF program")
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.addressof(buf))
    if _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"PR_SET_SECCOMP: {os.strerror(err)}")
