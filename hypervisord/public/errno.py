"""Hypercall error numbers: mirrors ``xen/include/public/errno.h``
(Xen commit c447b730, 4.23-unstable).

Hypercalls return ``-XEN_Exxx``. The values equal Linux x86's, but the
header is the authority: a guest sees these numbers whatever the host is.
"""

from __future__ import annotations

from enum import IntEnum


class XenErrno(IntEnum):
    """``enum xen_errno`` (guest-visible members only)."""

    XEN_EPERM = 1  # Operation not permitted
    XEN_ENOENT = 2  # No such file or directory
    XEN_ESRCH = 3  # No such process
    XEN_EIO = 5  # I/O error
    XEN_ENXIO = 6  # No such device or address
    XEN_E2BIG = 7  # Arg list too long
    XEN_ENOEXEC = 8  # Exec format error
    XEN_EBADF = 9  # Bad file number
    XEN_ECHILD = 10  # No child processes
    XEN_EAGAIN = 11  # Try again (XEN_EWOULDBLOCK aliases it)
    XEN_ENOMEM = 12  # Out of memory
    XEN_EACCES = 13  # Permission denied
    XEN_EFAULT = 14  # Bad address
    XEN_EBUSY = 16  # Device or resource busy
    XEN_EEXIST = 17  # File exists
    XEN_EXDEV = 18  # Cross-device link
    XEN_ENODEV = 19  # No such device
    XEN_ENOTDIR = 20  # Not a directory
    XEN_EISDIR = 21  # Is a directory
    XEN_EINVAL = 22  # Invalid argument
    XEN_ENFILE = 23  # File table overflow
    XEN_EMFILE = 24  # Too many open files
    XEN_ENOSPC = 28  # No space left on device
    XEN_EROFS = 30  # Read-only file system
    XEN_EMLINK = 31  # Too many links
    XEN_EDOM = 33  # Math argument out of domain of func
    XEN_ERANGE = 34  # Math result not representable
    XEN_EDEADLK = 35  # Resource deadlock would occur (XEN_EDEADLOCK aliases)
    XEN_ENAMETOOLONG = 36  # File name too long
    XEN_ENOLCK = 37  # No record locks available
    XEN_ENOSYS = 38  # Function not implemented
    XEN_ENOTEMPTY = 39  # Directory not empty
    XEN_ENODATA = 61  # No data available
    XEN_ETIME = 62  # Timer expired
    XEN_EBADMSG = 74  # Not a data message
    XEN_EOVERFLOW = 75  # Value too large for defined data type
    XEN_EILSEQ = 84  # Illegal byte sequence
    XEN_ENOTSOCK = 88  # Socket operation on non-socket
    XEN_EMSGSIZE = 90  # Message too large
    XEN_EOPNOTSUPP = 95  # Operation not supported on transport endpoint
    XEN_EADDRINUSE = 98  # Address already in use
    XEN_EADDRNOTAVAIL = 99  # Cannot assign requested address
    XEN_ENOBUFS = 105  # No buffer space available
    XEN_EISCONN = 106  # Transport endpoint is already connected
    XEN_ENOTCONN = 107  # Transport endpoint is not connected
    XEN_ETIMEDOUT = 110  # Connection timed out
    XEN_ECONNREFUSED = 111  # Connection refused


XEN_EWOULDBLOCK = XenErrno.XEN_EAGAIN
XEN_EDEADLOCK = XenErrno.XEN_EDEADLK

# Internal to Xen (#ifdef __XEN__): must never reach a guest. A hypervisor
# may use them to mean "preempted, continue the hypercall later".
XEN_EINTR = 4
XEN_ERESTART = 85
