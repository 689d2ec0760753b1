"""The domain builder for program guests (libxl's ``domain_create`` + libxc's
``xc_dom_*``), a blocking library used by ``xl`` and by benchmarks.

Creating a domain, in Xen's order (``libxl_create.c``, ``libxl_dom.c``,
``xc_dom_boot.c``)::

    XEN_DOMCTL_createdomain           the domain exists, paused
    XEN_DOMCTL_max_mem, max_vcpus     its limits
    XENMEM_populate_physmap           gfns 0 .. N-1 (N = memory), privileged
    EVTCHNOP_alloc_unbound x2         store and console ports, in the guest,
                                      for dom0 to bind (remote_dom 0)
    pvxen connect_domain              the descriptors of the domain's process
                                      (hypercall, evtchn, its memory file)
    start_info                        written into the guest's gfn N-3 through
                                      that memory file; store page at N-1 and
                                      console page at N-2 (the magic pages sit
                                      at the end of memory)
    XenStore entries                  as libxl writes them (xenstore_layout)
    XS_INTRODUCE                      xenstored takes over the store ring

The caller then hands those descriptors to the launcher and unpauses the
domain. A failure at any step destroys what was built. The start_info gfn
is passed to the guest process at launch, as ``%rsi`` carries it into a
PV kernel.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from libxen import ctrl
from hypervisord.public import memfile
from hypervisord.public.errno import XenErrno
from hypervisord.public.event_channel import EvtchnOp
from hypervisord.public.xen import (
    MAX_GUEST_CMDLINE, PAGE_SIZE, START_INFO, XEN_START_INFO_MAGIC, Hypercall)
from toolstack import device_ops
from toolstack import xenstore_layout as layout
from toolstack import xsbatch
from toolstack.domconfig import DomainConfig
from toolstack.hcall import SyncHypercall, XenError, privcmd_path, \
    xenstored_path, xl_dir
from libxen.xenstore import protocol as xsops
from libxen.xenstore.errors import XsError
from libxen.xenstore.sync import XsSyncClient

POPULATE_CHUNK = 1 << 14  # gfns per populate_physmap call (keeps packets small)
MAGIC_PAGES = 3  # start_info, console, store


class BuildError(Exception):
    """Domain creation failed; the message says at which step and why."""


@dataclass(frozen=True, slots=True)
class MemoryLayout:
    """Where the builder puts the magic pages of an ``nr_pages`` guest."""

    nr_pages: int

    @property
    def start_info_gfn(self) -> int:
        return self.nr_pages - 3

    @property
    def console_gfn(self) -> int:
        return self.nr_pages - 2

    @property
    def store_gfn(self) -> int:
        return self.nr_pages - 1


@dataclass
class BuiltDomain:
    domid: int
    config: DomainConfig
    layout: MemoryLayout  # or pvbuilder.PvLayout: the same attributes
    store_port: int
    console_port: int
    fds: dict[str, int] = field(default_factory=dict)  # hypercall, evtchn, memory
    boot: dict | None = None  # a PV guest's initial vCPU state (pvbuilder.load)

    def close_fds(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


class ConnectError(Exception):
    """A daemon the toolstack needs cannot be reached."""


class Toolstack:
    """The toolstack's connections (libxl's ``ctx``), opened on first use."""

    def __init__(self, rundir: str | os.PathLike | None = None) -> None:
        self.rundir = rundir
        self._xc: SyncHypercall | None = None
        self._xs: XsSyncClient | None = None

    @property
    def xc(self) -> SyncHypercall:
        if self._xc is None:
            path = privcmd_path(self.rundir)
            try:
                self._xc = SyncHypercall(path)
            except OSError as e:
                raise ConnectError(f"cannot reach hypervisord at {path}: {e.strerror}") from e
        return self._xc

    @property
    def xs(self) -> XsSyncClient:
        if self._xs is None:
            path = xenstored_path(self.rundir)
            try:
                self._xs = XsSyncClient.open(path)
            except OSError as e:
                where = f" at {path}" if path else ""
                raise ConnectError(f"cannot reach xenstored{where}: {e.strerror}") from e
        return self._xs

    def close(self) -> None:
        if self._xc is not None:
            self._xc.close()
            self._xc = None
        if self._xs is not None:
            self._xs.close()
            self._xs = None

    def __enter__(self) -> "Toolstack":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def xl_dir(self) -> Path:
        return xl_dir(self.rundir)


# -- XenStore helpers ------------------------------------------------------------------

def run_transaction(xs: XsSyncClient, ops: list[layout.Op], attempts: int = 20,
                    check: Callable[[int], None] | None = None) -> None:
    """Apply ``ops`` atomically in one batch, redoing it on EAGAIN as libxl does.

    ``check(tx_id)`` runs first inside the transaction and may raise to
    abort it; what it reads is part of the transaction, so a concurrent
    change to it makes the commit fail and the whole thing run again.
    """
    def body(tx_id: int) -> None:
        if check is not None:
            check(tx_id)
        xsbatch.apply_ops(xs, ops, tx_id)

    xs.run_transaction(body, attempts=attempts)


def read_or_none(xs: XsSyncClient, path: str, tx_id: int = 0) -> str | None:
    try:
        return xs.read(path, tx_id).decode("utf-8", "replace")
    except XsError:
        return None


def ensure_dom0(xs: XsSyncClient) -> None:
    """What ``xen-init-dom0`` does: dom0's name and domid exist."""
    if read_or_none(xs, "/local/domain/0/name") is None:
        xsbatch.apply_ops(xs, layout.dom0_ops())


