"""The journal's trio shell: every record written before its reply.

Wiring in the daemon::

    journal = Journal(state_dir)
    state = journal.load()                      # None: build a fresh tree
    committer = JournalCommitter(journal, store_state)
    await nursery.start(committer.run)          # first snapshot if none yet
    ...
    committer.stage(changes, generation)        # right after the mutation
    ...                                         # then queue the reply

``stage`` writes the record into ``store.journal`` with one plain
``write()`` on the trio thread, before any message the request caused is
queued. A kill of xenstored at any moment after that leaves the record in
the page cache, so no acknowledged write is lost; no fsync is needed for
that, and none is made per write (why an fsync would buy nothing more:
:mod:`xenstored.persist`). Nothing waits, no thread is involved.

``run`` is the background task: the first snapshot of a fresh store, a
snapshot whenever the journal has grown past its bound (encoded and written
in a worker thread, off the event loop, while requests go on), and an fsync
of the journal at a clean stop.

An I/O error while writing a record is fatal: the request that caused it
gets no reply (its connection is closed), :meth:`stage` refuses every later
record, and ``run`` raises, which stops the daemon: a store that can no
longer be journalled must not acknowledge anything.
"""

from __future__ import annotations

import inspect
import logging
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


class JournalCommitter:
    """Writes journal records as they are staged; snapshots in the background."""

    def __init__(self, journal: Journal, get_state: StateProvider | None = None, *,
                 close_timeout: float = 10.0) -> None:
        self.journal = journal
        self._get_state = get_state
        self._close_timeout = close_timeout
        self._staged = 0  # records written so far
        self._kick = trio.Event()  # compaction is due, a failure, or close()
        self._stopped = trio.Event()  # run() has ended
        self._failure: BaseException | None = None
        self._closing = False
        self._running = False
        self._compact_after = float("-inf")
        #: statistics
        self.snapshots = 0

    @property
    def staged(self) -> int:
        return self._staged

    def stage(self, changes: Changes, generation: int) -> int:
        """Write one committed mutation to the journal; returns its number.

        Call it on the trio thread right after the store changed and before
        the reply is queued: when it returns the record is in the file.
        """
        if self._failure is not None:
            raise PersistError("journal failed; nothing more can be acknowledged") \
                from self._failure
        if self._closing:
            raise PersistError("journal committer is closed")
        try:
            self.journal.append(changes, generation)
        except (OSError, PersistError) as exc:
            log.critical("journal write failed; no further write can be acknowledged: %s",
                         exc)
            self._failure = exc
            self._kick.set()
            raise PersistError("journal write failed") from exc
        self._staged += 1
        if self.journal.needs_compaction and self._compaction_due():
            self._kick.set()
        return self._staged

    def _compaction_due(self) -> bool:
        return self._get_state is not None and self.journal.needs_compaction \
            and trio.current_time() >= self._compact_after

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                  ) -> None:
        """The background task; a final fsync runs when it is cancelled."""
        if self._running:
            raise RuntimeError("JournalCommitter.run() is already running")
        self._running = True
        try:
            if self._get_state is not None and not self.journal.has_snapshot:
                await self._compact()  # the initial tree is in no journal record
            task_status.started()
            while not self._closing:
                if self._failure is not None:
                    raise self._failure
                if self._compaction_due():  # records staged meanwhile count too
                    await self._compact()
                    continue
                await self._kick.wait()
                self._kick = trio.Event()
        finally:
            await self._final_sync()
            self._stopped.set()

    async def close(self) -> None:
        """Refuse new records, fsync the journal, and end run()."""
        self._closing = True
        self._kick.set()
        if self._running:
            with trio.move_on_after(self._close_timeout):
                await self._stopped.wait()
        else:
            await self._final_sync()
            self._stopped.set()

    async def _final_sync(self) -> None:
        """fsync the journal at a stop, shielded from cancellation, within close_timeout.

        Not needed for a restart of xenstored alone (the page cache holds
        every record); it makes a clean stop durable on the disk as well.
        """
        if self._failure is not None:
            return
        with trio.move_on_after(self._close_timeout) as scope:
            scope.shield = True
            try:
                await trio.to_thread.run_sync(self.journal.sync, **_ABANDON)
            except (OSError, PersistError) as exc:
                log.critical("final journal fsync failed: %s", exc)
                self._failure = exc
        if scope.cancelled_caught:
            log.error("final journal fsync still running after %.1fs; giving up on it",
                      self._close_timeout)

    async def _compact(self) -> None:
        """Snapshot the store: copy it here, encode and write it in a thread.

        The copy and begin_snapshot() happen together on the trio thread, so
        every record appended afterwards is carried into the new journal.
        """
        assert self._get_state is not None
        nodes, generation = self._get_state()
        self.journal.begin_snapshot()
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
