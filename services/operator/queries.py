"""Read-only queries of the projector's status tables, as pandas DataFrames.

Three frames are the operator's view of a lab, and ``shaping export`` writes exactly them; the
columns are fixed here (:data:`STATUS_COLUMNS`, :data:`SESSION_COLUMNS`,
:data:`DECISION_COLUMNS`) and documented in the README, which a test keeps in step.
Timestamps are timezone-aware UTC (pandas ``DatetimeTZDtype``) on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine, Select, Table, create_engine, func, inspect, make_url, select
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from shaping.services.domain import CurriculumCatalog
from shaping.services.operator.errors import OperatorError, UnknownMouseError
from shaping.services.projector.tables import (
    decision_log,
    mouse_status,
    rejected_events,
    session_summaries,
    stage_history,
    training_warnings,
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


# -- mice that need a person ------------------------------------------------------------------

ATTENTION_ORDER: tuple[str, ...] = ("rejected", "assignment", "regressed", "warning", "stalled")
"""Kinds of reasons a mouse needs a person, most urgent first: events of the mouse the
processor rejected lately (a rig's data is refused right now), a missing or stale assignment
(the rig cannot run the right session), a regression, a training warning (untrainable or
unbiasable risk, or any other the curriculum raises), a stall at one stage."""

RISK_STAGES = frozenset({"untrainable", "unbiasable"})
"""Stages (IBL's statuses) that are a risk in themselves: a mouse on one needs a person."""

StageCheck = Callable[[str | None, str | None, str], bool]
"""Whether (curriculum name, version, stage) is a terminal stage (no stall is reported there)."""


@dataclass(frozen=True)
class AttentionReason:
    """One reason a mouse needs a person.

    Attributes:
        kind: one of :data:`ATTENTION_ORDER`.
        text: what to tell the person (from data: print it escaped).
        weight: how much of it (rejected events, sessions stalled or behind); larger is worse.
    """

    kind: str
    text: str
    weight: float = 0.0

    @property
    def rank(self) -> int:
        """Position of its kind in :data:`ATTENTION_ORDER` (0 is the most urgent)."""
        return ATTENTION_ORDER.index(self.kind)


@dataclass(frozen=True)
class MouseAttention:
    """A mouse that needs a person and why, its most urgent reason first."""

    mouse_id: str
    stage: str | None
    reasons: tuple[AttentionReason, ...]

    @property
    def sort_key(self) -> tuple[int, int, float, str]:
        """Most urgent first: the most urgent reason's kind, then more reasons, then the
        larger weight of that reason, then the mouse id."""
        top = self.reasons[0]
        return (top.rank, -len(self.reasons), -top.weight, self.mouse_id)


def _present(engine: Engine) -> set[str]:
    try:
        return set(inspect(engine).get_table_names())
    except SQLAlchemyError as exc:
        raise OperatorError(f"query failed: {_first_line(exc)}") from exc


def _rows(engine: Engine, query: Select[Any]) -> list[dict[str, Any]]:
    try:
        with engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]
    except SQLAlchemyError as exc:
        raise OperatorError(f"query failed: {_first_line(exc)}") from exc


def attention(
    engine: Engine,
    *,
    stalled_after: int = 10,
    recent_sessions: int = 3,
    rejected_hours: float = 24.0,
    now: datetime | None = None,
    is_terminal: StageCheck | None = None,
) -> list[MouseAttention]:
    """The mice that need a person, most urgent first (see :attr:`MouseAttention.sort_key`).

    A mouse needs a person when:

    * ``rejected``: the processor rejected events of it in the ``rejected_hours`` before
      ``now`` (the wall clock by default): the count and the latest reason. Also a mouse the
      status table does not know (a rig sends events of an unknown mouse).
    * ``assignment``: it is enrolled but has no assignment, or its assignment is for an earlier
      session than the next one (``next_session_number`` below ``sessions_completed + 1``).
    * ``regressed``: a rollback among the decisions in force on its last ``recent_sessions``
      sessions.
    * ``warning``: a training warning raised with one of those decisions (untrainable or
      unbiasable risk, a prevented regression, ...), or its stage is untrainable or unbiasable.
    * ``stalled``: ``stalled_after`` or more sessions finished at its current stage, unless
      ``is_terminal`` says the stage is the curriculum's last.

    An ejected mouse is out of training: only rejected events are reported for it.
    """
    present = _present(engine)
    now = now if now is not None else datetime.now(UTC)
    reasons: dict[str, list[AttentionReason]] = {}
    stages: dict[str, str | None] = {}

    def add(mouse: str, reason: AttentionReason) -> None:
        reasons.setdefault(mouse, []).append(reason)

    status = _rows(engine, select(mouse_status).order_by(mouse_status.c.mouse_id))
    ejected = set()
    for row in status:
        mouse = str(row["mouse_id"])
        stages[mouse] = row["stage"]
        if row["last_reason"] == "ejected":
            ejected.add(mouse)
            continue
        done = row["sessions_completed"] or 0
        planned = row["next_session_number"]
        if row["assignment_id"] is None or planned is None:
            if row["enrolled_at"] is not None:
                since = f" {row['enrolled_at']:%Y-%m-%d %H:%M} UTC" if row["enrolled_at"] else ""
                add(mouse, AttentionReason("assignment", f"enrolled{since}, no assignment", 1e9))
        elif planned < done + 1:
            add(
                mouse,
                AttentionReason(
                    "assignment",
                    f"stale assignment: for session {planned}, but {done} sessions are done"
                    f" (the next is {done + 1})",
                    done + 1 - planned,
                ),
            )
        stage = row["stage"]
        if isinstance(stage, str) and stage.strip().lower() in RISK_STAGES:
            add(mouse, AttentionReason("warning", f"at stage {stage}", 1))
        at_stage = row["sessions_at_stage"] or 0
        if (
            isinstance(stage, str)
            and at_stage >= stalled_after
            and not (
                is_terminal
                and is_terminal(row["curriculum_name"], row["curriculum_version"], stage)
            )
        ):
            add(
                mouse,
                AttentionReason("stalled", f"stalled: {at_stage} sessions at {stage}", at_stage),
            )

    decisions = _rows(
        engine,
        select(
            decision_log.c.event_id,
            decision_log.c.mouse_id,
            decision_log.c.session_id,
            decision_log.c.decision,
            decision_log.c.from_stage,
            decision_log.c.to_stage,
            decision_log.c.rule,
            decision_log.c.session_total,
        )
        .where(decision_log.c.superseded_by.is_(None))
        .order_by(decision_log.c.mouse_id, decision_log.c.session_total.desc()),
    )
    recent: dict[str, list[dict[str, Any]]] = {}
    for row in decisions:
        kept = recent.setdefault(str(row["mouse_id"]), [])
        if len(kept) < recent_sessions:
            kept.append(row)
    for mouse, rows in recent.items():
        if mouse in ejected:
            continue
        for row in rows:
            if row["decision"] == "rollback":
                rule = f" ({row['rule']})" if row["rule"] else ""
                add(
                    mouse,
                    AttentionReason(
                        "regressed",
                        f"regressed: rollback {row['from_stage']} -> {row['to_stage']} after"
                        f" session {row['session_total']}{rule}",
                        row["session_total"] or 0,
                    ),
                )

    if training_warnings.name in present:
        warned = _rows(
            engine,
            select(training_warnings).order_by(
                training_warnings.c.mouse_id, training_warnings.c.occurred_at
            ),
        )
        # one reason per warning kind and stage: the newest message, and how often it came
        latest: dict[tuple[str, str, str], tuple[dict[str, Any], int]] = {}
        for row in warned:
            mouse = str(row["mouse_id"])
            rows = recent.get(mouse, [])
            ids = {r["event_id"] for r in rows}
            sessions = {r["session_id"] for r in rows if r["session_id"]}
            current = (
                row["decision_id"] in ids
                if row["decision_id"]
                else row["session_id"] is not None and row["session_id"] in sessions
            )
            if mouse in ejected or not current:
                continue
            key = (mouse, str(row["kind"]), str(row["stage"] or ""))
            latest[key] = (row, latest.get(key, (row, 0))[1] + 1)
        for (mouse, kind, stage), (row, count) in latest.items():
            where = f" at {stage}" if stage else ""
            times = f" ({count} of the last {recent_sessions} sessions)" if count > 1 else ""
            add(
                mouse,
                AttentionReason(
                    "warning", f"warning {kind}{where}: {row['message']}{times}", count
                ),
            )

    if rejected_events.name in present:
        cutoff = now - timedelta(hours=rejected_hours)
        rejected = _rows(
            engine,
            select(rejected_events)
            .where(rejected_events.c.occurred_at >= cutoff)
            .order_by(rejected_events.c.mouse_id, rejected_events.c.occurred_at),
        )
        by_mouse: dict[str, list[dict[str, Any]]] = {}
        for row in rejected:
            by_mouse.setdefault(str(row["mouse_id"]), []).append(row)
        for mouse, refused in by_mouse.items():
            newest = refused[-1]
            count = len(refused)
            unknown = "" if mouse in stages else " (a mouse the status table does not know)"
            add(
                mouse,
                AttentionReason(
                    "rejected",
                    f"{count} rejected event{'s' if count != 1 else ''} in the last"
                    f" {rejected_hours:g} h{unknown}; latest {newest['error_kind']}:"
                    f" {newest['reason']}",
                    count,
                ),
            )

    found = [
        MouseAttention(
            mouse,
            stages.get(mouse),
            tuple(sorted(found_reasons, key=lambda r: (r.rank, -r.weight))),
        )
        for mouse, found_reasons in reasons.items()
    ]
    return sorted(found, key=lambda item: item.sort_key)


def terminal_stage_check(catalog: CurriculumCatalog | None) -> StageCheck:
    """Tells terminal stages from ``catalog`` (:func:`shaping.services.bootstrap.catalog`, the
    curricula this machine loads; None when they cannot be loaded: no stage is terminal, so
    every stall is reported); a curriculum or stage it cannot find counts as not terminal."""
    if catalog is None:
        return lambda name, version, stage: False
    known = catalog

    def check(name: str | None, version: str | None, stage: str) -> bool:
        if not name:
            return False
        try:
            curriculum = known.get(name, version)
            compiled = curriculum.stage(stage)  # type: ignore[attr-defined]
            return bool(compiled.stage.terminal)
        except Exception:
            return False

    return check


# -- the audit trail: who asked for what ---------------------------------------------------------


def enrolment_rows(engine: Engine, mouse_id: str | None = None) -> list[dict[str, Any]]:
    """Each mouse's newest enrolment (the status table keeps only that one) as a display row
    like :func:`~shaping.services.operator.interventions.intervention_row`'s: ``at``,
    ``what``, ``by`` (who enrolled it: the principal on a secured deployment), ``why``,
    ``outcome``, ``command`` (empty: the status table does not keep it), ``mouse``."""
    query = select(
        mouse_status.c.mouse_id, mouse_status.c.enrolled_at, mouse_status.c.enrolled_by
    ).where(mouse_status.c.enrolled_at.is_not(None))
    if mouse_id is not None:
        query = query.where(mouse_status.c.mouse_id == mouse_id)
    return [
        {
            "at": row["enrolled_at"],
            "what": "enrol",
            "by": row["enrolled_by"] or "",
            "why": "",
            "outcome": "honoured",
            "command": "",
            "mouse": row["mouse_id"],
        }
        for row in _rows(engine, query)
    ]


def intervention_log(
    engine: Engine, mouse_id: str | None = None, by: str | None = None
) -> list[dict[str, Any]]:
    """The operators' audit trail, oldest first: every override, ejection and adjustment
    (``interventions`` table) and each mouse's newest enrolment, as display rows (see
    :func:`enrolment_rows`), optionally of one mouse and of one operator (``by``, exact).

    Raises:
        OperatorError: the tables cannot be read.
    """
    from shaping.services.operator.interventions import intervention_row
    from shaping.services.projector.tables import interventions

    rows = enrolment_rows(engine, mouse_id)
    if interventions.name in _present(engine):
        try:
            present = {column["name"] for column in inspect(engine).get_columns("interventions")}
        except SQLAlchemyError as exc:
            raise OperatorError(f"query failed: {_first_line(exc)}") from exc
        query = select(*(c for c in interventions.columns if c.name in present))
        if mouse_id is not None:
            query = query.where(interventions.c.mouse_id == mouse_id)
        for row in _rows(engine, query):
            rows.append(intervention_row({"command_id": None, **row}))
    if by is not None:
        rows = [row for row in rows if row["by"] == by]
    floor = datetime.min.replace(tzinfo=UTC)
    rows.sort(key=lambda row: (row["at"] or floor, row["mouse"], row["what"]))
    return rows
