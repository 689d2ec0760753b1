"""Scheduler operations: mirrors ``xen/include/public/sched.h``
(Xen commit c447b730, 4.23-unstable).

``HYPERVISOR_sched_op(cmd, arg)``: yield, block, shut down, poll ports,
watchdogs. Also owns the ``SHUTDOWN_*`` reason codes (re-exported by
``xen.py``) that the toolstack reads back from ``XEN_DOMINF_shutdown``.
"""

from __future__ import annotations

import struct
from enum import IntEnum


class SchedOp(IntEnum):
    """``SCHEDOP_*`` (``enum sched_op``)."""

    SCHEDOP_yield = 0  # arg NULL
    SCHEDOP_block = 1  # arg NULL; atomically unmasks upcalls, then blocks
    SCHEDOP_shutdown = 2  # arg sched_shutdown; suspend: %rdx = start_info MFN
    SCHEDOP_poll = 3  # arg sched_poll
    SCHEDOP_remote_shutdown = 4  # arg sched_remote_shutdown
    SCHEDOP_shutdown_code = 5  # arg sched_shutdown: latch code for later
    SCHEDOP_watchdog = 6  # arg sched_watchdog
    SCHEDOP_pin_override = 7  # arg sched_pin_override; hardware domain only


class ShutdownReason(IntEnum):
    """``SHUTDOWN_*`` (``enum sched_shutdown_reason``)."""

    SHUTDOWN_poweroff = 0  # exited normally: clean up and kill
    SHUTDOWN_reboot = 1  # clean up, kill, then restart
    SHUTDOWN_suspend = 2  # clean up, save suspend info, kill
    SHUTDOWN_crash = 3  # tell the controller we crashed
    SHUTDOWN_watchdog = 4  # restart because the watchdog expired
    SHUTDOWN_soft_reset = 5  # reset Xen state, keep memory and vCPU contexts


SHUTDOWN_MAX = 5  # maximum valid shutdown reason
assert max(ShutdownReason) == SHUTDOWN_MAX

# With SHUTDOWN_suspend, SCHEDOP_shutdown returns 1 if the suspend was
# cancelled (or the domain merely checkpointed) and 0 when resuming in a new
# domain.

SCHED_SHUTDOWN = struct.Struct("<I")  # reason
assert SCHED_SHUTDOWN.size == 4

#: ports (guest handle to evtchn_port_t[]), nr_ports, timeout (absolute ns
#: system time; 0 = none).
SCHED_POLL = struct.Struct("<QI4xQ")
assert SCHED_POLL.size == 24

SCHED_REMOTE_SHUTDOWN = struct.Struct("<H2xI")  # domain_id, reason
assert SCHED_REMOTE_SHUTDOWN.size == 8

#: id == 0: create (returns id); id != 0 and timeout == 0: destroy;
#: otherwise poke with a new timeout (Xen counts it in seconds).
SCHED_WATCHDOG = struct.Struct("<II")  # id, timeout
assert SCHED_WATCHDOG.size == 8

SCHED_PIN_OVERRIDE = struct.Struct("<i")  # pcpu; negative undoes the pin
assert SCHED_PIN_OVERRIDE.size == 4

SCHEDOP_STRUCT: dict[SchedOp, struct.Struct | None] = {
    SchedOp.SCHEDOP_yield: None,
    SchedOp.SCHEDOP_block: None,
    SchedOp.SCHEDOP_shutdown: SCHED_SHUTDOWN,
    SchedOp.SCHEDOP_poll: SCHED_POLL,
    SchedOp.SCHEDOP_remote_shutdown: SCHED_REMOTE_SHUTDOWN,
    SchedOp.SCHEDOP_shutdown_code: SCHED_SHUTDOWN,
    SchedOp.SCHEDOP_watchdog: SCHED_WATCHDOG,
    SchedOp.SCHEDOP_pin_override: SCHED_PIN_OVERRIDE,
}
