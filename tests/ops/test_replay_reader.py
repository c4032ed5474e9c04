"""Replay's Kafka reader (``read_kafka``) on the real broker: every record of the snapshot once,
each partition in offset order, partitions merged by broker timestamp, nothing past a
partition's end bound, and no stall however often it has to switch between partitions.

The regression: kafka-python 3.0.12 leaves the fetched records of a paused partition parked
after it is resumed, so the old reader (pause a partition whose buffer is full, resume it when
drained) stopped delivering some partitions and ended in "no progress" on large logs. Small
per-partition buffers make the switching frequent here, so a few tens of thousands of records
show it.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from datetime import UTC, datetime

import pytest
from kafka import KafkaProducer

from shaping.schemas.topics import TopicNames
from shaping.services.operator.replay.log import SourceRecord, kafka_offsets, read_kafka

pytestmark = pytest.mark.kafka

RECORDS = 40_000
BASE_MS = int(datetime(2026, 1, 5, tzinfo=UTC).timestamp() * 1000)

Published = dict[int, list[tuple[int, bytes]]]
"""Per partition: (offset, value) of every record published, in offset order."""


def publish(bootstrap: str, topic: str, count: int, partitions: list[int], seed: int) -> Published:
    """``count`` small records spread at random over ``partitions``, timestamps rising by 1 ms
    every few records (so partitions interleave in time and share some timestamps)."""
    rng = random.Random(seed)
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="shaping-tests-reader",
        acks="all",
        linger_ms=20,
        batch_size=64 * 1024,
    )
    try:
        futures = []
        for i in range(count):
            partition = rng.choice(partitions)
            value = b"r%06d" % i
            future = producer.send(
                topic,
                key=b"k%d" % partition,
                value=value,
                partition=partition,
                timestamp_ms=BASE_MS + i // 3,
            )
            futures.append((future, value))
        producer.flush(timeout=60)
        published: Published = defaultdict(list)
        for future, value in futures:
            meta = future.get(timeout=60)
            published[meta.partition].append((meta.offset, value))
    finally:
        producer.close()
    for records in published.values():
        records.sort()
    return published


def read(
    bootstrap: str,
    bounds: dict[tuple[str, int], tuple[int, int]],
    buffer: int = 2000,
    fetch_bytes: int | None = None,
    timeout_s: float = 20.0,
) -> list[SourceRecord]:
    """Everything ``read_kafka`` yields, with a small no-progress timeout (a stall fails fast)."""
    reader = read_kafka(
        bootstrap,
        bounds,
        "shaping-tests-replay-reader",
        buffer=buffer,
        fetch_bytes=fetch_bytes,
        timeout_s=timeout_s,
    )
    return list(reader)


def assert_merged(records: list[SourceRecord]) -> None:
    """Partitions merged by broker timestamp, then partition, then offset."""
    keys = [
        (r.timestamp.timestamp() if r.timestamp else 0.0, r.partition, r.offset) for r in records
    ]
    out_of_order = [i for i in range(1, len(keys)) if keys[i] < keys[i - 1]]
    assert not out_of_order, (
        f"{len(out_of_order)} records out of merge order, first at {out_of_order[0]}"
    )


def per_partition(records: list[SourceRecord]) -> Published:
    got: Published = defaultdict(list)
    for record in records:
        got[record.partition].append((record.offset, record.value or b""))
    return got


@pytest.mark.kafka
@pytest.mark.timeout(180)
def test_small_buffers_read_every_record_once_in_partition_order(
    kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    topic = kafka_topics.events
    published = publish(kafka_bootstrap, topic, RECORDS, [0, 1, 2, 3], seed=11)
    bounds = kafka_offsets(kafka_bootstrap, [topic])
    assert sum(end - begin for begin, end in bounds.values()) == RECORDS

    started = time.monotonic()
    records = read(kafka_bootstrap, bounds, buffer=100, fetch_bytes=256 * 1024, timeout_s=20.0)
    elapsed = time.monotonic() - started

    assert len(records) == RECORDS
    got = per_partition(records)
    for partition in range(4):
        assert got[partition] == published[partition], f"partition {partition} differs"
    assert_merged(records)
    assert elapsed < 60, f"reading {RECORDS} records took {elapsed:.1f} s"


@pytest.mark.kafka
@pytest.mark.timeout(120)
def test_bounds_are_kept_and_empty_partitions_do_not_block(
    kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    events, decisions = kafka_topics.events, kafka_topics.decisions
    on_events = publish(kafka_bootstrap, events, 3000, [0, 1], seed=3)  # 2 and 3 stay empty
    on_decisions = publish(kafka_bootstrap, decisions, 700, [0, 3], seed=5)
    bounds = kafka_offsets(kafka_bootstrap, [events, decisions])
    assert bounds[(events, 2)] == (0, 0) and bounds[(events, 3)] == (0, 0)
    begin_1, end_1 = bounds[(events, 1)]
    bounds[(events, 1)] = (begin_1 + 100, end_1 - 100)  # a slice of the partition
    end_0 = bounds[(events, 0)][1]
    bounds[(decisions, 3)] = (7, 7)  # an empty range of a partition that has records
    # Records after the snapshot's ends must not be read.
    later = publish(kafka_bootstrap, events, 400, [0, 1], seed=9)
    assert later[0] and later[1]

    started = time.monotonic()
    records = read(kafka_bootstrap, bounds, buffer=50, fetch_bytes=4096, timeout_s=20.0)
    assert time.monotonic() - started < 60

    got: dict[tuple[str, int], list[tuple[int, bytes]]] = defaultdict(list)
    for record in records:
        got[(record.topic, record.partition)].append((record.offset, record.value or b""))
    assert got == {
        (events, 0): [r for r in on_events[0] if r[0] < end_0],
        (events, 1): [r for r in on_events[1] if begin_1 + 100 <= r[0] < end_1 - 100],
        (decisions, 0): on_decisions[0],
    }
    assert_merged(records)


@pytest.mark.kafka
def test_nothing_to_read(kafka_bootstrap: str, kafka_topics: TopicNames) -> None:
    bounds = kafka_offsets(kafka_bootstrap, [kafka_topics.events])
    assert read(kafka_bootstrap, bounds) == []
