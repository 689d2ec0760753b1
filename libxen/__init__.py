"""The client libraries (Xen's ``tools/libs``): how any process, dom0 or domU,
talks to hypervisord and xenstored.

``core``/``sync`` (libxencall: the hypercall connection, trio and blocking),
``rpc`` (the hypercall envelope), ``ctrl`` (libxenctrl), ``evtchn``
(libxenevtchn), ``gnttab`` (libxengnttab), ``foreignmemory``
(libxenforeignmemory), ``shinfo`` (atomic bit operations on a shared_info
page), ``xsring`` (the XenStore ring as a stream), ``xenstore`` (libxenstore),
``paths`` (where the daemons' sockets are).

Imports flow one way: :mod:`hypervisord.public` <- ``libxen`` <- daemons,
frontends, toolstack. Nothing here imports a daemon.
"""
