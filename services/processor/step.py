"""One processing step, shared by the faust worker and the embedded runner.

It turns one input message into the mouse's new state and the messages to publish: decisions,
assignments, or an EventRejected for the dead-letter topic. It performs no I/O, so the Kafka
path and the embedded path cannot disagree.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from schemas.codec import EventCodec, encode_key
from schemas.errors import SerializationError
from schemas.events import (
    RIG_EVENTS,
    CurriculumPublished,
    Event,
    EventRejected,
    MouseEjected,
    MouseEnrolled,
    MouseMigrated,
    MovementDetected,
    ParametersAdjusted,
    StageOverridden,
)
from services.domain import ImpossibleEvent, MouseState, TrainingCore, initial_state

TopicKind = Literal["events", "decisions", "assignments", "dead_letter"]

INPUT_TYPES = (
    MouseEnrolled,
    MouseMigrated,
    CurriculumPublished,
    StageOverridden,
    MouseEjected,
    ParametersAdjusted,
    *RIG_EVENTS,
)
"""Event types accepted on the input (``events``) topic."""

NOT_FOLDED = (MovementDetected,)
"""Input types accepted but not given to the training core: they change no training state
(a rig sends hundreds per session, and folding them would crowd redelivered session events out
of the state's recent-id window)."""

OUTPUT_TOPIC: dict[str, TopicKind] = {
    "StageTransitioned": "decisions",
    "TrainingWarning": "decisions",
    "AssignmentIssued": "assignments",
    "EventRejected": "dead_letter",
}

_REJECT_NAMESPACE = uuid.UUID("0d6f43a4-54b3-4d8e-8f0a-6a1f9d8b2c33")


@dataclass(frozen=True)
class Outgoing:
    """A message to publish: which topic, its key and its encoded value."""

    topic_kind: TopicKind
    key: bytes
    value: bytes
    event: Event


@dataclass(frozen=True)
class StepResult:
    """What one input message led to.

    Attributes:
        event: the decoded input, or None when it was rejected.
        state: the mouse's new state, or None when it must stay as it was.
        outputs: messages to publish, in order.
    """

    event: Event | None
    state: MouseState | None
    outputs: list[Outgoing] = field(default_factory=list)

    @property
    def rejected(self) -> bool:
        """Whether the input went to the dead-letter topic."""
        return any(o.topic_kind == "dead_letter" for o in self.outputs)


class ProcessorStep:
    """Decodes a message, runs the training core, encodes what follows."""

    def __init__(self, core: TrainingCore, codec: EventCodec, service: str = "processor") -> None:
        self.core = core
        self.codec = codec
        self.service = service

    def process(
        self,
        state: MouseState | None,
        key: bytes | None,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        timestamp: datetime | None = None,
    ) -> StepResult:
        """Processes one message of the input topic.

        Args:
            state: the stored state for the message key's mouse, None if there is none.
            key: Kafka key (the mouse id).
            value: message value in the Shaping wire format.
            topic, partition, offset: where the message came from (kept in a rejection).
            timestamp: broker timestamp, used as the rejection time of undecodable bytes.
        """
        try:
            event = self.codec.decode(value)
        except SerializationError as exc:
            return self._reject(
                key, value, topic, partition, offset, str(exc), exc.kind, None, timestamp
            )
        if not isinstance(event, INPUT_TYPES):
            return self._reject(
                key,
                value,
                topic,
                partition,
                offset,
                f"{event.event_type} is not accepted on the input topic",
                "invalid",
                event,
                timestamp,
            )
        if key is None or key.decode("utf-8", "replace") != event.mouse_id:
            return self._reject(
                key,
                value,
                topic,
                partition,
                offset,
                f"Kafka key {key!r} differs from mouse_id {event.mouse_id!r}",
                "invalid",
                event,
                timestamp,
            )
        if isinstance(event, NOT_FOLDED):
            return StepResult(event, None, [])
        current = state or initial_state(event.mouse_id)
        try:
            new_state, emitted = self.core.handle(current, event)
        except ImpossibleEvent as exc:
            return self._reject(
                key, value, topic, partition, offset, str(exc), "impossible", event, timestamp
            )
        outputs = [self._outgoing(e) for e in emitted]
        return StepResult(event, None if new_state == current else new_state, outputs)

    def _outgoing(self, event: Event) -> Outgoing:
        return Outgoing(
            OUTPUT_TOPIC[event.event_type],
            encode_key(event.mouse_id),
            self.codec.encode(event),
            event,
        )

    def _reject(
        self,
        key: bytes | None,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        reason: str,
        kind: str,
        event: Event | None,
        timestamp: datetime | None,
    ) -> StepResult:
        mouse_id = event.mouse_id if event else (key or b"").decode("utf-8", "replace")
        rejected = EventRejected(
            event_id=str(uuid.uuid5(_REJECT_NAMESPACE, f"{topic}/{partition}/{offset}")),
            mouse_id=mouse_id or "unknown",
            rig_id=event.rig_id if event else None,
            session_id=event.session_id if event else None,
            occurred_at=event.occurred_at if event else (timestamp or datetime.now(UTC)),
            causation_id=event.event_id if event else None,
            reason=reason,
            error_kind=kind,  # type: ignore[arg-type]
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            original_key=key,
            original_value=value or b"",
            rejected_by=self.service,
        )
        return StepResult(event, None, [self._outgoing(rejected)])
