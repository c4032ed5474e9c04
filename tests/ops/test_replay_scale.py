"""The replay's fold split by partition across processes gives what the fold in one process,
partitions merged, gave before it: the same states, the same table rows, the same messages to
publish, on a mixed log (training, refused events, bytes that are no event, foreign records on
the output topics) spread over several partitions of the events topic.

The reference here is the fold as replay ran it before the split: every input message, in log
order, through the processor's step into the fresh tables row by row (:class:`Rebuild` with the
store itself); the new one is :func:`run._fold` (workers, each partition streamed, an in-memory
projection per worker) and :func:`write_rows` (the fresh tables in bulk).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from shaping.schemas.codec import default_codec
from shaping.schemas.errors import SerializationError
from shaping.schemas.topics import TopicNames
from shaping.services.curricula.catalog import default_catalog
from shaping.services.operator.replay import fold as fold_module
from shaping.services.operator.replay import run as run_module
from shaping.services.operator.replay.fold import Rebuild
from shaping.services.operator.replay.log import iter_jsonl
from shaping.services.operator.replay.parallel import (
    partition_groups,
    peak_rss_mb,
    spill_dir,
    spilled,
)
from shaping.services.operator.replay.pins import PinnedCore
from shaping.services.operator.replay.reconcile import Reconciler, content_of
from shaping.services.operator.replay.sources import JsonlSource
from shaping.services.operator.replay.tables import write_rows
from shaping.services.processor.step import ProcessorStep
from shaping.services.projector.store import SqlProjectionStore
from shaping.services.projector.tables import metadata, projector_offsets
from tests.support.replay_logs import record, refused_and_foreign
from tests.support.wiring import sql_store

PARTITIONS = 3
TOPICS = TopicNames.with_prefix("shaping")


def spread(log: Path, partitions: int = PARTITIONS) -> dict[str, int]:
    """Rewrites the log with the events topic spread over ``partitions`` partitions by key (as
    Kafka's partitioner does: one key, one partition; here the keys in turn), offsets
    renumbered per partition, the order of the lines kept. Returns each key's partition."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    keys = sorted({str(line.get("key")) for line in lines if line["topic"] == TOPICS.events})
    partition_of = {key: index % partitions for index, key in enumerate(keys)}
    offsets: dict[int, int] = defaultdict(int)
    for line in lines:
        if line["topic"] != TOPICS.events:
            continue
        partition = partition_of[str(line.get("key"))]
        line["partition"], line["offset"] = partition, offsets[partition]
        offsets[partition] += 1
    assert len(offsets) == partitions
    log.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))
    return partition_of


def every_table(store: SqlProjectionStore) -> dict[str, list[dict[str, Any]]]:
    """Every table but the projector's offsets, rows sorted (the bookkeeping too)."""
    snapshot = store.snapshot()
    with store.engine.connect() as conn:
        for table in metadata.sorted_tables:
            if table.name in snapshot or table.name == projector_offsets.name:
                continue
            rows = [dict(r) for r in conn.execute(table.select()).mappings()]
            snapshot[table.name] = sorted(rows, key=lambda r: json.dumps(r, default=str))
    return snapshot


def reference_fold(source: JsonlSource, before: Any, db: Path) -> tuple[Any, Any, list[Any]]:
    """The fold as replay ran it in one process: states, tables, messages to publish."""
    codec = default_codec()
    live, pins = run_module._live_and_pins(source, codec, before)
    reconciler = Reconciler(live, codec)
    step = ProcessorStep(PinnedCore(source.catalog(), pins), codec)
    store = SqlProjectionStore(f"sqlite:///{db}", codec=codec)
    try:
        rebuild = Rebuild(step, source.topics, reconciler, store)
        for message in pins.read(source.inputs()):
            rebuild.feed(message)
        rebuild.finish()
        published = [(m.topic_kind, m.key, m.value) for m in reconciler.to_publish]
        return rebuild.states, every_table(store), published
    finally:
        store.close()


