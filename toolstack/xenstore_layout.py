"""The XenStore entries of a domain, as libxl writes and removes them.

Follows ``tools/libs/light/libxl_create.c`` (``libxl__domain_make``: the
domain's directories and their permissions), ``libxl_dom.c``
(``libxl__build_post``: memory, store, cpu entries and ``/vm/<uuid>``),
``libxl_console.c`` (console 0 lives in ``~/console``) and
``libxl_domain.c`` (what destroy removes), with the paths of
``docs/misc/xenstore-paths.pandoc``. Permissions as libxl sets them::

    roperm  (n0,r<domid>)   owned by dom0, readable by the guest
    rwperm  (n<domid>)      owned by the guest: it may write there
    noperm  (n0)            toolstack-private (/libxl/<domid>)

Pure: functions return the list of store operations; the builder applies
them in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

CONSOLE_LIMIT = 1048576  # libxl's LIBXL_XENCONSOLE_LIMIT
CONSOLE_PROTOCOL = "vt100"  # LIBXL_XENCONSOLE_PROTOCOL
DOM0_NAME = "Domain-0"


@dataclass(frozen=True, slots=True)
class Op:
    """One store operation: ``rm``, ``write`` (value) or ``perms`` (perms)."""

    kind: str
    path: str
    value: str = ""
    perms: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DomainEntries:
    """What the builder knows when it writes the tree."""

    domid: int
    name: str
    uuid: str
    memory_kb: int  # memory/target
    maxmem_kb: int  # memory/static-max
    vcpus: int  # online at boot
    maxvcpus: int
    store_port: int
    store_gfn: int
    console_port: int
    console_gfn: int
    kernel: str = ""
    cmdline: str = ""
    start_time: float = 0.0


def dom_path(domid: int) -> str:
    return f"/local/domain/{domid}"


def vm_path(uuid: str) -> str:
    return f"/vm/{uuid}"


def libxl_path(domid: int) -> str:
    return f"/libxl/{domid}"


def roperm(domid: int) -> tuple[str, ...]:
    return ("n0", f"r{domid}")


def rwperm(domid: int) -> tuple[str, ...]:
    return (f"n{domid}",)


NOPERM = ("n0",)


def _mknod(path: str, perms: tuple[str, ...], value: str = "") -> list[Op]:
    """``libxl__xs_mknod``: create the node, then set its permissions."""
    return [Op("write", path, value), Op("perms", path, perms=perms)]


def domain_make(e: DomainEntries) -> list[Op]:
    """``libxl__domain_make``'s transaction: directories and permissions."""
    dp, vp, lp = dom_path(e.domid), vm_path(e.uuid), libxl_path(e.domid)
    ro, rw = roperm(e.domid), rwperm(e.domid)
    ops = [Op("rm", dp), *_mknod(dp, ro), Op("rm", vp), *_mknod(vp, ro),
           Op("rm", lp), *_mknod(lp, NOPERM), *_mknod(f"{lp}/device", NOPERM),
           Op("write", f"{dp}/vm", vp), Op("write", f"{dp}/name", e.name)]
    for sub in ("cpu", "memory", "device", "control"):
        ops += _mknod(f"{dp}/{sub}", ro)
    for sub in ("control/shutdown", "control/feature-poweroff", "control/feature-reboot",
                "control/feature-suspend", "control/sysrq", "device/suspend/event-channel",
                "data", "drivers", "feature", "attr", "error"):
        ops += _mknod(f"{dp}/{sub}", rw)
    ops += [Op("write", f"{vp}/uuid", e.uuid), Op("write", f"{vp}/name", e.name),
            Op("write", f"{dp}/control/platform-feature-multiprocessor-suspend", "1"),
            Op("write", f"{dp}/control/platform-feature-xs_reset_watches", "1"),
            Op("write", f"{lp}/type", "pv")]
    return ops


def build_post(e: DomainEntries) -> list[Op]:
    """``libxl__build_post``: memory, domid, store, vCPUs; ``/vm/<uuid>/image``."""
    dp, vp = dom_path(e.domid), vm_path(e.uuid)
    ops = [Op("write", f"{dp}/memory/static-max", str(e.maxmem_kb)),
           Op("write", f"{dp}/memory/target", str(e.memory_kb)),
           Op("write", f"{dp}/memory/videoram", "0"),
           Op("write", f"{dp}/domid", str(e.domid)),
           Op("write", f"{dp}/store/port", str(e.store_port)),
           Op("write", f"{dp}/store/ring-ref", str(e.store_gfn))]
    for cpu in range(e.maxvcpus):
        state = "online" if cpu < e.vcpus else "offline"
        ops.append(Op("write", f"{dp}/cpu/{cpu}/availability", state))
    ops += [Op("write", f"{vp}/image/ostype", "linux"),
            Op("write", f"{vp}/image/kernel", e.kernel)]
    if e.cmdline:
        ops.append(Op("write", f"{vp}/image/cmdline", e.cmdline))
    ops.append(Op("write", f"{vp}/start_time", f"{e.start_time:.2f}"))
    return ops


