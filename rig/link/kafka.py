"""A direct link to Kafka with kafka-python: an idempotent producer for events and a reader of the
compacted assignments topic that keeps the latest assignment per mouse.

It is a :class:`~shaping.rig.link.transport.RigTransport` without an outbox: ``publish`` returns
once the broker acknowledged the events, and nothing is kept on disk. The simulated lab on
Kafka (``shaping rig simulate``, the end-to-end tests, the benchmarks) runs its rig agents over
it; a rig on a Pi uses :class:`~shaping.rig.link.outbox.OutboxTransport`, which survives the
broker's absence and the rig's crashes."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from shaping.rig.errors import RigError
from shaping.rig.link.connection import KafkaLink, client_options
from shaping.schemas.codec import EventCodec, encode_key
from shaping.schemas.errors import SerializationError
from shaping.schemas.events import AssignmentIssued, Event
from shaping.schemas.headers import headers_for

log = logging.getLogger(__name__)


class KafkaRigTransport:
    """Publishes events to the input topic and follows the assignments topic.

    Args:
        bootstrap: how to reach Kafka (a :class:`~shaping.rig.link.connection.KafkaLink`), or
            just the bootstrap servers of a plaintext broker, ``host:port``.
        events_topic: topic rig events go to (keyed by mouse id).
        assignments_topic: compacted topic of AssignmentIssued (keyed by mouse id).
        client_id: name of this rig in broker logs.
        codec: the codec events are written and read with (:mod:`shaping.rig.bootstrap`).
    """

    def __init__(
        self,
        bootstrap: KafkaLink | str,
        events_topic: str,
        assignments_topic: str,
        client_id: str = "shaping-rig",
        *,
        codec: EventCodec,
    ) -> None:
        self.codec = codec
        self.events_topic = events_topic
        self.assignments_topic = assignments_topic
        # acks=all + idempotence: a retried send is written once, in order, per partition.
        # client_options: the brokers, the security settings, and a reconnect backoff of
        # connection.RECONNECT_BACKOFF_MAX_MS (back within seconds of a broker's return, not 30 s).
        self.producer = KafkaProducer(
            **client_options(bootstrap),
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_in_flight_requests_per_connection=5,
        )
        self.consumer = KafkaConsumer(
            **client_options(bootstrap),
            client_id=f"{client_id}-assignments",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        partitions = _partitions(self.consumer, assignments_topic)
        self.consumer.assign(partitions)
        self.consumer.seek_to_beginning(*partitions)
        self.assignments: dict[str, AssignmentIssued] = {}

    def publish(self, events: Sequence[Event]) -> None:
        """Sends events in order and waits until the broker has acknowledged all of them."""
        for event in events:
            value = self.codec.encode(event)
            self.producer.send(
                self.events_topic,
                key=encode_key(event.mouse_id),
                value=value,
                headers=headers_for(value),
            )
        self.producer.flush()

    def poll(self, timeout_s: float = 0.2) -> int:
        """Reads new assignments into the cache; returns how many arrived."""
        batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000))
        count = 0
        for records in batches.values():
            for record in records:
                try:
                    event = self.codec.decode(record.value)
                except SerializationError as exc:
                    # Never skipped without a word: a newer processor may write a version this
                    # release cannot read, and the lab then runs stale assignments.
                    log.warning(
                        "cannot read the assignment at %s[%d]@%d (key %r): %s",
                        record.topic,
                        record.partition,
                        record.offset,
                        record.key,
                        exc,
                    )
                    continue
                if isinstance(event, AssignmentIssued):
                    known = self.assignments.get(event.mouse_id)
                    if known is None or event.session_number >= known.session_number:
                        self.assignments[event.mouse_id] = event
                    count += 1
        return count

    def latest_assignment(
        self, mouse_id: str, min_session_number: int = 1, timeout_s: float = 0.0
    ) -> AssignmentIssued | None:
        """The newest assignment for a mouse, waiting up to ``timeout_s`` for a fresh one."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll(0.1)
            known = self.assignments.get(mouse_id)
            if known is not None and known.session_number >= min_session_number:
                return known
            if time.monotonic() >= deadline:
                return known
            # keep polling until the deadline

    def close(self) -> None:
        """Flushes and closes the Kafka clients."""
        self.producer.flush()
        self.producer.close()
        self.consumer.close()


def _partitions(
    consumer: KafkaConsumer, topic: str, timeout_s: float = 30.0
) -> list[TopicPartition]:
    """Every partition of ``topic``, waiting for the consumer's metadata to know them (a broker
    just started or a topic just created may not be in it yet)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = consumer.partitions_for_topic(topic)
        if found:
            return [TopicPartition(topic, p) for p in sorted(found)]
        if time.monotonic() >= deadline:
            raise RigError(
                f"topic {topic} has no partitions on the broker after {timeout_s:g} s;"
                " create the topics first (`shaping topics create`)"
            )
        time.sleep(0.2)
