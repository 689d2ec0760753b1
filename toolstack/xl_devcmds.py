"""``xl block-attach/-list/-detach`` and ``network-attach/-list/-detach``.

Follows ``tools/xl/xl_block.c`` and ``tools/xl/xl_nic.c`` (arguments,
messages, exit codes), with libxl's ``libxl_device_disk_getinfo``
(``libxl_disk.c``) and ``libxl_device_nic_getinfo`` (``libxl_nic.c``) for
what the lists show: the devices are those of ``/libxl/<domid>/device/<kind>``
(the toolstack's copy), the backend path is read there, and ``state``,
``event-channel`` and the ring refs are read from the frontend directory
(the guest's), -1 where a node is missing, parsed as C's ``strtoul`` then
printed with ``%d``. Output formats (``printf`` formats of xl)::

    block-list    "%-5s %-3s %-6s %-5s %-6s %-8s %-30s"  Vdev BE handle state evt-ch ring-ref BE-path
                  "%-5d %-3d %-6d %-5d %-6d %-8d %-30s"  (handle: the frontend domid)
    network-list  "%-3s %-2s %-17s %-6s %-5s %-6s %5s/%-5s %-30s"
                  Idx BE Mac Addr. handle state evt-ch tx-/rx-ring-ref BE-path
                  "%-3d %-2d " LIBXL_MAC_FMT "%6d %5d %6d %5d/%-11d %-30s"

pvxen adds one trailing column to ``network-list``, after BE-path, so that
Xen's columns stay where scripts expect them: ``Link``, the backend's
``pvxen-link`` key (``bridge``: a TAP on a real Linux bridge; ``switch``:
backendd's in-process learning switch; ``-`` while the backend has not said).
"""

from __future__ import annotations

import json
import os
import re
import sys

from toolstack import device_ops
from toolstack import xenstore_layout as layout
from toolstack import xl_format as fmt
from toolstack import xsbatch
from toolstack.builder import Toolstack
from toolstack.devices import parse_disk, parse_vif, vdev_number
from toolstack.xl_cmds import XlError, find_domain
from toolstack.xlcfg import ConfigError

_STRTOUL = re.compile(r"[ \t\n\v\f\r]*([+-]?)([0-9]*)")
ULONG_MAX = (1 << 64) - 1
LINK_KEY = "pvxen-link"


def c_strtoul_int(text: str | None) -> int:
    """``val ? strtoul(val, NULL, 10) : -1`` stored in a C ``int``."""
    if text is None:
        return -1
    m = _STRTOUL.match(text)
    assert m is not None  # the pattern matches the empty string
    sign, digits = m[1], m[2]
    if not digits:
        return 0
    significant = digits.lstrip("0")
    value = ULONG_MAX if len(significant) > 20 else int(significant or "0")
    if value > ULONG_MAX:
        value = ULONG_MAX  # ERANGE: the sign no longer applies
    elif sign == "-":
        value = -value & ULONG_MAX
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


# -- the list formats (pure) --------------------------------------------------------------

BLOCK_HEADER = "%-5s %-3s %-6s %-5s %-6s %-8s %-30s\n" % (
    "Vdev", "BE", "handle", "state", "evt-ch", "ring-ref", "BE-path")
NETWORK_HEADER = "%-3s %-2s %-17s %-6s %-5s %-6s %5s/%-5s %-30s %s\n" % (
    "Idx", "BE", "Mac Addr.", "handle", "state", "evt-ch", "tx-", "rx-ring-ref", "BE-path",
    "Link")


def block_row(devid: int, backend_id: int, frontend_id: int, state: int, evtch: int,
              rref: int, backend: str) -> str:
    return "%-5d %-3d %-6d %-5d %-6d %-8d %-30s\n" % (
        devid, backend_id, frontend_id, state, evtch, rref, backend)


def network_row(devid: int, backend_id: int, mac: str, state: int, evtch: int,
                tx: int, rx: int, backend: str, link: str) -> str:
    return "%-3d %-2d %s%6d %5d %6d %5d/%-11d %-30s %s\n" % (
        devid, backend_id, mac, devid, state, evtch, tx, rx, backend, link)


def mac_text(text: str | None) -> str:
    """``LIBXL_MAC_FMT`` of the stored MAC (zeros when it does not parse,
    as libxl's ``libxl__parse_mac`` leaves an unparsed one)."""
    parts = (text or "").split(":")
    if len(parts) == 6 and all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p)
                               for p in parts):
        return ":".join(p.lower() for p in parts)
    return "00:00:00:00:00:00"


# -- reading the store --------------------------------------------------------------------

def block_rows(ts: Toolstack, domid: int) -> str:
    out = []
    for ref in device_ops.domain_devices(ts.xs, domid, ("vbd",)):
        backend, state, evtch, rref = xsbatch.read_many(
            ts.xs, [f"{ref.libxl}/backend", f"{ref.frontend}/state",
                    f"{ref.frontend}/event-channel", f"{ref.frontend}/ring-ref"])
        be_id = device_ops.backend_domid_of(backend)
        if backend is None or be_id is None:
            continue  # libxl_device_disk_getinfo fails: not shown
        out.append(block_row(ref.devid, be_id, domid, c_strtoul_int(state),
                             c_strtoul_int(evtch), c_strtoul_int(rref), backend))
    return "".join(out)


