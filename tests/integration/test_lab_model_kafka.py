"""The model-based lab (tests/property/test_lab_model.py) on the real stack: a few random lab
histories, garbage and refusals included, sent to a real processor on Kafka and projected into
a real PostgreSQL, give the tables of the fold of the accepted events."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer

from shaping.schemas.codec import default_codec
from shaping.schemas.errors import SerializationError
from shaping.schemas.events import CurriculumPublished
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.topics import ensure_topics, wait_for_partitions
from shaping.services.projector.runner import run_projector
from tests.support.kafka import TEST_PARTITIONS
from tests.support.kafka_io import Publisher
from tests.support.lab_model import ACTION, run_history, tables
from tests.support.processor import ProcessorRunner
from tests.support.wiring import sql_store

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

CODEC = default_codec()


def _processed_everything(bootstrap: str, group: str, topic: str, timeout_s: float) -> None:
    """Waits until the processor's group has committed the end of every partition of topic."""
    reader = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    group_view = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    try:
        partitions = wait_for_partitions(reader, [topic]) or []
        ends = reader.end_offsets(partitions)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all((group_view.committed(tp) or 0) >= end for tp, end in ends.items()):
                return
            time.sleep(0.5)
        raise AssertionError(f"the processor did not commit the end of {topic} in time")
    finally:
        reader.close()
        group_view.close()


def _differences(a: dict[str, list[Any]], b: dict[str, list[Any]]) -> str:
    """The rows that differ, table by table (for a failure message)."""
    lines = []
    for name in sorted(set(a) | set(b)):
        left = [row for row in a.get(name, []) if row not in b.get(name, [])]
        right = [row for row in b.get(name, []) if row not in a.get(name, [])]
        lines += [f"{name} kafka: {row}" for row in left]
        lines += [f"{name} fold:  {row}" for row in right]
    return "\n".join(lines)


def _is_publication(value: bytes | None) -> bool:
    try:
        return isinstance(CODEC.decode(value), CurriculumPublished)
    except SerializationError:
        return False


@settings(
    max_examples=2,
    deadline=None,
    derandomize=True,
    # A failing history is printed as it is: shrinking it on the real stack takes too long.
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(ACTION.filter(lambda a: a[0] != "redeliver"), min_size=15, max_size=30))
def test_kafka_and_postgres_tables_are_the_fold_of_the_accepted_events(
    kafka_bootstrap: str,
    postgres_url: str,
    tmp_path_factory: Any,
    actions: list[tuple[Any, ...]],
) -> None:
    folder: Path = tmp_path_factory.mktemp("lab-kafka")
    # The same history on the embedded path tells what the step accepts.
    # Enrolments name their version: one that names none gets the newest version the processor
    # knows when it handles it, and a publication reaches the partitions independently, so on
    # Kafka that depends on timing (docs/integrity.md); the embedded log has one partition.
    history = run_history(actions, folder, pin="0.1.0")
    topics = TopicNames.with_prefix(f"lab{uuid4().hex[:6]}")
    ensure_topics(kafka_bootstrap, topics, partitions=TEST_PARTITIONS)
    processors = ProcessorRunner(kafka_bootstrap, topics, folder)
    group = f"processor-{uuid4().hex[:8]}"
    store = sql_store(postgres_url)
    try:
        processors.start(group)
        with Publisher(kafka_bootstrap, topics.events) as publisher:
            for key, value in history.lab.sent:
                if _is_publication(value):
                    # As `shaping curriculum publish` does: a copy on every partition, ahead of
                    # what follows it there (the embedded log has one partition).
                    for partition in range(TEST_PARTITIONS):
                        publisher.producer.send(
                            topics.events, key=key, value=value, partition=partition
                        )
                    publisher.producer.flush()
                else:
                    publisher.raw(key, value)
        _processed_everything(kafka_bootstrap, group, topics.events, 120)
        store.reset()
        run_projector(kafka_bootstrap, topics, store, CODEC, idle_exit_s=3.0)
        kafka, fold = tables(store), tables(history.fold_store)
        assert kafka == fold, _differences(kafka, fold)
        assert kafka == tables(history.lab_store)
        rejected = [o for o in history.lab.step.seen if o[2] == "rejected"]
        assert len(store.snapshot()["rejected_events"]) == len(rejected)
    finally:
        processors.kill_all()
        store.close()
        history.close()
