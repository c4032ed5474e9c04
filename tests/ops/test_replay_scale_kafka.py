"""``shaping replay`` against Kafka on a log large enough to have stalled the old reader, split
across worker processes: it finishes, and every event is folded.

The old stall: replay paused a partition whose buffer was full and resumed it when drained, and
kafka-python 3.0.12 leaves the records it had fetched for a paused partition parked, so some
partitions never delivered again ("no progress" at 376,000 of a million events). The readers
now pause nothing: each worker reads its partitions one after the other, each in offset order.
Here 60,000 trial events over 4 partitions, with both clients, are replayed into fresh tables
and a fresh processor group; the hand-over must hold one state per mouse that has folded every
one of its messages, and the tables every session's decision.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from kafka import KafkaProducer
from typer.testing import CliRunner

from bench.workload import build_workload, encode
from shaping.schemas.codec import default_codec
from shaping.schemas.topics import TopicNames
from shaping.services.cli import app
from shaping.services.curricula.catalog import default_catalog
from shaping.services.operator.replay.handover import ProcessorHandover
from shaping.services.operator.replay.log import kafka_offsets
from shaping.services.operator.replay.run import run_replay
from shaping.services.operator.replay.sources import KafkaSource
from shaping.services.processor.state_store import decode_state
from tests.support.wiring import sql_store

pytestmark = pytest.mark.kafka

MICE, SESSIONS, TRIALS = 24, 10, 250  # 60,000 trial events


@pytest.fixture(scope="module")
def history() -> Any:
    """The encoded history (generated once for the module)."""
    workload = build_workload(MICE, SESSIONS, TRIALS, tag="K")
    return workload, encode(workload.events())


def publish(bootstrap: str, topic: str, keys: list[bytes], values: list[bytes]) -> None:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="shaping-tests-replay-scale",
        acks="all",
        linger_ms=20,
        batch_size=256 * 1024,
    )
    try:
        for key, value in zip(keys, values, strict=True):
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=120)
    finally:
        producer.close()


def check_everything_folded(
    bootstrap: str,
    topics: TopicNames,
    processor_id: str,
    db_url: str,
    history: Any,
) -> None:
    """One state per mouse on the changelog, each at the last offset of its mouse's messages;
    the tables hold every session's decision; the group's offsets are at the ends."""
    workload, encoded = history
    ends = {p: end for (_, p), (_, end) in kafka_offsets(bootstrap, [topics.events]).items()}
    handover = ProcessorHandover(bootstrap, processor_id)
    stored = handover.read_states()
    assert len(stored) == MICE
    last_offset: dict[str, int] = {}
    for partition, value in stored.values():
        assert value is not None
        state = decode_state(value)
        [(position, offset)] = state.input_offsets.items()
        assert position == f"{topics.events}/{partition}"
        last_offset[state.mouse_id] = offset
        assert state.session_total == SESSIONS  # every session folded
    assert set(last_offset) == set(workload.mice)
    # The last message of each partition is some mouse's last: each partition was read to its
    # end.
    for partition, end in ends.items():
        mice = [m for m in last_offset if stored_partition(stored, m) == partition]
        assert (max(last_offset[m] for m in mice) + 1 if mice else 0) == end
    assert handover.committed(topics.events) == {p: end for p, end in ends.items() if end}
    store = sql_store(db_url)
    try:
        tables = store.snapshot()
    finally:
        store.close()
    assert len(tables["decision_log"]) == MICE * SESSIONS
    assert len(tables["mouse_status"]) == MICE
    assert sum(row["n_trials"] or 0 for row in tables["session_summaries"]) == encoded.n_trials


def stored_partition(stored: dict[bytes, tuple[int, bytes | None]], mouse: str) -> int:
    return stored[mouse.encode("utf-8")][0]


def fresh_db(folder: Path) -> str:
    url = f"sqlite:///{folder / 'shaping.sqlite'}"
    sql_store(url).close()
    return url


@pytest.mark.timeout(600)
@pytest.mark.parametrize("reader", ["confluent", "kafka-python"])
def test_a_large_kafka_log_is_replayed_to_the_end_by_workers(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path, history: Any, reader: str
) -> None:
    _, encoded = history
    publish(kafka_bootstrap, kafka_topics.events, encoded.keys, encoded.values)
    db_url = fresh_db(tmp_path)
    processor_id = f"replay-scale-{uuid4().hex[:8]}"
    source = KafkaSource(
        kafka_bootstrap,
        kafka_topics,
        default_codec(),
        default_catalog,
        reader=reader,  # type: ignore[arg-type]
    )
    ticks: list[int] = []
    started = time.monotonic()
    summary = run_replay(
        source,
        db_url,
        codec=default_codec(),
        handover=ProcessorHandover(kafka_bootstrap, processor_id),
        progress=lambda total: ticks.append,
        workers=2,
    )
    elapsed = time.monotonic() - started

    assert summary.events == len(encoded) and sum(ticks) == len(encoded)
    assert summary.workers == 2 and not summary.merged_again
    assert summary.mice == MICE and summary.states_written == MICE
    assert summary.switched
    assert 0 < summary.peak_rss_mb < 2000
    check_everything_folded(kafka_bootstrap, kafka_topics, processor_id, db_url, history)
    assert elapsed < 480, f"replaying {len(encoded)} events took {elapsed:.0f} s"


@pytest.mark.timeout(600)
def test_shaping_replay_from_kafka_prints_its_workers_and_peak_memory(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path, history: Any
) -> None:
    _, encoded = history
    publish(kafka_bootstrap, kafka_topics.events, encoded.keys, encoded.values)
    db_url = fresh_db(tmp_path)
    processor_id = f"replay-scale-{uuid4().hex[:8]}"
    result = CliRunner().invoke(
        app,
        [
            "replay",
            "--bootstrap",
            kafka_bootstrap,
            "--prefix",
            kafka_topics.events.removesuffix(".events"),
            "--db-url",
            db_url,
            "--processor-id",
            processor_id,
            "--workers",
            "2",
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert f"replayed {len(encoded)} events of {MICE} mice" in result.stdout
    assert "2 workers; peak memory" in result.stdout
    check_everything_folded(kafka_bootstrap, kafka_topics, processor_id, db_url, history)
