"""Small kafka-python helpers for tests: publish events or raw bytes, read topics back.

:class:`Publisher` writes like a rig does (acks=all, idempotent, keyed by mouse id).
:class:`TopicReader` reads whole topics from the beginning without a consumer group and keeps
every record it has seen, so a test can wait for a condition over everything published so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from shaping.schemas.codec import default_codec, encode_key
from shaping.schemas.errors import SerializationError
from shaping.schemas.events import Event
from shaping.services.adapters.topics import wait_for_partitions

DEFAULT_TIMEOUT_S = 60.0


class Publisher:
    """Publishes Shaping events (or any bytes) to a topic, keyed by mouse id."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.codec = default_codec()
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="shaping-tests-publisher",
            acks="all",
            enable_idempotence=True,
        )

    def events(self, events: Iterable[Event]) -> list[bytes]:
        """Publishes events in order, waits until the broker has them; returns their bytes."""
        values = []
        for event in events:
            value = self.codec.encode(event)
            self.producer.send(self.topic, key=encode_key(event.mouse_id), value=value)
            values.append(value)
        self.producer.flush()
        return values

    def raw(self, key: bytes | None, value: bytes) -> None:
        """Publishes arbitrary bytes and waits until the broker has them."""
        self.producer.send(self.topic, key=key, value=value).get(timeout=30)

    def close(self) -> None:
        self.producer.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class ReadRecord:
    """One record read back, with its decoded event (None if it does not decode)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    event: Event | None


class TopicReader:
    """Reads topics from offset 0 (no consumer group) and remembers every record.

    Args:
        bootstrap: Kafka bootstrap servers.
        topics: topics to read, all partitions of each.
    """

    def __init__(self, bootstrap: str, topics: Sequence[str]) -> None:
        self.codec = default_codec()
        self.records: list[ReadRecord] = []
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id="shaping-tests-reader",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        partitions = wait_for_partitions(self.consumer, list(topics), 30.0) or []
        self.consumer.assign(partitions)
        self.consumer.seek_to_beginning(*partitions)

    def poll(self, timeout_s: float = 0.5) -> list[ReadRecord]:
        """Reads what has arrived (waiting at most ``timeout_s``); returns the new records."""
        new = []
        batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000))
        for batch in batches.values():
            for msg in batch:
                event: Event | None
                try:
                    event = self.codec.decode(msg.value)
                except SerializationError:
                    event = None
                new.append(
                    ReadRecord(msg.topic, msg.partition, msg.offset, msg.key, msg.value, event)
                )
        self.records.extend(new)
        return new

    def wait_for(
        self,
        condition: Callable[[list[ReadRecord]], Any],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        what: str = "the expected records",
        on_timeout: Callable[[], str] | None = None,
    ) -> Any:
        """Polls until ``condition(all records so far)`` is truthy; returns its value.

        Raises:
            AssertionError: after ``timeout_s`` without the condition, listing what was read
                and, if given, ``on_timeout()`` (e.g. the processor's log).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            result = condition(self.records)
            if result:
                return result
            if time.monotonic() > deadline:
                seen = [
                    f"{r.topic}[{r.partition}]@{r.offset} "
                    f"{r.event.event_type if r.event else r.value[:20]!r}"
                    for r in self.records
                ]
                extra = f"\n{on_timeout()}" if on_timeout else ""
                raise AssertionError(
                    f"no {what} within {timeout_s:g} s; read {len(seen)} records: {seen}{extra}"
                )
            self.poll()

    def events(self, topic: str | None = None, event_type: type[Event] | None = None) -> list[Any]:
        """Decoded events read so far, in read order, optionally of one topic and type."""
        return [
            r.event
            for r in self.records
            if r.event is not None
            and (topic is None or r.topic == topic)
            and (event_type is None or isinstance(r.event, event_type))
        ]

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
