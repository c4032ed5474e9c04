"""Batch evaluation of a session table: AIND's ``df_behavior`` -> ``df_manager``, through the
same curriculum engine the processor uses.

Each row is one session: ``subject_id``, ``session`` (its number), ``session_date``, a column
per session metric the rules read (``finished_trials``, ``foraging_efficiency``, ...), and
optionally the stage the trainer actually ran (closed loop) and the curriculum version in force.
Sessions of a subject are judged in ``session`` order. For each session the output has the
stage the curriculum suggested, the stage actually run (the rules judge that one), the session
counts, the decision, the next stage, the rule that held, and the evidence (every rule's
observed values and verdict, as JSON).

Semantics match the event path (:mod:`services.domain.core`): the first session runs the first
stage; ``session_total`` is the judged session's number, as AIND's engine reads it
(``session_total=session``): the table's ``session`` value when it holds a number, so a table
with sessions 1-7 then 10 judges the last one as session 10, and a row without a number
counts on from the session before it (the first is 1; with no session column, the count of
the subject's sessions). On the event path, where every session a rig runs is reported, the
session number is the count of the mouse's sessions, which is also the ``session_number`` of
the assignment it ran. ``sessions_at_stage`` counts sessions in a row at the stage actually run
(restarting at 1 when it changes); a version change keeps the subject's stage and counts.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shaping.services.curricula.engine import CompiledCurriculum
from shaping.services.curricula.errors import CurriculumInvalid, Problem
from shaping.services.curricula.model import SEMVER, semver
from shaping.services.domain.errors import CurriculumError

OUTPUT_COLUMNS = (
    "subject_id",
    "session",
    "session_date",
    "curriculum_name",
    "curriculum_version",
    "current_stage_suggested",
    "current_stage_actual",
    "if_closed_loop",
    "session_total",
    "session_at_current_stage",
    "decision",
    "next_stage_suggested",
    "rule",
)


@dataclass
class TableMetrics:
    """Metric values of one subject at one session, from the table's columns.

    ``session_total`` is the judged session's number (AIND's ``session_total=session``), not
    the count of rows: it can skip numbers.
    """

    history: list[dict[str, float | None]]
    session_total: float
    sessions_at_stage: int

    def value(
        self,
        metric: str,
        window: int | None = None,
        arguments: Mapping[str, Any] | None = None,
    ) -> float | None:
        """A counter, or the judged session's value of a session metric."""
        if metric == "session_total":
            return float(self.session_total)
        if metric == "sessions_at_stage":
            return float(self.sessions_at_stage)
        if window is not None or arguments:
            return None  # a session table has no trials
        return self.history[-1].get(metric) if self.history else None

    def series(
        self, metric: str, arguments: Mapping[str, Any] | None = None
    ) -> Sequence[float | None]:
        """A session metric's values, oldest first, ending with the judged session."""
        if arguments:
            return []  # window series need trials
        return [row.get(metric) for row in self.history]


@dataclass
class TableOptions:
    """How to read the session table.

    Attributes:
        subject_column: the subject (mouse) id.
        session_column: the session number (sessions are judged in its order).
        date_column: the session date (copied to the output).
        metric_columns: metric name -> column (default: the column named like the metric).
        stage_column: the stage actually run, for closed loop (None: open loop).
        no_stage_values: values of ``stage_column`` that mean "not given" (open loop there).
        version_column: the curriculum version in force per session (None: one curriculum).
    """

    subject_column: str = "subject_id"
    session_column: str = "session"
    date_column: str = "session_date"
    metric_columns: dict[str, str] = field(default_factory=dict)
    stage_column: str | None = None
    no_stage_values: frozenset[str] = frozenset({""})
    version_column: str | None = None


@dataclass
class _Subject:
    next_stage: str | None = None
    last_run: str | None = None
    streak: int = 0
    number: float = 0.0
    history: list[dict[str, float | None]] = field(default_factory=list)


def _float(text: Any) -> float | None:
    if text is None:
        return None
    text = str(text).strip()
    if not text or text.lower() in ("nan", "none", "null"):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _number(value: float) -> int | float:
    """A session number as written: an integer when it is one."""
    return int(value) if value.is_integer() else value


def _session_key(row: Mapping[str, Any], column: str, index: int) -> tuple[float, int]:
    number = _float(row.get(column))
    return (number if number is not None else math.inf, index)


