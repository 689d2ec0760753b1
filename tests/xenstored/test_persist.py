"""xenstored.persist: snapshot + journal round trips, tears, corruption, crashes."""

from __future__ import annotations

import copy
import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xenstored.node import Node
from xenstored.perms import ROOT_PERMS, Perms
from xenstored.persist import (
    JOURNAL_NAME,
    SNAPSHOT_NAME,
    CorruptJournal,
    CorruptSnapshot,
    Journal,
    PersistError,
    encode_snapshot,
)

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)


class Model:
    """A minimal store that reports its changes as the real one will."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {"/": Node(b"", ROOT_PERMS)}
        self.generation = 0

    def _bump(self) -> int:
        self.generation += 1
        return self.generation

    def write(self, path: str, value: bytes) -> list[tuple[str, Node | None]]:
        changes: list[tuple[str, Node | None]] = []
        parent = "/"
        for name in path.strip("/").split("/"):
            child = parent.rstrip("/") + "/" + name
            if child not in self.nodes:
                self.nodes[child] = Node(b"", self.nodes[parent].perms, {}, self._bump())
                self.nodes[parent].children[name] = None
                changes += [(parent, self.nodes[parent]), (child, self.nodes[child])]
            parent = child
        node = self.nodes[path]
        node.value, node.generation = value, self._bump()
        return changes + [(path, node)]

    def rm(self, path: str) -> list[tuple[str, Node | None]]:
        if path == "/" or path not in self.nodes:
            return []
        parent, name = path.rsplit("/", 1)
        parent = parent or "/"
        del self.nodes[parent].children[name]
        changes: list[tuple[str, Node | None]] = [(parent, self.nodes[parent])]
        todo = [path]
        while todo:  # iterative: no recursion proportional to depth
            p = todo.pop()
            todo += [p + "/" + c for c in self.nodes.pop(p).children]
            changes.append((p, None))
        self._bump()
        return changes

    def set_perms(self, path: str, perms: Perms) -> list[tuple[str, Node | None]]:
        if path not in self.nodes:
            return []
        node = self.nodes[path]
        node.perms, node.generation = perms, self._bump()
        return [(path, node)]


def assert_state(loaded: tuple[dict[str, Node], int] | None, model: Model) -> None:
    assert loaded is not None
    nodes, generation = loaded
    assert generation == model.generation
    assert nodes.keys() == model.nodes.keys()
    for path, want in model.nodes.items():
        got = nodes[path]
        assert got.value == want.value, path
        assert got.perms.strings() == want.perms.strings(), path
        assert list(got.children) == list(want.children), path  # order too
        assert got.generation == want.generation, path


def fresh_load(directory: Path) -> tuple[dict[str, Node], int] | None:
    return Journal(directory).load()


# --- round trips -------------------------------------------------------------

names = st.sampled_from(["a", "b", "c", "dev", "x_1", "@w"])
paths = st.lists(names, min_size=1, max_size=4).map(lambda p: "/" + "/".join(p))
perm_lists = st.lists(
    st.builds(lambda l, d: f"{l}{d}", st.sampled_from("nrwb"), st.integers(0, 70)),
    min_size=1, max_size=4).map(Perms.parse)
ops = st.one_of(
    st.tuples(st.just("write"), paths, st.binary(max_size=40)),
    st.tuples(st.just("rm"), paths),
    st.tuples(st.just("perms"), paths, perm_lists),
    st.tuples(st.just("sync")),
    st.tuples(st.just("snapshot")),
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=st.lists(ops, max_size=60))
def test_random_store_round_trips(script: list[tuple]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        model, journal = Model(), Journal(directory)
        assert journal.load() is None
        journal.snapshot(model.nodes, model.generation)
        for op in script:
            if op[0] == "write":
                journal.append(model.write(op[1], op[2]), model.generation)
            elif op[0] == "rm":
                journal.append(model.rm(op[1]), model.generation)
            elif op[0] == "perms":
                journal.append(model.set_perms(op[1], op[2]), model.generation)
            elif op[0] == "sync":
                journal.sync()
            else:
                journal.snapshot(model.nodes, model.generation)
        journal.sync()
        assert_state(fresh_load(directory), model)
        journal.close()


def test_empty_directory_loads_none(tmp_path: Path) -> None:
    assert Journal(tmp_path / "new").load() is None


def test_journal_only_without_snapshot(tmp_path: Path) -> None:
    model, journal = Model(), Journal(tmp_path)
    journal.append([("/", model.nodes["/"])], 0)
    journal.append(model.write("/local/domain/1/name", b"guest"), model.generation)
    journal.sync()
    assert not journal.has_snapshot
    assert_state(fresh_load(tmp_path), model)


def test_append_copies_node_data(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    node = Node(b"before", Perms.of("b0"), {"kid": None}, 3)
    journal.append([("/n", node)], 3)
    node.value, node.perms = b"after", Perms.of("r7")
    node.children["later"] = None
    journal.sync()
    nodes, generation = fresh_load(tmp_path)  # type: ignore[misc]
    assert (nodes["/n"].value, nodes["/n"].perms.strings()) == (b"before", ["b0"])
    assert list(nodes["/n"].children) == ["kid"] and generation == 3


def test_special_nodes_and_binary_values(tmp_path: Path) -> None:
    model, journal = Model(), Journal(tmp_path)
    model.nodes["@introduceDomain"] = Node(b"", Perms.of("n0 r3"))
    model.nodes["@releaseDomain"] = Node(b"", Perms.of("n0"))
    journal.snapshot(model.nodes, 0)
    journal.append(model.write("/bin", bytes(range(256))), model.generation)
    journal.append(model.set_perms("@releaseDomain", Perms.of("n0 b9")), model.generation)
    journal.sync()
    assert_state(fresh_load(tmp_path), model)


# --- torn tails and corruption ---------------------------------------------

def _five_records(directory: Path) -> tuple[Model, list[int]]:
    """Five synced records; returns the model after 4 and the file sizes."""
    model, journal = Model(), Journal(directory)
    journal.snapshot(model.nodes, 0)
    sizes = []
    for i in range(5):
        if i == 4:
            before = Model()
            before.nodes, before.generation = fresh_load(directory)  # type: ignore[misc]
        journal.append(model.write(f"/k{i}", b"v%d" % i * 20), model.generation)
        journal.sync()
        sizes.append((directory / JOURNAL_NAME).stat().st_size)
    journal.close()
    return before, sizes


@pytest.mark.parametrize("cut", [1, 5, 8, 9, 30, -1])
def test_torn_final_record_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                      cut: int) -> None:
    before, sizes = _five_records(tmp_path)
    keep = sizes[3] + (cut if cut > 0 else sizes[4] - sizes[3] - 1)
    os.truncate(tmp_path / JOURNAL_NAME, keep)
    with caplog.at_level(logging.WARNING, logger="xenstored.persist"):
        journal = Journal(tmp_path)
        assert_state(journal.load(), before)
    assert "torn final record" in caplog.text
    # The tear is cut off before new records, so they load after a restart.
    journal.append(before.write("/after", b"tear"), before.generation)
    journal.sync()
    assert (tmp_path / JOURNAL_NAME).stat().st_size > sizes[3]
    assert_state(fresh_load(tmp_path), before)


def test_zero_filled_tail_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    before, sizes = _five_records(tmp_path)
    with open(tmp_path / JOURNAL_NAME, "ab") as f:
        f.write(bytes(4096))  # blocks allocated, data never reached the disk
    with caplog.at_level(logging.WARNING, logger="xenstored.persist"):
        nodes, _ = fresh_load(tmp_path)  # type: ignore[misc]
    assert "/k4" in nodes and "torn final record" in caplog.text


def test_torn_record_then_zeros_is_dropped(tmp_path: Path) -> None:
    before, sizes = _five_records(tmp_path)
    path = tmp_path / JOURNAL_NAME
    data = bytearray(path.read_bytes())
    half = (sizes[3] + sizes[4]) // 2
    data[half:] = bytes(len(data) - half + 8192)  # last page lost, size grown
    path.write_bytes(bytes(data))
    assert_state(fresh_load(tmp_path), before)


def test_leftover_temp_files_are_ignored(tmp_path: Path) -> None:
    before, _ = _five_records(tmp_path)
    (tmp_path / (SNAPSHOT_NAME + ".tmp")).write_bytes(b"half a snapshot")
    (tmp_path / (JOURNAL_NAME + ".tmp")).write_bytes(b"half a journal")
    journal = Journal(tmp_path)
    nodes, generation = journal.load()  # type: ignore[misc]
    assert nodes["/k4"].value == b"v4" * 20
    journal.snapshot(nodes, generation)
    assert Journal(tmp_path).load()[0].keys() == nodes.keys()  # type: ignore[index]


def test_corruption_before_the_tail_is_an_error(tmp_path: Path) -> None:
    _, sizes = _five_records(tmp_path)
    path = tmp_path / JOURNAL_NAME
    data = bytearray(path.read_bytes())
    data[sizes[1] + 12] ^= 0xFF  # inside record 3 of 5
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptJournal, match=f"{JOURNAL_NAME}.*cut it at byte {sizes[1]}"):
        fresh_load(tmp_path)


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
def test_corrupt_snapshot_names_the_file(tmp_path: Path, damage: str) -> None:
    model, journal = Model(), Journal(tmp_path)
    for i in range(50):
        model.write(f"/a/n{i}", b"x" * i)
    journal.snapshot(model.nodes, model.generation)
    path = tmp_path / SNAPSHOT_NAME
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        del data[-10:]
    elif damage == "garbage":
        data = bytearray(b"not a snapshot at all, just text")
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptSnapshot) as info:
        fresh_load(tmp_path)
    assert str(path) in str(info.value)


def test_snapshot_with_wrong_node_count_is_corrupt(tmp_path: Path) -> None:
    model = Model()
    model.write("/a", b"1")
    frames = encode_snapshot(model.nodes, model.generation, 1)
    (tmp_path / SNAPSHOT_NAME).write_bytes(b"".join(frames[:1]))  # header only
    with pytest.raises(CorruptSnapshot, match="header says 2"):
        fresh_load(tmp_path)


# --- compaction and the snapshot/journal handover ---------------------------

def test_compaction_keeps_state(tmp_path: Path) -> None:
    model, journal = Model(), Journal(tmp_path, compact_bytes=2000)
    journal.snapshot(model.nodes, 0)
    snapshots = 0
    for i in range(300):
        journal.append(model.write(f"/d{i % 7}/k{i}", b"v" * (i % 50)), model.generation)
        if i % 10 == 0:
            journal.append(model.rm(f"/d{(i + 3) % 7}"), model.generation)
        journal.sync()
        if journal.needs_compaction:
            journal.snapshot(model.nodes, model.generation)
            assert not journal.needs_compaction
            snapshots += 1
    assert snapshots >= 5
    assert (tmp_path / JOURNAL_NAME).stat().st_size <= 2000 + 1000
    assert_state(fresh_load(tmp_path), model)


def test_records_after_the_image_carry_over_a_snapshot(tmp_path: Path) -> None:
    model, journal = Model(), Journal(tmp_path)
    journal.snapshot(model.nodes, 0)
    journal.append(model.write("/in-snapshot", b"1"), model.generation)
    journal.begin_snapshot()
    image = {p: n.copy() for p, n in model.nodes.items()}
    generation = model.generation
    journal.append(model.write("/after-image", b"2"), model.generation)  # not in image
    journal.snapshot(image, generation)
    journal.sync()
    assert_state(fresh_load(tmp_path), model)


def test_stale_journal_after_crash_mid_snapshot_is_ignored(tmp_path: Path) -> None:
    model, journal = Model(), Journal(tmp_path)
    journal.snapshot(model.nodes, 0)
    journal.append(model.write("/old", b"1"), model.generation)
    journal.append(model.write("/old", b"2"), model.generation)
    journal.sync()
    stale = (tmp_path / JOURNAL_NAME).read_bytes()
    journal.append(model.write("/old", b"3"), model.generation)
    journal.sync()
    journal.snapshot(model.nodes, model.generation)
    journal.close()
    # As if killed after the snapshot's rename, before the new journal's.
    (tmp_path / JOURNAL_NAME).write_bytes(stale)
    journal = Journal(tmp_path)
    assert_state(journal.load(), model)
    journal.append(model.write("/new", b"4"), model.generation)
    journal.sync()
    assert_state(fresh_load(tmp_path), model)


def test_kill_between_snapshot_and_journal_renames_keeps_later_records(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records appended after the image, acknowledged with no fsync, are only in
    the old journal until the new one is renamed in: load replays them."""
    import shutil

    import xenstored.persist as persist

    model, journal = Model(), Journal(tmp_path / "live")
    journal.snapshot(model.nodes, 0)
    journal.append(model.write("/before", b"1"), model.generation)
    journal.begin_snapshot()
    image = {p: n.copy() for p, n in model.nodes.items()}
    generation = model.generation
    journal.append(model.write("/after-image", b"2"), model.generation)
    journal.append(model.write("/before", b"3"), model.generation)
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == JOURNAL_NAME:  # the snapshot is renamed already
            shutil.copytree(tmp_path / "live", tmp_path / "killed")
        real_replace(src, dst)

    monkeypatch.setattr(persist.os, "replace", replace)
    journal.snapshot(image, generation)
    monkeypatch.undo()
    killed = tmp_path / "killed"
    from xenstored.persist_format import decode_snapshot

    nodes, _, epoch, base = decode_snapshot((killed / SNAPSHOT_NAME).read_bytes(), killed)
    assert "/after-image" not in nodes and base is not None and base[0] < epoch
    loaded = Journal(killed)
    assert_state(loaded.load(), model)
    live = copy.deepcopy(model)
    loaded.append(model.write("/restarted", b"4"), model.generation)  # it stays live
    assert_state(fresh_load(killed), model)
    journal.append(live.write("/later", b"5"), live.generation)  # the run not killed
    assert_state(fresh_load(tmp_path / "live"), live)


