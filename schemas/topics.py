"""Shaping's Kafka topics: their names and how each must look (part of the contract).

Eight topics, all with the same explicit partition count (keys are mouse ids, so one mouse's
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
``<prefix>.alerts``       alerts for people (AlertRaised, AlertUpdated, AlertResolved,
                          AlertAcknowledged), keyed by alert id; kept forever, broker-stamped
``<prefix>.curricula``    published curriculum versions (CurriculumPublished), keyed by
                          ``name@version``; *compacted*, so every version is kept forever
                          (a version is immutable: compaction only drops repeats)

On a secured cluster rigs and operators do not write ``events`` and ``commands`` themselves:
each principal ``NAME`` writes its own *ingress topic*, ``<prefix>.rig.NAME`` (a rig's facts)
or ``<prefix>.operator.NAME`` (an operator's commands), laid out like ``events``. The ingress
gate (``services/ingress``) reads them by pattern and forwards what a principal may say as
itself (docs/security.md): Kafka cannot tell a reader who produced a record, but it can tell
who may write a topic.

Creating and checking them on a broker is the Kafka adapter's job
(:mod:`shaping.services.adapters.topics`); this module is data only, so rigs can name topics
without importing a service.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from shaping.schemas.alerts import ALERT_TOPIC_TYPES
from shaping.schemas.commands import ANSWERS, COMMAND_TYPES

_FOREVER = "-1"
_DEAD_LETTER_RETENTION_MS = str(90 * 24 * 60 * 60 * 1000)  # 90 days


TopicKind = Literal[
    "events", "accepted", "decisions", "assignments", "dead_letter", "commands", "alerts"
]
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
    "RigsAllowed",
    "WeightRecorded",
    "WaterGiven",
    "RestrictionStarted",
    "RestrictionEnded",
    "HusbandryNote",
    "HoldReleased",
)

ROUTES: Mapping[TopicKind, tuple[str, ...]] = {
    # What rigs and operators send; the processor reads it and nothing else does.
    "events": _FACTS,
    # The inputs the processor accepted, verbatim (it leaves trials and movements out, but a
    # log may hold them from an older release).
    "accepted": _FACTS,
    "decisions": ("StageTransitioned", "TrainingWarning"),
    # The held event rides with the assignments, so that rigs (which read this topic) see it;
    # the processor re-issues the assignment right after it, so the newest record of a mouse
    # (what compaction keeps) is always an AssignmentIssued.
    "assignments": ("AssignmentIssued", "AssignmentHeld"),
    "dead_letter": ("EventRejected",),
    # Operators' requests; only the processor reads them, and nothing but operators writes
    # them (the place for an ACL).
    "commands": tuple(COMMAND_TYPES),
    # Alerts for people (schemas/alerts.py): the alerts service writes them, and
    # `shaping alerts ack` an acknowledgement; the notifier reads them. Keyed by alert id.
    "alerts": ALERT_TOPIC_TYPES,
}
"""The one routing table: the message types each kind of topic carries (by ``event_type``, or
``command_type`` on ``commands``). The processor reads ``events`` and ``commands`` and writes
every other kind but ``alerts``, and ``events`` too: the answer to a command it honours; the
projector reads ``accepted``, ``decisions``, ``assignments``, ``dead_letter`` and ``alerts``;
rigs write ``events`` (their session events) and read ``assignments``; operators write
``commands``."""

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

PROJECTED_KINDS: tuple[TopicKind, ...] = (
    "accepted",
    "decisions",
    "assignments",
    "dead_letter",
    "alerts",
)
"""The kinds the projector reads (never the raw ``events`` topic): the processor's outputs, and
the alerts (its ``alerts`` table, which the digest and the web page show)."""

IngressKind = Literal["rig", "operator"]
"""Whose ingress topic it is: a rig's (facts, forwarded to ``events``) or an operator's
(commands, forwarded to ``commands``)."""

INGRESS_KINDS: tuple[IngressKind, ...] = get_args(IngressKind)

INGRESS_TARGETS: Mapping[IngressKind, TopicKind] = {"rig": "events", "operator": "commands"}
"""Where the ingress gate forwards what it accepts from each kind of ingress topic."""

PRINCIPAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A principal's name: 1-64 letters, digits, ``.``, ``_`` or ``-``, starting with a letter or a
digit. It names the principal's ingress topic, so it must be legal in a topic name."""


