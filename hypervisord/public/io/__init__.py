"""Split-driver I/O ABI: mirrors ``xen/include/public/io/`` (rings, blkif,
netif, console, xenbus, protocols, xs_wire)."""