# -- the build steps -------------------------------------------------------------------

@contextmanager
def _step(what: str) -> Iterator[None]:
    """Turn a hypercall or store error into a BuildError naming the step."""
    try:
        yield
    except XenError as exc:
        raise BuildError(f"{what} failed: {exc.strerror}") from exc
    except XsError as exc:
        raise BuildError(f"{what} failed: {exc}") from exc


def populate(xc: SyncHypercall, domid: int, nr_pages: int) -> None:
    for start in range(0, nr_pages, POPULATE_CHUNK):
        gfns = list(range(start, min(start + POPULATE_CHUNK, nr_pages)))
        rc, _ = ctrl.populate_physmap(xc, gfns, domid=domid)
        if rc != len(gfns):
            raise BuildError(f"populate_physmap: only {start + rc} of {nr_pages} pages "
                             "(out of machine memory?)")


def alloc_unbound(xc: SyncHypercall, domid: int, what: str) -> int:
    """A port in the guest for dom0 to bind (``xc_evtchn_alloc_unbound``)."""
    try:
        _, result = xc.call(Hypercall.event_channel_op, EvtchnOp.EVTCHNOP_alloc_unbound,
                            dom=domid, remote_dom=0)
    except XenError as e:
        if e.rc == -XenErrno.XEN_ENOSYS:
            raise BuildError(f"cannot allocate the {what} event channel: hypervisord has no "
                             "event channels (EVTCHNOP_alloc_unbound: ENOSYS); "
                             "is hypervisord/evtchn.py installed?") from e
        raise BuildError(f"EVTCHNOP_alloc_unbound ({what}) failed: {e.name}") from e
    return int(result["port"])


def start_info_bytes(nr_pages: int, store: tuple[int, int], console: tuple[int, int],
                     cmdline: str, flags: int = 0) -> bytes:
    """``struct start_info`` (``xen.h``); *_mfn fields carry gfns here."""
    cmd = cmdline.encode()[: MAX_GUEST_CMDLINE - 1]
    return START_INFO.pack(
        XEN_START_INFO_MAGIC, nr_pages, 0, flags, store[0], store[1], console[0],
        console[1], 0, 0, 0, 0, 0, cmd, 0, 0)


def check_name(xs: XsSyncClient, name: str, tx_id: int = 0) -> None:
    """``libxl__domain_rename``'s check, made inside the creation transaction."""
    if name in xsbatch.domain_names(xs, tx_id).values():
        raise BuildError(f"domain with name {name} already exists")


