"""Shaping's Kafka topics: their names and how each must look (part of the contract).

Seven topics, all with the same explicit partition count (keys are mouse ids, so one mouse's
records always land on one partition and stay ordered):

``<prefix>.events``       the event log of record; kept forever (event sourcing); the broker
                          stamps each record with its own time (LogAppendTime), which the
                          processor checks event dates against
``<prefix>.commands``     operators' requests (EnrolMouse, OverrideStage, ...), which rigs never
                          write; the processor answers each with the past-tense event appended
                          to ``events`` or with a dead letter; kept forever (the audit of what
                          was asked), broker-stamped like ``events``; it must have the
                          partition count of ``events`` (a mouse's commands are read where
                          its state is held)
``<prefix>.accepted``     the rig and operator facts the processor accepted, verbatim (trials
                          and movements aside): the projector's source of facts, so a refused
                          event never reaches a table; kept forever
``<prefix>.decisions``    what the processor decided; kept forever (audit trail)
``<prefix>.assignments``  current curriculum assignment per key; *compacted*
``<prefix>.dead-letter``  records that could not be processed; kept for a long time
``<prefix>.curricula``    published curriculum versions (CurriculumPublished), keyed by
                          ``name@version``; *compacted*, so every version is kept forever
                          (a version is immutable: compaction only drops repeats)

Creating and checking them on a broker is the Kafka adapter's job
(:mod:`shaping.services.adapters.topics`); this module is data only, so rigs can name topics
without importing a service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from shaping.schemas.commands import ANSWERS, COMMAND_TYPES

_FOREVER = "-1"
_DEAD_LETTER_RETENTION_MS = str(90 * 24 * 60 * 60 * 1000)  # 90 days


TopicKind = Literal["events", "accepted", "decisions", "assignments", "dead_letter", "commands"]
"""What a topic is for; a deployment names each kind (:class:`TopicNames`)."""

_FACTS = (
    "MouseEnrolled",
    "SessionStarted",
    "TrialCompleted",
    "SessionEnded",
    "MovementDetected",
    "CurriculumPublished",
    "MouseMigrated",
    "StageOverridden",
    "MouseEjected",
    "ParametersAdjusted",
)

ROUTES: Mapping[TopicKind, tuple[str, ...]] = {
    # What rigs and operators send; the processor reads it and nothing else does.
    "events": _FACTS,
    # The inputs the processor accepted, verbatim (it leaves trials and movements out, but a
    # log may hold them from an older release).
    "accepted": _FACTS,
    "decisions": ("StageTransitioned", "TrainingWarning"),
    "assignments": ("AssignmentIssued",),
    "dead_letter": ("EventRejected",),
    # Operators' requests; only the processor reads them, and nothing but operators writes
    # them (the place for an ACL).
    "commands": tuple(COMMAND_TYPES),
}
"""The one routing table: the message types each kind of topic carries (by ``event_type``, or
``command_type`` on ``commands``). The processor reads ``events`` and ``commands`` and writes
every other kind, and ``events`` too: the answer to a command it honours; the projector reads
``accepted``, ``decisions``, ``assignments`` and ``dead_letter``; rigs write ``events`` (their
session events) and read ``assignments``; operators write ``commands``."""

ANSWER_KIND: TopicKind = "events"
"""Where the processor appends the past-tense event that honours a command (keyed by the
mouse): the one ordered log, so that the fold (and replay) sees it like any event."""

COMMAND_ANSWERS: Mapping[str, str] = ANSWERS
"""The event type that honours each command type (it must be routed to ``events``)."""

OUTPUT_KINDS: Mapping[str, TopicKind] = {
    event_type: kind
    for kind in ("decisions", "assignments", "dead_letter")
    for event_type in ROUTES[kind]
}
"""Where the processor publishes each event type it emits."""

PROJECTED_KINDS: tuple[TopicKind, ...] = ("accepted", "decisions", "assignments", "dead_letter")
"""The kinds the projector reads (never the raw ``events`` topic)."""


@dataclass(frozen=True)
class TopicNames:
    """The names of Shaping's topics; a prefix keeps deployments (and tests) apart."""

    events: str
    decisions: str
    assignments: str
    dead_letter: str
    curricula: str
    accepted: str = ""
    commands: str = ""

    def __post_init__(self) -> None:
        prefix = self.events.removesuffix(".events")
        if not self.accepted:  # names built by hand before the accepted topic existed
            object.__setattr__(self, "accepted", f"{prefix}.accepted")
        if not self.commands:  # names built by hand before the commands topic existed
            object.__setattr__(self, "commands", f"{prefix}.commands")

    @classmethod
    def with_prefix(cls, prefix: str = "shaping") -> TopicNames:
        if not prefix:
            raise ValueError("the topic prefix must not be empty")
        return cls(
            events=f"{prefix}.events",
            decisions=f"{prefix}.decisions",
            assignments=f"{prefix}.assignments",
            dead_letter=f"{prefix}.dead-letter",
            curricula=f"{prefix}.curricula",
            accepted=f"{prefix}.accepted",
            commands=f"{prefix}.commands",
        )

    def of_kind(self, kind: TopicKind) -> str:
        """The name of the topic of this kind."""
        return str(getattr(self, kind))

    def kinds(self, only: tuple[TopicKind, ...] = get_args(TopicKind)) -> dict[str, TopicKind]:
        """``{topic name: kind}`` for the kinds in ``only`` (every kind by default)."""
        return {self.of_kind(kind): kind for kind in only}

    def all(self) -> list[str]:
        return [
            self.events,
            self.accepted,
            self.decisions,
            self.assignments,
            self.dead_letter,
            self.curricula,
            self.commands,
        ]


