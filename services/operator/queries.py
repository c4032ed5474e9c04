"""Read-only queries of the projector's status tables, as pandas DataFrames.

Three frames are the operator's view of a lab, and ``shaping export`` writes exactly them; the
columns are fixed here (:data:`STATUS_COLUMNS`, :data:`SESSION_COLUMNS`,
:data:`DECISION_COLUMNS`) and documented in the README, which a test keeps in step.
Timestamps are timezone-aware UTC (pandas ``DatetimeTZDtype``) on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine, Select, Table, create_engine, func, inspect, make_url, select
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from services.operator.errors import OperatorError, UnknownMouseError
from services.projector.tables import (
    decision_log,
    mouse_status,
    session_summaries,
    stage_history,
)

STATUS_COLUMNS: dict[str, str] = {
    "mouse_id": "the mouse",
    "curriculum_name": "curriculum of its current assignment",
    "curriculum_version": "that curriculum's version",
    "stage": "stage its next session runs",
    "sessions_at_stage": "sessions finished on that stage",
    "sessions_completed": "sessions finished in all",
    "next_session_number": "number of its next session (1-based)",
    "last_decision": "decision on its last session (stay, progress, rollback, ...)",
    "last_decision_at": "when that decision was made (UTC)",
    "last_rig_id": "rig of its most recent session",
    "last_accuracy": "accuracy of its most recent judged session",
    "last_reason": "reason of its current assignment",
    "enrolled_at": "when it was enrolled (UTC)",
    "enrolled_by": "who enrolled it",
    "assigned_at": "when its current assignment was issued (UTC)",
}
"""Columns of the status frame (one row per mouse)."""

SESSION_COLUMNS: dict[str, str] = {
    "session_id": "the session",
    "mouse_id": "the mouse",
    "rig_id": "rig it ran on",
    "stage": "stage it ran",
    "curriculum_name": "curriculum",
    "curriculum_version": "curriculum version",
    "assignment_id": "the AssignmentIssued the rig configured itself from",
    "parameters_json": "the parameters it ran (JSON)",
    "started_at": "start (UTC)",
    "ended_at": "end (UTC)",
    "end_reason": "why it ended",
    "duration_s": "duration in seconds",
    "n_trials": "trials judged",
    "n_correct": "correct trials",
    "n_incorrect": "incorrect trials",
    "n_miss": "trials without a response",
    "accuracy": "correct / (correct + incorrect)",
    "decision": "decision taken after it",
    "next_stage": "stage of the mouse's next session",
    "decided_at": "when the decision was made (UTC)",
}
"""Columns of the sessions frame (one row per session, oldest first per mouse)."""

DECISION_COLUMNS: dict[str, str] = {
    "event_id": "the StageTransitioned event",
    "mouse_id": "the mouse",
    "session_id": "the session judged",
    "occurred_at": "when (UTC)",
    "curriculum_name": "curriculum",
    "curriculum_version": "curriculum version",
    "from_stage": "stage judged",
    "to_stage": "stage of the next session",
    "decision": "stay, progress, rollback, skip or graduate",
    "rule": "the rule that fired (empty for stay)",
    "sessions_at_stage": "sessions on from_stage, this one included",
    "session_total": "sessions finished in all",
    "evidence_json": "every rule evaluated, its observations and verdict (JSON)",
    "session_date": "calendar date of the judged session",
    "supersedes": "the decision this one replaces after a late session (empty: none)",
    "superseded_by": "the decision that replaced this one (empty: in force)",
}
"""Columns of the decisions frame (one row per decision, oldest first per mouse)."""

_TIMESTAMPS = {
    "last_decision_at",
    "enrolled_at",
    "assigned_at",
    "started_at",
    "ended_at",
    "decided_at",
    "occurred_at",
}
_REQUIRED_TABLES = ("mouse_status", "session_summaries", "decision_log", "stage_history")


def open_database(url: str) -> Engine:
    """Opens the status tables read-only; nothing is created.

    Raises:
        OperatorError: for a malformed URL, a SQLite file that does not exist, a database that
            cannot be reached, or one without the projector's tables.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise OperatorError(f"not a database URL: {url!r} ({exc})") from exc
    shown = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or not Path(database).is_file():
            raise OperatorError(
                f"no status database at {shown}: point --db-url (or SHAPING_DB_URL) at the"
                " projector's database"
            )
    try:
        engine = create_engine(parsed)
    except (ArgumentError, ImportError) as exc:
        raise OperatorError(f"cannot open {shown}: {exc}") from exc
    try:
        present = set(inspect(engine).get_table_names())
    except SQLAlchemyError as exc:
        engine.dispose()
        raise OperatorError(f"cannot reach the database {shown}: {_first_line(exc)}") from exc
    missing = [name for name in _REQUIRED_TABLES if name not in present]
    if missing:
        engine.dispose()
        raise OperatorError(
            f"{shown} has no status tables ({', '.join(missing)} missing): is it the"
            " projector's database?"
        )
    return engine


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _frame(engine: Engine, query: Select[Any], columns: Sequence[str]) -> pd.DataFrame:
    try:
        with engine.connect() as conn:
            rows = [dict(row) for row in conn.execute(query).mappings()]
    except SQLAlchemyError as exc:
        raise OperatorError(f"query failed: {_first_line(exc)}") from exc
    frame = pd.DataFrame(rows, columns=list(columns))
    for column in columns:
        if column in _TIMESTAMPS:
            frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def _selected(table: Table, columns: Sequence[str]) -> list[Any]:
    return [table.c[name] for name in columns if name in table.c]


