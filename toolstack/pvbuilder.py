"""The 64-bit PV domain builder: an ELF kernel laid out as libxenguest does.

Follows ``tools/libs/guest/xg_dom_elfloader.c`` (the kernel by its Xen ELF
notes, ``xen/include/public/elfnote.h``), ``xg_dom_core.c``
(``xc_dom_build_image``: segments allocated in pfn order right after the
kernel) and ``xg_dom_x86.c`` (the x86-64 bootstrap page tables and the
initial vCPU state). Pure: :func:`build` turns kernel bytes into the frames
to write and the boot vCPU state; the caller writes them through the
domain's memory file. The layout, in pfn order::

    kernel (PT_LOAD segments at vaddr - VIRT_BASE)
    P2M list (8 bytes per page: a pvxen PV guest's mfn is its pfn)
    start_info, xenstore page, console page
    page tables (L4, L3, L2, L1s for VIRT_BASE .. end + 512 KiB, 4 MiB aligned)
    boot stack (one page; rsp = its top)

Every frame of the page-table segment is mapped read-only in the guest
(``!writable_page_tables``); the hypercall page, when the kernel names one
(HYPERCALL_PAGE), is filled with Xen's stubs.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import struct
from dataclasses import dataclass, field

from elftools.elf.elffile import ELFFile
from elftools.common.exceptions import ELFError

from hypervisord.public import memfile
from hypervisord.public.xen import MAX_GUEST_CMDLINE, PAGE_SIZE, START_INFO, \
    XEN_START_INFO_MAGIC
from hypervisord.vcpu import paging
from hypervisord.vcpu.cpu import BootState
from hypervisord.vcpu.hypercalls import hypercall_page
from hypervisord.vcpu.memory import SHARED_INFO_MFN

# XEN_ELFNOTE_* (xen/include/public/elfnote.h)
XEN_ELFNOTE_ENTRY = 1
XEN_ELFNOTE_HYPERCALL_PAGE = 2
XEN_ELFNOTE_VIRT_BASE = 3
XEN_ELFNOTE_PADDR_OFFSET = 4
XEN_ELFNOTE_XEN_VERSION = 5
XEN_ELFNOTE_GUEST_OS = 6
XEN_ELFNOTE_LOADER = 8
XEN_ELFNOTE_FEATURES = 10
_NUMERIC = {XEN_ELFNOTE_ENTRY, XEN_ELFNOTE_HYPERCALL_PAGE, XEN_ELFNOTE_VIRT_BASE,
            XEN_ELFNOTE_PADDR_OFFSET}
_STRING = {XEN_ELFNOTE_XEN_VERSION, XEN_ELFNOTE_GUEST_OS, XEN_ELFNOTE_LOADER,
           XEN_ELFNOTE_FEATURES}
#: the bootstrap mapping reaches this far past the last segment (xg_dom_x86.c)
BOOT_EXTRA = 512 << 10
BOOT_ALIGN = 4 << 20
_TABLE_FLAGS = paging._PAGE_PRESENT | paging._PAGE_RW | paging._PAGE_USER | paging._PAGE_ACCESSED
_PAGE_FLAGS = _TABLE_FLAGS | paging._PAGE_DIRTY


class KernelError(Exception):
    """The kernel image cannot be loaded; the message says why."""


@dataclass
class XenNotes:
    entry: int | None = None
    hypercall_page: int | None = None
    virt_base: int = 0
    paddr_offset: int | None = None
    xen_version: str = ""
    guest_os: str = ""
    loader: str = ""
    features: str = ""


@dataclass
class PvImage:
    notes: XenNotes
    boot: BootState
    frames: dict[int, bytes] = field(default_factory=dict)  # pfn -> contents (full pages)
    start_info_pfn: int = 0
    store_pfn: int = 0
    console_pfn: int = 0
    pt_pfns: range = range(0)


def decompress(data: bytes) -> bytes:
    """gzip- and xz-compressed kernels, as libxenguest's decompressors take them."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    return data


def _note_value(kind: int, desc: bytes) -> int | str:
    if kind in _NUMERIC:
        if len(desc) not in (4, 8):
            raise KernelError(f"Xen ELF note {kind}: {len(desc)}-byte number")
        return int.from_bytes(desc, "little")
    return desc.split(b"\0", 1)[0].decode("ascii", "replace")


_NHDR = struct.Struct("<III")  # Elf64_Nhdr: namesz, descsz, type


