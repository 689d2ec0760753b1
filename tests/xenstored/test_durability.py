"""xenstored.durability: group commit over a real journal, with trio."""

from __future__ import annotations

import errno
import random
import threading
import time
from pathlib import Path

import pytest
import trio

from tests.xenstored.test_persist import Model, assert_state, fresh_load
from xenstored.durability import GroupCommitter
from xenstored.node import Node
from xenstored.persist import Journal, PersistError

pytestmark = pytest.mark.timeout(30)


class SlowJournal(Journal):
    """A disk whose fsync takes a few milliseconds, as real ones do."""

    def sync(self) -> None:
        time.sleep(0.003)
        super().sync()


class GatedJournal(Journal):
    """sync() waits until the test opens the gate."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.gate = threading.Event()
        self.sync_started = threading.Event()

    def sync(self) -> None:
        self.sync_started.set()
        if not self.gate.wait(10):
            raise TimeoutError("test never opened the gate")
        super().sync()


class FailingJournal(Journal):
    def sync(self) -> None:
        raise OSError(errno.EIO, "injected fsync failure")


class SlowSnapshotJournal(Journal):
    def snapshot(self, nodes: dict[str, Node], generation: int) -> None:
        time.sleep(0.05)  # the store keeps changing meanwhile
        super().snapshot(nodes, generation)


def _flatten(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _flatten(sub)]
    return [exc]


async def _clients(committer: GroupCommitter, model: Model, clients: int, writes: int,
                   check: bool = False) -> None:
    async def client(c: int) -> None:
        for w in range(writes):
            path = f"/local/domain/{c}/data/w{w}"
            seq = committer.stage(model.write(path, b"%d" % w), model.generation)
            await committer.durable(seq)
            assert committer.synced >= seq
            if check:  # it is on disk now, before the reply
                nodes, _ = fresh_load(committer.journal.directory)  # type: ignore[misc]
                assert nodes[path].value == b"%d" % w

    async with trio.open_nursery() as nursery:
        for c in range(clients):
            nursery.start_soon(client, c)


@pytest.mark.parametrize("journal_class", [Journal, SlowJournal])
async def test_concurrent_stages_share_fsyncs(tmp_path: Path, journal_class: type) -> None:
    model = Model()
    journal = journal_class(tmp_path)
    journal.load()
    committer = GroupCommitter(journal, lambda: (model.nodes, model.generation))
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        fsyncs_before = journal.fsync_count
        start = time.perf_counter()
        await _clients(committer, model, clients=1000, writes=1)
        elapsed = time.perf_counter() - start
        fsyncs = journal.fsync_count - fsyncs_before
        print(f"{journal_class.__name__}: 1000 concurrent stages, {fsyncs} fsyncs, "
              f"{elapsed * 1000:.0f} ms")
        assert committer.staged == committer.synced == 1000
        assert fsyncs <= 20  # ~1 fsync per batch, not one per client
        await committer.close()
    assert_state(fresh_load(tmp_path), model)


async def test_sequential_clients_batch_across_each_other(tmp_path: Path) -> None:
    model, journal = Model(), SlowJournal(tmp_path)
    journal.load()
    committer = GroupCommitter(journal, lambda: (model.nodes, model.generation))
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        await _clients(committer, model, clients=50, writes=20)
        print(f"50 clients x 20 writes: {committer.batches} batches")
        assert committer.batches <= 1000 // 5
        nursery.cancel_scope.cancel()
    assert_state(fresh_load(tmp_path), model)


async def test_durable_implies_on_disk(tmp_path: Path) -> None:
    model, journal = Model(), Journal(tmp_path)
    journal.load()
    committer = GroupCommitter(journal, lambda: (model.nodes, model.generation))
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        await _clients(committer, model, clients=20, writes=5, check=True)
        nursery.cancel_scope.cancel()


async def test_durable_waits_for_the_fsync(tmp_path: Path) -> None:
    journal = GatedJournal(tmp_path)
    journal.load()
    model = Model()
    journal.snapshot(model.nodes, 0)
    committer = GroupCommitter(journal)
    returned = trio.Event()

    async def writer() -> None:
        seq = committer.stage(model.write("/gated", b"1"), model.generation)
        await committer.durable(seq)
        returned.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        nursery.start_soon(writer)
        await trio.to_thread.run_sync(journal.sync_started.wait)
        await trio.sleep(0.05)
        assert not returned.is_set()
        assert "/gated" not in fresh_load(tmp_path)[0]  # type: ignore[index]
        journal.gate.set()
        with trio.fail_after(5):
            await returned.wait()
        assert fresh_load(tmp_path)[0]["/gated"].value == b"1"  # type: ignore[index]
        nursery.cancel_scope.cancel()


async def test_cancellation_runs_a_final_sync(tmp_path: Path) -> None:
    model, journal = Model(), Journal(tmp_path)
    journal.load()
    committer = GroupCommitter(journal, lambda: (model.nodes, model.generation))
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        for i in range(10):
            committer.stage(model.write(f"/unawaited/{i}", b"x"), model.generation)
        nursery.cancel_scope.cancel()  # before the flusher got to run
    assert committer.synced == 10
    assert_state(fresh_load(tmp_path), model)


async def test_close_syncs_and_refuses_new_stages(tmp_path: Path) -> None:
    model, journal = Model(), Journal(tmp_path)
    journal.load()
    committer = GroupCommitter(journal, lambda: (model.nodes, model.generation))
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        committer.stage(model.write("/last", b"words"), model.generation)
        await committer.close()  # run() returns, so the nursery can exit
    assert_state(fresh_load(tmp_path), model)
    with pytest.raises(PersistError, match="closed"):
        committer.stage(model.write("/late", b"x"), model.generation)


async def test_close_without_run(tmp_path: Path) -> None:
    model, journal = Model(), Journal(tmp_path)
    journal.load()
    journal.snapshot(model.nodes, 0)
    committer = GroupCommitter(journal)
    seq = committer.stage(model.write("/x", b"1"), model.generation)
    await committer.close()
    await committer.durable(seq)
    assert_state(fresh_load(tmp_path), model)


async def test_sync_failure_fails_waiters_and_run(tmp_path: Path) -> None:
    journal = FailingJournal(tmp_path)
    journal.load()
    model = Model()
    committer = GroupCommitter(journal)
    errors: list[BaseException] = []

    async def writer() -> None:
        seq = committer.stage(model.write("/doomed", b"1"), model.generation)
        try:
            await committer.durable(seq)
        except PersistError as exc:
            errors.append(exc)

    with pytest.raises(BaseException) as info:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await nursery.start(committer.run)
    assert any(isinstance(e, OSError) and e.errno == errno.EIO for e in _flatten(info.value))
    assert len(errors) == 1 and committer.synced == 0
    with pytest.raises(PersistError, match="journal failed"):
        committer.stage(model.write("/after", b"1"), model.generation)


async def test_first_run_snapshots_the_initial_tree(tmp_path: Path) -> None:
    model, journal = Model(), Journal(tmp_path)
    model.write("/tool/xenstored", b"")
    assert journal.load() is None
    committer = GroupCommitter(journal, lambda: (model.nodes, model.generation))
    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        assert journal.has_snapshot and committer.snapshots == 1
        assert_state(fresh_load(tmp_path), model)
        nursery.cancel_scope.cancel()


async def test_compaction_while_the_store_keeps_changing(tmp_path: Path) -> None:
    model = Model()
    journal = SlowSnapshotJournal(tmp_path, compact_bytes=3000)
    journal.load()
    committer = GroupCommitter(journal, lambda: (model.nodes, model.generation))
    rng = random.Random(7)

    async def churn(c: int) -> None:
        for i in range(60):
            path = f"/d{rng.randrange(5)}/n{rng.randrange(20)}"
            changes = model.write(path, b"%d-%d" % (c, i)) if rng.random() < 0.8 \
                else model.rm(path.rsplit("/", 1)[0])
            await committer.durable(committer.stage(changes, model.generation))
            await trio.sleep(rng.random() / 500)

    async with trio.open_nursery() as nursery:
        await nursery.start(committer.run)
        async with trio.open_nursery() as clients:
            for c in range(10):
                clients.start_soon(churn, c)
        assert committer.snapshots >= 3
        nursery.cancel_scope.cancel()
    assert (tmp_path / "store.journal").stat().st_size < 3000 + 2000
    assert_state(fresh_load(tmp_path), model)
