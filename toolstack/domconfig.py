"""A domain's configuration: the xl.cfg keys pvxen understands, checked.

The counterpart of xl's ``parse_config_data`` (``tools/xl/xl_parse.c``)
filling ``libxl_domain_config``: ``name`` (mandatory), ``uuid``,
``type``/``builder`` (pv or program), ``memory``/``maxmem`` (MiB), ``vcpus``/
``maxvcpus``, ``kernel``, ``cmdline`` (or ``root`` + ``extra``), and the
``on_poweroff``/``on_reboot``/``on_crash``/``on_watchdog`` actions, with
xl.cfg(5)'s defaults. Every error names the file and the line of the key.

Two kinds of guest (``DomainConfig.type``): a **program** guest, whose
"kernel" is a Python file defining ``async def main(domain)``, run as the
domain's process (``type = "program"``, or recognised by its ``.py`` file);
and a **pv** guest, an x86-64 ELF kernel with Xen ELF notes (plain, gzip or
xz), loaded by ``toolstack/pvbuilder.py`` and run on Unicorn vCPUs
(``type = "pv"``, which an ELF kernel needs spelled out).

Pure apart from looking at the kernel file (exists? ELF?).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import sys
import uuid as uuidlib
from dataclasses import asdict, dataclass, field
from typing import Callable

from toolstack.devices import DiskSpec, NicSpec, parse_disk, parse_vif
from toolstack.xlcfg import Config, ConfigError, ConfigErrors

ACTIONS = ("destroy", "restart", "rename-restart", "preserve", "coredump-destroy",
           "coredump-restart", "soft-reset")
DEFAULT_ACTIONS = {"on_poweroff": "destroy", "on_reboot": "restart",
                   "on_crash": "destroy", "on_watchdog": "destroy"}
DEFAULT_MEMORY_MIB = 32  # libxl's default when memory= is absent
#: hypervisord manages at most 1 TiB of machine memory (its --memory bound),
#: so no guest can have more; also keeps every KiB count far inside 64 bits
MAX_MEMORY_MIB = 1 << 20
ELF_MAGIC = b"\x7fELF"


@dataclass(slots=True)
class DomainConfig:
    name: str
    uuid: str
    kernel: str  # absolute path of the guest program
    memory: int = DEFAULT_MEMORY_MIB  # MiB
    maxmem: int = DEFAULT_MEMORY_MIB  # MiB
    vcpus: int = 1
    maxvcpus: int = 1
    cmdline: str = ""
    type: str = "program"  # "program" (a .py guest) or "pv" (an ELF PV kernel)
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    on_watchdog: str = "destroy"
    source: str = ""
    disks: list[DiskSpec] = field(default_factory=list)
    nics: list[NicSpec] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # keys we keep but do not act on

    @property
    def memory_kb(self) -> int:
        return self.memory * 1024

    @property
    def maxmem_kb(self) -> int:
        return self.maxmem * 1024

    @property
    def args(self) -> list[str]:
        """The program's arguments: the command line, split like a shell."""
        try:
            return shlex.split(self.cmdline)
        except ValueError:
            return self.cmdline.split()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DomainConfig":
        known = {f for f in cls.__dataclass_fields__}
        fields = {k: v for k, v in d.items() if k in known}
        fields["disks"] = [DiskSpec(**x) for x in fields.get("disks", [])]
        fields["nics"] = [NicSpec(**x) for x in fields.get("nics", [])]
        return cls(**fields)


def _positive(cfg: Config, key: str, default: int, most: int | None = None) -> int:
    value = cfg.get_long(key, default)
    assert value is not None
    if value <= 0:
        raise cfg.error(key, f"{key}: must be a positive number, not {value}")
    if most is not None and value > most:
        raise cfg.error(key, f"{key}: {value} is more than {most}")
    return value


def _name(cfg: Config) -> str:
    name = cfg.get_string("name")
    if name is None:
        raise ConfigError(cfg.source, None, "Domain name must be specified.")
    if not name or "/" in name or not name.isprintable():
        raise cfg.error("name", f"name: {name!r} is not a valid domain name")
    if name.isdigit():
        raise cfg.error("name", f"name: {name!r} is all digits: it would read as a domain id")
    return name


