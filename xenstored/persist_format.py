"""The on-disk format of xenstored's state: frames, records, snapshots.

Pure encoding and decoding (the file layout is described with a worked
example in :mod:`xenstored.persist`); :class:`xenstored.persist.Journal`
does the I/O ordering (write, fsync, rename) on top of this.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import msgpack

from xenstored.node import Node
from xenstored.perms import Perms

log = logging.getLogger("xenstored.persist")

SNAPSHOT_NAME = "store.snapshot"
JOURNAL_NAME = "store.journal"
SNAPSHOT_MAGIC = "pvxen-xenstore-snapshot"
JOURNAL_MAGIC = "pvxen-xenstore-journal"
FORMAT_VERSION = 1

FRAME_HEADER = struct.Struct("<II")  # length, crc32 of the payload
MAX_FRAME = 1 << 28  # far above any record; a larger length is garbage
SNAPSHOT_CHUNK = 1024  # node entries per snapshot frame

Changes = Iterable[tuple[str, Node | None]]


class PersistError(Exception):
    """The state directory cannot be read or written as required."""


class CorruptSnapshot(PersistError):
    """``store.snapshot`` is damaged; the message names the file and offset."""


class CorruptJournal(PersistError):
    """``store.journal`` is damaged before its final record."""


def frame(payload: bytes) -> bytes:
    return FRAME_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def scan_frames(data: bytes) -> tuple[list[memoryview], int, str | None]:
    """Split ``data`` into frame payloads, stopping at the first bad frame.

    Returns the good payloads, the offset just past the last good frame, and
    why the scan stopped early (None when every byte belonged to a frame).
    """
    view = memoryview(data)
    payloads: list[memoryview] = []
    pos, size = 0, len(data)
    while pos < size:
        if size - pos < FRAME_HEADER.size:
            return payloads, pos, "short frame header"
        length, crc = FRAME_HEADER.unpack_from(view, pos)
        end = pos + FRAME_HEADER.size + length
        if length == 0 or length > MAX_FRAME or end > size:
            return payloads, pos, f"frame length {length} does not fit the file"
        payload = view[pos + FRAME_HEADER.size:end]
        if zlib.crc32(payload) != crc:
            return payloads, pos, "CRC mismatch"
        payloads.append(payload)
        pos = end
    return payloads, pos, None


def _is_torn_tail(data: bytes, pos: int) -> bool:
    """Whether the bad frame at ``pos`` can be what a crash mid-write leaves.

    A crash leaves a prefix of the batch being written, perhaps followed by
    zero-filled blocks (allocated, never written): nothing but zeros may
    follow the bad frame's own extent.
    """
    if len(data) - pos < FRAME_HEADER.size:
        return True
    length: int = FRAME_HEADER.unpack_from(data, pos)[0]
    return len(data.rstrip(b"\0")) <= pos + FRAME_HEADER.size + length


def _unpack(payload: memoryview) -> Any:
    return msgpack.unpackb(payload, raw=False, use_list=True)


def _entry(path: str, node: Node, perms_cache: dict[int, list[str]]) -> list[Any]:
    """One node as a msgpack-ready list; copies everything mutable."""
    perms = perms_cache.get(id(node.perms))
    if perms is None:
        perms = perms_cache[id(node.perms)] = node.perms.strings()
    return [path, bytes(node.value), perms, list(node.children), node.generation]


def _node(entry: list[Any], perms_cache: dict[tuple[str, ...], Perms]) -> tuple[str, Node]:
    """Inverse of :func:`_entry`; equal permission lists share one Perms."""
    path, value, perm_strings, children, generation = entry
    if type(path) is not str or type(value) is not bytes or type(generation) is not int:
        raise ValueError(f"bad node entry for {path!r}")
    key = tuple(perm_strings)
    perms = perms_cache.get(key)
    if perms is None:
        perms = perms_cache[key] = Perms.parse(list(key))
    return path, Node(value, perms, dict.fromkeys(children), generation)


def encode_record(changes: Changes, generation: int) -> bytes:
    """One journal frame holding ``changes`` (see the module docstring)."""
    cache: dict[int, list[str]] = {}
    body = [[path] if node is None else _entry(path, node, cache) for path, node in changes]
    return frame(msgpack.packb([generation, body], use_bin_type=True))


def encode_snapshot(nodes: Mapping[str, Node], generation: int, epoch: int,
                    journal: tuple[int, int] | None = None) -> list[bytes]:
    """The frames of a snapshot file of ``nodes``.

    ``journal`` is the live journal's (epoch, size in bytes) when the image
    was taken: what load needs to replay that journal's later records if a
    crash comes before the snapshot's own journal replaces it.
    """
    packer = msgpack.Packer(use_bin_type=True)
    header: dict[str, Any] = {"magic": SNAPSHOT_MAGIC, "version": FORMAT_VERSION,
                              "epoch": epoch, "generation": generation, "nodes": len(nodes)}
    if journal is not None:
        header["journal"] = list(journal)
    frames = [frame(packer.pack(header))]
    cache: dict[int, list[str]] = {}
    chunk: list[list[Any]] = []
    for path, node in nodes.items():
        chunk.append(_entry(path, node, cache))
        if len(chunk) == SNAPSHOT_CHUNK:
            frames.append(frame(packer.pack(chunk)))
            chunk = []
    if chunk:
        frames.append(frame(packer.pack(chunk)))
    return frames


def _header(payload: memoryview, magic: str) -> dict[str, Any]:
    header = _unpack(payload)
    if not isinstance(header, dict) or header.get("magic") != magic:
        raise ValueError(f"not a {magic} file")
    if header.get("version") != FORMAT_VERSION:
        raise ValueError(f"format version {header.get('version')!r} is not {FORMAT_VERSION}")
    if type(header.get("epoch")) is not int:
        raise ValueError("header has no epoch")
    return header


def decode_snapshot(data: bytes, name: Path,
                    ) -> tuple[dict[str, Node], int, int, tuple[int, int] | None]:
    """Nodes, generation, epoch and base journal (see encode_snapshot) of a snapshot."""
    payloads, pos, why = scan_frames(data)
    if why is not None or not payloads:
        raise CorruptSnapshot(f"{name}: {why or 'empty file'} at byte {pos}; "
                              "xenstored cannot restore its store from it")
    try:
        header = _header(payloads[0], SNAPSHOT_MAGIC)
        nodes: dict[str, Node] = {}
        cache: dict[tuple[str, ...], Perms] = {}
        for payload in payloads[1:]:
            for entry in _unpack(payload):
                path, node = _node(entry, cache)
                nodes[path] = node
        if len(nodes) != header["nodes"]:
            raise ValueError(f"holds {len(nodes)} nodes, header says {header['nodes']}")
        base = header.get("journal")
        if base is not None:
            if not (isinstance(base, list) and len(base) == 2
                    and all(type(v) is int and v >= 0 for v in base)):
                raise ValueError(f"bad journal position {base!r} in the header")
            base = (base[0], base[1])
        return nodes, int(header["generation"]), header["epoch"], base
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise CorruptSnapshot(f"{name}: {exc}") from exc


def replay(records: list[memoryview], nodes: dict[str, Node], generation: int,
           name: Path) -> int:
    """Apply journal records to ``nodes`` in place; returns the generation."""
    cache: dict[tuple[str, ...], Perms] = {}
    try:
        for payload in records:
            record_generation, changes = _unpack(payload)
            for change in changes:
                if len(change) == 1:
                    nodes.pop(change[0], None)
                else:
                    path, node = _node(change, cache)
                    nodes[path] = node
            generation = max(generation, int(record_generation))
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise CorruptJournal(f"{name}: record does not decode: {exc}") from exc
    return generation


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _create_synced(path: Path, data: bytes) -> int:
    """Create or truncate ``path``, write ``data`` and fsync; returns the fd."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