def network_rows(ts: Toolstack, domid: int) -> str:
    out = []
    for ref in device_ops.domain_devices(ts.xs, domid, ("vif",)):
        backend, mac, state, evtch, tx, rx = xsbatch.read_many(
            ts.xs, [f"{ref.libxl}/backend", f"{ref.libxl}/mac", f"{ref.frontend}/state",
                    f"{ref.frontend}/event-channel", f"{ref.frontend}/tx-ring-ref",
                    f"{ref.frontend}/rx-ring-ref"])
        be_id = device_ops.backend_domid_of(backend)
        if backend is None or be_id is None:
            continue
        link = xsbatch.read(ts.xs, f"{backend}/{LINK_KEY}")
        if link not in ("bridge", "switch"):
            link = "-"
        out.append(network_row(ref.devid, be_id, mac_text(mac), c_strtoul_int(state),
                               c_strtoul_int(evtch), c_strtoul_int(tx), c_strtoul_int(rx),
                               backend, link))
    return "".join(out)


# -- the commands -------------------------------------------------------------------------

def _fail(e: device_ops.DeviceError, call: str) -> XlError:
    return XlError(f"libxl: error: {e}\n{call} failed.")


def block_attach(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    try:
        domid = find_domain(ts, args[0])
    except XlError:
        raise XlError(f"{args[0]} is an invalid domain identifier") from None
    spec = ",".join(args[1:])
    try:
        disk = parse_disk(spec, "command line", None, lambda line: print(line, file=sys.stderr))
    except ConfigError as e:
        raise XlError(str(e)) from None
    if disk.target and not os.path.isabs(disk.target):
        disk.target = os.path.abspath(disk.target)  # backendd's directory is not ours
    if dryrun:
        print(f"disk: {json.dumps(fmt.disk_json(disk), indent=4)}")
        return 0
    ref = device_ops.DeviceRef("vbd", domid, disk.devid, disk.backend_domid)
    try:
        device_ops.add(ts.xs, ref, layout.vbd_ops(domid, disk))
    except device_ops.DeviceError as e:
        raise _fail(e, "libxl_device_disk_add") from None
    return 0


def block_list(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    sys.stdout.write(BLOCK_HEADER)
    for qualifier in args:
        try:
            domid = find_domain(ts, qualifier)
        except XlError:
            print(f"{qualifier} is an invalid domain identifier", file=sys.stderr)
            continue
        sys.stdout.write(block_rows(ts, domid))
    return 0


def block_detach(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    domid = find_domain(ts, args[0])
    force = "-f" in opts or "--force" in opts
    devid = vdev_number(args[1])
    if devid is None or xsbatch.read(ts.xs, f"{layout.libxl_path(domid)}/device/vbd/{devid}"
                                            "/frontend") is None:
        raise XlError(f"Error: Device {args[1]} not connected.")
    backend = xsbatch.read(ts.xs, f"{layout.libxl_path(domid)}/device/vbd/{devid}/backend")
    ref = device_ops.DeviceRef("vbd", domid, devid, device_ops.backend_domid_of(backend) or 0)
    try:
        device_ops.remove(ts.xs, ref, force=force)
    except device_ops.DeviceError as e:
        raise _fail(e, "libxl_device_disk_destroy" if force else
                    "libxl_device_disk_safe_remove") from None
    return 0


def network_attach(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    domid = find_domain(ts, args[0])
    devid = _next_vif_devid(ts, domid)
    try:
        nic = parse_vif(",".join(args[1:]), devid, "command line", None)
    except ConfigError as e:
        raise XlError(str(e)) from None
    if dryrun:
        print(f"vif: {json.dumps(fmt.nic_json(nic), indent=4)}")
        return 0
    ref = device_ops.DeviceRef("vif", domid, nic.devid, nic.backend_domid)
    try:
        device_ops.add(ts.xs, ref, layout.vif_ops(domid, nic))
    except device_ops.DeviceError as e:
        raise _fail(e, "libxl_device_nic_add") from None
    return 0


def _next_vif_devid(ts: Toolstack, domid: int) -> int:
    """``libxl__device_nextid``: one more than the highest vif devid in use."""
    used = device_ops.list_devids(ts.xs, f"{layout.dom_path(domid)}/device/vif")
    used += device_ops.list_devids(ts.xs, f"{layout.libxl_path(domid)}/device/vif")
    return max(used) + 1 if used else 0


def network_list(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    sys.stdout.write(NETWORK_HEADER)
    for qualifier in args:
        sys.stdout.write(network_rows(ts, find_domain(ts, qualifier)))
    return 0


def network_detach(ts: Toolstack, opts: dict, args: list[str], dryrun: bool = False) -> int:
    domid = find_domain(ts, args[0])
    ref = _find_nic(ts, domid, args[1])
    if ref is None:
        raise XlError(f"Unknown device {args[1]}.")
    try:
        device_ops.remove(ts.xs, ref, force_on_timeout=True)
    except device_ops.DeviceError as e:
        raise _fail(e, "libxl_device_nic_del") from None
    return 0


def _find_nic(ts: Toolstack, domid: int, which: str) -> device_ops.DeviceRef | None:
    """A devid (C's ``atoi``) or, with a ``:``, a MAC (``libxl_mac_to_device_nic``)."""
    refs = device_ops.domain_devices(ts.xs, domid, ("vif",))
    if ":" not in which:
        m = re.match(r"[ \t\n\v\f\r]*([+-]?[0-9]+)", which)
        devid = int(m[1]) if m and len(m[1]) < 12 else 0
        return next((r for r in refs if r.devid == devid), None)
    wanted = mac_text(which)
    if wanted == "00:00:00:00:00:00":
        return None
    macs = xsbatch.read_many(ts.xs, [f"{r.libxl}/mac" for r in refs])
    return next((r for r, mac in zip(refs, macs) if mac_text(mac) == wanted), None)
