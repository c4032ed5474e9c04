"""Comparing two snapshots of the status tables: rows per table, and per mouse the stage and
the decisions added, removed or changed (by session)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shaping.services.operator.replay.tables import TableRows
from shaping.services.projector.tables import metadata

_DECISION_FIELDS = ("from_stage", "to_stage", "decision", "rule", "curriculum_version")


@dataclass
class MouseChange:
    """How replay changes one mouse."""

    mouse_id: str
    stage_before: str | None
    stage_after: str | None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)


@dataclass
class TableChange:
    """Rows of one table that replay adds, removes or changes (by primary key)."""

    added: int = 0
    removed: int = 0
    changed: int = 0

    @property
    def total(self) -> int:
        """Rows that differ."""
        return self.added + self.removed + self.changed


def diff_tables(
    before: TableRows, after: TableRows
) -> tuple[list[MouseChange], dict[str, TableChange]]:
    """Per mouse and per table, what differs between two snapshots of the status tables."""
    tables = _table_changes(before, after)
    return _mouse_changes(before, after), tables


def _table_changes(before: TableRows, after: TableRows) -> dict[str, TableChange]:
    """Rows added, removed and changed per table (by primary key); tables without change are
    left out."""
    tables: dict[str, TableChange] = {}
    for name in sorted(set(before) | set(after)):
        keys = _key_columns(name) if name in metadata.tables else []
        if not keys:
            continue

        def index(rows: list[dict[str, Any]], keys: list[str] = keys) -> dict[tuple[Any, ...], Any]:
            return {tuple(row[k] for k in keys): row for row in rows}

        old, new = index(before.get(name, [])), index(after.get(name, []))
        change = TableChange(
            added=len(new.keys() - old.keys()),
            removed=len(old.keys() - new.keys()),
            changed=sum(1 for k in old.keys() & new.keys() if old[k] != new[k]),
        )
        if change.total:
            tables[name] = change
    return tables


def _mouse_changes(before: TableRows, after: TableRows) -> list[MouseChange]:
    """Every mouse whose stage or decisions differ, by mouse id."""
    stage_before = {r["mouse_id"]: r.get("stage") for r in before.get("mouse_status", [])}
    stage_after = {r["mouse_id"]: r.get("stage") for r in after.get("mouse_status", [])}
    old_decisions = _decisions_by_session(before.get("decision_log", []))
    new_decisions = _decisions_by_session(after.get("decision_log", []))
    mice: dict[str, MouseChange] = {}

    def mouse(mouse_id: str) -> MouseChange:
        if mouse_id not in mice:
            mice[mouse_id] = MouseChange(
                mouse_id, stage_before.get(mouse_id), stage_after.get(mouse_id)
            )
        return mice[mouse_id]

    for key in sorted(new_decisions.keys() - old_decisions.keys()):
        mouse(key[0]).added.append(_describe(new_decisions[key]))
    for key in sorted(old_decisions.keys() - new_decisions.keys()):
        mouse(key[0]).removed.append(_describe(old_decisions[key]))
    for key in sorted(old_decisions.keys() & new_decisions.keys()):
        old_row, new_row = old_decisions[key], new_decisions[key]
        if any(old_row.get(f) != new_row.get(f) for f in _DECISION_FIELDS):
            mouse(key[0]).changed.append(
                f"session {new_row.get('session_total')}: {_verdict(old_row)} -> "
                f"{_verdict(new_row)}"
            )
    for mouse_id in sorted(set(stage_before) | set(stage_after)):
        if stage_before.get(mouse_id) != stage_after.get(mouse_id):
            mouse(mouse_id)
    return [mice[m] for m in sorted(mice)]


def _key_columns(table_name: str) -> list[str]:
    table = metadata.tables[table_name]
    return [column.name for column in table.primary_key.columns]


def _decisions_by_session(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The decision in force per (mouse, session): the newest row that nothing supersedes."""
    rows = list(rows)
    replaced = {row.get("supersedes") for row in rows if row.get("supersedes")}
    result: dict[tuple[str, str], dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (str(r.get("occurred_at")), str(r.get("event_id")))):
        if row["event_id"] in replaced or row.get("superseded_by"):
            continue
        result[(row["mouse_id"], row.get("session_id") or row["event_id"])] = row
    return result


def _verdict(row: dict[str, Any]) -> str:
    return f"{row.get('decision')} {row.get('to_stage')}"


def _describe(row: dict[str, Any]) -> str:
    return f"session {row.get('session_total')}: {_verdict(row)}"


__all__ = ["MouseChange", "TableChange", "diff_tables"]