def test_journal_without_its_snapshot_is_an_error(tmp_path: Path) -> None:
    model, journal = Model(), Journal(tmp_path)
    journal.snapshot(model.nodes, 0)
    journal.append(model.write("/a", b"1"), model.generation)
    journal.sync()
    (tmp_path / SNAPSHOT_NAME).unlink()
    with pytest.raises(PersistError, match="epoch 1"):
        fresh_load(tmp_path)


def test_load_after_writing_is_refused(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append([("/", Node(b"", ROOT_PERMS))], 0)
    journal.sync()
    with pytest.raises(PersistError, match="before any write"):
        journal.load()


# --- shapes and sizes -------------------------------------------------------

def test_1500_deep_tree(tmp_path: Path) -> None:
    model, journal = Model(), Journal(tmp_path)
    deep = "/" + "/".join(["a"] * 1500)
    journal.append(model.write(deep, b"bottom"), model.generation)
    journal.sync()
    assert_state(fresh_load(tmp_path), model)
    journal.snapshot(model.nodes, model.generation)
    journal.append(model.rm("/a/a/a"), model.generation)
    journal.sync()
    loaded = fresh_load(tmp_path)
    assert_state(loaded, model)
    assert len(loaded[0]) == 3  # type: ignore[index]


@pytest.mark.timeout(60)
def test_100k_nodes_snapshot_and_load(tmp_path: Path) -> None:
    """100k nodes round-trip through a snapshot. How fast is the benchmark's
    business, not a test's: the timings are printed, never asserted (the
    timeout still catches a pathological slow-down)."""
    perms = Perms.of("b0 r1")
    nodes = {"/": Node(b"", ROOT_PERMS)}
    for d in range(100):
        nodes["/"].children[f"d{d}"] = None
        nodes[f"/d{d}"] = Node(b"", perms, {}, d)
        for k in range(999):
            nodes[f"/d{d}"].children[f"k{k}"] = None
            nodes[f"/d{d}/k{k}"] = Node(b"value-%d" % k, perms, {}, d * 1000 + k)
    assert len(nodes) == 100_001
    start = time.perf_counter()
    encode_snapshot(nodes, 100_000, 1)
    encoded = time.perf_counter()
    Journal(tmp_path).snapshot(nodes, 100_000)
    written = time.perf_counter()
    loaded, generation = fresh_load(tmp_path)  # type: ignore[misc]
    done = time.perf_counter()
    print(f"100k nodes: encode {encoded - start:.3f}s, snapshot {written - encoded:.3f}s, "
          f"load {done - written:.3f}s")
    assert generation == 100_000 and loaded.keys() == nodes.keys()
    assert list(loaded["/d42"].children) == [f"k{k}" for k in range(999)]
    assert loaded["/d7/k5"].value == b"value-5"


def test_concurrent_append_and_sync_threads(tmp_path: Path) -> None:
    journal, count = Journal(tmp_path), 20_000
    journal.load()
    done = threading.Event()

    def syncer() -> None:
        while not done.is_set():
            journal.sync()

    thread = threading.Thread(target=syncer)
    thread.start()
    perms = Perms.of("b0")
    for i in range(1, count + 1):
        journal.append([(f"/k{i}", Node(b"%d" % i, perms, {}, i))], i)
    done.set()
    thread.join()
    journal.sync()
    nodes, generation = fresh_load(tmp_path)  # type: ignore[misc]
    assert generation == count and len(nodes) == count
    assert list(nodes) == [f"/k{i}" for i in range(1, count + 1)]  # in order
    assert 1 < journal.fsync_count <= count


# --- SIGKILL right after append() --------------------------------------------

CHILD = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[2])
    from pathlib import Path
    from xenstored.node import Node
    from xenstored.perms import Perms
    from xenstored.persist import Journal

    journal = Journal(Path(sys.argv[1]), compact_bytes=6000)
    nodes, generation = journal.load() or ({"/": Node(b"", Perms.of("n0"))}, 0)
    perms = Perms.of("b0")
    while True:
        generation += 1
        name = "k%d" % generation
        nodes["/"].children[name] = None
        nodes["/" + name] = Node(b"v%d" % generation * 10, perms, {}, generation)
        journal.append([("/", nodes["/"]), ("/" + name, nodes["/" + name])], generation)
        os.write(1, b"%d\\n" % generation)   # acknowledged: no fsync before it
        if journal.needs_compaction:
            journal.snapshot(nodes, generation)
""")


@pytest.mark.timeout(120)
def test_sigkill_after_append_loses_nothing(tmp_path: Path) -> None:
    acked = 0
    for round_, acks in enumerate([40, 7, 130, 1, 60, 15]):
        with subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(REPO)],
                              stdout=subprocess.PIPE) as child:
            assert child.stdout is not None
            for _ in range(acks):
                line = child.stdout.readline()
                assert line, f"child died early in round {round_}"
                acked = int(line)
            child.send_signal(signal.SIGKILL)
            rest = child.stdout.read()  # acknowledgements printed before it died
        assert child.returncode == -signal.SIGKILL
        if rest.split():
            acked = int(rest.split()[-1])
        nodes, generation = fresh_load(tmp_path)  # type: ignore[misc]
        assert generation >= acked
        for k in range(1, acked + 1):
            assert nodes[f"/k{k}"].value == b"v%d" % k * 10
        assert list(nodes["/"].children)[:acked] == [f"k{k}" for k in range(1, acked + 1)]
    assert (tmp_path / SNAPSHOT_NAME).exists()  # compaction ran under the kills
