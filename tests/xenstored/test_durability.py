"""xenstored.durability: records written before replies, over a real journal, with trio."""

from __future__ import annotations

import errno
import random
import time
from pathlib import Path

import pytest
import trio

from tests.xenstored.test_persist import Model, assert_state, fresh_load
from xenstored.durability import JournalCommitter
from xenstored.node import Node
from xenstored.persist import Changes, Journal, PersistError

pytestmark = pytest.mark.timeout(30)


class FailingJournal(Journal):
    def append(self, changes: Changes, generation: int) -> None:
        raise OSError(errno.EIO, "injected write failure")


class SlowSnapshotJournal(Journal):
    def snapshot(self, nodes: dict[str, Node], generation: int) -> None:
        time.sleep(0.05)  # the store keeps changing meanwhile
        super().snapshot(nodes, generation)


def _flatten(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _flatten(sub)]
    return [exc]


async def test_stage_writes_the_record_without_fsync_or_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When stage() returns the record is in the file (what a kill leaves), with
    no fsync and no worker thread per write."""
    model, journal = Model(), Journal(tmp_path)
    journal.load()
    committer = JournalCommitter(journal, lambda: (model.nodes, model.generation))
    threads = 0
    real_run_sync = trio.to_thread.run_sync

    async def counting_run_sync(*args, **kwargs):
        nonlocal threads
        threads += 1
        return await real_run_sync(*args, **kwargs)

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)  # its first snapshot may use a thread
        monkeypatch.setattr(trio.to_thread, "run_sync", counting_run_sync)
        fsyncs = journal.fsync_count

        async def client(c: int) -> None:
            for w in range(10):
                path = f"/local/domain/{c}/data/w{w}"
                committer.stage(model.write(path, b"%d" % w), model.generation)
                nodes, _ = fresh_load(tmp_path)  # type: ignore[misc]
                assert nodes[path].value == b"%d" % w  # before any reply
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as clients:
            for c in range(20):
                clients.start_soon(client, c)
        assert committer.staged == 200
        assert journal.fsync_count == fsyncs and threads == 0
        assert_state(fresh_load(tmp_path), model)
        monkeypatch.undo()
        nursery.cancel_scope.cancel()
    assert journal.fsync_count == fsyncs + 1  # the clean stop


async def test_cancellation_runs_a_final_sync(tmp_path: Path) -> None:
    model, journal = Model(), Journal(tmp_path)
    journal.load()
    committer = JournalCommitter(journal, lambda: (model.nodes, model.generation))
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        fsyncs = journal.fsync_count
        for i in range(10):
            committer.stage(model.write(f"/unawaited/{i}", b"x"), model.generation)
        nursery.cancel_scope.cancel()  # before the task got to run
    assert committer.staged == 10 and journal.fsync_count == fsyncs + 1
    assert_state(fresh_load(tmp_path), model)


async def test_close_syncs_and_refuses_new_stages(tmp_path: Path) -> None:
    model, journal = Model(), Journal(tmp_path)
    journal.load()
    committer = JournalCommitter(journal, lambda: (model.nodes, model.generation))
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        committer.stage(model.write("/last", b"words"), model.generation)
        fsyncs = journal.fsync_count
        await committer.close()  # run() returns, so the nursery can exit
    assert journal.fsync_count == fsyncs + 1
    assert_state(fresh_load(tmp_path), model)
    with pytest.raises(PersistError, match="closed"):
        committer.stage(model.write("/late", b"x"), model.generation)


async def test_close_without_run(tmp_path: Path) -> None:
    model, journal = Model(), Journal(tmp_path)
    journal.load()
    journal.snapshot(model.nodes, 0)
    committer = JournalCommitter(journal)
    committer.stage(model.write("/x", b"1"), model.generation)
    await committer.close()
    assert journal.fsync_count == 1
    assert_state(fresh_load(tmp_path), model)


async def test_write_failure_fails_the_stage_and_run(tmp_path: Path) -> None:
    journal = FailingJournal(tmp_path)
    journal.load()
    model = Model()
    committer = JournalCommitter(journal)
    errors: list[BaseException] = []

    async def writer() -> None:
        try:
            committer.stage(model.write("/doomed", b"1"), model.generation)
        except PersistError as exc:
            errors.append(exc)

    with pytest.raises(BaseException) as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(committer.run)
            nursery.start_soon(writer)
    assert any(isinstance(e, OSError) and e.errno == errno.EIO for e in _flatten(info.value))
    assert len(errors) == 1 and committer.staged == 0
    with pytest.raises(PersistError, match="journal failed"):
        committer.stage(model.write("/after", b"1"), model.generation)


async def test_first_run_snapshots_the_initial_tree(tmp_path: Path) -> None:
    model, journal = Model(), Journal(tmp_path)
    model.write("/tool/xenstored", b"")
    assert journal.load() is None
    committer = JournalCommitter(journal, lambda: (model.nodes, model.generation))
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        assert journal.has_snapshot and committer.snapshots == 1
        assert_state(fresh_load(tmp_path), model)
        nursery.cancel_scope.cancel()


async def test_compaction_while_the_store_keeps_changing(tmp_path: Path) -> None:
    """Records staged while a snapshot is written in its thread are all loaded
    (without any fsync of them: as a kill would leave the files)."""
    model = Model()
    journal = SlowSnapshotJournal(tmp_path, compact_bytes=3000)
    journal.load()
    committer = JournalCommitter(journal, lambda: (model.nodes, model.generation))
    rng = random.Random(7)

    async def churn(c: int) -> None:
        for i in range(60):
            path = f"/d{rng.randrange(5)}/n{rng.randrange(20)}"
            changes = model.write(path, b"%d-%d" % (c, i)) if rng.random() < 0.8 \
                else model.rm(path.rsplit("/", 1)[0])
            committer.stage(changes, model.generation)
            if rng.random() < 0.1:
                # Not in the middle of a snapshot's two renames: a reader then
                # sees the files at two moments, which no kill can leave.
                with journal._io_lock:
                    assert_state(fresh_load(tmp_path), model)
            await trio.sleep(rng.random() / 500)

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        async with trio.open_nursery() as clients:
            for c in range(10):
                clients.start_soon(churn, c)
        assert committer.snapshots >= 3
        assert_state(fresh_load(tmp_path), model)
        with trio.fail_after(5):  # a snapshot begun under the churn ends
            while journal.needs_compaction:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert (tmp_path / "store.journal").stat().st_size < 3000 + 2000
    assert_state(fresh_load(tmp_path), model)
