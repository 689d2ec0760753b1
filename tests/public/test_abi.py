"""Self-checks of the ABI package: stdlib-only, sizes, offsets, numbers."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import struct
import sys
from enum import IntEnum
from pathlib import Path

import pytest

import hypervisord.public as public
from hypervisord.public import arch_x86, domctl, event_channel, grant_table, memory
from hypervisord.public import sched, sysctl, vcpu, version, xen
from hypervisord.public.io import blkif, console, netif, ring

PUBLIC_DIR = Path(public.__file__).parent
#: The header mirrors (each must name its header and the Xen commit read).
MIRRORS = (
    "arch_x86.py", "domctl.py", "errno.py", "event_channel.py", "features.py",
    "grant_table.py", "memory.py", "sched.py", "sysctl.py", "vcpu.py", "version.py",
    "xen.py", "io/blkif.py", "io/console.py", "io/netif.py", "io/protocols.py",
    "io/ring.py", "io/xenbus.py",
)  # fmt: skip
MODULES = [
    importlib.import_module(m.name)
    for m in pkgutil.walk_packages(public.__path__, prefix="hypervisord.public.")
]


@pytest.mark.parametrize("path", sorted(PUBLIC_DIR.rglob("*.py")), ids=lambda p: p.name)
def test_imports_only_stdlib_or_siblings(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots = [(node.module or "").split(".")[0]]
        else:
            continue
        for root in roots:
            assert root in sys.stdlib_module_names or root == "__future__", f"{path.name} imports {root}"


@pytest.mark.parametrize("name", MIRRORS)
def test_docstring_names_header_and_commit(name: str):
    path = PUBLIC_DIR / name
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "xen/include/public/" in doc
    assert "c447b730" in doc
    assert len(path.read_text().splitlines()) <= 450  # STYLE rule 12 (~400)


def test_enums_have_no_silent_aliases():
    seen = 0
    for mod in MODULES:
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if issubclass(obj, IntEnum) and obj is not IntEnum and obj.__module__ == mod.__name__:
                seen += 1
                assert len(list(obj)) == len(obj.__members__), f"{obj.__name__} has duplicate values"
    assert seen >= 25


SIZES = {
    xen.START_INFO: 1168, xen.VCPU_INFO: 64, xen.VCPU_TIME_INFO: 32, xen.MMU_UPDATE: 16,
    xen.MMUEXT_OP: 24, xen.MULTICALL_ENTRY: 64, arch_x86.ARCH_SHARED_INFO: 48,
    arch_x86.CPU_USER_REGS: 200, arch_x86.VCPU_GUEST_CONTEXT: 5168, arch_x86.TRAP_INFO: 16,
    event_channel.EVTCHN_ALLOC_UNBOUND: 8, event_channel.EVTCHN_BIND_INTERDOMAIN: 12,
    event_channel.EVTCHN_STATUS: 24, event_channel.EVTCHN_OP: 28,
    grant_table.GRANT_ENTRY_V1: 8, grant_table.GNTTAB_MAP_GRANT_REF: 32,
    grant_table.GNTTAB_UNMAP_GRANT_REF: 24, grant_table.GNTTAB_SETUP_TABLE: 24,
    grant_table.GNTTAB_COPY: 40, grant_table.GNTTAB_QUERY_SIZE: 16,
    memory.XEN_MEMORY_RESERVATION: 32, memory.XEN_MEMORY_EXCHANGE: 72,
    sched.SCHED_SHUTDOWN: 4, sched.SCHED_POLL: 24, vcpu.VCPU_RUNSTATE_INFO: 48,
    domctl.XEN_DOMCTL_GETDOMAININFO: 112, domctl.XEN_DOMCTL_CREATEDOMAIN: 68,
    domctl.XEN_DOMCTL_SHADOW_OP: 40, sysctl.XEN_SYSCTL_PHYSINFO: 112,
    blkif.BLKIF_REQUEST: 112, blkif.BLKIF_RESPONSE: 16, blkif.BLKIF_REQUEST_INDIRECT: 64,
    netif.NETIF_TX_REQUEST: 12, netif.NETIF_RX_RESPONSE: 8, console.XENCONS_INTERFACE: 3092,
    ring.SRING_HEADER: 64,
}  # fmt: skip


def test_struct_sizes():
    for layout, size in SIZES.items():
        assert layout.size == size, layout.format


def test_derived_sizes():
    assert xen.SHARED_INFO_SIZE == 3136
    assert (xen.SHARED_INFO_EVTCHN_PENDING_OFF, xen.SHARED_INFO_EVTCHN_MASK_OFF) == (2048, 2560)
    assert (xen.SHARED_INFO_WC_VERSION_OFF, xen.SHARED_INFO_ARCH_OFF) == (3072, 3088)
    assert event_channel.EVTCHN_2L_NR_CHANNELS == 4096
    assert blkif.BLKIF_RING_SIZE == 32 and blkif.blkif_ring_size(0) == 32
    assert netif.NET_TX_RING_SIZE == netif.NET_RX_RING_SIZE == 256
    assert domctl.XEN_DOMCTL_SIZE == 144 and sysctl.XEN_SYSCTL_SIZE == 136
    assert xen.PAGE_SIZE == 1 << xen.PAGE_SHIFT == 4096


def _offset_of(layout: struct.Struct, index: int, width: int) -> int:
    """Where a marker in field ``index`` lands: layout-independent check."""
    values = [b"" if c == "s" else 0 for c in _codes(layout)]
    values[index] = int.from_bytes(b"\xa5" * width, "little")
    packed = layout.pack(*values)
    return packed.index(b"\xa5" * width)


def _codes(layout: struct.Struct) -> list[str]:
    codes, num = [], ""
    for ch in layout.format.lstrip("<"):
        if ch.isdigit():
            num += ch
        elif ch == "x":
            num = ""
        else:
            codes += [ch] if ch == "s" else [ch] * int(num or 1)
            num = ""
    assert len(codes) == len(layout.unpack(bytes(layout.size)))
    return codes


def test_start_info_offsets():
    names = xen.START_INFO_FIELDS
    for name, off in xen.START_INFO_OFFSETS.items():
        if name in ("magic", "cmd_line", "console"):
            continue
        width = 4 if name in ("flags", "store_evtchn") else 8
        assert _offset_of(xen.START_INFO, names.index(name), width) == off, name
    assert _offset_of(xen.START_INFO, names.index("console_mfn"), 8) == xen.START_INFO_OFFSETS["console"]
    assert _offset_of(xen.START_INFO, names.index("console_evtchn"), 4) == 80


def test_vcpu_guest_context_offsets():
    codes = _codes(arch_x86.VCPU_GUEST_CONTEXT)
    scalar = {  # field index in the Struct for each scalar member
        "flags": 1, "ldt_base": 30, "ldt_ents": 31, "gdt_ents": 48, "kernel_ss": 49,
        "kernel_sp": 50, "event_callback_eip": 67, "failsafe_callback_eip": 68,
        "syscall_callback_eip": 69, "vm_assist": 70, "fs_base": 71, "gs_base_kernel": 72,
        "gs_base_user": 73,
    }  # fmt: skip
    assert len(codes) == 74
    for name, idx in scalar.items():
        got = _offset_of(arch_x86.VCPU_GUEST_CONTEXT, idx, 8)
        assert got == arch_x86.VCPU_GUEST_CONTEXT_OFFSETS[name], name
    assert _offset_of(arch_x86.VCPU_GUEST_CONTEXT, 32, 8) == arch_x86.VCPU_GUEST_CONTEXT_OFFSETS["gdt_frames"]
    assert _offset_of(arch_x86.VCPU_GUEST_CONTEXT, 51, 8) == arch_x86.VCPU_GUEST_CONTEXT_OFFSETS["ctrlreg"]
    assert _offset_of(arch_x86.VCPU_GUEST_CONTEXT, 59, 8) == arch_x86.VCPU_GUEST_CONTEXT_OFFSETS["debugreg"]
    rip = 2 + arch_x86.CPU_USER_REGS_FIELDS.index("rip")
    assert _offset_of(arch_x86.VCPU_GUEST_CONTEXT, rip, 8) == 520 + 128


def test_vcpu_info_offsets():
    assert _offset_of(xen.VCPU_INFO, 2, 8) == xen.VCPU_INFO_EVTCHN_PENDING_SEL_OFF
    assert _offset_of(xen.VCPU_INFO, 3, 8) == xen.VCPU_INFO_ARCH_OFF
    assert _offset_of(xen.VCPU_INFO, 4, 4) == xen.VCPU_INFO_TIME_OFF
    assert xen.vcpu_info_offset(31) == 31 * 64
    with pytest.raises(ValueError):
        xen.vcpu_info_offset(32)


def test_console_offsets():
    assert console.XENCONS_OUT_OFF == 1024
    assert (console.XENCONS_IN_PROD_OFF, console.XENCONS_OUT_CONS_OFF) == (3076, 3080)
    assert console.XENCONS_OUT_PROD_OFF == 3084
    assert _offset_of(console.XENCONS_INTERFACE, 6, 1) == console.XENCONS_CONNECTION_OFF
    assert console.MASK_XENCONS_IDX(2048 + 5, console.XENCONS_OUT_SIZE) == 5