def create_domain(ts: Toolstack, cfg: DomainConfig, *, unique_name: bool = True) -> BuiltDomain:
    """Build a paused domain for ``cfg``; returns it with its process's descriptors.

    ``unique_name=False`` skips libxl's scan of every domain's name (O(N)),
    for callers that guarantee distinct names themselves (benchmarks).
    """
    nr_pages = cfg.memory_kb * 1024 // PAGE_SIZE
    if nr_pages < MAGIC_PAGES + 1:
        raise BuildError(f"memory: {cfg.memory} MiB is too small")
    with _step("XEN_DOMCTL_createdomain"):
        _, result = ctrl.domain_create(ts.xc, handle=_uuid_bytes(cfg.uuid),
                                       max_vcpus=cfg.maxvcpus)
    domid = int(result["domain"])
    try:
        return _build(ts, cfg, domid, MemoryLayout(nr_pages), unique_name)
    except BaseException:
        destroy_domain(ts, domid, cfg.uuid, quiet=True)
        raise


def _build(ts: Toolstack, cfg: DomainConfig, domid: int, mem: MemoryLayout,
           unique_name: bool) -> BuiltDomain:
    with _step("XEN_DOMCTL_max_mem"):
        ctrl.domain_max_mem(ts.xc, domid, cfg.maxmem_kb)
    with _step("XEN_DOMCTL_max_vcpus"):
        ctrl.domain_max_vcpus(ts.xc, domid, cfg.maxvcpus)
    with _step("XENMEM_populate_physmap"):
        populate(ts.xc, domid, mem.nr_pages)
    built = BuiltDomain(domid, cfg, mem, alloc_unbound(ts.xc, domid, "xenstore"),
                        alloc_unbound(ts.xc, domid, "console"))
    with _step("pvxen connect_domain"):
        _, result = ctrl.connect_domain(ts.xc, domid)
    built.fds = dict(result["fds"])
    try:
        if cfg.type == "pv":
            _load_pv(cfg, built)
        _finish(ts, cfg, built, unique_name)
    except BaseException:
        built.close_fds()
        raise
    return built


def _load_pv(cfg: DomainConfig, built: BuiltDomain) -> None:
    """A PV kernel: the libxenguest layout instead of the program guest's magic pages."""
    from toolstack import pvbuilder

    try:
        built.layout, built.boot = pvbuilder.load(
            built.fds["memory"], cfg.kernel, built.layout.nr_pages, cmdline=cfg.cmdline,
            store_evtchn=built.store_port, console_evtchn=built.console_port)
    except pvbuilder.KernelError as e:
        raise BuildError(f"loading the PV kernel {cfg.kernel} failed: {e}") from e


def _finish(ts: Toolstack, cfg: DomainConfig, built: BuiltDomain, unique_name: bool) -> None:
    """start_info, the XenStore entries, XS_INTRODUCE, the saved configuration."""
    mem, domid = built.layout, built.domid
    if built.boot is None:  # a PV kernel's start_info was written by pvbuilder
        info = start_info_bytes(mem.nr_pages, (mem.store_gfn, built.store_port),
                                (mem.console_gfn, built.console_port), cfg.cmdline)
        # Through the memory file the domain's process will get (its own frames).
        os.pwrite(built.fds["memory"], info, memfile.gfn_offset(mem.start_info_gfn))
    entries = layout.DomainEntries(
        domid=domid, name=cfg.name, uuid=cfg.uuid, memory_kb=cfg.memory_kb,
        maxmem_kb=cfg.maxmem_kb, vcpus=cfg.vcpus, maxvcpus=cfg.maxvcpus,
        store_port=built.store_port, store_gfn=mem.store_gfn,
        console_port=built.console_port, console_gfn=mem.console_gfn,
        kernel=cfg.kernel, cmdline=cfg.cmdline, start_time=time.time())
    check = (lambda tx: check_name(ts.xs, cfg.name, tx)) if unique_name else None
    with _step("writing the domain's XenStore entries"):
        run_transaction(ts.xs, layout.create_ops(entries, cfg.disks, cfg.nics), check=check)
    with _step("XS_INTRODUCE"):
        ts.xs.run(xsops.introduce(domid, mem.store_gfn, built.store_port))
    save_config(ts.xl_dir, domid, cfg)