def _uuid(cfg: Config) -> str:
    text = cfg.get_string("uuid")
    if text is None:
        return str(uuidlib.uuid4())
    try:
        return str(uuidlib.UUID(text))
    except ValueError:
        raise cfg.error("uuid", f"uuid: failed to parse {text!r}") from None


def _check_type(cfg: Config) -> str | None:
    kind = cfg.get_string("type")
    key = "type"
    if kind is None and "builder" in cfg:
        key, builder = "builder", cfg.get_string("builder")
        kind = {"generic": "pv", "linux": "pv"}.get(builder or "", builder)
    if kind not in (None, "pv", "program"):
        raise cfg.error(key, f"{key}: {kind!r} guests are not supported (pv or program)")
    return kind


PV_MAGICS = (ELF_MAGIC, b"\x1f\x8b", b"\xfd7zX")  # ELF, gzip, xz


def resolve_kernel(cfg: Config, cwd: str | None = None, declared: str | None = None) -> str:
    """The kernel's absolute path, checked: a Python program, or a PV kernel image."""
    path = cfg.get_string("kernel")
    if path is None:
        raise ConfigError(cfg.source, None,
                          "kernel: missing (the guest program to run, a .py file)")
    candidates = [path] if os.path.isabs(path) else [
        os.path.join(cwd or os.getcwd(), path),
        os.path.join(os.path.dirname(os.path.abspath(cfg.source)), path)]
    found = next((p for p in candidates if os.path.isfile(p)), None)
    if found is None:
        raise cfg.error("kernel", f"kernel: {path}: No such file or directory")
    try:
        with open(found, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise cfg.error("kernel", f"kernel: {path}: {e.strerror}") from None
    if magic.startswith(PV_MAGICS) and not found.endswith(".py"):
        if declared != "pv":
            raise cfg.error("kernel", f"kernel: {path} is a kernel image: a PV kernel needs "
                                      'type = "pv" (a guest program is a .py file)')
        return os.path.abspath(found)
    if not found.endswith(".py"):
        raise cfg.error("kernel", f"kernel: {path} is not a Python program (.py)")
    return os.path.abspath(found)


def _cmdline(cfg: Config) -> str:
    """xl: ``cmdline`` wins over ``root`` + ``extra``."""
    cmdline = cfg.get_string("cmdline")
    if cmdline is not None:
        return cmdline
    root, extra = cfg.get_string("root"), cfg.get_string("extra")
    parts = ([f"root={root}"] if root else []) + ([extra] if extra else [])
    return " ".join(parts)


def _action(cfg: Config, key: str) -> str:
    action = cfg.get_string(key, DEFAULT_ACTIONS[key])
    assert action is not None
    if action not in ACTIONS:
        raise cfg.error(key, f'Unknown {key} action "{action}" specified')
    return action


def _entries(cfg: Config, key: str) -> list[tuple[str, int]]:
    """The strings of list ``key`` with each one's line (xl: one device each)."""
    s = cfg.settings.get(key)
    if s is None:
        return []
    if s.value.kind != "list":
        raise cfg.error(key, f"{key}: expected a list of strings")
    out = []
    for item in s.value.items:
        if item.kind == "list":
            raise ConfigError(s.source, item.line or s.line, f"{key}: a list inside the "
                                                               "list: each entry is a string")
        out.append((item.text, item.line or s.line))
    return out


def _disk_target(cfg: Config, target: str, cwd: str | None) -> str:
    """A relative image path, made absolute as ``kernel`` is: the current
    directory if it is there, else the config file's directory (xl passes
    paths on as they are, but backendd's current directory is not the user's)."""
    if not target or os.path.isabs(target):
        return target
    here = os.path.join(cwd or os.getcwd(), target)
    if os.path.exists(here):
        return os.path.abspath(here)
    return os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(cfg.source)), target))


def _disks(cfg: Config, warn: Callable[[str], None], cwd: str | None = None) -> list[DiskSpec]:
    disks = [parse_disk(text, cfg.source, line, warn) for text, line in _entries(cfg, "disk")]
    disks = [dataclasses.replace(d, target=_disk_target(cfg, d.target, cwd)) for d in disks]
    seen: dict[int, str] = {}
    for (_, line), d in zip(_entries(cfg, "disk"), disks):
        if d.devid in seen:
            raise ConfigError(cfg.source, line, f"disk: vdev {d.vdev} is the same device "
                                                f"({d.devid}) as {seen[d.devid]}")
        seen[d.devid] = d.vdev
    return disks


