"""libxenstore: the XenStore client, over the Unix socket or a domain's ring.

``wire`` frames ``xsd_sockmsg`` messages (``xen/include/public/io/xs_wire.h``)
and ``errors`` maps the wire's error names to errnos; xenstored uses both for
the server side too. ``sync`` is the blocking client the ``xenstore-*`` tools
and ``xl`` use, ``aio`` the trio one (daemons, frontends).
"""