def console(e: DomainEntries) -> list[Op]:
    """Console 0 as ``libxl__device_console_add`` writes it for a PV guest
    served by xenconsoled: the frontend in ``~/console`` (the directory and
    ``backend``/``backend-id`` the guest's, the keys the console daemon
    trusts -- ``limit``, ``type``, ``output``, ``tty``, ``port``,
    ``ring-ref`` -- owned by dom0 and only readable by the guest, as
    ``ro_front``), the backend directory ``backend/console/<domid>/0``
    (``frontend-id``, ``online``, ``state``, ``protocol``; nothing serves it:
    xenconsoled reads ``~/console`` only) and the toolstack's copy under
    ``/libxl``. ``tty`` starts empty; the console daemon writes the pty."""
    cp = f"{dom_path(e.domid)}/console"
    bp = f"{dom_path(0)}/backend/console/{e.domid}/0"
    lp = f"{libxl_path(e.domid)}/device/console/0"
    fperms, ro = (f"n{e.domid}", "r0"), ("n0", f"r{e.domid}")
    ops = [*_mknod(cp, fperms), Op("write", f"{cp}/backend", bp)]
    ops += _mknod(f"{cp}/backend-id", fperms, "0")
    for key, value in (("limit", str(CONSOLE_LIMIT)), ("type", "xenconsoled"),
                       ("output", "pty"), ("tty", ""), ("port", str(e.console_port)),
                       ("ring-ref", str(e.console_gfn))):
        ops += _mknod(f"{cp}/{key}", ro, value)
    bents = [("frontend-id", str(e.domid)), ("online", "1"),
             ("state", str(XENBUS_INITIALISING)), ("protocol", CONSOLE_PROTOCOL)]
    ops += [Op("rm", bp), *_mknod(bp, ro), Op("write", f"{bp}/frontend", cp)]
    ops += [Op("write", f"{bp}/{k}", v) for k, v in bents]
    ops += [Op("rm", lp), *_mknod(lp, NOPERM), Op("write", f"{lp}/frontend", cp),
            Op("write", f"{lp}/backend", bp)]
    ops += [Op("write", f"{lp}/{k}", v) for k, v in bents]
    return ops


# -- devices (libxl_device.c, libxl_disk.c, libxl_nic.c) ------------------------

XENBUS_INITIALISING = 1  # xen/include/public/io/xenbus.h
DEVICE_KINDS = ("vbd", "vif")
DEFAULT_MTU = 1500  # LIBXL_DEVICE_NIC_MTU_DEFAULT


def frontend_path(kind: str, domid: int, devid: int) -> str:
    return f"{dom_path(domid)}/device/{kind}/{devid}"


def backend_path(kind: str, domid: int, devid: int, backend_domid: int = 0) -> str:
    return f"{dom_path(backend_domid)}/backend/{kind}/{domid}/{devid}"


def device_add(kind: str, domid: int, devid: int, backend_domid: int,
               fents: list[tuple[str, str]], bents: list[tuple[str, str]],
               ro_fents: list[tuple[str, str]] = ()) -> list[Op]:
    """``libxl__device_generic_add``: the frontend directory owned by the
    guest and readable by the backend domain, each frontend key with those
    permissions too (``libxl__xs_writev_perms``), the read-only frontend
    keys (a vif's ``mtu``) owned by the backend domain and readable by the
    guest; the backend directory owned by the backend domain and readable
    by the guest (its keys inherit that); and the toolstack's private copy
    under ``/libxl/<domid>``."""
    fp = frontend_path(kind, domid, devid)
    bp = backend_path(kind, domid, devid, backend_domid)
    lp = f"{libxl_path(domid)}/device/{kind}/{devid}"
    fperms = (f"n{domid}", f"r{backend_domid}")
    bperms = (f"n{backend_domid}", f"r{domid}")
    ops = [Op("rm", fp), *_mknod(fp, fperms), Op("write", f"{fp}/backend", bp)]
    for key, value in fents:
        ops += _mknod(f"{fp}/{key}", fperms, value)
    for key, value in ro_fents:
        ops += _mknod(f"{fp}/{key}", bperms, value)
    ops += [Op("rm", bp), *_mknod(bp, bperms), Op("write", f"{bp}/frontend", fp)]
    ops += [Op("write", f"{bp}/{key}", value) for key, value in bents]
    ops += [Op("rm", lp), *_mknod(lp, NOPERM), Op("write", f"{lp}/frontend", fp),
            Op("write", f"{lp}/backend", bp)]
    ops += [Op("write", f"{lp}/{key}", value) for key, value in bents]
    return ops