def check_principal(name: str) -> str:
    """``name`` if it is a legal principal name (:data:`PRINCIPAL_NAME`).

    Raises:
        ValueError: naming the rule.
    """
    if not isinstance(name, str) or not PRINCIPAL_NAME.fullmatch(name):
        raise ValueError(
            f"principal name {name!r} must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


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
    alerts: str = ""

    def __post_init__(self) -> None:
        prefix = self.events.removesuffix(".events")
        if not self.accepted:  # names built by hand before the accepted topic existed
            object.__setattr__(self, "accepted", f"{prefix}.accepted")
        if not self.commands:  # names built by hand before the commands topic existed
            object.__setattr__(self, "commands", f"{prefix}.commands")
        if not self.alerts:  # names built by hand before the alerts topic existed
            object.__setattr__(self, "alerts", f"{prefix}.alerts")

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
            alerts=f"{prefix}.alerts",
        )

    @property
    def prefix(self) -> str:
        """The deployment's topic prefix (``shaping`` for ``shaping.events``)."""
        return self.events.removesuffix(".events")

    def ingress_prefix(self, kind: IngressKind) -> str:
        """What every ingress topic of ``kind`` starts with: ``<prefix>.rig.`` or
        ``<prefix>.operator.`` (the ingress gate's prefixed ACLs)."""
        if kind not in INGRESS_KINDS:
            raise ValueError(f"unknown ingress kind {kind!r}; one of {', '.join(INGRESS_KINDS)}")
        return f"{self.prefix}.{kind}."

    def ingress(self, kind: IngressKind, name: str) -> str:
        """The ingress topic of principal ``name`` (checked: :func:`check_principal`)."""
        return self.ingress_prefix(kind) + check_principal(name)

    def rig_ingress(self, name: str) -> str:
        """``<prefix>.rig.<name>``: where rig ``name`` publishes its session events."""
        return self.ingress("rig", name)

    def operator_ingress(self, name: str) -> str:
        """``<prefix>.operator.<name>``: where operator ``name`` sends its commands."""
        return self.ingress("operator", name)

    @property
    def ingress_pattern(self) -> re.Pattern[str]:
        """Matches every ingress topic of this deployment (both kinds), with the groups
        ``kind`` and ``name``; the gate subscribes with it."""
        kinds = "|".join(INGRESS_KINDS)
        return re.compile(
            rf"{re.escape(self.prefix)}\.(?P<kind>{kinds})\.(?P<name>{PRINCIPAL_NAME.pattern})"
        )

    def parse_ingress(self, topic: str) -> tuple[IngressKind, str] | None:
        """``(kind, name)`` of an ingress topic of this deployment; None for any other topic."""
        found = self.ingress_pattern.fullmatch(topic)
        if found is None:
            return None
        return found["kind"], found["name"]  # type: ignore[return-value]

    @property
    def ingress_group(self) -> str:
        """The ingress gate's consumer group: ``<prefix>-ingress`` (no dot after the prefix, so
        that no rig's groups, ``<rig name>.*``, can be it)."""
        return f"{self.prefix}-ingress"

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
            self.alerts,
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
        TopicSpec(
            names.alerts,
            partitions,
            {
                "cleanup.policy": "delete",
                "retention.ms": _FOREVER,
                "retention.bytes": "-1",
                # An acknowledgement is dated by the broker, like every alert's time.
                "message.timestamp.type": "LogAppendTime",
            },
        ),
    ]


def ingress_spec(topic: str, partitions: int) -> TopicSpec:
    """How an ingress topic must look: like ``events`` (kept forever, stamped with the
    broker's time, which the gate checks a command's age against and a rig measures its clock
    skew from)."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, not {partitions}")
    return TopicSpec(
        topic,
        partitions,
        {
            "cleanup.policy": "delete",
            "retention.ms": _FOREVER,
            "retention.bytes": "-1",
            "message.timestamp.type": "LogAppendTime",
        },
    )
