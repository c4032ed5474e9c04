"""The ProjectionStore contract against a real PostgreSQL, and the projector fed by real Kafka.

The contract is the suite in ``tests/support/projection_contract.py``; here its ``store`` is a
:class:`SqlProjectionStore` on the session's PostgreSQL (``postgres_url``), emptied with
``reset()`` before every test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer

from shaping.schemas.codec import default_codec, encode_key
from shaping.schemas.topics import TopicNames
from shaping.services.projector.runner import run_projector
from shaping.services.projector.store import ProjectionStore, SqlProjectionStore
from tests.support.builders import Published
from tests.support.projection_contract import (
    CONSUMER,
    ProjectionStoreContract,
    projected_ids,
    scenario,
    split,
    to_messages,
)
from tests.support.wiring import sql_store

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[SqlProjectionStore]:
    """An emptied projection store on the session's PostgreSQL."""
    store = sql_store(postgres_url)
    store.reset()
    yield store
    store.close()


class TestPostgresProjectionStore(ProjectionStoreContract):
    """The contract against PostgreSQL."""

    # Each example drops and recreates the tables, which costs more on a server.
    interleaving_examples = 50

    @pytest.fixture
    def store(self, pg_store: SqlProjectionStore) -> Iterator[ProjectionStore]:
        yield pg_store

    def test_same_snapshot_as_sqlite(self, store: ProjectionStore, tmp_path: Path) -> None:
        messages = to_messages(scenario())
        lite = sql_store(f"sqlite:///{tmp_path / 'projection.db'}")
        try:
            for batch in split(messages, {11, 40}):
                lite.apply_batch(CONSUMER, batch)
                store.apply_batch(CONSUMER, batch)
            assert store.snapshot() == lite.snapshot()
            assert store.committed_offsets(CONSUMER) == lite.committed_offsets(CONSUMER)
        finally:
            lite.close()


def _publish(bootstrap: str, topics: TopicNames, published: list[Published]) -> int:
    """Publishes the story keyed by mouse, as rigs and the processor would: a rig's event that
    the processor accepted reaches the accepted topic, garbage stays on the events topic (which
    the projector does not read). Returns how many messages went to the projector's topics."""
    topic_of = {
        "events": topics.accepted,
        "decisions": topics.decisions,
        "assignments": topics.assignments,
        "dead_letter": topics.dead_letter,
    }
    codec = default_codec()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    projected = 0
    try:
        for item in published:
            if item.event is None:
                producer.send(topics.events, key=encode_key(item.mouse_id), value=item.raw)
                continue
            value = codec.encode(item.event)
            producer.send(topic_of[item.kind], key=encode_key(item.mouse_id), value=value)
            projected += 1
        producer.flush(timeout=30)
    finally:
        producer.close()
    return projected


@pytest.mark.kafka
def test_projection_from_kafka_equals_in_process_projection(
    kafka_bootstrap: str, kafka_topics: TopicNames, pg_store: SqlProjectionStore, tmp_path: Path
) -> None:
    published = scenario()
    sent = _publish(kafka_bootstrap, kafka_topics, published)

    started = time.monotonic()
    consumed = run_projector(
        kafka_bootstrap,
        kafka_topics,
        pg_store,
        default_codec(),
        consumer=CONSUMER,
        idle_exit_s=3,
        batch_size=16,
    )
    elapsed = time.monotonic() - started
    assert consumed == sent
    assert elapsed < 60

    # The same story through the embedded path (no Kafka, one partition layout of our own, an
    # order in which the topics interleave differently) gives the same tables.
    lite = sql_store(f"sqlite:///{tmp_path / 'embedded.db'}")
    try:
        messages = to_messages(published)
        assert lite.apply_batch(CONSUMER, messages) == len(projected_ids(messages))
        assert pg_store.snapshot() == lite.snapshot()
    finally:
        lite.close()

    # Every partition's tracking record is at the end of the log: a restart reads nothing.
    offsets = pg_store.committed_offsets(CONSUMER)
    assert sum(offsets.values()) == sent
    snap = pg_store.snapshot()
    stop = threading.Event()
    timer = threading.Timer(2.0, stop.set)
    timer.start()
    try:
        assert (
            run_projector(
                kafka_bootstrap,
                kafka_topics,
                pg_store,
                default_codec(),
                consumer=CONSUMER,
                stop=stop,
            )
            == 0
        )
    finally:
        timer.cancel()
    assert pg_store.snapshot() == snap
    assert pg_store.committed_offsets(CONSUMER) == offsets