def vbd_ops(domid: int, disk, protocol: str = "x86_64-abi") -> list[Op]:
    """``device_disk_add`` (``libxl_disk.c``) for a :class:`DiskSpec`."""
    devtype = "cdrom" if disk.is_cdrom else "disk"
    bents = [("script", disk.script_path), ("params", disk.target),
             ("frontend-id", str(domid)), ("online", "1"), ("removable", "0"),
             ("bootable", "1"), ("state", str(XENBUS_INITIALISING)), ("dev", disk.vdev),
             ("type", disk.backendtype), ("mode", "w" if disk.readwrite else "r"),
             ("device-type", devtype), ("discard-enable", "1" if disk.discard else "0"),
             ("specification", disk.specification)]
    fents = [("backend-id", str(disk.backend_domid)),
             ("state", str(XENBUS_INITIALISING)), ("virtual-device", str(disk.devid)),
             ("device-type", devtype), ("trusted", "1" if disk.trusted else "0"),
             ("protocol", protocol)]  # libxl pre-writes it for PV guests
    return device_add("vbd", domid, disk.devid, disk.backend_domid, fents, bents)


def vif_ops(domid: int, nic) -> list[Op]:
    """``libxl__device_add_async`` + ``libxl__set_xenstore_nic``
    (``libxl_nic.c``) for a :class:`NicSpec`: the backend's ``mtu`` only
    when not the default, the frontend's read-only; ``hotplug-status``
    empty so that the backend waits for the script."""
    bents = [("frontend-id", str(domid)), ("online", "1"),
             ("state", str(XENBUS_INITIALISING)), ("script", nic.script_path)]
    if nic.vifname:
        bents.append(("vifname", nic.vifname))
    bents.append(("mac", nic.mac))
    if nic.ip:
        bents.append(("ip", nic.ip))
    if nic.mtu != DEFAULT_MTU:
        bents.append(("mtu", str(nic.mtu)))
    bents += [("bridge", nic.bridge), ("handle", str(nic.devid)), ("type", nic.type),
              ("hotplug-status", "")]
    fents = [("backend-id", str(nic.backend_domid)), ("state", str(XENBUS_INITIALISING)),
             ("handle", str(nic.devid)), ("mac", nic.mac), ("trusted", "1")]
    return device_add("vif", domid, nic.devid, nic.backend_domid, fents, bents,
                      [("mtu", str(nic.mtu))])


def devices_ops(domid: int, disks=(), nics=()) -> list[Op]:
    ops: list[Op] = []
    for disk in disks:
        ops += vbd_ops(domid, disk)
    for nic in nics:
        ops += vif_ops(domid, nic)
    return ops


def create_ops(e: DomainEntries, disks=(), nics=()) -> list[Op]:
    """Everything written at creation, in libxl's order (devices last)."""
    return domain_make(e) + build_post(e) + console(e) + devices_ops(e.domid, disks, nics)


def destroy_ops(domid: int, uuid: str | None, backend_domids=(0,)) -> list[Op]:
    """What ``libxl__destroy_domid`` removes (``/vm`` only when known), with
    the device backends (``libxl__devices_destroy``: the frontends go with
    the domain's home, the ``/libxl`` copies with ``/libxl/<domid>``)."""
    ops = [Op("rm", dom_path(domid)), Op("rm", libxl_path(domid))]
    if uuid:
        ops.insert(1, Op("rm", vm_path(uuid)))
    for bd in backend_domids:
        ops += [Op("rm", f"{dom_path(bd)}/backend/{kind}/{domid}") for kind in DEVICE_KINDS]
    # console 0's backend directory (libxl__devices_destroy removes consoles at once)
    ops.append(Op("rm", f"{dom_path(0)}/backend/console/{domid}"))
    return ops


def dom0_ops() -> list[Op]:
    """``xen-init-dom0``'s minimum: dom0's name and id."""
    dp = dom_path(0)
    return [Op("write", f"{dp}/name", DOM0_NAME), Op("write", f"{dp}/domid", "0")]
