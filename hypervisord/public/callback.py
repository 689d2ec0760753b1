"""Guest OS callbacks (``xen/include/public/callback.h``), 64-bit PV layout."""

from __future__ import annotations

import struct
from enum import IntEnum


class CallbackType(IntEnum):
    CALLBACKTYPE_event = 0
    CALLBACKTYPE_failsafe = 1
    CALLBACKTYPE_syscall = 2  # syscall from a 64-bit guest application
    CALLBACKTYPE_sysenter_deprecated = 3
    CALLBACKTYPE_nmi = 4
    CALLBACKTYPE_sysenter = 5
    CALLBACKTYPE_syscall32 = 7


CALLBACKF_mask_events = 1 << 0

CALLBACKOP_register = 0
CALLBACKOP_unregister = 1

#: struct callback_register { uint16_t type; uint16_t flags; xen_callback_t address; }
#: (xen_callback_t is an unsigned long on x86_64: 4 bytes of padding before it)
CALLBACK_REGISTER = struct.Struct("<HHxxxxQ")
#: struct callback_unregister { uint16_t type; uint16_t _unused; }
CALLBACK_UNREGISTER = struct.Struct("<HH")
