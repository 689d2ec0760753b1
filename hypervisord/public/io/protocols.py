"""Ring ABI names: mirrors ``xen/include/public/io/protocols.h``
(Xen commit c447b730, 4.23-unstable).

A front end writes one of these to its ``protocol`` xenstore node so the
back end knows the request layout; a missing node means the native ABI.
pvxen only implements the x86-64 layouts.
"""

from __future__ import annotations

XEN_IO_PROTO_ABI_X86_32 = "x86_32-abi"
XEN_IO_PROTO_ABI_X86_64 = "x86_64-abi"
XEN_IO_PROTO_ABI_ARM = "arm-abi"
XEN_IO_PROTO_ABI_NATIVE = XEN_IO_PROTO_ABI_X86_64
