"""XenStore wire protocol: mirrors ``xen/include/public/io/xs_wire.h``.

Stdlib only; importable by every package. Holds the message types, the
``struct xsd_sockmsg`` header, the ``xsd_errors`` table (order matters: it is
the order of the C array), the payload/path limits and the layout of
``struct xenstore_domain_interface``, the page a domain shares with
xenstored.
"""

from __future__ import annotations

import errno
import struct
from enum import IntEnum


class XsdSockmsgType(IntEnum):
    """``enum xsd_sockmsg_type``."""

    XS_CONTROL = 0  # XS_DEBUG is the old name of the same value
    XS_DIRECTORY = 1
    XS_READ = 2
    XS_GET_PERMS = 3
    XS_WATCH = 4
    XS_UNWATCH = 5
    XS_TRANSACTION_START = 6
    XS_TRANSACTION_END = 7
    XS_INTRODUCE = 8
    XS_RELEASE = 9
    XS_GET_DOMAIN_PATH = 10
    XS_WRITE = 11
    XS_MKDIR = 12
    XS_RM = 13
    XS_SET_PERMS = 14
    XS_WATCH_EVENT = 15
    XS_ERROR = 16
    XS_IS_DOMAIN_INTRODUCED = 17
    XS_RESUME = 18
    XS_SET_TARGET = 19
    XS_RESTRICT = 20  # removed upstream; never valid
    XS_RESET_WATCHES = 21
    XS_DIRECTORY_PART = 22
    XS_GET_FEATURE = 23
    XS_SET_FEATURE = 24
    XS_GET_QUOTA = 25
    XS_SET_QUOTA = 26
    XS_INVALID = 0xFFFF


XS_DEBUG = XsdSockmsgType.XS_CONTROL
XS_TYPE_COUNT = 27  # one past the last defined type

#: ``struct xsd_sockmsg { uint32_t type, req_id, tx_id, len; }`` in host byte
#: order; every Xen platform is little-endian, so it is pinned here.
XSD_SOCKMSG = struct.Struct("<IIII")
assert XSD_SOCKMSG.size == 16

#: ``xsd_errors[]``: names travel as text ("EINVAL\0"), never as numbers.
#: New errors are appended, never inserted.
XSD_ERRORS: tuple[tuple[int, str], ...] = (
    (errno.EINVAL, "EINVAL"),
    (errno.EACCES, "EACCES"),
    (errno.EEXIST, "EEXIST"),
    (errno.EISDIR, "EISDIR"),
    (errno.ENOENT, "ENOENT"),
    (errno.ENOMEM, "ENOMEM"),
    (errno.ENOSPC, "ENOSPC"),
    (errno.EIO, "EIO"),
    (errno.ENOTEMPTY, "ENOTEMPTY"),
    (errno.ENOSYS, "ENOSYS"),
    (errno.EROFS, "EROFS"),
    (errno.EBUSY, "EBUSY"),
    (errno.EAGAIN, "EAGAIN"),
    (errno.EISCONN, "EISCONN"),
    (errno.E2BIG, "E2BIG"),
    (errno.EPERM, "EPERM"),
)
XSD_ERROR_BY_NAME = {name: num for num, name in XSD_ERRORS}
XSD_ERROR_BY_ERRNO = {num: name for num, name in XSD_ERRORS}

# Watch event payload positions (enum xs_watch_type).
XS_WATCH_PATH = 0
XS_WATCH_TOKEN = 1

XENSTORE_PAYLOAD_MAX = 4096  # in both directions
XENSTORE_ABS_PATH_MAX = 3072
XENSTORE_REL_PATH_MAX = 2048

# ---------------------------------------------------------------------------
# The shared ring page: struct xenstore_domain_interface.
# Indices run freely; MASK_XENSTORE_IDX() reduces them into the ring.
# ---------------------------------------------------------------------------
XENSTORE_RING_SIZE = 1024
assert XENSTORE_RING_SIZE & (XENSTORE_RING_SIZE - 1) == 0


def MASK_XENSTORE_IDX(idx: int) -> int:  # noqa: N802 - Xen's macro name
    return idx & (XENSTORE_RING_SIZE - 1)


# Byte offsets inside the page; who writes each field is noted.
XS_RING_REQ_OFF = 0  # char req[1024]: guest writes, xenstored reads
XS_RING_RSP_OFF = 1024  # char rsp[1024]: xenstored writes replies and events
XS_RING_REQ_CONS_OFF = 2048  # written by xenstored
XS_RING_REQ_PROD_OFF = 2052  # written by the guest
XS_RING_RSP_CONS_OFF = 2056  # written by the guest
XS_RING_RSP_PROD_OFF = 2060  # written by xenstored
XS_RING_SERVER_FEATURES_OFF = 2064  # written by xenstored
XS_RING_CONNECTION_OFF = 2068  # both (reconnection handshake)
XS_RING_ERROR_OFF = 2072  # written by xenstored
XS_RING_EVTCHN_PORT_OFF = 2076  # dom0less: written by the toolstack
XENSTORE_DOMAIN_INTERFACE = struct.Struct("<1024s1024sIIIIIIII")
assert XENSTORE_DOMAIN_INTERFACE.size == 2080

XENSTORE_SERVER_FEATURE_RECONNECTION = 1
XENSTORE_SERVER_FEATURE_ERROR = 2
XENSTORE_SERVER_FEATURE_WATCHDEPTH = 4
XENSTORE_SERVER_FEATURE_DOMID_ANY = 8

XENSTORE_CONNECTED = 0
XENSTORE_RECONNECT = 1

XENSTORE_ERROR_NONE = 0
XENSTORE_ERROR_COMM = 1
XENSTORE_ERROR_RINGIDX = 2
XENSTORE_ERROR_PROTO = 3

# Special watch paths (docs/misc/xenstore.txt).
SPECIAL_INTRODUCE_DOMAIN = "@introduceDomain"
SPECIAL_RELEASE_DOMAIN = "@releaseDomain"
