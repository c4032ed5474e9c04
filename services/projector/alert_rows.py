"""Reading the ``alerts`` table (:data:`shaping.services.projector.tables.alerts`): each alert's
newest episode, for ``shaping alerts list`` on an embedded install or the status tables, and
for the digest's open alerts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from shaping.schemas.alerts import subject_id
from shaping.services.projector.errors import ProjectorError
from shaping.services.projector.tables import alerts


@dataclass(frozen=True)
class AlertRow:
    """One row of the ``alerts`` table (see its columns)."""

    alert_id: str
    rule: str
    severity: str
    scope: str
    scope_key: str
    mouse_id: str | None
    lab: str | None
    message: str
    raised_at: datetime
    updated_at: datetime
    episode: int
    revision: int
    resolved_at: datetime | None = None
    resolution: str | None = None
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    evidence: dict[str, str] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        return self.resolved_at is None

    @property
    def subject(self) -> str:
        """The mouse id of a mouse alert, else ``<scope>:<key>`` (``rig:rig-2``)."""
        return subject_id(self.scope, self.scope_key)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:  # a table read without the projector's type
        return value.replace(tzinfo=UTC)
    return value


def alert_rows(engine: Engine, include_resolved: bool = False) -> list[AlertRow] | None:
    """The alerts in the status tables, oldest raised first (open ones only unless
    ``include_resolved``); None when the database has no ``alerts`` table (tables made by an
    older Shaping: the projector adds it on its next start).

    Raises:
        ProjectorError: the table cannot be read.
    """
    try:
        if not inspect(engine).has_table(alerts.name):
            return None
        query = select(alerts)
        if not include_resolved:
            query = query.where(alerts.c.resolved_at.is_(None))
        with engine.connect() as conn:
            rows = list(conn.execute(query).mappings())
    except SQLAlchemyError as exc:
        raise ProjectorError(f"cannot read the alerts table: {exc}") from exc
    found = []
    for r in rows:
        try:
            evidence = json.loads(r["evidence_json"] or "{}")
        except ValueError:
            evidence = {}
        found.append(
            AlertRow(
                alert_id=r["alert_id"],
                rule=r["rule"],
                severity=r["severity"],
                scope=r["scope"],
                scope_key=r["scope_key"],
                mouse_id=r["mouse_id"],
                lab=r["lab"],
                message=r["message"],
                raised_at=_aware(r["raised_at"]) or datetime.min.replace(tzinfo=UTC),
                updated_at=_aware(r["updated_at"]) or datetime.min.replace(tzinfo=UTC),
                episode=r["episode"],
                revision=r["revision"],
                resolved_at=_aware(r["resolved_at"]),
                resolution=r["resolution"],
                acknowledged_by=r["acknowledged_by"],
                acknowledged_at=_aware(r["acknowledged_at"]),
                evidence={str(k): str(v) for k, v in evidence.items()}
                if isinstance(evidence, dict)
                else {},
            )
        )
    found.sort(key=lambda a: (a.raised_at, a.rule, a.scope, a.scope_key))
    return found


__all__ = ["AlertRow", "alert_rows"]
