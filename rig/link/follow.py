"""Keeps the rig's cache of assignments and decisions up to date from Kafka.

The follower reads, for the partitions the rig's mice hash to, the compacted assignments topic
(the latest AssignmentIssued per mouse) and the decisions topic (a StageTransitioned per
session), and stores what concerns the rig's mice in its :class:`~rig.link.store.RigStore`. It
remembers how far it read, so a restart continues where it stopped; the cache itself lives on
disk, so a session can start from it while the broker is unreachable.

A record keyed by one of the rig's mice that this rig cannot decode (a newer release of the
services wrote it with a schema version this rig does not know) is never skipped silently: it
is logged as a warning and kept in the store (:meth:`~rig.link.store.RigStore.save_undecodable`)
until a readable record of the mouse follows it; ``rig run`` then treats the mouse's cached
assignment as stale, ``rig status`` shows it, and the rig's metrics count it
(``shaping_rig_undecodable_assignments_total``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from shaping.rig.errors import BrokerUnreachableError
from shaping.rig.evidence import is_decision
from shaping.rig.link.connection import KafkaLink, client_options
from shaping.rig.link.drain import describe_error, kafka_errors, partition_for
from shaping.rig.link.store import RigStore
from shaping.schemas.codec import EventCodec, encode_key
from shaping.schemas.errors import SerializationError
from shaping.schemas.events import AssignmentIssued, StageTransitioned

log = logging.getLogger(__name__)


class AssignmentFollower:
    """Follows the assignments and decisions topics for a set of mice.

    Args:
        store: where the cache lives.
        bootstrap: how to reach Kafka (:attr:`RigConfig.link <shaping.rig.config.RigConfig.link>`),
            or just the bootstrap servers of a plaintext broker.
        assignments_topic: the compacted assignments topic.
        decisions_topic: the decisions topic.
        mice: the mice whose records are kept.
        client_id: the rig's name in broker logs.
        codec: the codec the records are read with (:mod:`shaping.rig.bootstrap` builds it).
        timeout_ms: how long a request may wait for the broker.
    """

    def __init__(
        self,
        store: RigStore,
        bootstrap: KafkaLink | str,
        assignments_topic: str,
        decisions_topic: str,
        mice: tuple[str, ...],
        client_id: str = "shaping-rig",
        *,
        codec: EventCodec,
        timeout_ms: int = 6000,
    ) -> None:
        self.store = store
        self.link = KafkaLink.of(bootstrap)
        self.bootstrap = self.link.bootstrap
        self.topics = (assignments_topic, decisions_topic)
        self.mice = set(mice)
        self.client_id = client_id
        self.codec = codec
        self.timeout_ms = timeout_ms
        self._consumer: Any = None
        self.last_error: str | None = None

    def _connect(self) -> Any:
        if self._consumer is not None:
            return self._consumer
        consumer = KafkaConsumer(
            **client_options(self.link),
            client_id=f"{self.client_id}-assignments",
            group_id=None,
            enable_auto_commit=False,
            request_timeout_ms=max(self.timeout_ms, 5000) + 1000,
            bootstrap_timeout_ms=self.timeout_ms,
        )
        try:
            partitions: list[TopicPartition] = []
            for topic in self.topics:
                found = consumer.partitions_for_topic(topic)
                if not found:
                    raise BrokerUnreachableError(
                        f"topic {topic} has no partitions; create the topics first "
                        "(`shaping topics create`)"
                    )
                wanted = {partition_for(encode_key(m), len(found)) for m in self.mice}
                partitions.extend(TopicPartition(topic, p) for p in sorted(wanted))
            consumer.assign(partitions)
            for tp in partitions:
                stored = self.store.read_position(tp.topic, tp.partition)
                if stored is None:
                    consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, stored)
        except BaseException:
            consumer.close()
            raise
        self._consumer = consumer
        return consumer

    def poll(self, timeout_s: float = 0.5) -> int:
        """Reads what arrived; returns how many records concern the rig's mice.

        Raises:
            BrokerUnreachableError: the broker did not answer.
        """
        try:
            consumer = self._connect()
            batches = consumer.poll(timeout_ms=int(timeout_s * 1000))
            count = 0
            positions: dict[tuple[str, int], int] = {}
            for tp, records in batches.items():
                for record in records:
                    count += self._keep(
                        tp.topic, tp.partition, record.offset, record.key, record.value
                    )
                    positions[(tp.topic, tp.partition)] = record.offset + 1
            self.store.save_read_positions(positions)
            self.last_error = None
            return count
        except kafka_errors() as exc:
            self._drop(exc)
            raise BrokerUnreachableError(self.last_error or str(exc)) from exc
        except BrokerUnreachableError as exc:
            self._drop(exc)
            raise

    def catch_up(self, timeout_s: float) -> None:
        """Reads until every followed partition is read to its end (or ``timeout_s`` pass).

        Raises:
            BrokerUnreachableError: the broker did not answer.
        """
        deadline = time.monotonic() + timeout_s
        try:
            consumer = self._connect()
            ends = consumer.end_offsets(list(consumer.assignment()))
        except kafka_errors() as exc:
            self._drop(exc)
            raise BrokerUnreachableError(self.last_error or str(exc)) from exc
        while time.monotonic() < deadline:
            self.poll(0.2)
            if all(consumer.position(tp) >= end for tp, end in ends.items()):
                return

    def _keep(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None
    ) -> int:
        kind = "assignments" if topic == self.topics[0] else "decisions"
        try:
            event = self.codec.decode(value)
        except SerializationError as exc:
            return self._unreadable(kind, topic, partition, offset, key, exc)
        if event.mouse_id not in self.mice:
            return 0
        if isinstance(event, AssignmentIssued):
            self.store.save_assignment(event)
            if is_decision(event):
                self.store.save_evidence(event)
        elif isinstance(event, StageTransitioned):
            self.store.save_decision(event)
        else:
            return 0
        self.store.resolve_undecodable(
            kind, event.mouse_id, topic, partition, offset, event.event_id
        )
        return 1

    def _unreadable(
        self,
        kind: str,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        exc: SerializationError,
    ) -> int:
        """A record this rig cannot decode: not ours unless its key is one of our mice, and
        then never skipped without a word."""
        try:
            mouse = key.decode("utf-8") if key is not None else None
        except UnicodeDecodeError:
            mouse = None
        if mouse is None or mouse not in self.mice:
            return 0  # another rig's mouse, or not a Shaping record: not ours to judge
        if self.store.save_undecodable(kind, mouse, topic, partition, offset, str(exc)):
            log.warning(
                "cannot read the %s for %s at %s[%d]@%d (%s): %s",
                "assignment" if kind == "assignments" else "decision",
                mouse,
                topic,
                partition,
                offset,
                exc,
                unreadable_hint(str(exc)),
            )
        return 1

    def _drop(self, exc: BaseException) -> None:
        self.last_error = describe_error(exc)
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception as close_error:
                log.debug("closing the follower's consumer failed: %s", close_error)
        self._consumer = None

    def close(self) -> None:
        """Closes the consumer."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def unreadable_hint(error: str) -> str:
    """What to do about a record the rig cannot decode, from the decoder's error."""
    if "fingerprint" in error:
        return (
            "it was written with a schema version this rig does not know, by a newer release "
            "of the services; upgrade the rig software (schemas/README.md, compatibility)"
        )
    return "it breaks the event contract; report it to whoever runs the processor"