def _nics(cfg: Config) -> list[NicSpec]:
    nics = [parse_vif(text, i, cfg.source, line)
            for i, (text, line) in enumerate(_entries(cfg, "vif"))]
    entries = _entries(cfg, "vif")
    devids: set[int] = set()
    macs: set[str] = set()
    for (_, line), nic in zip(entries, nics):
        if nic.devid in devids:
            raise ConfigError(cfg.source, line, f"vif: devid {nic.devid} given twice")
        if nic.mac in macs:
            raise ConfigError(cfg.source, line, f"vif: mac {nic.mac} given twice")
        devids.add(nic.devid)
        macs.add(nic.mac)
    return nics


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def domain_config(cfg: Config, cwd: str | None = None,
                  warn: Callable[[str], None] = _stderr) -> DomainConfig:
    """Check ``cfg`` and build the domain configuration; raises ConfigErrors.
    ``warn`` gets each warning line (deprecated disk syntax)."""
    errors: list[ConfigError] = []

    def attempt(fn, *args):
        try:
            return fn(*args)
        except ConfigError as e:
            errors.append(e)
            return None

    name = attempt(_name, cfg)
    declared = attempt(_check_type, cfg)
    memory = attempt(_positive, cfg, "memory", DEFAULT_MEMORY_MIB, MAX_MEMORY_MIB)
    maxmem = attempt(_positive, cfg, "maxmem", memory or DEFAULT_MEMORY_MIB, MAX_MEMORY_MIB)
    vcpus = attempt(_positive, cfg, "vcpus", 1)
    maxvcpus = attempt(_positive, cfg, "maxvcpus", vcpus or 1)
    if memory and maxmem and maxmem < memory:
        errors.append(cfg.error("maxmem", f"maxmem ({maxmem}) must not be less than "
                                          f"memory ({memory})"))
    if vcpus and maxvcpus and maxvcpus < vcpus:
        errors.append(cfg.error("maxvcpus", f"maxvcpus ({maxvcpus}) must not be less "
                                            f"than vcpus ({vcpus})"))
    if maxvcpus and maxvcpus > 128:
        errors.append(cfg.error("maxvcpus", "maxvcpus: at most 128"))
    actions = {k: attempt(_action, cfg, k) for k in DEFAULT_ACTIONS}
    kernel = attempt(resolve_kernel, cfg, cwd, declared)
    kind = "pv" if kernel and declared == "pv" and not kernel.endswith(".py") else "program"
    uuid = attempt(_uuid, cfg)
    cmdline = attempt(_cmdline, cfg)
    disks = attempt(_disks, cfg, warn, cwd)
    nics = attempt(_nics, cfg)
    if errors:
        errors.sort(key=lambda e: (e.source != cfg.source, e.line or 0))
        raise ConfigErrors(errors)
    known = {"name", "uuid", "type", "builder", "memory", "maxmem", "vcpus", "maxvcpus",
             "kernel", "cmdline", "root", "extra", "disk", "vif", *DEFAULT_ACTIONS}
    extra = {k: v for k, v in cfg.as_dict().items() if k not in known}
    return DomainConfig(name=name, uuid=uuid, kernel=kernel, memory=memory, maxmem=maxmem,
                        vcpus=vcpus, maxvcpus=maxvcpus, cmdline=cmdline or "",
                        source=cfg.source, disks=disks or [], nics=nics or [],
                        extra=extra, type=kind, **actions)


_MEM = re.compile(r"([0-9]+)([bBkKmMgGtT]?)")


def parse_mem_size_kb(text: str) -> int | None:
    """xl's ``parse_mem_size_kb``: MB by default, suffixes b k m g t."""
    m = _MEM.fullmatch(text.strip())
    if m is None or len(m.group(1).lstrip("0")) > 20:  # beyond any int64_t
        return None
    value, unit = int(m.group(1)), m.group(2).lower()
    shift = {"t": 30, "g": 20, "": 10, "m": 10, "k": 0}.get(unit)
    return value >> 10 if unit == "b" else value << shift  # type: ignore[operator]