def new_fold(
    source: JsonlSource, before: Any, db: Path, workers: int
) -> tuple[Any, Any, list[Any], run_module.Folded]:
    """The fold split across ``workers`` processes, the tables written in bulk."""
    codec = default_codec()
    spill = spill_dir()
    folded = run_module._fold(source, codec, before, None, spill, source.snapshot(), None, workers)
    store = SqlProjectionStore(f"sqlite:///{db}", codec=codec)
    try:
        write_rows(store, (r.rows for r in folded.results))
        tables = every_table(store)
    finally:
        store.close()
    published = [(m.topic_kind, m.key, m.value) for r in folded.results for m in spilled(r.spill)]
    return folded.states, tables, published, folded


def undated(published: list[Any]) -> list[Any]:
    """The messages without the date of a dead letter of bytes that could not be decoded (the
    step dates it with the time it runs when the log has no broker time): what replay compares
    (:func:`content_of`), with the id."""
    codec = default_codec()
    shown = []
    for kind, key, value in published:
        event = codec.decode(value)
        shown.append((kind, key, event.event_id, content_of(event)))
    return shown


def undated_rows(tables: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The tables, with the same dates left out of ``rejected_events``: those of the dead
    letters of bytes that are no event (the processor's own, made with no cause)."""
    codec = default_codec()
    rows = []
    for row in tables["rejected_events"]:
        try:
            codec.decode(bytes.fromhex(row["original_value_hex"]))
        except SerializationError:
            row = {**row, "occurred_at": None}
        rows.append(row)
    return {**tables, "rejected_events": rows}


def by_key(published: list[Any]) -> dict[bytes, list[Any]]:
    """The messages to publish of each key, in order (the order that matters: one mouse's)."""
    found: dict[bytes, list[Any]] = defaultdict(list)
    for message in undated(published):
        found[message[1]].append(message)
    return dict(found)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[JsonlSource, Any, dict[str, int]]:
    """A trained lab with refused and foreign records, its events spread over 3 partitions;
    the live tables are those of the lab before the spread (so replay finds differences: the
    dead letters name other positions now)."""
    folder = tmp_path_factory.mktemp("mixed")
    recorded = record(folder / "lab", refused_and_foreign)
    partition_of = spread(recorded.log)
    store = sql_store(recorded.db_url)
    try:
        before = store.snapshot()
    finally:
        store.close()
    source = JsonlSource(recorded.log, TOPICS, default_codec(), default_catalog)
    source.snapshot()
    return source, before, partition_of


@pytest.mark.timeout(300)
@pytest.mark.parametrize("workers", [1, 2, PARTITIONS])
def test_the_split_fold_gives_what_the_fold_in_one_process_gave(
    mixed: tuple[JsonlSource, Any, dict[str, int]], tmp_path: Path, workers: int
) -> None:
    source, before, partition_of = mixed
    states, tables, published = reference_fold(source, before, tmp_path / "old.sqlite")
    got_states, got_tables, got_published, folded = new_fold(
        source, before, tmp_path / "new.sqlite", workers
    )

    assert folded.workers == min(workers, PARTITIONS)
    assert not folded.merged_again
    assert sum(r.processed for r in folded.results) == source.snapshot()
    assert got_states == states
    assert folded.partition_of == {mouse: partition_of[mouse] for mouse in states}
    assert undated_rows(got_tables) == undated_rows(tables)
    assert sum(len(rows) for rows in tables.values()) > 50  # the comparison compared something
    assert by_key(got_published) == by_key(published)
    assert sorted(undated(got_published)) == sorted(undated(published))
    assert published  # the spread log's dead letters differ from the live ones, at least


@pytest.mark.timeout(300)
def test_a_curriculum_published_on_the_events_topic_folds_the_log_again_merged(
    mixed: tuple[JsonlSource, Any, dict[str, int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that accepts a CurriculumPublished (here: told so for one mouse's enrolment)
    makes the run fold everything again in one process, partitions merged, as before."""
    source, before, _ = mixed
    states, tables, published = reference_fold(source, before, tmp_path / "old.sqlite")
    feed = fold_module.Rebuild.feed

    def feed_saying_published(self: Rebuild, message: Any) -> bool:
        return feed(self, message) or message.key == b"M002"

    monkeypatch.setattr(fold_module.Rebuild, "feed", feed_saying_published)
    got_states, got_tables, got_published, folded = new_fold(
        source, before, tmp_path / "new.sqlite", 2
    )
    assert folded.merged_again and folded.workers == 1
    assert got_states == states
    assert undated_rows(got_tables) == undated_rows(tables)
    assert undated(got_published) == undated(published)  # one process, log order: same order


def test_partition_groups_share_messages_out_evenly() -> None:
    groups = partition_groups([(0, 100), (1, 10), (2, 90), (3, 0), (4, 20)], 2)
    assert sorted(groups) == [[0, 1], [2, 4]]  # 110 messages each
    assert partition_groups([(0, 5), (1, 5)], 8) == [[0], [1]]
    assert partition_groups([(0, 0)], 2) == []


def test_the_embedded_log_is_streamed(mixed: tuple[JsonlSource, Any, dict[str, int]]) -> None:
    """Reading a partition of the embedded log yields its records in offset order, lazily."""
    source, _, _ = mixed
    for partition, size in source.partitions():
        records = source.read_partition(partition)
        first = next(records)
        assert (first.partition, first.offset) == (partition, 0)
        rest = list(records)
        assert [r.offset for r in rest] == list(range(1, size))
    lines = sum(1 for _ in iter_jsonl(source.path, TOPICS.events))
    assert lines == source.snapshot()


def test_replay_with_workers_on_a_spread_log_switches_to_the_reference_tables(
    mixed: tuple[JsonlSource, Any, dict[str, int]], tmp_path: Path
) -> None:
    """``shaping replay --events-log --workers 3`` end to end: the live tables afterwards are
    the reference fold's, and it reports its workers and peak memory."""
    from tests.support.replay_logs import invoke

    source, before, _ = mixed
    folder = tmp_path / "copy"
    folder.mkdir()
    log = folder / "events.jsonl"
    log.write_bytes(source.path.read_bytes())
    db = folder / "shaping.sqlite"
    db.write_bytes((source.path.parent / "shaping.sqlite").read_bytes())
    copy = JsonlSource(log, TOPICS, default_codec(), default_catalog)
    copy.snapshot()
    _, tables, published = reference_fold(copy, before, tmp_path / "old.sqlite")

    result = invoke(
        ["replay", "--events-log", str(log), "--db-url", f"sqlite:///{db}", "--workers", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "3 workers; peak memory" in result.stdout
    store = sql_store(f"sqlite:///{db}")
    try:
        after = store.snapshot()
    finally:
        store.close()
    assert undated_rows(after) == undated_rows({k: v for k, v in tables.items() if k in after})
    appended = [r for r in iter_jsonl(log) if r.topic != TOPICS.events][-len(published) :]
    kinds = {getattr(TOPICS, kind): kind for kind, _, _ in published}
    assert sorted(undated([(kinds[r.topic], r.key, r.value) for r in appended])) == sorted(
        undated(published)
    )


def test_peak_memory_is_this_address_space_high_water_mark(tmp_path: Path) -> None:
    """VmHWM, not ru_maxrss: the latter survives exec, so a replay started by a big process
    (the benchmark, holding a generated history) reported that process's peak as its own."""
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t 9999999 kB\nVmHWM:\t  204800 kB\nVmRSS:\t 1 kB\n")
    assert peak_rss_mb(status) == 200.0
    fallback = peak_rss_mb(tmp_path / "absent")  # no /proc: ru_maxrss
    assert 1 < fallback < 100_000
