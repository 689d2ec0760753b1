"""Group commit: replies wait for an fsync, many replies share one fsync.

The trio shell over :class:`xenstored.persist.Journal`; it owns the flusher
task and the sequence numbers, no file format. Wiring in the daemon::

    journal = Journal(state_dir)
    state = journal.load()                      # None: build a fresh tree
    committer = GroupCommitter(journal, store_state)
    await nursery.start(committer.run)          # first snapshot if none yet
    ...
    seq = committer.stage(changes, generation)  # right after the mutation
    await committer.durable(seq)                # then send the reply

Batching, worked through: clients A, B, C stage seqs 1, 2, 3 while the
flusher is idle. It wakes, notes ``target = 3`` and runs ``journal.sync``
in a worker thread. While that fsync runs, D and E stage 4 and 5 (their
records land in the journal's buffer, behind the batch being written). The
sync returns: ``synced = 3`` wakes A, B and C; the flusher loops at once and
one more fsync covers 4 and 5. Two fsyncs for five writes, and the ratio
improves with load.

A record appended while a sync is writing may land in that sync, but only
stages made before the sync began count as covered: durable() never returns
early. An I/O error in sync is fatal: waiters get :class:`PersistError`
and run() raises, because nothing written afterwards could be trusted.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from xenstored.node import Node
from xenstored.persist import Changes, Journal, PersistError

log = logging.getLogger(__name__)

StateProvider = Callable[[], tuple[dict[str, Node], int]]

# trio >= 0.23 renamed to_thread.run_sync's `cancellable` to `abandon_on_cancel`.
_ABANDON: dict[str, Any] = {
    "abandon_on_cancel" if "abandon_on_cancel"
    in inspect.signature(trio.to_thread.run_sync).parameters else "cancellable": True}

#: After a failed snapshot, wait this long (seconds) before trying again.
COMPACT_RETRY_DELAY = 30.0


#: a sync this fast may run on the event loop itself (s)
INLINE_SYNC_MAX = 0.001


class GroupCommitter:
    """Stages journal records and fsyncs them in batches (see module doc)."""

    def __init__(self, journal: Journal, get_state: StateProvider | None = None, *,
                 close_timeout: float = 10.0) -> None:
        self.journal = journal
        self._get_state = get_state
        self._close_timeout = close_timeout
        self._staged = 0  # sequence number of the newest stage
        #: recent sync duration (s); inline syncs only while it stays small,
        #: so a slow disk never stalls the event loop
        self._sync_ewma = float("inf")
        self._synced = 0  # every seq <= this is on disk
        self._kick = trio.Event()  # something was staged, or close()
        self._progress = trio.Event()  # a sync ended; replaced after each one
        self._stopped = trio.Event()  # run() has ended
        self._failure: BaseException | None = None
        self._closing = False
        self._running = False
        self._compact_after = float("-inf")
        #: statistics
        self.batches = 0
        self.snapshots = 0

    @property
    def staged(self) -> int:
        return self._staged

    @property
    def synced(self) -> int:
        return self._synced

    def stage(self, changes: Changes, generation: int) -> int:
        """Queue one committed mutation; returns its sequence number.

        Call it on the trio thread right after the store changed: the node
        data is copied before this returns.
        """
        if self._failure is not None:
            raise PersistError("journal failed; nothing more can be made durable") \
                from self._failure
        if self._closing:
            raise PersistError("group committer is closed")
        self.journal.append(changes, generation)
        self._staged += 1
        self._kick.set()
        return self._staged

    async def durable(self, seq: int) -> None:
        """Return once a completed fsync covers stage ``seq``."""
        while self._synced < seq:
            if self._failure is not None:
                raise PersistError(f"stage {seq} may not be on disk") from self._failure
            if self._stopped.is_set():
                raise PersistError(f"group committer stopped before stage {seq} synced")
            await self._progress.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """The flusher task; a final sync runs when it is cancelled."""
        if self._running:
            raise RuntimeError("GroupCommitter.run() is already running")
        self._running = True
        try:
            if self._get_state is not None and not self.journal.has_snapshot:
                await self._compact()  # the initial tree is in no journal record
            task_status.started()
            while not self._closing:
                await self._kick.wait()
                self._kick = trio.Event()
                # One scheduling round: stagers that are already runnable
                # join this batch instead of paying for the next fsync.
                await trio.lowlevel.checkpoint()
                await self._flush()
                if self._get_state is not None and self.journal.needs_compaction \
                        and trio.current_time() >= self._compact_after:
                    await self._compact()
        finally:
            await self._final_flush()
            self._stopped.set()
            self._notify()

    async def close(self) -> None:
        """Refuse new stages, sync what is staged, and end run()."""
        self._closing = True
        self._kick.set()
        if self._running:
            with trio.move_on_after(self._close_timeout):
                await self._stopped.wait()
        else:
            await self._final_flush()
            self._stopped.set()
            self._notify()

    async def _flush(self) -> None:
        target = self._staged
        if target <= self._synced:
            return
        try:
            started = time.perf_counter()
            if target - self._synced == 1 and self._sync_ewma < INLINE_SYNC_MAX:
                # One write waiting, on a disk that has been fast: an fsync
                # inline costs less than the hand-off to a worker and back.
                self.journal.sync()
                await trio.lowlevel.checkpoint()
            else:  # a batch, or a slow disk: let more arrive while it works
                await trio.to_thread.run_sync(self.journal.sync)
            took = time.perf_counter() - started
            self._sync_ewma = took if self._sync_ewma == float("inf") else \
                0.8 * self._sync_ewma + 0.2 * took
        except (OSError, PersistError) as exc:
            log.critical("journal sync failed; no further write can be acknowledged: %s",
                         exc)
            self._failure = exc
            self._notify()
            raise
        self._synced = target
        self.batches += 1
        self._notify()

    async def _final_flush(self) -> None:
        """Sync what is staged, shielded from cancellation, within close_timeout."""
        if self._failure is not None or self._staged <= self._synced:
            return
        with trio.move_on_after(self._close_timeout) as scope:
            scope.shield = True
            target = self._staged
            try:
                await trio.to_thread.run_sync(self.journal.sync, **_ABANDON)
            except (OSError, PersistError) as exc:
                log.critical("final journal sync failed: %s", exc)
                self._failure = exc
                return
            self._synced = target
            self.batches += 1
        if scope.cancelled_caught:
            log.error("final journal sync still running after %.1fs; giving up on it",
                      self._close_timeout)

    async def _compact(self) -> None:
        """Snapshot the store: copy it here, encode and write it in a thread.

        No sync may run between taking the state and writing the snapshot
        (Journal.snapshot's contract); this task is the only one that syncs.
        """
        assert self._get_state is not None
        nodes, generation = self._get_state()
        image = {path: node.copy() for path, node in nodes.items()}
        try:
            await trio.to_thread.run_sync(self.journal.snapshot, image, generation)
        except OSError as exc:
            self._compact_after = trio.current_time() + COMPACT_RETRY_DELAY
            log.error("snapshot failed, journal keeps growing; retrying in %.0fs: %s",
                      COMPACT_RETRY_DELAY, exc)
            return
        self.snapshots += 1
        log.info("snapshot of %d nodes at generation %d", len(image), generation)

    def _notify(self) -> None:
        self._progress.set()
        self._progress = trio.Event()