def _uuid_bytes(text: str) -> bytes:
    import uuid

    return uuid.UUID(text).bytes


# -- saved configuration (libxl's userdata "libxl-json") -------------------------------

def config_path(xl: Path, domid: int) -> Path:
    return xl / "userdata" / f"d.{domid}.libxl-json"


def save_config(xl: Path, domid: int, cfg: DomainConfig) -> None:
    path = config_path(xl, domid)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg.to_dict()))
    os.replace(tmp, path)


def load_config(xl: Path, domid: int) -> DomainConfig | None:
    try:
        return DomainConfig.from_dict(json.loads(config_path(xl, domid).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def remove_stale_configs(ts: "Toolstack") -> list[int]:
    """Remove the saved configs of domains that no longer exist; their domids.

    libxl removes a domain's userdata when it destroys the domain; a domain
    that died with its hypervisor (a new boot) never got that. A config is
    stale when no domain has its domid, or the one that has it now is
    another domain (a different uuid: the domid was reused; libxl puts the
    uuid in the file's name for this reason). Run at the toolstack's start.
    """
    removed = []
    folder = ts.xl_dir / "userdata"
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return removed
    for name in names:
        stem = name.removeprefix("d.").removesuffix(".libxl-json")
        if not (name.startswith("d.") and name.endswith(".libxl-json") and stem.isdecimal()
                and stem.isascii()):
            continue
        domid = int(stem)
        cfg = load_config(ts.xl_dir, domid)
        try:
            _, info = ctrl.domain_getinfo(ts.xc, domid)
            handle = info["handle"] if info["domain"] == domid else None
        except XenError as e:
            if e.rc != -XenErrno.XEN_ESRCH:
                raise
            handle = None
        if handle is not None and cfg is not None and _uuid_bytes(cfg.uuid) == handle:
            continue
        if handle is not None and cfg is None:
            continue  # unreadable, maybe being written: not ours to judge
        (folder / name).unlink(missing_ok=True)
        removed.append(domid)
    return removed


# -- teardown --------------------------------------------------------------------------

def cleanup_domain(ts: Toolstack, domid: int, uuid: str | None = None) -> None:
    """Remove what libxl removes for a dead domain (idempotent)."""
    if uuid is None:
        vm = xsbatch.read(ts.xs, f"{layout.dom_path(domid)}/vm")
        uuid = vm.rsplit("/", 1)[-1] if vm else None
    try:
        ts.xs.run(xsops.release(domid))
    except XsError:
        pass  # never introduced, or xenstored already noticed the death
    run_transaction(ts.xs, layout.destroy_ops(domid, uuid))
    config_path(ts.xl_dir, domid).unlink(missing_ok=True)


def destroy_domain(ts: Toolstack, domid: int, uuid: str | None = None, *,
                   quiet: bool = False) -> None:
    """``libxl_domain_destroy``: the domain goes, then its devices
    (:func:`toolstack.device_ops.teardown_domain`, at most
    LIBXL_DESTROY_TIMEOUT for backends that do not close), then its store
    entries."""
    if uuid is None:
        vm = xsbatch.read(ts.xs, f"{layout.dom_path(domid)}/vm")
        uuid = vm.rsplit("/", 1)[-1] if vm else None
    try:
        ctrl.domain_destroy(ts.xc, domid)
    except XenError as e:
        if e.rc != -XenErrno.XEN_ESRCH and not quiet:
            raise
    try:
        # libxl__devices_destroy: each backend closed (or, stuck, removed anyway)
        device_ops.teardown_domain(ts.xs, domid)
        cleanup_domain(ts, domid, uuid)
    except (XsError, OSError):
        if not quiet:
            raise
