"""System management for the control domain: mirrors
``xen/include/public/sysctl.h`` (Xen commit c447b730, 4.23-unstable;
``XEN_SYSCTL_INTERFACE_VERSION`` 0x16, last bumped for Xen 4.21).

``HYPERVISOR_sysctl(struct xen_sysctl *)``: cmd, interface_version, then a
128-byte union at offset 8. Privileged callers only.
"""

from __future__ import annotations

import struct
from enum import IntEnum

XEN_SYSCTL_INTERFACE_VERSION = 0x00000016


class SysctlCmd(IntEnum):
    """``XEN_SYSCTL_*`` command numbers."""

    XEN_SYSCTL_readconsole = 1
    XEN_SYSCTL_tbuf_op = 2
    XEN_SYSCTL_physinfo = 3
    XEN_SYSCTL_sched_id = 4
    XEN_SYSCTL_perfc_op = 5
    XEN_SYSCTL_getdomaininfolist = 6
    XEN_SYSCTL_debug_keys = 7
    XEN_SYSCTL_getcpuinfo = 8
    XEN_SYSCTL_availheap = 9
    XEN_SYSCTL_get_pmstat = 10
    XEN_SYSCTL_cpu_hotplug = 11
    XEN_SYSCTL_pm_op = 12
    XEN_SYSCTL_page_offline_op = 14
    XEN_SYSCTL_lockprof_op = 15
    XEN_SYSCTL_cputopoinfo = 16
    XEN_SYSCTL_numainfo = 17
    XEN_SYSCTL_cpupool_op = 18
    XEN_SYSCTL_scheduler_op = 19
    XEN_SYSCTL_coverage_op = 20
    XEN_SYSCTL_psr_cmt_op = 21
    XEN_SYSCTL_pcitopoinfo = 22
    XEN_SYSCTL_psr_alloc = 23
    # 24 tmem_op, 25 get_cpu_levelling_caps, 28 set_parameter: removed
    XEN_SYSCTL_get_cpu_featureset = 26
    XEN_SYSCTL_livepatch_op = 27
    XEN_SYSCTL_get_cpu_policy = 29
    XEN_SYSCTL_dt_overlay = 30


XEN_SYSCTL_HDR = struct.Struct("<II")  # cmd, interface_version
XEN_SYSCTL_PAYLOAD_SIZE = 128
XEN_SYSCTL_SIZE = XEN_SYSCTL_HDR.size + XEN_SYSCTL_PAYLOAD_SIZE
assert XEN_SYSCTL_SIZE == 136

XEN_SYSCTL_PHYSCAP_hvm = 1 << 0
XEN_SYSCTL_PHYSCAP_pv = 1 << 1
XEN_SYSCTL_PHYSCAP_directio = 1 << 2
XEN_SYSCTL_PHYSCAP_hap = 1 << 3
XEN_SYSCTL_PHYSCAP_shadow = 1 << 4
XEN_SYSCTL_PHYSCAP_iommu_hap_pt_share = 1 << 5
XEN_SYSCTL_PHYSCAP_vmtrace = 1 << 6
XEN_SYSCTL_PHYSCAP_vpmu = 1 << 7
XEN_SYSCTL_PHYSCAP_gnttab_v1 = 1 << 8
XEN_SYSCTL_PHYSCAP_gnttab_v2 = 1 << 9
XEN_SYSCTL_PHYSCAP_MAX = XEN_SYSCTL_PHYSCAP_gnttab_v2

#: threads_per_core, cores_per_socket, nr_cpus, max_cpu_id, nr_nodes,
#: max_node_id, cpu_khz, capabilities, arch_capabilities, (pad),
#: total_pages, free_pages, scrub_pages, outstanding_pages, max_mfn,
#: hw_cap[8]. All OUT.
XEN_SYSCTL_PHYSINFO = struct.Struct("<9I4x5Q8I")
assert XEN_SYSCTL_PHYSINFO.size == 112

#: first_domain, max_domains (IN); buffer (handle to
#: xen_domctl_getdomaininfo_t[]); num_domains (OUT).
XEN_SYSCTL_GETDOMAININFOLIST = struct.Struct("<H2xIQI4x")
assert XEN_SYSCTL_GETDOMAININFOLIST.size == 24

XEN_SYSCTL_SCHED_ID = struct.Struct("<I")  # sched_id (XEN_SCHEDULER_*)

#: clear, incremental, pad0, pad1, index, buffer (handle), count.
XEN_SYSCTL_READCONSOLE = struct.Struct("<BBxxIQI4x")
assert XEN_SYSCTL_READCONSOLE.size == 24

SYSCTL_STRUCT: dict[SysctlCmd, struct.Struct] = {
    SysctlCmd.XEN_SYSCTL_readconsole: XEN_SYSCTL_READCONSOLE,
    SysctlCmd.XEN_SYSCTL_physinfo: XEN_SYSCTL_PHYSINFO,
    SysctlCmd.XEN_SYSCTL_sched_id: XEN_SYSCTL_SCHED_ID,
    SysctlCmd.XEN_SYSCTL_getdomaininfolist: XEN_SYSCTL_GETDOMAININFOLIST,
}
assert all(s.size <= XEN_SYSCTL_PAYLOAD_SIZE for s in SYSCTL_STRUCT.values())
