"""PV console page: mirrors ``xen/include/public/io/console.h``
(Xen commit c447b730, 4.23-unstable).

``struct xencons_interface`` fills the guest's console frame
(``start_info.console.domU.mfn``), signalled over
``start_info.console.domU.evtchn``. Two byte rings with free-running
uint32 indices; MASK_XENCONS_IDX reduces an index into its ring.

Who writes what::

    in[1024]    backend (console daemon): keyboard input for the guest
    in_cons     frontend (guest)
    in_prod     backend
    out[2048]   frontend: what the guest prints
    out_cons    backend
    out_prod    frontend
    connection  backend (XENCONSOLE_CONNECTED / _DISCONNECTED)
"""

from __future__ import annotations

import struct

XENCONS_RING_IDX = struct.Struct("<I")
XENCONS_IN_SIZE = 1024
XENCONS_OUT_SIZE = 2048
XENCONS_IN_OFF = 0
XENCONS_OUT_OFF = XENCONS_IN_OFF + XENCONS_IN_SIZE
XENCONS_IN_CONS_OFF = XENCONS_OUT_OFF + XENCONS_OUT_SIZE
XENCONS_IN_PROD_OFF = XENCONS_IN_CONS_OFF + 4
XENCONS_OUT_CONS_OFF = XENCONS_IN_CONS_OFF + 8
XENCONS_OUT_PROD_OFF = XENCONS_IN_CONS_OFF + 12
XENCONS_CONNECTION_OFF = XENCONS_IN_CONS_OFF + 16
assert (XENCONS_IN_CONS_OFF, XENCONS_CONNECTION_OFF) == (3072, 3088)

#: in, out, in_cons, in_prod, out_cons, out_prod, connection.
XENCONS_INTERFACE = struct.Struct("<1024s2048sIIIIB3x")
assert XENCONS_INTERFACE.size == 3092
#: Just the index block at XENCONS_IN_CONS_OFF.
XENCONS_INDICES = struct.Struct("<IIII")

XENCONSOLE_CONNECTED = 0  # the back end services and empties the rings
XENCONSOLE_DISCONNECTED = 1  # the initial state


def MASK_XENCONS_IDX(idx: int, ring_size: int) -> int:  # noqa: N802 - Xen's macro name
    """``MASK_XENCONS_IDX(idx, ring)``: ``ring_size`` is sizeof(ring)."""
    return idx & (ring_size - 1)