def _xen_notes(data: bytes) -> list[tuple[int, bytes]]:
    """(type, desc) of every note named "Xen" in a PT_NOTE segment's bytes.

    Read here rather than through pyelftools, which turns note types it
    knows for GNU notes (1..5) into names and would mistake Xen's.
    """
    out, off = [], 0
    while off + _NHDR.size <= len(data):
        namesz, descsz, kind = _NHDR.unpack_from(data, off)
        name_at = off + _NHDR.size
        desc_at = name_at + (namesz + 3) // 4 * 4
        end = desc_at + (descsz + 3) // 4 * 4
        if end > len(data):
            raise KernelError("truncated ELF note")
        if data[name_at:name_at + namesz] == b"Xen\0":
            out.append((kind, data[desc_at:desc_at + descsz]))
        off = end
    return out


def parse(data: bytes) -> tuple[ELFFile, XenNotes]:
    try:
        elf = ELFFile(io.BytesIO(data))
    except ELFError as e:
        raise KernelError(f"not an ELF image: {e}") from None
    if elf.elfclass != 64 or elf["e_machine"] != "EM_X86_64":
        raise KernelError("not an x86-64 ELF64 kernel")
    notes = XenNotes()
    names = {XEN_ELFNOTE_ENTRY: "entry", XEN_ELFNOTE_HYPERCALL_PAGE: "hypercall_page",
             XEN_ELFNOTE_VIRT_BASE: "virt_base", XEN_ELFNOTE_PADDR_OFFSET: "paddr_offset",
             XEN_ELFNOTE_XEN_VERSION: "xen_version", XEN_ELFNOTE_GUEST_OS: "guest_os",
             XEN_ELFNOTE_LOADER: "loader", XEN_ELFNOTE_FEATURES: "features"}
    found = False
    for seg in elf.iter_segments():
        if seg["p_type"] != "PT_NOTE":
            continue
        for kind, desc in _xen_notes(seg.data()):
            if kind in names:
                found = True
                setattr(notes, names[kind], _note_value(kind, desc))
    if not found:
        raise KernelError("no Xen ELF notes: not a PV kernel")
    if notes.xen_version and notes.xen_version != "xen-3.0":
        raise KernelError(f"XEN_VERSION {notes.xen_version!r}: only xen-3.0 is spoken")
    return elf, notes


def _tables_needed(lo: int, hi: int) -> int:
    """L4 + L3s + L2s + L1s covering virtual ``lo .. hi`` (xg_dom_x86 count_pgtables)."""
    n = 1
    for shift in (39, 30, 21):
        n += ((hi - 1) >> shift) - (lo >> shift) + 1
    return n


