"""The hand-over to the live processor on Kafka: its consumer group, its state changelog
(names and record encoding are :mod:`shaping.services.processor.state_store`'s) and its
committed offsets on the events topic."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from shaping.schemas.codec import encode_key
from shaping.services.domain import MouseState
from shaping.services.operator.replay.errors import ReplayError
from shaping.services.operator.replay.log import (
    KAFKA_TIMEOUT_S,
    kafka_offsets,
    read_kafka,
    throwaway_consumer,
)
from shaping.services.processor.state_store import (
    CHANGELOG_REPLICATION_FACTOR,
    Changelogs,
    encode_state,
    join_sessions,
)

INACTIVE_GROUP_STATES = {"Empty", "Dead", ""}
"""Consumer group states in which the group's offsets may be moved from outside."""

T = TypeVar("T")

_Write = tuple[str, bytes, bytes | None, int]
"""A changelog record to write: topic, key, value (None: a tombstone), partition."""


class ProcessorHandover:
    """The live processor's group and changelog on Kafka.

    Args:
        bootstrap: Kafka bootstrap servers.
        processor_id: the faust app id: consumer group and changelog prefix.
    """

    def __init__(self, bootstrap: str, processor_id: str) -> None:
        self.bootstrap = bootstrap
        self.group = processor_id
        changelogs = Changelogs.of(processor_id)
        self.changelog = changelogs.state
        self.sessions_changelog = changelogs.sessions

    def _admin(self) -> Any:
        from shaping.services.adapters.kafka import admin as kafka_admin

        return kafka_admin(self.bootstrap, "shaping-replay")

    def _on_coordinator(self, ask: Callable[[Any], T]) -> T:
        """``ask(admin)``, again while the group's coordinator is not there yet (a broker that
        has just started makes its offsets topic on the first group request)."""
        from kafka.errors import CoordinatorLoadInProgressError, CoordinatorNotAvailableError

        deadline = time.monotonic() + KAFKA_TIMEOUT_S
        while True:
            admin = self._admin()
            try:
                return ask(admin)
            except (CoordinatorNotAvailableError, CoordinatorLoadInProgressError):
                if time.monotonic() > deadline:
                    raise
            finally:
                admin.close()
            time.sleep(0.5)

    def activity(self) -> tuple[int, str]:
        """The processor group's members and state (read only)."""
        described = self._on_coordinator(
            lambda admin: admin.describe_groups([self.group]).get(self.group, {})
        )
        state = str(described.get("group_state") or described.get("state") or "")
        return len(described.get("members") or []), state

    def running(self) -> bool:
        """Whether a processor is in the group."""
        members, state = self.activity()
        return bool(members) or state not in INACTIVE_GROUP_STATES

    def check_inactive(self) -> None:
        """Raises ReplayError when the processor's consumer group has members."""
        members, state = self.activity()
        if members or state not in INACTIVE_GROUP_STATES:
            raise ReplayError(
                f"the processor (consumer group {self.group!r}) is running: {members} "
                f"member(s), state {state or 'unknown'}. Stop every processor first: replay "
                "rebuilds its state and hands it over (--dry-run works while it runs)"
            )

    def committed(self, topic: str) -> dict[int, int]:
        """The group's committed offsets on ``topic``."""
        offsets = self._on_coordinator(
            lambda admin: admin.list_group_offsets(self.group).get(self.group, {})
        )
        return {
            tp.partition: oam.offset
            for tp, oam in offsets.items()
            if tp.topic == topic and oam.offset >= 0
        }

    def read_states(self, topic: str | None = None) -> dict[bytes, tuple[int, bytes | None]]:
        """The latest record per key of a changelog (the state table's by default):
        ``{key: (partition, value)}``."""
        topic = topic or self.changelog
        bounds = {k: v for k, v in self._bounds([topic]).items() if k[0] == topic}
        latest: dict[bytes, tuple[int, bytes | None]] = {}
        for record in read_kafka(self.bootstrap, bounds, "shaping-replay-changelog"):
            if record.key is not None:
                latest[record.key] = (record.partition, record.value)
        return latest

    def _bounds(self, topics: list[str]) -> dict[tuple[str, int], tuple[int, int]]:
        consumer = throwaway_consumer(self.bootstrap, "shaping-replay-offsets")
        try:
            found = consumer.partitions_for_topic(topics[0])
        finally:
            consumer.close(autocommit=False)
        if not found:
            return {}
        return kafka_offsets(self.bootstrap, topics)

    def write_states(
        self, states: dict[str, MouseState], partition_of: dict[str, int], partitions: int
    ) -> int:
        """Writes every state that differs from the live one (and a tombstone for a mouse the
        rebuilt state does not have). Returns how many records were written.

        The live state of a mouse is its state record joined with its open-sessions record
        (what the processor would load). A rewritten mouse also gets a tombstone for its
        open-sessions record, so no open sessions of the old state outlive the hand-over.
        """
        records = self._records_to_write(states, partition_of)
        if not records:
            return 0
        self._ensure_changelog(partitions)
        self._send(records)
        return len(records)

    def _records_to_write(
        self, states: dict[str, MouseState], partition_of: dict[str, int]
    ) -> list[_Write]:
        live = self.read_states()
        sessions = {k: v for k, v in self.read_states(self.sessions_changelog).items() if v[1]}
        records: list[_Write] = []
        for mouse_id, state in sorted(states.items()):
            key = encode_key(mouse_id)
            known = live.get(key)
            extra = sessions.get(key)
            stored = known[1] if known is not None else None
            if stored is not None and same_state(stored, extra[1] if extra else None, state):
                continue
            records.append((self.changelog, key, encode_state(state), partition_of[mouse_id]))
            if extra is not None:
                records.append((self.sessions_changelog, key, None, extra[0]))
        wanted = {encode_key(m) for m in states}
        for key, (partition, value) in sorted(live.items()):
            if key not in wanted and value is not None:
                records.append((self.changelog, key, None, partition))
                if key in sessions:
                    records.append((self.sessions_changelog, key, None, sessions[key][0]))
        return records

    def _send(self, records: list[_Write]) -> None:
        from shaping.services.adapters.kafka import producer as kafka_producer

        producer = kafka_producer(self.bootstrap, "shaping-replay")
        try:
            for topic, key, value, partition in records:
                producer.send(topic, key=key, value=value, partition=partition)
            producer.flush(timeout=KAFKA_TIMEOUT_S)
        finally:
            producer.close()

    def _ensure_changelog(self, partitions: int) -> None:
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = self._admin()
        try:
            admin.create_topics(
                [
                    NewTopic(
                        self.changelog,
                        partitions,
                        CHANGELOG_REPLICATION_FACTOR,
                        topic_configs={"cleanup.policy": "compact"},
                    )
                ]
            )
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()

    def move_offsets(self, topic: str, bounds: dict[int, tuple[int, int]]) -> int:
        """Sets the group's offsets on ``topic`` to the ends of ``bounds`` (``{partition:
        (first, end)}``); returns how many moved. A partition without a committed offset
        whose log is empty needs no move: the processor starts at its first offset anyway.

        Raises:
            ReplayError: when the broker refuses (the group became active).
        """
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        current = self.committed(topic)
        moves = {
            TopicPartition(topic, p): OffsetAndMetadata(end, "", -1)
            for p, (first, end) in bounds.items()
            if current.get(p, first) != end
        }
        if not moves:
            return 0
        admin = self._admin()
        try:
            results = admin.alter_group_offsets(self.group, moves)
        finally:
            admin.close()
        failed = {tp: err for tp, err in results.items() if err.__name__ != "NoError"}
        if failed:
            raise ReplayError(
                f"the broker refused to move the offsets of group {self.group!r} "
                f"({', '.join(f'{tp.partition}: {err.__name__}' for tp, err in failed.items())});"
                " is a processor running? Stop it and run replay again"
            )
        return len(moves)


def same_state(stored: bytes, sessions: bytes | None, state: MouseState) -> bool:
    """Whether the live records (state record, open-sessions record) hold ``state``.

    Records this version cannot read (damaged, or of another format: StateFormatError is a
    ValueError) hold no state: the hand-over rewrites them, which is how a replay brings a
    store written by another version to this version's format.
    """
    try:
        return join_sessions(stored, sessions) == state
    except ValueError:
        return False


__all__ = ["INACTIVE_GROUP_STATES", "ProcessorHandover", "same_state"]
