"""Alerts as events: something a person should look at, raised, updated, resolved and
acknowledged on the log (part of the contract).

The alerts service (``services/alerts``) reads what the processor decided and accepted, the
dead letters and the husbandry facts, and writes these events to ``<prefix>.alerts``, keyed by
``alert_id``; the notifier (``services/notifier``) reads that topic and tells people. A person
acknowledges an alert with ``shaping alerts ack ALERT_ID``, which appends an AlertAcknowledged
to the same topic (an acknowledgement is a fact about a person, which nothing may refuse; it
needs no command).

An alert is about a *subject* in a *scope*: a mouse, a rig, a lab or a service (the
processor, the dead-letter topic). ``alert_id`` derives from the rule and the subject
(:func:`alert_id`), so raising the same alert twice names the same alert, and the service's
output is the same whenever it is recomputed. An alert lives in *episodes*: raised (episode
1), updated while open (``revision`` 1, 2, ...), resolved; raised again later as episode 2.

The envelope is the events' (``schemas/README.md``). Its ``mouse_id`` names the subject as
CurriculumPublished does for a curriculum: the mouse id for a mouse alert, else
``<scope>:<key>`` (``rig:rig-2``, ``lab:lab-a``, ``service:processor``). ``occurred_at`` is
the log's time (a broker timestamp), never a rig's clock.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from shaping.schemas.events import EVENT_TYPES, Event, UtcMillis
from shaping.schemas.identifiers import check_id

SEVERITIES = ("info", "attention", "warning", "critical")
"""How urgent an alert is, least first (a routing file's ``min_severity`` orders them so)."""

SCOPES = ("mouse", "rig", "lab", "service")
"""What an alert is about."""

Severity = Literal["info", "attention", "warning", "critical"]
Scope = Literal["mouse", "rig", "lab", "service"]

_ALERT_NAMESPACE = uuid.UUID("0d7c3f52-9a41-4e0b-8c6e-2b5f1a7d9e33")

MESSAGE_MAX = 2_000
"""An alert's message holds at most this many characters."""

EVIDENCE_MAX = 32
"""An alert carries at most this many evidence entries."""


def severity_rank(severity: str) -> int:
    """0 for ``info`` up to 3 for ``critical``.

    Raises:
        ValueError: an unknown severity.
    """
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        raise ValueError(
            f"unknown severity {severity!r} (known: {', '.join(SEVERITIES)})"
        ) from None


def alert_id(rule: str, scope: str, scope_key: str) -> str:
    """The id of the alert ``rule`` raises about ``scope_key``: a UUID derived from the three,
    so the same condition always names the same alert."""
    return str(uuid.uuid5(_ALERT_NAMESPACE, f"{rule}/{scope}/{scope_key}"))


def subject_id(scope: str, scope_key: str) -> str:
    """The envelope's ``mouse_id`` of an alert: the mouse id, or ``<scope>:<key>``."""
    return scope_key if scope == "mouse" else f"{scope}:{scope_key}"


def alert_event_id(alert: str, episode: int, revision: int, event_type: str) -> str:
    """A deterministic event id for the service's own alert events, so that a recomputed
    alert repeats the same event (which a reader drops as a duplicate)."""
    return str(uuid.uuid5(_ALERT_NAMESPACE, f"{alert}/{episode}/{revision}/{event_type}"))


def _rule_name(value: str) -> str:
    return check_id(value, "rule")


def _evidence(value: dict[str, str]) -> dict[str, str]:
    if len(value) > EVIDENCE_MAX:
        raise ValueError(f"an alert carries at most {EVIDENCE_MAX} evidence entries")
    return value


class AlertEvent(Event):
    """Fields every alert event carries after the envelope.

    Attributes:
        alert_id: :func:`alert_id` of ``rule``, ``scope`` and ``scope_key``; the Kafka key.
        episode: 1 for the first time the alert is raised, then one more each time it is
            raised again after it was resolved.
        revision: 0 when raised, one more for each update of the episode.
        rule: the rule that raised it (``stuck_at_stage``, ``rig_silent``...).
        severity: info, attention, warning or critical.
        scope: mouse, rig, lab or service.
        scope_key: the mouse id, rig id, lab name or service name.
        lab: the lab whose rules raised it (routing goes by it).
        message: the alert in plain language.
        evidence: what the rule saw, as named values.
        raised_at: when the episode was raised (the log's time).
    """

    alert_id: str
    episode: int = Field(ge=1)
    revision: int = Field(ge=0)
    rule: Annotated[str, AfterValidator(_rule_name)]
    severity: Severity
    scope: Scope
    scope_key: str
    lab: str = ""
    message: str = Field(min_length=1, max_length=MESSAGE_MAX)
    evidence: Annotated[dict[str, str], AfterValidator(_evidence)] = Field(default_factory=dict)
    raised_at: UtcMillis

    @classmethod
    def check_mouse_id(cls, value: str) -> str:
        """A mouse id, or ``rig:<id>``, ``lab:<name>``, ``service:<name>``."""
        scope, colon, key = value.partition(":")
        if colon:
            if scope not in SCOPES or scope == "mouse":
                raise ValueError(
                    f"mouse_id of an alert is a mouse id or rig:, lab: or service: and a name, "
                    f"not {value!r}"
                )
            check_id(key, f"{scope} in mouse_id")
            return value
        return check_id(value, "mouse_id")

    @model_validator(mode="after")
    def _consistent(self) -> AlertEvent:
        check_id(self.scope_key, f"{self.scope} (scope_key)")
        if self.lab:
            check_id(self.lab, "lab")
        if self.mouse_id != subject_id(self.scope, self.scope_key):
            raise ValueError(
                f"mouse_id {self.mouse_id!r} must be {subject_id(self.scope, self.scope_key)!r} "
                f"for a {self.scope} alert about {self.scope_key!r}"
            )
        if self.alert_id != alert_id(self.rule, self.scope, self.scope_key):
            raise ValueError(
                f"alert_id {self.alert_id!r} is not the id of rule {self.rule!r} about "
                f"{self.scope} {self.scope_key!r}"
            )
        return self

    @property
    def mouse(self) -> str | None:
        """The mouse the alert is about (None for a rig, lab or service alert)."""
        return self.scope_key if self.scope == "mouse" else None


class AlertRaised(AlertEvent):
    """A rule found a condition a person should look at (a new episode of the alert)."""


class AlertUpdated(AlertEvent):
    """An open alert changed: its severity or its message (``revision`` counts the changes)."""


class AlertResolved(AlertEvent):
    """An open alert's condition cleared (``resolved_by`` empty), or a person closed it."""

    resolved_by: str = ""


class AlertAcknowledged(AlertEvent):
    """A person said they are on it (``shaping alerts ack``): escalation stops for the
    episode; the alert stays open until its condition clears."""

    acknowledged_by: str = Field(min_length=1)
    note: str = ""


ALERT_EVENTS: tuple[type[AlertEvent], ...] = (
    AlertRaised,
    AlertUpdated,
    AlertResolved,
    AlertAcknowledged,
)
"""The alert events, all on the ``alerts`` topic."""

ALERT_TOPIC_TYPES: tuple[str, ...] = tuple(cls.__name__ for cls in ALERT_EVENTS)

# The contract's registry of event classes (schemas/events.py imports this module at its end,
# so EVENT_TYPES holds the alert events whichever of the two is imported first).
EVENT_TYPES.update({cls.__name__: cls for cls in ALERT_EVENTS})
