"""Domains introduced to xenstored (XS_INTRODUCE / XS_RELEASE / XS_RESUME).

Records, per domid, the store page frame and event-channel port the
toolstack announced, the domain's features and quota overrides, and the
connection serving its ring once a transport is attached; and keeps the
introductions on disk (:class:`DomainRecords`) so that a restarted
xenstored re-attaches the rings of domains that are still alive.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from xenstored.persist_format import frame, scan_frames
from xenstored.quota import Quotas


@dataclass(slots=True)
class Domain:
    domid: int
    mfn: int
    port: int
    quotas: Quotas
    features: int = 0
    target: int | None = None
    shutdown: bool = False
    conn: object | None = None  # the ring Connection, when attached


@dataclass
class Domains:
    default_quotas: Quotas
    by_id: dict[int, Domain] = field(default_factory=dict)
    #: XS_SET_FEATURE values set before XS_INTRODUCE
    pending_features: dict[int, int] = field(default_factory=dict)

    def get(self, domid: int) -> Domain | None:
        return self.by_id.get(domid)

    def introduce(self, domid: int, mfn: int, port: int, features: int) -> Domain:
        features = self.pending_features.pop(domid, features)
        dom = Domain(domid, mfn, port, self.default_quotas, features)
        self.by_id[domid] = dom
        return dom

    def release(self, domid: int) -> Domain | None:
        return self.by_id.pop(domid, None)

    def quotas_for(self, domid: int) -> Quotas:
        dom = self.by_id.get(domid)
        return dom.quotas if dom else self.default_quotas

    def restore(self, record: "DomainRecord") -> Domain:
        """Take back a domain introduced before a restart (no @introduceDomain)."""
        dom = Domain(record.domid, record.mfn, record.port, self.default_quotas,
                     record.features, record.target)
        self.by_id[record.domid] = dom
        return dom


# -- the kept introductions ------------------------------------------------------------
#
# What a new xenstored needs to re-attach a domain's ring after a crash: the
# fields of cxenstored's live-update connection record for a domain
# (tools/xenstored/lu.c, domain.c: domid, event-channel port, the ring's
# frame), with the hypervisor boot they belong to. Written whole on every
# XS_INTRODUCE and release, before the reply: a temporary file, fsync,
# rename, fsync of the directory, so a crash leaves the old list or the new.
# The file is one frame of persist.py's format (length, crc32, msgpack):
#   {"magic": "pvxen-xenstore-domains", "version": 1, "boot_id": B,
#    "domains": [[domid, mfn, port, features, target or None], ...]}

RECORDS_NAME = "domains"
RECORDS_MAGIC = "pvxen-xenstore-domains"


@dataclass(frozen=True, slots=True)
class DomainRecord:
    domid: int
    mfn: int
    port: int
    features: int = 0
    target: int | None = None


class DomainRecords:
    """The ``domains`` file of xenstored's state directory."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.path = Path(directory) / RECORDS_NAME

    def save(self, boot_id: str, domains: Domains) -> None:
        rows = [[d.domid, d.mfn, d.port, d.features, d.target]
                for d in sorted(domains.by_id.values(), key=lambda d: d.domid)]
        data = frame(msgpack.packb({"magic": RECORDS_MAGIC, "version": 1, "boot_id": boot_id,
                                    "domains": rows}, use_bin_type=True))
        _replace_synced(self.path, data)

    def load(self, boot_id: str) -> list[DomainRecord]:
        """The records kept for this hypervisor boot; [] for another boot or none.

        A damaged file is refused with ValueError: the domains it named
        cannot be served, which the caller logs.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        payloads, _, why = scan_frames(data)
        if why is not None or len(payloads) != 1:
            raise ValueError(f"{self.path}: damaged ({why or 'extra data'})")
        try:
            head = msgpack.unpackb(payloads[0], raw=False)
            if head.get("magic") != RECORDS_MAGIC or head.get("version") != 1:
                raise ValueError("not a domains file of version 1")
            if head.get("boot_id") != boot_id:
                return []
            return [_record(row) for row in head["domains"]]
        except (ValueError, TypeError, KeyError, AttributeError,
                msgpack.UnpackException) as e:
            raise ValueError(f"{self.path}: {e}") from None


def _record(row) -> DomainRecord:
    domid, mfn, port, features, target = row
    for v in (domid, mfn, port, features):
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"bad domain record {row!r}")
    if target is not None and not isinstance(target, int):
        raise ValueError(f"bad domain record {row!r}")
    return DomainRecord(domid, mfn, port, features, target)


def _replace_synced(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