def mouse_ids(engine: Engine) -> list[str]:
    """Every mouse in the status table, sorted."""
    with engine.connect() as conn:
        return sorted(conn.execute(select(mouse_status.c.mouse_id)).scalars())


def require_mouse(engine: Engine, mouse_id: str) -> None:
    """Raises UnknownMouseError, naming the closest known ids, unless the mouse is known."""
    known = mouse_ids(engine)
    if mouse_id in known:
        return
    close = difflib.get_close_matches(mouse_id, known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise UnknownMouseError(f"no mouse {mouse_id!r} in the status table{hint}")


def sessions_frame(engine: Engine, mouse_id: str | None = None) -> pd.DataFrame:
    """Every session (or one mouse's), ordered by mouse and start time."""
    query = select(*_selected(session_summaries, list(SESSION_COLUMNS)))
    if mouse_id is not None:
        query = query.where(session_summaries.c.mouse_id == mouse_id)
    query = query.order_by(
        session_summaries.c.mouse_id, session_summaries.c.started_at, session_summaries.c.session_id
    )
    return _frame(engine, query, list(SESSION_COLUMNS))


def decisions_frame(engine: Engine, mouse_id: str | None = None) -> pd.DataFrame:
    """Every decision (or one mouse's) with its evidence, ordered by mouse and session count."""
    query = select(*_selected(decision_log, list(DECISION_COLUMNS)))
    if mouse_id is not None:
        query = query.where(decision_log.c.mouse_id == mouse_id)
    query = query.order_by(
        decision_log.c.mouse_id, decision_log.c.session_total, decision_log.c.occurred_at
    )
    return _frame(engine, query, list(DECISION_COLUMNS))


def stage_history_frame(engine: Engine, mouse_id: str) -> pd.DataFrame:
    """The stages a mouse entered, in order (``entered_at_session`` 0 = at enrolment); entries
    a recompute replaced are left out."""
    columns = [column.name for column in stage_history.columns]
    query = (
        select(stage_history)
        .where(stage_history.c.mouse_id == mouse_id)
        .where(stage_history.c.superseded_by.is_(None))
        .order_by(stage_history.c.entered_at_session, stage_history.c.occurred_at)
    )
    return _frame(engine, query, columns)


def status_frame(engine: Engine, stage: str | None = None, rig: str | None = None) -> pd.DataFrame:
    """One row per mouse, optionally only those on ``stage`` or last trained on ``rig``."""
    query = select(*_selected(mouse_status, list(STATUS_COLUMNS))).order_by(mouse_status.c.mouse_id)
    base = [name for name in STATUS_COLUMNS if name in mouse_status.c]
    status = _frame(engine, query, base)
    sessions = sessions_frame(engine)
    latest = (
        sessions.dropna(subset=["started_at"])
        .sort_values(["mouse_id", "started_at"])
        .groupby("mouse_id")
        .tail(1)
        .set_index("mouse_id")
    )
    judged = (
        sessions.dropna(subset=["decided_at"])
        .sort_values(["mouse_id", "started_at"])
        .groupby("mouse_id")
        .tail(1)
        .set_index("mouse_id")
    )
    status["last_rig_id"] = status["mouse_id"].map(latest["rig_id"]).astype(object)
    status["last_accuracy"] = status["mouse_id"].map(judged["accuracy"]).astype(float)
    status = status[list(STATUS_COLUMNS)]
    if stage is not None:
        status = status[status["stage"] == stage]
    if rig is not None:
        status = status[status["last_rig_id"] == rig]
    return status.reset_index(drop=True)


def known_values(engine: Engine, column: str) -> list[str]:
    """Distinct values of a status column (``stage``) or of the rigs that ran sessions."""
    source = session_summaries.c.rig_id if column == "rig" else mouse_status.c[column]
    with engine.connect() as conn:
        values = conn.execute(select(source).distinct()).scalars()
        return sorted(str(value) for value in values if value is not None)


def mice_per_stage(engine: Engine) -> list[tuple[tuple[str, str], int]]:
    """How many mice each (curriculum, stage) has; feeds ``shaping_mice_per_stage``."""
    query = (
        select(mouse_status.c.curriculum_name, mouse_status.c.stage, func.count())
        .where(mouse_status.c.stage.is_not(None))
        .group_by(mouse_status.c.curriculum_name, mouse_status.c.stage)
    )
    with engine.connect() as conn:
        return [
            ((str(curriculum), str(stage)), int(n)) for curriculum, stage, n in conn.execute(query)
        ]
