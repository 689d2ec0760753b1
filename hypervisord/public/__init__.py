"""pvxen's public ABI: a stdlib-only mirror of Xen's ``xen/include/public/``.

One module per Xen header (``xen.h`` -> ``xen.py``, ``io/ring.h`` ->
``io/ring.py`` ...). Each module holds ``IntEnum``s with Xen's names,
``struct.Struct`` layouts for x86-64 with size self-checks, and notes on who
writes each shared-page field. Nothing here imports the rest of pvxen, so
every package may import it.

Facts were read from xen-project/xen at commit
c447b7308b1330ec6dcfef37220736c28f41daa0 (Xen 4.23-unstable, 2026-08-20).
Every Xen platform pvxen targets is little-endian x86-64: all layouts are
pinned with ``<`` and spell C's alignment padding out as ``x`` bytes.
"""

XEN_COMMIT = "c447b7308b1330ec6dcfef37220736c28f41daa0"
XEN_VERSION = "4.23-unstable"
