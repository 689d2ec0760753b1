"""Version and feature queries: mirrors ``xen/include/public/version.h``
(Xen commit c447b730, 4.23-unstable).

``HYPERVISOR_xen_version(cmd, arg)``. All ops return 0 on success, except
XENVER_version (returns major << 16 | minor), XENVER_pagesize (returns the
page size) and the ``*2`` varbuf ops (return a byte count). Feature bits
(``features.h``, which version.h includes) are re-exported here.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from .features import XENFEAT_NR_SUBMAPS as XENFEAT_NR_SUBMAPS  # re-export
from .features import XenFeat as XenFeat


class XenVerOp(IntEnum):
    """``XENVER_*``."""

    XENVER_version = 0  # arg NULL; returns major:minor (16:16)
    XENVER_extraversion = 1  # arg xen_extraversion_t (char[16]; broken ABI)
    XENVER_compile_info = 2  # arg xen_compile_info (truncates)
    XENVER_capabilities = 3  # arg xen_capabilities_info_t (char[1024])
    XENVER_changeset = 4  # arg xen_changeset_info_t (char[64])
    XENVER_platform_parameters = 5  # arg xen_platform_parameters
    XENVER_get_features = 6  # arg xen_feature_info
    XENVER_pagesize = 7  # arg NULL; returns the host page size
    XENVER_guest_handle = 8  # arg xen_domain_handle_t (the domain's UUID)
    XENVER_commandline = 9  # arg xen_commandline_t (char[1024])
    XENVER_build_id = 10  # arg xen_varbuf
    XENVER_extraversion2 = 11  # arg xen_varbuf (no NUL terminator)
    XENVER_capabilities2 = 12
    XENVER_changeset2 = 13
    XENVER_commandline2 = 14


def xen_version_word(major: int, minor: int) -> int:
    """XENVER_version's return value."""
    return ((major & 0xFFFF) << 16) | (minor & 0xFFFF)


XEN_EXTRAVERSION_LEN = 16
XEN_CAPABILITIES_INFO_LEN = 1024
XEN_CHANGESET_INFO_LEN = 64
XEN_COMMANDLINE_LEN = 1024
XEN_GUEST_HANDLE_LEN = 16  # xen_domain_handle_t

#: compiler[64], compile_by[16], compile_domain[32], compile_date[32].
XEN_COMPILE_INFO = struct.Struct("<64s16s32s32s")
assert XEN_COMPILE_INFO.size == 144

XEN_PLATFORM_PARAMETERS = struct.Struct("<Q")  # virt_start
#: submap_idx (IN: which 32-bit word), submap (OUT).
XEN_FEATURE_INFO = struct.Struct("<II")
assert XEN_FEATURE_INFO.size == 8
#: struct xen_varbuf / xen_build_id: len (IN size of buf[]), then buf[].
XEN_VARBUF_HDR = struct.Struct("<I")

#: The token a 64-bit PV-capable host lists in XENVER_capabilities
#: (space-separated; the format comes from Xen's arch_get_xen_caps(), not
#: from this header). It matches start_info's magic.
XEN_CAPABILITIES_X86_64_PV = "xen-3.0-x86_64"
