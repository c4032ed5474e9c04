"""Alert events for tests of the projector's ``alerts`` table: built as the alerts service
builds them (ids derived from the rule, the subject, the episode and the revision)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from shaping.schemas.alerts import (
    AlertAcknowledged,
    AlertEvent,
    AlertRaised,
    AlertResolved,
    AlertUpdated,
    alert_event_id,
    alert_id,
    subject_id,
)
from shaping.services.projector.store import ProjectedMessage

T0 = datetime(2026, 2, 2, 8, 0, tzinfo=UTC)
TOPIC = "shaping.alerts"

_TYPES: dict[str, type[AlertEvent]] = {
    cls.__name__: cls for cls in (AlertRaised, AlertUpdated, AlertResolved, AlertAcknowledged)
}


def alert_event(
    kind: str,
    key: str,
    minute: int,
    severity: str = "warning",
    message: str = "something to look at",
    *,
    rule: str = "weight",
    scope: str = "mouse",
    episode: int = 1,
    revision: int = 0,
    raised_minute: int | None = None,
    **extra: Any,
) -> AlertEvent:
    """An alert event of type ``kind`` about ``key`` at ``T0 + minute`` minutes (``raised_at``
    at ``raised_minute``, by default ``minute``)."""
    cls = _TYPES[kind]
    the_id = alert_id(rule, scope, key)
    if kind == "AlertAcknowledged":
        extra.setdefault("acknowledged_by", "ada")
    raised = T0 + timedelta(minutes=minute if raised_minute is None else raised_minute)
    return cls(
        event_id=alert_event_id(the_id, episode, revision, kind),
        mouse_id=subject_id(scope, key),
        occurred_at=T0 + timedelta(minutes=minute),
        alert_id=the_id,
        episode=episode,
        revision=revision,
        rule=rule,
        severity=severity,  # type: ignore[arg-type]
        scope=scope,  # type: ignore[arg-type]
        scope_key=key,
        lab="lab-a",
        message=message,
        evidence={"percent": "76.0"},
        raised_at=raised,
        **extra,
    )


_offsets: dict[int, int] = {}


def message_of(
    event: AlertEvent, partition: int = 0, offset: int | None = None
) -> ProjectedMessage:
    """``event`` as the projector reads it from the alerts topic (the next offset of
    ``partition`` unless given)."""
    if offset is None:
        offset = _offsets.get(partition, 0)
    _offsets[partition] = max(_offsets.get(partition, 0), offset + 1)
    return ProjectedMessage(TOPIC, partition, offset, event, "alerts")


def alert_message(*args: Any, **kwargs: Any) -> ProjectedMessage:
    """:func:`alert_event` as a message of the alerts topic."""
    return message_of(alert_event(*args, **kwargs))
