"""Persistence of the store: a snapshot plus a journal, written before replies.

Owns the two files of xenstored's state directory and nothing else: no trio,
no clock (the trio shell is :mod:`xenstored.durability`).

``store.snapshot``
    The whole store at one moment, written to ``store.snapshot.tmp``,
    fsync'd, renamed over ``store.snapshot``, then the directory fsync'd.
``store.journal``
    Every change since that snapshot, one record per committed mutation,
    each appended by one plain ``write()`` the moment it is made.

What must survive is a crash of *xenstored*, not of the host. A record that
``write()`` accepted is in the kernel's page cache, which outlives a killed
process, so an acknowledged write survives SIGKILL at any moment without an
fsync. A crash of the host takes every domain with it; the next hypervisord
is a new boot, and xenstored then starts from the initial tree anyway
(:func:`xenstored.transport.ring.forget_previous_boot`), so an fsync per
write would buy nothing. fsync runs where it does buy something: before a
snapshot is renamed into place (never a renamed file whose data is not yet
written) and at a clean stop (:meth:`Journal.sync`).

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

Crash safety (SIGKILL at any point; power loss at a clean stop or snapshot):

* a torn journal tail (a prefix of the record being written, maybe then
  zeros) is the only damage a crash leaves; it fails its length or CRC
  check, is logged and dropped, and cut off before the next append. A bad
  frame with non-zero data after it is damage, not a tear:
  :class:`CorruptJournal`;
* :meth:`Journal.snapshot` writes snapshot E+1, then a fresh journal with
  epoch E+1 that starts with every record appended since the snapshot's
  image was taken. A crash between the two leaves a journal of epoch E,
  which is older than the snapshot, so load ignores it.
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
    FRAME_HEADER,
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

    ``append`` runs on the daemon's thread while ``snapshot`` may run on a
    worker thread: ``_lock`` guards the journal descriptor and the records
    carried across a snapshot, and is held only for a ``write()`` or a
    rename, never across an fsync; ``_io_lock`` serialises snapshots. Call
    :meth:`load` once, before the first append.
    """

    def __init__(self, directory: Path, *, compact_bytes: int = 16 << 20) -> None:
        self.directory = Path(directory)
        self.compact_bytes = compact_bytes
        #: fsyncs of the journal so far (statistics; tests count them).
        self.fsync_count = 0
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        #: records appended since a snapshot's image was taken, and the live
        #: journal's (epoch, size) at that moment; None: no snapshot under way
        self._carry: list[bytes] | None = None
        self._base: tuple[int, int] | None = None
        self._fd: int | None = None
        self._loaded = False
        self._broken: BaseException | None = None
        self._epoch = 0  # of the snapshot on disk; 0 means none yet
        self._journal_current = False  # store.journal is live: good, replayed
        self._journal_epoch = 0  # the epoch in store.journal's header
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
        """The journal has grown past compact_bytes."""
        return self._journal_size > self.compact_bytes

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
        base = None
        snapshot = _read_or_none(self.snapshot_path)
        if snapshot is not None:
            nodes, generation, self._epoch, base = decode_snapshot(snapshot,
                                                                   self.snapshot_path)
        records = self._read_journal(base)
        if not records and snapshot is None:
            return None
        return nodes, replay(records, nodes, generation, self.journal_path)

    def _read_journal(self, base: tuple[int, int] | None) -> list[memoryview]:
        """The journal's records that the snapshot does not hold."""
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
        if epoch > self._epoch:
            raise PersistError(f"{name} continues snapshot epoch {epoch}, but "
                               f"{self.snapshot_path} holds epoch {self._epoch or 'none'}")
        skip = 0  # bytes of the journal that the snapshot already holds
        if epoch < self._epoch:
            if base is None or base[0] != epoch or good < base[1]:
                log.info("%s: epoch %d predates the snapshot's %d; ignoring it",
                         name, epoch, self._epoch)
                return []
            # Killed between the snapshot's rename and its journal's: the
            # records appended after the image are still only here.
            log.info("%s: epoch %d, replaying its records after byte %d over the "
                     "snapshot of epoch %d", name, epoch, base[1], self._epoch)
            skip = base[1]
        if why is not None:
            log.warning("%s: dropping a torn final record (%s at byte %d, %d bytes "
                        "discarded): it was never acknowledged", name, why, good,
                        len(data) - good)
        self._journal_current, self._journal_epoch = True, epoch
        self._journal_good = self._journal_size = good
        start, offset = len(payloads), 0
        for k, payload in enumerate(payloads):
            if offset >= skip:
                start = k
                break
            offset += FRAME_HEADER.size + len(payload)
        return payloads[max(start, 1):]  # frame 0 is the header

    def append(self, changes: Changes, generation: int) -> None:
        """Write one record to the journal before returning; no fsync.

        Once this returns the record is in the page cache, which survives a
        kill of this process (see the module doc). The node data is encoded,
        so copied, first.
        """
        record = encode_record(changes, generation)
        with self._lock:
            self._check_usable()
            fd = self._writer()
            try:
                _write_all(fd, record)
            except BaseException as exc:
                # A half-written record may sit in the file: append no more.
                self._broken = exc
                raise
            self._journal_size += len(record)
            if self._carry is not None:
                self._carry.append(record)

    def sync(self) -> None:
        """fsync the journal (a clean stop): blocking, appends go on meanwhile."""
        with self._lock:
            self._check_usable()
            if self._fd is None:
                return
            fd = os.dup(self._fd)  # a snapshot may swap the journal meanwhile
        try:
            os.fdatasync(fd)  # the data and the file size: what a replay needs
        except BaseException as exc:
            self._broken = exc
            raise
        finally:
            os.close(fd)
        self.fsync_count += 1

    def begin_snapshot(self) -> None:
        """Mark the moment the next snapshot's image is taken.

        Call it right when copying the store that is passed to
        :meth:`snapshot` (on the thread that appends, with no append in
        between). Records appended from then on are carried into the new
        journal; a record the image holds too replays over it harmlessly.
        """
        with self._lock:
            self._check_usable()
            self._begin()

    def snapshot(self, nodes: Mapping[str, Node], generation: int) -> None:
        """Replace the snapshot with ``nodes`` and start a journal after it.

        ``nodes`` must hold every record appended before
        :meth:`begin_snapshot` (or before this call, without it) and must
        not change while this runs (pass a copy).

        The order makes every moment safe for a kill: the snapshot is
        written and fsync'd aside; renaming it makes the old journal of
        epoch E older than the snapshot, but the header's base position
        lets load replay that journal's records after the image; then, under
        the lock (no append in between), the carried records go into the new
        journal, which is renamed into place and becomes the live one.
        """
        with self._io_lock:
            if not self._loaded:
                self._load()
            with self._lock:
                self._check_usable()
                if self._carry is None:
                    self._begin()
                base = self._base
            try:
                self._write_snapshot(nodes, generation, base)
            finally:
                with self._lock:
                    self._carry = self._base = None
            _fsync_dir(self.directory)

    def _write_snapshot(self, nodes: Mapping[str, Node], generation: int,
                        base: tuple[int, int] | None) -> None:
        epoch = self._epoch + 1
        frames = encode_snapshot(nodes, generation, epoch, base)
        tmp = self.snapshot_path.with_name(SNAPSHOT_NAME + ".tmp")
        jtmp = self.journal_path.with_name(JOURNAL_NAME + ".tmp")
        fd = None
        try:
            os.close(_create_synced(tmp, b"".join(frames)))
            fd, header_size = self._create_journal(jtmp, epoch)
            os.replace(tmp, self.snapshot_path)
            self._epoch = epoch
        except BaseException:
            tmp.unlink(missing_ok=True)
            jtmp.unlink(missing_ok=True)
            if fd is not None:
                os.close(fd)
            raise
        try:
            with self._lock:
                assert self._carry is not None
                carried = b"".join(self._carry)
                _write_all(fd, carried)  # an error: the old journal stays live
                os.replace(jtmp, self.journal_path)
                self._close_fd()
                self._fd, fd = fd, None
                self._journal_size = header_size + len(carried)
                self._journal_current, self._journal_epoch = True, epoch
        finally:
            if fd is not None:
                os.close(fd)
                jtmp.unlink(missing_ok=True)

    def close(self) -> None:
        """Close the journal file (every record is written already)."""
        with self._lock:
            self._close_fd()

    def _begin(self) -> None:
        """Start carrying records; the live journal (made now if there is
        none, so a record is never only in a journal older than its
        snapshot) and its size are the base position. Under _lock."""
        self._writer()
        self._carry = []
        self._base = (self._journal_epoch, self._journal_size)

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
            tmp = self.journal_path.with_name(JOURNAL_NAME + ".tmp")
            fd, self._journal_size = self._create_journal(tmp, self._epoch)
            try:
                os.replace(tmp, self.journal_path)
                _fsync_dir(self.directory)
            except BaseException:
                os.close(fd)
                raise
            self._fd, self._journal_current, self._journal_epoch = fd, True, self._epoch
            return fd
        self._fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        if os.fstat(self._fd).st_size != self._journal_good:  # cut off a torn tail
            os.ftruncate(self._fd, self._journal_good)
        self._journal_size = self._journal_good
        return self._fd

    @staticmethod
    def _create_journal(tmp: Path, epoch: int) -> tuple[int, int]:
        """An empty journal of ``epoch`` at ``tmp``: its append fd and size."""
        header = {"magic": JOURNAL_MAGIC, "version": FORMAT_VERSION, "epoch": epoch}
        data = frame(msgpack.packb(header, use_bin_type=True))
        return _create_synced(tmp, data), len(data)

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