@dataclass(frozen=True)
class TopicSpec:
    """How one topic must look."""

    name: str
    partitions: int
    configs: Mapping[str, str]

    @property
    def cleanup_policy(self) -> str:
        return self.configs.get("cleanup.policy", "delete")


def topic_specs(names: TopicNames, partitions: int = 4) -> list[TopicSpec]:
    """The full layout: name, partition count and topic configs of every topic."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, not {partitions}")
    return [
        TopicSpec(
            names.events,
            partitions,
            {
                "cleanup.policy": "delete",
                "retention.ms": _FOREVER,
                "retention.bytes": "-1",
                # The broker's time, not the rig's: dates are checked against it and a rig's
                # clock skew is measured from it.
                "message.timestamp.type": "LogAppendTime",
            },
        ),
        TopicSpec(
            names.accepted,
            partitions,
            {"cleanup.policy": "delete", "retention.ms": _FOREVER, "retention.bytes": "-1"},
        ),
        TopicSpec(
            names.decisions,
            partitions,
            {"cleanup.policy": "delete", "retention.ms": _FOREVER, "retention.bytes": "-1"},
        ),
        TopicSpec(
            names.assignments,
            partitions,
            {
                "cleanup.policy": "compact",
                # Let the cleaner actually run on small, young logs: it only
                # compacts closed segments, and only once enough of the log is dirty.
                "min.cleanable.dirty.ratio": "0.1",
                "segment.ms": "60000",
                "delete.retention.ms": "86400000",
            },
        ),
        TopicSpec(
            names.dead_letter,
            partitions,
            {
                "cleanup.policy": "delete",
                "retention.ms": _DEAD_LETTER_RETENTION_MS,
                "retention.bytes": "-1",
            },
        ),
        TopicSpec(
            names.commands,
            partitions,
            {
                "cleanup.policy": "delete",
                "retention.ms": _FOREVER,
                "retention.bytes": "-1",
                # Dates of requests are checked against the broker's time, as events' are.
                "message.timestamp.type": "LogAppendTime",
            },
        ),
        TopicSpec(
            names.curricula,
            partitions,
            {
                # One record per published version (key name@version): compaction keeps
                # every version and drops only re-publications of the same one.
                "cleanup.policy": "compact",
                "min.cleanable.dirty.ratio": "0.1",
                "segment.ms": "60000",
                "delete.retention.ms": "86400000",
            },
        ),
    ]