class Evaluator:
    """Judges the sessions of a table with one or several versions of a curriculum."""

    def __init__(self, curricula: Sequence[CompiledCurriculum], options: TableOptions) -> None:
        if not curricula:
            raise CurriculumError("give at least one curriculum")
        if len(curricula) > 1 and options.version_column is None:
            raise CurriculumError(
                "several curricula need a version column saying which is in force per session"
            )
        for curriculum in curricula:
            if curriculum.trial_window:
                raise CurriculumError(
                    f"{curriculum.name} {curriculum.version} reads trial metrics (a window of "
                    f"{curriculum.trial_window} trials), which a session table does not have"
                )
        self.curricula = list(curricula)
        self.options = options

    def metric_column(self, metric: str) -> str:
        """The table column a session metric is read from."""
        return self.options.metric_columns.get(metric, metric)

    def session_metrics(self) -> list[str]:
        """Session metrics any of the curricula reads."""
        names = set()
        for curriculum in self.curricula:
            for metric in curriculum.metrics_used:
                definition = curriculum.registry.get(metric)
                if definition is not None and definition.kind == "session":
                    names.add(metric)
        return sorted(names)

    def curriculum_for(self, row: Mapping[str, Any]) -> CompiledCurriculum:
        """The curriculum version in force for a row."""
        if self.options.version_column is None:
            return self.curricula[0]
        wanted = str(row.get(self.options.version_column, "")).strip()
        for curriculum in self.curricula:
            if _same_version(curriculum, wanted):
                return curriculum
        known = ", ".join(c.version for c in self.curricula)
        raise CurriculumError(f"no curriculum version {wanted!r} was given (given: {known})")

    def run(self, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Judges every session; returns one output row per input row, in subject then
        session order."""
        options = self.options
        by_subject: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
        for index, row in enumerate(rows):
            subject = str(row.get(options.subject_column, "")).strip()
            by_subject.setdefault(subject, []).append((index, row))
        metrics = self.session_metrics()
        output = []
        for subject, indexed in by_subject.items():
            state = _Subject()
            indexed.sort(key=lambda item: _session_key(item[1], options.session_column, item[0]))
            for _, row in indexed:
                output.append(self._judge(subject, row, state, metrics))
        return output

    def _judge(
        self, subject: str, row: Mapping[str, Any], state: _Subject, metrics: list[str]
    ) -> dict[str, Any]:
        options = self.options
        curriculum = self.curriculum_for(row)
        suggested = state.next_stage or curriculum.first_stage
        if not curriculum.has_stage(suggested):
            raise CurriculumError(
                f"subject {subject}: stage {suggested!r} does not exist in {curriculum.name} "
                f"{curriculum.version} (a major version change needs `shaping migrate`)"
            )
        actual = suggested
        closed_loop = False
        if options.stage_column is not None:
            given = str(row.get(options.stage_column) or "").strip()
            if given not in options.no_stage_values:
                actual = curriculum.resolve(given)
                closed_loop = True
        given_number = _float(row.get(options.session_column))
        state.number = given_number if given_number is not None else state.number + 1
        state.streak = state.streak + 1 if actual == state.last_run else 1
        values = {m: _float(row.get(self.metric_column(m))) for m in metrics}
        state.history.append(values)
        evaluation = curriculum.evaluate(
            actual, TableMetrics(state.history, state.number, state.streak)
        )
        state.last_run = actual
        state.next_stage = evaluation.to_stage
        out: dict[str, Any] = {
            "subject_id": subject,
            "session": row.get(options.session_column, ""),
            "session_date": row.get(options.date_column, ""),
            "curriculum_name": curriculum.name,
            "curriculum_version": curriculum.version,
            "current_stage_suggested": suggested,
            "current_stage_actual": actual,
            "if_closed_loop": closed_loop,
            "session_total": _number(state.number),
            "session_at_current_stage": state.streak,
            "decision": evaluation.decision,
            "next_stage_suggested": evaluation.to_stage,
            "rule": evaluation.rule or "",
        }
        for metric in metrics:
            out[metric] = values[metric]
        out["evidence"] = json.dumps(
            [e.model_dump(mode="json") for e in evaluation.rule_evaluations],
            separators=(",", ":"),
        )
        return out


def _same_version(curriculum: CompiledCurriculum, wanted: str) -> bool:
    if wanted == curriculum.version:
        return True
    origin = curriculum.document.origin
    if origin is not None and origin.version == wanted:
        return True
    parts = wanted.split(".")
    if all(p.isdigit() for p in parts) and 1 <= len(parts) <= 3:
        padded = ".".join([*parts, "0", "0"][:3])
        return bool(SEMVER.match(padded)) and semver(padded) == semver(curriculum.version)
    return False


def read_table(path: Path) -> list[dict[str, str]]:
    """Reads a CSV session table.

    Raises:
        CurriculumInvalid: when the file cannot be read.
    """
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise CurriculumInvalid(
            [Problem(f"cannot read the session table: {exc}", str(path))]
        ) from None


def write_table(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Writes the decisions as CSV (missing values as empty cells)."""
    columns = list(OUTPUT_COLUMNS)
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
