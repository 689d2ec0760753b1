"""vCPU operations: mirrors ``xen/include/public/vcpu.h``
(Xen commit c447b730, 4.23-unstable).

``HYPERVISOR_vcpu_op(cmd, vcpuid, extra_arg)``.
"""

from __future__ import annotations

import struct
from enum import IntEnum


class VcpuOp(IntEnum):
    """``VCPUOP_*``."""

    VCPUOP_initialise = 0  # extra_arg: vcpu_guest_context (PV)
    VCPUOP_up = 1  # fails unless initialised
    VCPUOP_down = 2  # asynchronous unless called by the vCPU itself
    VCPUOP_is_up = 3  # returns 1 if up
    VCPUOP_get_runstate_info = 4  # extra_arg: vcpu_runstate_info
    VCPUOP_register_runstate_memory_area = 5
    VCPUOP_set_periodic_timer = 6  # extra_arg: vcpu_set_periodic_timer
    VCPUOP_stop_periodic_timer = 7  # extra_arg: NULL
    VCPUOP_set_singleshot_timer = 8  # extra_arg: vcpu_set_singleshot_timer
    VCPUOP_stop_singleshot_timer = 9  # extra_arg: NULL
    VCPUOP_register_vcpu_info = 10  # extra_arg: vcpu_register_vcpu_info
    VCPUOP_send_nmi = 11
    VCPUOP_get_physid = 12  # extra_arg: vcpu_get_physid
    VCPUOP_register_vcpu_time_memory_area = 13
    VCPUOP_register_runstate_phys_area = 14
    VCPUOP_register_vcpu_time_phys_area = 15


class Runstate(IntEnum):
    RUNSTATE_running = 0  # running on a physical CPU
    RUNSTATE_runnable = 1  # runnable, waiting for a physical CPU
    RUNSTATE_blocked = 2  # blocked (idle); not runnable
    RUNSTATE_offline = 3  # neither runnable nor blocked: hotplug, admin pause


#: struct vcpu_runstate_info: state (int), state_entry_time (ns), time[4]
#: (ns spent in each RUNSTATE_*). Written by Xen.
VCPU_RUNSTATE_INFO = struct.Struct("<i4xQ4Q")
assert VCPU_RUNSTATE_INFO.size == 48
XEN_RUNSTATE_UPDATE = 1 << 63  # set in state_entry_time while Xen updates

#: union addr { handle; pointer; uint64_t p; } (the *_phys_area ops read p
#: as a guest physical address; ~0 unregisters).
VCPU_REGISTER_RUNSTATE_MEMORY_AREA = struct.Struct("<Q")
VCPU_REGISTER_TIME_MEMORY_AREA = struct.Struct("<Q")
VCPU_SET_PERIODIC_TIMER = struct.Struct("<Q")  # period_ns
#: timeout_abs_ns (absolute system time), flags (VCPU_SSHOTTMR_*).
VCPU_SET_SINGLESHOT_TIMER = struct.Struct("<QI4x")
assert VCPU_SET_SINGLESHOT_TIMER.size == 16
_VCPU_SSHOTTMR_future = 0
VCPU_SSHOTTMR_future = 1 << _VCPU_SSHOTTMR_future  # -ETIME if already past

#: mfn, offset (the vcpu_info must not cross a page), rsvd. Once per vCPU.
VCPU_REGISTER_VCPU_INFO = struct.Struct("<QII")
assert VCPU_REGISTER_VCPU_INFO.size == 16
VCPU_GET_PHYSID = struct.Struct("<Q")  # phys_id: APIC id (low), ACPI id (high)


def xen_vcpu_physid_to_x86_apicid(physid: int) -> int:
    return physid & 0xFFFFFFFF


def xen_vcpu_physid_to_x86_acpiid(physid: int) -> int:
    return (physid >> 32) & 0xFFFFFFFF
