"""xl's output formats (``tools/xl/xl_info.c``), as pure functions.

``xl list``::

    Name                                        ID   Mem VCPUs\tState\tTime(s)
    %-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f

(Mem is ``(current + outstanding) / 1024`` MiB; the six state letters are
r b p s, the shutdown reason from ``"-rscwS"``, d). ``xl info`` prints
``%-23s: value`` lines in Xen's order, memory in MiB.
"""

from __future__ import annotations

from dataclasses import dataclass

from libxen import ctrl
from hypervisord.public.version import XenVerOp
from hypervisord.public.xen import Hypercall
from toolstack.domconfig import DomainConfig

LIST_HEADER = "Name                                        ID   Mem VCPUs\tState\tTime(s)"
PAGE_KB = 4


def list_row(info: ctrl.DomainInfo, name: str | None) -> str:
    mem_mib = info.tot_pages * PAGE_KB // 1024
    return "%-40s %5d %5d %5d     %s  %8.1f" % (
        name if name is not None else "(null)", info.domid, mem_mib, info.vcpus,
        info.state_letters(), info.cpu_time / 1e9)


def list_table(infos: list[ctrl.DomainInfo], names: dict[int, str | None], *,
               verbose: bool = False) -> str:
    header = LIST_HEADER + ("   UUID                            Reason-Code\tSecurity Label"
                            if verbose else "")
    lines = [header]
    for info in sorted(infos, key=lambda i: i.domid):  # Domain-0 first
        row = list_row(info, names.get(info.domid))
        if verbose:
            reason = "%8x" % info.shutdown_reason if info.shutdown else "%8s" % "-"
            row += f" {_uuid(info.handle)} {reason} {'-':>16}"
        lines.append(row)
    return "\n".join(lines) + "\n"


def _uuid(handle: bytes) -> str:
    import uuid

    return str(uuid.UUID(bytes=bytes(handle))) if len(handle) == 16 else "-"


def config_json(cfg: DomainConfig) -> dict:
    """The domain configuration, shaped like libxl_domain_config's JSON."""
    return {
        "c_info": {"type": "pv", "name": cfg.name, "uuid": cfg.uuid},
        "b_info": {"max_vcpus": cfg.maxvcpus, "avail_vcpus": list(range(cfg.vcpus)),
                   "max_memkb": cfg.maxmem_kb, "target_memkb": cfg.memory_kb,
                   "type.pv": {"kernel": cfg.kernel, "cmdline": cfg.cmdline}},
        "on_poweroff": cfg.on_poweroff, "on_reboot": cfg.on_reboot,
        "on_crash": cfg.on_crash, "on_watchdog": cfg.on_watchdog,
        "disks": [disk_json(d) for d in cfg.disks],
        "nics": [nic_json(n) for n in cfg.nics],
    }


def disk_json(d) -> dict:
    """One ``libxl_device_disk`` (``libxl_types.idl``'s field names; libxl
    prints its booleans as ``True``/``False`` defbools, readwrite as 0/1)."""
    out = {"backend_domid": d.backend_domid, "pdev_path": d.target, "vdev": d.vdev,
           "backend": d.backendtype, "format": d.format, "script": d.script,
           "removable": 0, "readwrite": int(d.readwrite), "is_cdrom": int(d.is_cdrom),
           "discard_enable": "True" if d.discard else "False",
           "trusted": "True" if d.trusted else "False", "specification": d.specification}
    return out


def nic_json(n) -> dict:
    """One ``libxl_device_nic``: ``nictype`` is ``vif`` or ``vif_ioemu``."""
    out = {"backend_domid": n.backend_domid, "devid": n.devid, "mtu": n.mtu,
           "mac": n.mac, "bridge": n.bridge, "script": n.script,
           "nictype": "vif" if n.type == "vif" else "vif_ioemu"}
    for key, value in (("ip", n.ip), ("model", n.model), ("ifname", n.vifname)):
        if value:
            out[key] = value
    return out


