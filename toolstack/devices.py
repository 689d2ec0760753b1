"""xl.cfg's ``disk = [...]`` and ``vif = [...]`` entries, parsed as xl does.

Disks follow ``docs/man/xl-disk-configuration.5.pod`` and libxlutil's
scanner ``tools/libs/util/libxlu_disk_l.l``: comma-separated ``key=value``
parameters (``target=`` last, it takes the rest of the string, commas
included) mixed with positional ones, in the order target, format, vdev,
access. The old ``file:``/``phy:``/... prefixes (flex's ``file:/.*``, the
``/`` a trailing context, so any path follows) are accepted with a
warning naming the prefix; after one, the format positional is skipped
(so ``file:/img,xvda,w`` is target, vdev, access), as libxlu does.

The vbd devid is the virtual-device number of ``docs/misc/vbd-interface.txt``
(``libxl__device_disk_dev_number`` in ``tools/libs/light/libxl_disk.c``).

Vifs follow ``docs/man/xl-network-configuration.5.pod`` and xl's
``parse_nic_config`` (``tools/xl/xl_parse.c``), with libxl's defaults
(``libxl__device_nic_setdefault``, ``libxl_nic.c``): bridge ``xenbr0``,
script ``vif-bridge``, type ``vif``, and a random ``00:16:3e`` MAC with the
multicast and local bits of the random part clear when none is given.

Pure: every error is a :class:`~toolstack.xlcfg.ConfigError` naming the
file and the line of the entry.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable

from toolstack.xlcfg import ConfigError

SCRIPT_DIR = "/etc/xen/scripts"  # libxl__xen_script_dir_path() on Debian
FORMATS = ("raw", "qcow", "qcow2", "vhd", "qed", "empty")
BACKENDTYPES = ("phy", "qdisk", "tap", "standalone")
DEPRECATED_PREFIXES = ("raw", "qcow", "qcow2", "vhd", "iscsi", "nbd", "enbd", "drbd",
                       "tapdisk", "tap", "tap2", "aio", "ioemu", "file", "phy")
XEN_OUI = (0x00, 0x16, 0x3E)  # Xensource's OUI, as libxl uses


@dataclass(slots=True)
class DiskSpec:
    vdev: str
    target: str = ""
    format: str = "raw"
    readwrite: bool = True
    is_cdrom: bool = False
    backendtype: str = "phy"
    script: str = "block"
    discard: bool = True
    trusted: bool = True
    specification: str = "xen"
    backend_domid: int = 0

    @property
    def devid(self) -> int:
        number = vdev_number(self.vdev)
        assert number is not None  # checked when parsed
        return number

    @property
    def script_path(self) -> str:
        return self.script if os.path.isabs(self.script) else f"{SCRIPT_DIR}/{self.script}"


@dataclass(slots=True)
class NicSpec:
    devid: int
    mac: str
    bridge: str = "xenbr0"
    ip: str = ""
    script: str = "vif-bridge"
    type: str = "vif"
    model: str = ""
    vifname: str = ""
    mtu: int = 1500
    backend_domid: int = 0

    @property
    def script_path(self) -> str:
        return self.script if os.path.isabs(self.script) else f"{SCRIPT_DIR}/{self.script}"


# -- virtual device numbers ----------------------------------------------------

_VDEV = re.compile(r"(xvd|hd|sd)([a-z]+)(0|[1-9][0-9]*)?")
_DP = re.compile(r"d(0|[1-9][0-9]*)(?:p(0|[1-9][0-9]*))?")


def _disk_index(letters: str) -> int:
    """``a``=0 ... ``z``=25, ``aa``=26: bijective base 26, as vbd-interface.txt."""
    n = 0
    for ch in letters:
        n = n * 26 + (ord(ch) - ord("a") + 1)
    return n - 1


def vdev_number(vdev: str) -> int | None:
    """The vbd devid for ``vdev`` (None if it names no Xen virtual disk)."""
    if vdev.isascii() and vdev.isdigit() and len(vdev) <= 10:
        value = int(vdev)
        return value if 0 < value <= 0x7FFFFFFF else None
    m = _DP.fullmatch(vdev)
    if m:
        disk, part = int(m[1]), int(m[2] or 0)
        prefix, letters = "xvd", None
    else:
        m = _VDEV.fullmatch(vdev)
        if m is None or len(m[2]) > 5:
            return None
        prefix, letters = m[1], m[2]
        disk, part = _disk_index(letters), int(m[3] or 0)
    if prefix == "xvd":
        if disk <= 15 and part <= 15:
            return (202 << 8) | (disk << 4) | part
        if disk < (1 << 20) and part <= 255:
            return (1 << 28) | (disk << 8) | part  # the extended scheme
        return None
    if prefix == "hd":  # hda/hdb on major 3, hdc/hdd on major 22, 64 minors each
        if disk > 3 or part > 63:
            return None
        return ((3 if disk < 2 else 22) << 8) | ((disk & 1) << 6) | part
    if disk > 15 or part > 15:  # sd
        return None
    return (8 << 8) | (disk << 4) | part


# -- disks ---------------------------------------------------------------------

Warn = Callable[[str], None]


def parse_disk(spec: str, source: str, line: int | None, warn: Warn) -> DiskSpec:
    """One ``disk`` entry; ``warn`` gets each deprecation warning line."""
    def err(message: str) -> ConfigError:
        return ConfigError(source, line, f"config parsing error in disk specification: "
                                         f"{message} in `{spec}'")

    fields: dict[str, object] = {}
    positional: list[str] = []
    depr = False
    rest = spec
    while rest:
        token, sep, after = rest.partition(",")
        token = token.strip()
        key, eq, value = token.partition("=")
        key = key.strip()
        if eq and key == "target":  # the rest of the string, commas included
            fields["target"] = rest.partition("=")[2].strip()
            break
        rest = after if sep else ""
        if eq:
            _disk_key(key, value.strip(), fields, err)
            continue
        prefix, colon, tail = token.partition(":")
        if (colon and not positional and "target" not in fields
                and prefix in DEPRECATED_PREFIXES):
            warn(f"{source}:{line}: warning: deprecated disk syntax: prefix `{prefix}:' "
                 f"in `{spec}' (use `target=...' with `format=', `script=' keys)")
            depr = True
            if prefix in FORMATS:
                fields["format"] = prefix
            elif prefix in ("iscsi", "nbd", "enbd", "drbd"):
                fields["script"] = f"block-{prefix}"
            token = tail
        _positional(token, positional, fields, depr, err)
    if "vdev" not in fields:
        raise err("no vdev specified")
    vdev = str(fields["vdev"])
    if vdev_number(vdev) is None:
        raise err(f"invalid virtual disk identifier `{vdev}'")
    target = str(fields.get("target", ""))
    if not target and not fields.get("is_cdrom"):
        raise err("no target specified (only an empty cdrom may have none)")
    if "\0" in target or len(target) > 4096:
        raise err("target is not a usable path")
    fields.setdefault("format", "empty" if not target else "raw")
    return DiskSpec(**fields)  # type: ignore[arg-type]


def _positional(token: str, positional: list[str], fields: dict, depr: bool,
                err: Callable[[str], ConfigError]) -> None:
    """libxlu's order: target, format (unless a prefix gave it), vdev, access.
    ``positional`` holds the slots used so far; an empty parameter uses its
    slot and sets nothing; a slot a ``key=`` already set is passed over."""
    slots = ["target"] + ([] if depr else ["format"]) + ["vdev", "access"]
    done = {"access": "readwrite"}
    free = [s for s in slots if s not in positional and done.get(s, s) not in fields]
    if not free:
        raise err("too many positional parameters")
    slot = free[0]
    if slot == "format" and _is_vdev(token):
        positional.append(slot)
        slot = "vdev"  # libxlu: a vdev where the format would be means no format
    positional.append(slot)
    if token:
        _disk_key(slot, token, fields, err)


def _is_vdev(token: str) -> bool:
    return vdev_number(token.split(":", 1)[0]) is not None


def _disk_key(key: str, value: str, fields: dict, err: Callable[[str], ConfigError]) -> None:
    if key == "target":
        fields["target"] = value
    elif key == "format":
        if value not in FORMATS:
            raise err(f"unknown value for format: {value}")
        fields["format"] = value
    elif key == "vdev":
        vdev, colon, devtype = value.partition(":")
        if colon:
            if devtype != "cdrom":
                raise err(f"unknown disk type `{devtype}'")
            fields["is_cdrom"] = True
        fields["vdev"] = vdev
    elif key == "access":
        if value in ("r", "ro"):
            fields["readwrite"] = False
        elif value in ("w", "rw"):
            fields["readwrite"] = True
        else:
            raise err(f"unknown value for access: {value}")
    elif key == "devtype":
        if value != "cdrom":
            raise err(f"unknown value for type: {value}")
        fields["is_cdrom"] = True
    elif key == "backendtype":
        if value not in BACKENDTYPES:
            raise err(f"unknown value for backendtype: {value}")
        fields["backendtype"] = value
    elif key == "script":
        if not value or ("/" in value and not os.path.isabs(value)):
            raise err(f"bad script name: {value}")
        fields["script"] = value
    elif key in ("discard", "no-discard"):
        fields["discard"] = key == "discard"
    elif key in ("trusted", "untrusted"):
        fields["trusted"] = key == "trusted"
    elif key == "specification":
        if value != "xen":
            raise err(f"unsupported specification: {value} (xen only)")
    elif key in ("direct-io-safe",):
        pass  # a hint for qdisk backends: nothing to do here
    else:
        raise err(f"unknown keyword `{key}'")


# -- vifs ----------------------------------------------------------------------

_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_BRIDGE = re.compile(r"[A-Za-z0-9_.-]{1,15}")  # IFNAMSIZ - 1


def random_mac(rand: Callable[[int], bytes] = os.urandom) -> str:
    """libxl: 00:16:3e, then three random bytes, the first with its top bit clear."""
    r = rand(3)
    return ":".join(f"{b:02x}" for b in (*XEN_OUI, r[0] & 0x7F, r[1], r[2]))


def parse_vif(spec: str, devid: int, source: str, line: int | None,
              rand: Callable[[int], bytes] = os.urandom) -> NicSpec:
    """One ``vif`` entry (its index is its devid unless ``devid=`` says)."""
    def err(message: str) -> ConfigError:
        return ConfigError(source, line, f"vif: {message} in `{spec}'")

    fields: dict[str, object] = {}
    for token in spec.split(","):
        token = token.strip()
        if not token:
            continue
        key, eq, value = token.partition("=")
        key, value = key.strip(), value.strip()
        if not eq:
            raise err(f"unrecognized argument `{token}'")
        if key == "mac":
            if not _MAC.fullmatch(value):
                raise err(f"invalid mac address `{value}'")
            if int(value[:2], 16) & 1:
                raise err(f"mac address `{value}' is a multicast address")
            fields["mac"] = value.lower()
        elif key == "bridge":
            if not _BRIDGE.fullmatch(value):
                raise err(f"invalid bridge name `{value}'")
            fields["bridge"] = value
        elif key == "ip":
            fields["ip"] = _ips(value, err)
        elif key == "script":
            if not value:
                raise err("empty script")
            fields["script"] = value
        elif key == "type":
            if value not in ("vif", "ioemu"):
                raise err(f"invalid type `{value}'")
            fields["type"] = value
        elif key == "model":
            fields["model"] = value
        elif key == "vifname":
            if not _BRIDGE.fullmatch(value):
                raise err(f"invalid vifname `{value}'")
            fields["vifname"] = value
        elif key == "mtu":
            if not value.isdigit() or not 68 <= int(value) <= 65535:
                raise err(f"invalid mtu `{value}'")
            fields["mtu"] = int(value)
        elif key == "devid":
            if not value.isdigit() or int(value) > 0xFFFF:
                raise err(f"invalid devid `{value}'")
            devid = int(value)
        elif key == "backend":
            if value not in ("0", "Domain-0"):
                raise err(f"backend `{value}': only dom0 runs backends")
        elif key in ("accel", "rate", "gatewaydev"):
            pass  # xl accepts these; nothing here acts on them
        else:
            raise err(f"unrecognized argument `{token}'")
    fields.setdefault("mac", random_mac(rand))
    return NicSpec(devid=devid, **fields)  # type: ignore[arg-type]


def _ips(value: str, err: Callable[[str], ConfigError]) -> str:
    """Space-separated IPv4/IPv6 addresses (optionally with a /prefix), as
    ``vif-bridge`` reads them."""
    import ipaddress
    parts = value.split()
    if not parts:
        raise err("empty ip")
    for part in parts:
        try:
            ipaddress.ip_interface(part)
        except ValueError:
            raise err(f"invalid ip address `{part}'") from None
    return " ".join(parts)
