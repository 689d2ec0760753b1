"""Persistence of the store: a snapshot plus a journal, fsync'd before replies.

Owns the two files of xenstored's state directory and nothing else: no trio,
no clock (the group-commit shell is :mod:`xenstored.durability`).

``store.snapshot``
    The whole store at one moment, written to ``store.snapshot.tmp``,
    fsync'd, renamed over ``store.snapshot``, then the directory fsync'd.
``store.journal``
    Every change since that snapshot, one record per committed mutation,
    appended in batches: one ``write()`` and one ``fsync()`` per batch.

Both files are a sequence of **frames**::

    +---------------+---------------+------------------------------+
    | length u32 LE | crc32 u32 LE  | payload: `length` bytes      |
    +---------------+---------------+------------------------------+

with ``crc32 = zlib.crc32(payload)`` and the payload a msgpack value. Frame 0
of each file is a header map; ``epoch`` ties a journal to its snapshot:

* snapshot: ``{"magic": "pvxen-xenstore-snapshot", "version": 1,
  "epoch": E, "generation": G, "nodes": N}``, then frames each holding an
  array of up to 1024 node entries, in the store's dict order;
* journal: ``{"magic": "pvxen-xenstore-journal", "version": 1, "epoch": E}``,
  then one frame per :meth:`Journal.append`: ``[generation, [change...]]``.

A node entry (and a change that leaves a node in place) is
``[path, value, [perm...], [child...], node_generation]``; the child list
keeps the creation order of ``Node.children``. A deleted node is ``[path]``.
Worked example: ``append([("/tool/x", Node(b"hi", Perms.of("b0 r5"),
{"a": None}, 7)), ("/old", None)], 7)`` adds this 41-byte frame::

    21 00 00 00  cd 52 70 c8                   length 33, crc32 0xc87052cd
    92 07 92                                   [7, [ (2 changes)
    95 a7 2f 74 6f 6f 6c 2f 78 c4 02 68 69     ["/tool/x", b"hi",
    92 a2 62 30 a2 72 35  91 a1 61  07            ["b0","r5"], ["a"], 7],
    91 a4 2f 6f 6c 64                            ["/old"]]]

Replay applies records in order. Each carries full node states, so records
that straddle a snapshot (buffered when it was taken) may be replayed over
it again harmlessly. The store lists every node a recursive removal deletes.

Crash safety (SIGKILL or power loss at any point):

* a torn journal tail (a prefix of the batch being written, maybe then
  zeros) is the only damage a crash leaves; it fails its length or CRC
  check, is logged and dropped, and cut off before the next append. A bad
  frame with non-zero data after it is damage, not a tear:
  :class:`CorruptJournal`;
* :meth:`Journal.snapshot` writes snapshot E+1, then a fresh journal with
  epoch E+1. A crash between the two leaves a journal of epoch E, which
  is older than the snapshot, so load ignores it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path

import msgpack

from xenstored.node import Node

log = logging.getLogger(__name__)

from xenstored.persist_format import (
    SNAPSHOT_NAME,
    JOURNAL_NAME,
    JOURNAL_MAGIC,
    FORMAT_VERSION,
    Changes,
    PersistError,
    CorruptSnapshot,
    CorruptJournal,
    frame,
    scan_frames,
    _is_torn_tail,
    encode_record,
    encode_snapshot,
    _header,
    decode_snapshot,
    replay,
    _write_all,
    _create_synced,
    _fsync_dir,
    _read_or_none,
)


__all__ = ["Journal", "PersistError", "CorruptJournal", "CorruptSnapshot", "Changes",
           "JOURNAL_NAME", "SNAPSHOT_NAME", "encode_snapshot"]


class Journal:
    """The snapshot and journal files of one state directory.

    ``append`` may run on one thread while ``sync`` or ``snapshot`` runs on
    another: ``_lock`` guards the buffer of encoded records, ``_io_lock``
    serialises everything that touches the files. Call :meth:`load` once,
    before the first append.
    """

    def __init__(self, directory: Path, *, compact_bytes: int = 16 << 20) -> None:
        self.directory = Path(directory)
        self.compact_bytes = compact_bytes
        #: fsyncs of journal batches so far (statistics; tests count them).
        self.fsync_count = 0
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._fd: int | None = None
        self._loaded = False
        self._broken: BaseException | None = None
        self._epoch = 0  # of the snapshot on disk; 0 means none yet
        self._journal_current = False  # store.journal exists, good, of _epoch
        self._journal_good = 0  # bytes of store.journal that hold good frames
        self._journal_size = 0

    @property
    def snapshot_path(self) -> Path:
        return self.directory / SNAPSHOT_NAME

    @property
    def journal_path(self) -> Path:
        return self.directory / JOURNAL_NAME

    @property
    def has_snapshot(self) -> bool:
        return self.snapshot_path.exists()

    @property
    def needs_compaction(self) -> bool:
        """The journal (written plus buffered) has grown past compact_bytes."""
        return self._journal_size + self._pending_bytes > self.compact_bytes

    def load(self) -> tuple[dict[str, Node], int] | None:
        """The stored nodes and generation, or None for an empty directory."""
        with self._io_lock:
            return self._load()

    def _load(self) -> tuple[dict[str, Node], int] | None:
        if self._fd is not None:
            raise PersistError("Journal.load() must come before any write")
        self._loaded = True
        nodes: dict[str, Node] = {}
        generation = self._epoch = 0
        snapshot = _read_or_none(self.snapshot_path)
        if snapshot is not None:
            nodes, generation, self._epoch = decode_snapshot(snapshot, self.snapshot_path)
        records = self._read_journal()
        if not records and snapshot is None:
            return None
        return nodes, replay(records, nodes, generation, self.journal_path)

    def _read_journal(self) -> list[memoryview]:
        """The journal's records if it belongs to the snapshot, else []."""
        name = self.journal_path
        data = _read_or_none(name)
        self._journal_current = False
        if not data:
            return []
        payloads, good, why = scan_frames(data)
        if why is not None and not _is_torn_tail(data, good):
            raise CorruptJournal(
                f"{name}: {why} at byte {good} of {len(data)}, with data after it: "
                f"damage, not a tear left by a crash. Restore the file, or cut it at "
                f"byte {good} to keep only the records before the damage")
        if not payloads:
            log.warning("%s: no complete header (%s); discarding it", name, why)
            return []
        try:
            epoch = _header(payloads[0], JOURNAL_MAGIC)["epoch"]
        except (ValueError, msgpack.UnpackException) as exc:
            raise CorruptJournal(f"{name}: bad header: {exc}") from exc
        if epoch < self._epoch:  # crash between a snapshot and its new journal
            log.info("%s: epoch %d predates the snapshot's %d; ignoring it",
                     name, epoch, self._epoch)
            return []
        if epoch > self._epoch:
            raise PersistError(f"{name} continues snapshot epoch {epoch}, but "
                               f"{self.snapshot_path} holds epoch {self._epoch or 'none'}")
        if why is not None:
            log.warning("%s: dropping a torn final record (%s at byte %d, %d bytes "
                        "discarded): it was never acknowledged", name, why, good,
                        len(data) - good)
        self._journal_current, self._journal_good = True, good
        return payloads[1:]

    def append(self, changes: Changes, generation: int) -> None:
        """Buffer one record; the node data is copied before returning."""
        record = encode_record(changes, generation)
        with self._lock:
            self._pending.append(record)
            self._pending_bytes += len(record)

    def sync(self) -> None:
        """Write every buffered record and fsync them: blocking."""
        with self._io_lock:
            self._check_usable()
            with self._lock:
                batch, self._pending = self._pending, []
                size, self._pending_bytes = self._pending_bytes, 0
            if not batch:
                return
            try:
                fd = self._writer()
                _write_all(fd, b"".join(batch))
                os.fdatasync(fd)  # the data and the file size: what a replay needs
            except BaseException as exc:
                # A half-written batch may sit in the file: append no more.
                self._broken = exc
                raise
            self._journal_size += size
            self.fsync_count += 1

    def snapshot(self, nodes: Mapping[str, Node], generation: int) -> None:
        """Replace the snapshot with ``nodes`` and start an empty journal.

        ``nodes`` must hold every record synced so far and must not change
        while this runs (pass a copy). Records still buffered carry over to
        the new journal: replaying them again is harmless.
        """
        with self._io_lock:
            self._check_usable()
            if not self._loaded:
                self._load()
            epoch = self._epoch + 1
            frames = encode_snapshot(nodes, generation, epoch)
            tmp = self.snapshot_path.with_name(SNAPSHOT_NAME + ".tmp")
            try:
                os.close(_create_synced(tmp, b"".join(frames)))
                os.replace(tmp, self.snapshot_path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            # From here the old journal is stale, whatever happens next.
            self._close_fd()
            self._epoch, self._journal_current = epoch, False
            _fsync_dir(self.directory)
            self._new_journal()

    def close(self) -> None:
        """Close the journal file; buffered records are not written."""
        with self._io_lock:
            self._close_fd()

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise PersistError(f"{self.journal_path}: unusable after an earlier "
                               f"I/O error: {self._broken!r}")

    def _writer(self) -> int:
        """The journal's append descriptor, opening or starting it first."""
        if self._fd is not None:
            return self._fd
        if not self._loaded:
            self._load()
        if not self._journal_current:
            return self._new_journal()
        self._fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        if os.fstat(self._fd).st_size != self._journal_good:  # cut off a torn tail
            os.ftruncate(self._fd, self._journal_good)
            os.fsync(self._fd)
        self._journal_size = self._journal_good
        return self._fd

    def _new_journal(self) -> int:
        """Atomically replace store.journal by an empty one of this epoch."""
        header = {"magic": JOURNAL_MAGIC, "version": FORMAT_VERSION, "epoch": self._epoch}
        data = frame(msgpack.packb(header, use_bin_type=True))
        tmp = self.journal_path.with_name(JOURNAL_NAME + ".tmp")
        fd = _create_synced(tmp, data)
        try:
            os.replace(tmp, self.journal_path)
            _fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            raise
        self._close_fd()
        self._fd, self._journal_size, self._journal_current = fd, len(data), True
        return fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