def list_long_entry(info: ctrl.DomainInfo, name: str | None, cfg: DomainConfig | None) -> dict:
    """One ``xl list -l`` element, with the runtime state upstream leaves out."""
    config = config_json(cfg) if cfg else {"c_info": {"name": name}}
    return {"domid": info.domid, "config": config,
            "state": {"letters": info.state_letters(), "tot_pages": info.tot_pages,
                      "max_pages": info.max_pages, "cpu_time": info.cpu_time / 1e9,
                      "shutdown_reason": info.shutdown_reason}}


@dataclass(frozen=True)
class VersionInfo:
    major: int
    minor: int
    extra: str
    capabilities: str
    changeset: str
    compiler: str
    compile_by: str
    compile_domain: str
    compile_date: str
    pagesize: int

    @classmethod
    def query(cls, xc) -> "VersionInfo":
        def call(op: XenVerOp) -> tuple[int, dict]:
            return xc.call(Hypercall.xen_version, op)

        ver, _ = call(XenVerOp.XENVER_version)
        extra = call(XenVerOp.XENVER_extraversion)[1].get("extraversion", "")
        caps = call(XenVerOp.XENVER_capabilities)[1].get("capabilities", "")
        change = call(XenVerOp.XENVER_changeset)[1].get("changeset", "")
        comp = call(XenVerOp.XENVER_compile_info)[1]
        page, _ = call(XenVerOp.XENVER_pagesize)
        return cls(ver >> 16, ver & 0xFFFF, extra, caps, change, comp.get("compiler", ""),
                   comp.get("compile_by", ""), comp.get("compile_domain", ""),
                   comp.get("compile_date", ""), page)


def _line(key: str, value: object) -> str:
    return f"{key:<23}: {value}\n"


def info_text(uname, phys: dict, v: VersionInfo) -> str:
    """``print_info``: node, physinfo, Xen version, then xend_config_format."""
    per_mib = (1 << 20) // (v.pagesize or 4096)
    khz = phys.get("cpu_khz", 0)
    out = [_line("host", uname.nodename), _line("release", uname.release),
           _line("version", uname.version), _line("machine", uname.machine)]
    for key in ("nr_cpus", "max_cpu_id", "nr_nodes", "cores_per_socket", "threads_per_core"):
        out.append(_line(key, phys.get(key, 0)))
    out += [_line("cpu_mhz", f"{khz // 1000}.{khz % 1000:03d}"),
            _line("hw_caps", ":".join(["00000000"] * 8)),
            "virt_caps              : pv\n",
            _line("total_memory", phys.get("total_pages", 0) // per_mib),
            _line("free_memory", (phys.get("free_pages", 0)
                                  - phys.get("outstanding_pages", 0)) // per_mib),
            _line("sharing_freed_memory", 0), _line("sharing_used_memory", 0),
            _line("outstanding_claims", phys.get("outstanding_pages", 0) // per_mib),
            _line("free_cpus", 0),
            _line("xen_major", v.major), _line("xen_minor", v.minor),
            _line("xen_extra", v.extra), _line("xen_version", f"{v.major}.{v.minor}{v.extra}"),
            _line("xen_caps", v.capabilities), _line("xen_scheduler", "credit2"),
            _line("xen_pagesize", v.pagesize),
            _line("platform_params", "virt_start=0xffff800000000000"),
            _line("xen_changeset", v.changeset), _line("xen_commandline", ""),
            _line("cc_compiler", v.compiler), _line("cc_compile_by", v.compile_by),
            _line("cc_compile_domain", v.compile_domain),
            _line("cc_compile_date", v.compile_date), _line("build_id", ""),
            _line("xend_config_format", 4)]
    return "".join(out)


def info_filter(text: str, name: str) -> str:
    """``xl info NAME``: the values of the lines whose key starts with NAME."""
    out = []
    for line in text.splitlines(keepends=True):
        colon = line.find(":")
        if line.startswith(name) and colon >= 0 and line[colon + 1:colon + 2] == " ":
            out.append(line[colon + 2:])
    return "".join(out)