def build(kernel: bytes, nr_pages: int, *, cmdline: str = "", store_evtchn: int = 0,
          console_evtchn: int = 0) -> PvImage:
    elf, notes = parse(decompress(kernel))
    vb = notes.virt_base
    loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD" and s["p_memsz"]]
    if not loads:
        raise KernelError("no PT_LOAD segment")
    vstart = min(s["p_vaddr"] for s in loads)
    vend = max(s["p_vaddr"] + s["p_memsz"] for s in loads)
    if vstart < vb or vstart & (PAGE_SIZE - 1):
        raise KernelError(f"segments start at {vstart:#x}, below VIRT_BASE {vb:#x}")
    entry = notes.entry if notes.entry is not None else elf["e_entry"]
    image = bytearray(((vend - vb + PAGE_SIZE - 1) // PAGE_SIZE) * PAGE_SIZE)
    for s in loads:
        off = s["p_vaddr"] - vb
        image[off:off + s["p_filesz"]] = s.data()
    pfn = len(image) // PAGE_SIZE
    p2m_pfn, p2m_pages = pfn, (nr_pages * 8 + PAGE_SIZE - 1) // PAGE_SIZE
    start_info_pfn = p2m_pfn + p2m_pages
    store_pfn, console_pfn, pt_pfn = start_info_pfn + 1, start_info_pfn + 2, start_info_pfn + 3
    # The tables map themselves and the boot stack after them: grow until stable.
    nr_pt = 1
    while True:
        stack_pfn = pt_pfn + nr_pt
        map_end = vb + ((stack_pfn + 1) * PAGE_SIZE + BOOT_EXTRA + BOOT_ALIGN - 1) \
            // BOOT_ALIGN * BOOT_ALIGN
        need = _tables_needed(vb, map_end)
        if need <= nr_pt:
            break
        nr_pt = need
    if stack_pfn >= nr_pages:
        raise KernelError(f"memory too small: the boot layout needs {stack_pfn + 1} pages")
    img = PvImage(notes, BootState(rip=entry, rsp=vb + (stack_pfn + 1) * PAGE_SIZE,
                                   rsi=vb + start_info_pfn * PAGE_SIZE, cr3=pt_pfn * PAGE_SIZE),
                  start_info_pfn=start_info_pfn, store_pfn=store_pfn,
                  console_pfn=console_pfn, pt_pfns=range(pt_pfn, pt_pfn + nr_pt))
    for i in range(0, len(image), PAGE_SIZE):
        img.frames[i // PAGE_SIZE] = bytes(image[i:i + PAGE_SIZE])
    if notes.hypercall_page is not None:
        hp = (notes.hypercall_page - vb) // PAGE_SIZE
        if not 0 <= hp < pfn:
            raise KernelError("HYPERCALL_PAGE outside the kernel image")
        img.frames[hp] = hypercall_page()
    p2m = struct.pack(f"<{nr_pages}Q", *range(nr_pages))  # mfn == pfn
    for i in range(p2m_pages):
        img.frames[p2m_pfn + i] = p2m[i * PAGE_SIZE:(i + 1) * PAGE_SIZE].ljust(PAGE_SIZE, b"\0")
    img.frames.update(_page_tables(vb, map_end, pt_pfn, nr_pt, nr_pages))
    info = START_INFO.pack(
        XEN_START_INFO_MAGIC, nr_pages, SHARED_INFO_MFN * PAGE_SIZE, 0, store_pfn,
        store_evtchn, console_pfn, console_evtchn, vb + pt_pfn * PAGE_SIZE, nr_pt,
        vb + p2m_pfn * PAGE_SIZE, 0, 0, cmdline.encode()[:MAX_GUEST_CMDLINE - 1], 0, 0)
    img.frames[start_info_pfn] = info.ljust(PAGE_SIZE, b"\0")
    return img


def _page_tables(vb: int, end: int, pt_pfn: int, nr_pt: int, nr_pages: int
                 ) -> dict[int, bytes]:
    """The bootstrap tables mapping ``vb .. end`` to pfns 0..; tables read-only."""
    tables: dict[int, bytearray] = {pt_pfn: bytearray(PAGE_SIZE)}
    next_pfn = pt_pfn + 1
    pt_range = range(pt_pfn, pt_pfn + nr_pt)
    for va in range(vb, end, PAGE_SIZE):
        target = (va - vb) // PAGE_SIZE
        if target >= nr_pages:
            break
        table = pt_pfn
        for level in (4, 3, 2):
            off = 8 * paging.table_index(va, level)
            pte = int.from_bytes(tables[table][off:off + 8], "little")
            if not pte:
                assert next_pfn < pt_pfn + nr_pt
                tables[next_pfn] = bytearray(PAGE_SIZE)
                pte = paging.make_pte(next_pfn, _TABLE_FLAGS)
                tables[table][off:off + 8] = pte.to_bytes(8, "little")
                next_pfn += 1
            table = paging.pte_frame(pte)
        flags = _PAGE_FLAGS & ~paging._PAGE_RW if target in pt_range else _PAGE_FLAGS
        off = 8 * paging.table_index(va, 1)
        tables[table][off:off + 8] = paging.make_pte(target, flags).to_bytes(8, "little")
    return {pfn: bytes(t) for pfn, t in tables.items()}


@dataclass(frozen=True, slots=True)
class PvLayout:
    """Where a PV guest's magic pages are (the attributes of builder.MemoryLayout)."""

    nr_pages: int
    start_info_gfn: int
    console_gfn: int
    store_gfn: int


def load(memory_fd: int, kernel_path: str, nr_pages: int, *, cmdline: str,
         store_evtchn: int, console_evtchn: int) -> tuple[PvLayout, dict]:
    """Build the image of ``kernel_path`` into a domain's memory file.

    Returns the layout and the boot vCPU state (a plain dict, for the launch
    request). The frames are written through the memory file the domain's
    process gets (its own frames only, as libxenguest maps them).
    """
    try:
        with open(kernel_path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise KernelError(f"{kernel_path}: {e.strerror}") from None
    try:
        img = build(data, nr_pages, cmdline=cmdline, store_evtchn=store_evtchn,
                    console_evtchn=console_evtchn)
    except (OSError, EOFError, lzma.LZMAError) as e:  # a broken compressed image
        raise KernelError(f"{kernel_path}: cannot decompress: {e}") from None
    for pfn, page in img.frames.items():
        os.pwrite(memory_fd, page, memfile.gfn_offset(pfn))
    b = img.boot
    boot = {"rip": b.rip, "rsp": b.rsp, "rsi": b.rsi, "cr3": b.cr3, "rflags": b.rflags}
    return PvLayout(nr_pages, img.start_info_pfn, img.console_pfn, img.store_pfn), boot
