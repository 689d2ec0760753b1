"""What every pvxen daemon shares: the trio runner with its signal handling
and stop deadline, journald-friendly logging to stderr, ``sd_notify``,
socket and state-directory claiming (:mod:`daemonkit.daemon`); the guest
cgroups that the launcher makes and hypervisord kills on destroy
(:mod:`daemonkit.procgroup`).

Daemons (hypervisord, xenstored, backendd) and the toolstack's ``pvxen up``
use it; the client libraries do not.
"""
