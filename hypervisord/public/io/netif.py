"""Network device I/O: mirrors ``xen/include/public/io/netif.h``
(Xen commit c447b730, 4.23-unstable).

Two rings per queue: on the tx ring the front end posts packets to send
(``netif_tx_request``, one or more slots per packet, chained with
NETTXF_more_data) and the back end answers; on the rx ring the front end
posts empty granted buffers (``netif_rx_request``) and the back end fills
them and answers with the length in ``status``. A third, optional ring
carries control requests. Entries are written by their producer only.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from .ring import const_ring_size

XEN_NETIF_NR_SLOTS_MIN = 18  # a back end must accept packets this fragmented
XEN_NETIF_MAX_TX_SIZE = 0xFFFF  # largest packet on the tx ring

# ---------------------------------------------------------------------------
# tx ring
# ---------------------------------------------------------------------------
_NETTXF_csum_blank = 0
NETTXF_csum_blank = 1 << _NETTXF_csum_blank  # protocol checksum not filled in
_NETTXF_data_validated = 1
NETTXF_data_validated = 1 << _NETTXF_data_validated  # checksum validated
_NETTXF_more_data = 2
NETTXF_more_data = 1 << _NETTXF_more_data  # packet continues in the next slot
_NETTXF_extra_info = 3
NETTXF_extra_info = 1 << _NETTXF_extra_info  # a netif_extra_info slot follows

#: struct netif_tx_request: gref, offset, flags (NETTXF_*), id, size. In the
#: first slot of a packet, size is the whole packet's length.
NETIF_TX_REQUEST = struct.Struct("<IHHHH")
assert NETIF_TX_REQUEST.size == 12
NETIF_TX_RESPONSE = struct.Struct("<Hh")  # id, status (NETIF_RSP_*)
assert NETIF_TX_RESPONSE.size == 4
NETIF_TX_SRING_ENTRY_SIZE = max(NETIF_TX_REQUEST.size, NETIF_TX_RESPONSE.size)
NET_TX_RING_SIZE = const_ring_size(4096, NETIF_TX_SRING_ENTRY_SIZE)
assert NET_TX_RING_SIZE == 256


class XenNetifExtraType(IntEnum):
    XEN_NETIF_EXTRA_TYPE_NONE = 0  # never used; invalid
    XEN_NETIF_EXTRA_TYPE_GSO = 1  # u.gso
    XEN_NETIF_EXTRA_TYPE_MCAST_ADD = 2  # u.mcast
    XEN_NETIF_EXTRA_TYPE_MCAST_DEL = 3  # u.mcast
    XEN_NETIF_EXTRA_TYPE_HASH = 4  # u.hash


XEN_NETIF_EXTRA_TYPE_MAX = 5
_XEN_NETIF_EXTRA_FLAG_MORE = 0
XEN_NETIF_EXTRA_FLAG_MORE = 1 << _XEN_NETIF_EXTRA_FLAG_MORE
XEN_NETIF_GSO_TYPE_NONE = 0
XEN_NETIF_GSO_TYPE_TCPV4 = 1
XEN_NETIF_GSO_TYPE_TCPV6 = 2

#: struct netif_extra_info: type, flags, u (6 bytes), occupying one slot.
NETIF_EXTRA_INFO = struct.Struct("<BB6s")
NETIF_EXTRA_INFO_GSO = struct.Struct("<BBHBBH")  # type, flags, size, gso type, pad, features
NETIF_EXTRA_INFO_MCAST = struct.Struct("<BB6s")  # type, flags, addr[6]
NETIF_EXTRA_INFO_HASH = struct.Struct("<BBBB4s")  # type, flags, hash type, algorithm, value
assert NETIF_EXTRA_INFO.size == NETIF_EXTRA_INFO_GSO.size == 8
assert NETIF_EXTRA_INFO_MCAST.size == NETIF_EXTRA_INFO_HASH.size == 8

# ---------------------------------------------------------------------------
# rx ring
# ---------------------------------------------------------------------------
NETIF_RX_REQUEST = struct.Struct("<H2xI")  # id (echoed), gref
assert NETIF_RX_REQUEST.size == 8
_NETRXF_data_validated = 0
NETRXF_data_validated = 1 << _NETRXF_data_validated
_NETRXF_csum_blank = 1
NETRXF_csum_blank = 1 << _NETRXF_csum_blank
_NETRXF_more_data = 2
NETRXF_more_data = 1 << _NETRXF_more_data
_NETRXF_extra_info = 3
NETRXF_extra_info = 1 << _NETRXF_extra_info
_NETRXF_gso_prefix = 4
NETRXF_gso_prefix = 1 << _NETRXF_gso_prefix
#: struct netif_rx_response: id, offset, flags (NETRXF_*), status (bytes
#: received if >= 0, else NETIF_RSP_*).
NETIF_RX_RESPONSE = struct.Struct("<HHHh")
assert NETIF_RX_RESPONSE.size == 8
NETIF_RX_SRING_ENTRY_SIZE = max(NETIF_RX_REQUEST.size, NETIF_RX_RESPONSE.size)
NET_RX_RING_SIZE = const_ring_size(4096, NETIF_RX_SRING_ENTRY_SIZE)
assert NET_RX_RING_SIZE == 256


class NetifRsp(IntEnum):
    NETIF_RSP_DROPPED = -2
    NETIF_RSP_ERROR = -1
    NETIF_RSP_OKAY = 0
    NETIF_RSP_NULL = 1  # no response: used for an extra-info slot


# ---------------------------------------------------------------------------
# control ring (feature-ctrl-ring)
# ---------------------------------------------------------------------------
class XenNetifCtrlType(IntEnum):
    XEN_NETIF_CTRL_TYPE_INVALID = 0
    XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS = 1
    XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS = 2
    XEN_NETIF_CTRL_TYPE_SET_HASH_KEY = 3
    XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE = 4
    XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE = 5
    XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING = 6
    XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM = 7
    XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE = 8
    XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING = 9
    XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING = 10


class XenNetifCtrlStatus(IntEnum):
    XEN_NETIF_CTRL_STATUS_SUCCESS = 0
    XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED = 1
    XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER = 2
    XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW = 3


XEN_NETIF_CTRL_HASH_TYPE_IPV4 = 1 << 0
XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP = 1 << 1
XEN_NETIF_CTRL_HASH_TYPE_IPV6 = 1 << 2
XEN_NETIF_CTRL_HASH_TYPE_IPV6_TCP = 1 << 3
XEN_NETIF_CTRL_HASH_ALGORITHM_NONE = 0
XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ = 1

XEN_NETIF_CTRL_REQUEST = struct.Struct("<HH3I")  # id, type, data[3]
XEN_NETIF_CTRL_RESPONSE = struct.Struct("<HHII")  # id, type, status, data
assert XEN_NETIF_CTRL_REQUEST.size == 16
assert XEN_NETIF_CTRL_RESPONSE.size == 12
XEN_NETIF_CTRL_SRING_ENTRY_SIZE = max(XEN_NETIF_CTRL_REQUEST.size, XEN_NETIF_CTRL_RESPONSE.size)
XEN_NETIF_CTRL_RING_SIZE = const_ring_size(4096, XEN_NETIF_CTRL_SRING_ENTRY_SIZE)
assert XEN_NETIF_CTRL_RING_SIZE == 128

#: struct xen_netif_gref: ref, flags (XEN_NETIF_CTRLF_GREF_*), status.
XEN_NETIF_GREF = struct.Struct("<IHH")
assert XEN_NETIF_GREF.size == 8
XEN_NETIF_CTRLF_GREF_readonly = 1 << 0
