"""What every pvxen daemon shares: the trio runner with its signal handling
and stop deadline, journald-friendly logging to stderr, ``sd_notify``,
socket and state-directory claiming (:mod:`daemonkit.daemon`).

Daemons (hypervisord, xenstored, backendd) and the toolstack's ``pvxen up``
use it; the client libraries do not.
"""
