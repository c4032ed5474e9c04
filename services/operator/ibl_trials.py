"""Batch training status from an IBL trial table, through the event path.

``shaping evaluate --curriculum ibl --trials TRIALS.csv --out STATUS.csv`` reads a table of
trials with IBL's column names (one row per trial: ``session_date``, ``task_protocol``,
``contrastLeft``, ``contrastRight``, ``choice``, ``feedbackType``, ``probabilityLeft``,
``response_times``, ``stimOn_times``; an empty cell is NaN), turns every session into the
events a rig would send (SessionStarted, one TrialCompleted per trial, SessionEnded) and folds
them through the training core, as the Kafka processor's step does with each event it decodes
(:func:`evaluate_sessions`). Nothing here judges a session; the curriculum does, on the
events. The output has one row per subject and date: the status after that date's
sessions, the decision and every metric the curriculum reports, and the evidence.

Optional columns: ``subject`` (several mice in one table; default: one mouse named after the
file), ``session`` (several sessions on one date; default: a date's trials are one session,
as IBL's training pipeline concatenates them), ``trial_index`` (order within the session),
and per session ``ephys_rig`` (true when the session ran on an ephys rig) and
``session_start_delay_s`` (seconds between the session's start and its first trial).

How a trial becomes an event (IBL conventions, ibllib ``brainbox.behavior.training``):

- ``outcome``: ``correct`` when feedbackType is 1; ``miss`` when choice is 0 (IBL's no-go);
  ``incorrect`` otherwise.
- ``response_side``: choice -1 is a rightward response and 1 a leftward one (ibllib's
  psychometric curve is the fraction of ``choice == -1``); None for a no-go.
- ``target_side``: the side whose contrast is given (not NaN).
- ``reaction_time_s``: response_times - stimOn_times (None when either is NaN).
- ``trial_parameters``: ``contrast_left`` and ``contrast_right`` (absent when NaN) and
  ``probability_left``.
- The session's ``parameters``: ``task_protocol`` (``training``, ``biased``, ``ephys``,
  ``habituation``; a full protocol name such as ``_iblrig_tasks_trainingChoiceWorld6.4.2`` is
  shortened as ibllib does), ``ephys_rig`` and ``session_start_delay_s``; the session's
  ``session_date`` is the table's date.

The psychometric fits the decisions will read are fitted ahead from the table, many windows
in one lockstep run (:func:`prefetch_fits`; :func:`prefetch_history_fits` does the same from
stored events), into the fit cache keyed by their exact data: the decisions then find them.
That changes how fast the decisions are made, never what they find.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import gc
import hashlib
import json
import math
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    EventRejected,
    MouseEnrolled,
    SessionEnded,
    SessionStarted,
    StageTransitioned,
    TrainingWarning,
    TrialCompleted,
)
from shaping.schemas.identifiers import check_id, is_id
from shaping.services.domain.curriculum import CurriculumCatalog, CurriculumEngine
from shaping.services.domain.psychometric import FitRequest
from shaping.services.domain.session_stats import block_key, signed_contrast

TRIAL_COLUMNS = (
    "session_date",
    "task_protocol",
    "contrastLeft",
    "contrastRight",
    "choice",
    "feedbackType",
    "probabilityLeft",
    "response_times",
    "stimOn_times",
)
"""Columns every IBL trial table must have (ibllib's TRIALS_KEYS plus date and protocol)."""

STATUS_COLUMNS = (
    "subject",
    "session_date",
    "task_protocol",
    "sessions",
    "n_trials",
    "previous_status",
    "status",
    "decision",
    "rule",
    "curriculum_name",
    "curriculum_version",
)
"""The first columns of the status table; the curriculum's reported metrics, the warnings and
the evidence follow."""

_NAMESPACE = uuid.UUID("2f0f6c3e-9a51-4d1b-b7a4-3c2d41e6a0b7")
_NAMESPACE_BYTES = _NAMESPACE.bytes
_PROTOCOL = re.compile(r"tasks_([A-Za-z0-9]+?)ChoiceWorld", re.IGNORECASE)
_TRUE = frozenset({"1", "1.0", "true", "t", "yes", "y", "ephys", "ephys_rig"})
_FALSE = frozenset({"", "0", "0.0", "false", "f", "no", "n", "training", "training_rig"})


class TrialTableError(ValueError):
    """A trial table cannot be read; the message names the file, row and column."""


@dataclass(frozen=True)
class TrialColumns:
    """Names of the optional columns of a trial table (the IBL columns are fixed).

    Attributes:
        subject: the mouse (absent: every trial is one mouse's).
        session: a session label, for several sessions on one date (absent: one per date).
        trial_index: the trial's number in its session (absent: row order).
        ephys_rig: whether the session ran on an ephys rig (per session).
        start_delay: seconds between the session's start and its first trial (per session).
    """

    subject: str = "subject"
    session: str = "session"
    trial_index: str = "trial_index"
    ephys_rig: str = "ephys_rig"
    start_delay: str = "session_start_delay_s"


_CHOICE_SIDES = {-1: "right", 1: "left"}


@dataclass(frozen=True)
class IblTrial:
    """One trial as IBL's ALF trials object holds it (None for NaN)."""

    contrast_left: float | None
    contrast_right: float | None
    choice: int
    feedback_type: int
    probability_left: float | None
    response_time: float | None
    stim_on_time: float | None

    @property
    def outcome(self) -> str:
        """``correct``, ``incorrect`` or ``miss`` (a no-go, choice 0)."""
        if self.feedback_type == 1:
            return "correct"
        return "miss" if self.choice == 0 else "incorrect"

    @property
    def response_side(self) -> str | None:
        """``right`` for choice -1, ``left`` for choice 1, None for a no-go."""
        return _CHOICE_SIDES.get(self.choice)

    @property
    def target_side(self) -> str | None:
        """The side the stimulus was shown on (its contrast is not NaN)."""
        if self.contrast_left is not None:
            return "left"
        if self.contrast_right is not None:
            return "right"
        return None

    @property
    def reaction_time_s(self) -> float | None:
        """response_times - stimOn_times, the open-loop duration IBL's criteria read."""
        if self.response_time is None or self.stim_on_time is None:
            return None
        return self.response_time - self.stim_on_time


@dataclass
class IblSession:
    """The trials of one session of one subject, in order, with its per-session facts."""

    subject: str
    session_date: str
    label: str
    task_protocol: str
    ephys_rig: bool
    start_delay_s: float
    first_row: int
    trials: list[IblTrial] = field(default_factory=list)
    _order: list[tuple[float, int]] = field(default_factory=list, repr=False)


def short_protocol(text: str) -> str:
    """IBL's protocol kind: ``training``, ``biased``, ``ephys``, ``habituation``...

    A full task name (``_iblrig_tasks_trainingChoiceWorld6.4.2``) is shortened as ibllib's
    ``get_sessions`` does; a short name is kept (lower-cased).
    """
    found = _PROTOCOL.search(text)
    return (found.group(1) if found else text).strip().lower()


class _Row:
    """Reads typed cells of one CSV row, failing with the file, row and column."""

    def __init__(self, path: Path, number: int, row: Mapping[str, str | None]) -> None:
        self.path, self.number, self.row = path, number, row

    def fail(self, column: str, why: str) -> TrialTableError:
        value = self.row.get(column)
        return TrialTableError(
            f"{self.path}: row {self.number}: column {column}: {why} ({value!r})"
        )

    def text(self, column: str) -> str:
        return (self.row.get(column) or "").strip()

    def number_or_nan(self, column: str) -> float | None:
        text = self.text(column)
        if not text or text.lower() in ("nan", "none", "null"):
            return None
        try:
            value = float(text)
        except ValueError:
            raise self.fail(column, "not a number") from None
        if not math.isfinite(value):
            raise self.fail(column, "not a finite number")
        return value

    def integer(self, column: str, allowed: Iterable[int]) -> int:
        allowed = tuple(allowed)
        try:
            value = float(self.text(column))
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value != int(value) or int(value) not in allowed:
            raise self.fail(column, f"must be one of {', '.join(map(str, allowed))}")
        return int(value)

    def fraction(self, column: str) -> float | None:
        value = self.number_or_nan(column)
        if value is not None and not 0.0 <= value <= 1.0:
            raise self.fail(column, "must be between 0 and 1 or empty")
        return value

    def date(self, column: str) -> str:
        text = self.text(column)
        try:
            return date.fromisoformat(text[:10]).isoformat()
        except ValueError:
            raise self.fail(column, "not a date like 2020-08-21") from None

    def flag(self, column: str) -> bool:
        text = self.text(column).lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise self.fail(column, "not true or false")


def read_trials(path: Path, columns: TrialColumns | None = None) -> list[IblSession]:
    """Reads an IBL trial table (CSV) into sessions, by subject then date then session label.

    Raises:
        TrialTableError: when the file cannot be read, lacks a column, or a value is not valid
            (the message names the file, the row and the column).
    """
    columns = columns or TrialColumns()
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [c for c in TRIAL_COLUMNS if c not in header]
            if missing:
                raise TrialTableError(
                    f"{path}: missing column(s) {', '.join(missing)} "
                    f"(an IBL trial table needs {', '.join(TRIAL_COLUMNS)})"
                )
            return _sessions(path, reader, set(header), columns)
    except FileNotFoundError:
        raise TrialTableError(f"{path}: no such file") from None
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise TrialTableError(f"{path}: cannot read the trial table: {exc}") from None


def _sessions(
    path: Path, reader: Iterable[dict[str, str | None]], header: set[str], columns: TrialColumns
) -> list[IblSession]:
    default_subject = path.stem
    sessions: dict[tuple[str, str, str], IblSession] = {}
    for number, raw in enumerate(reader, start=2):  # row 1 is the header
        row = _Row(path, number, raw)
        if None in raw:
            raise TrialTableError(f"{path}: row {number}: more cells than columns")
        subject = row.text(columns.subject) if columns.subject in header else default_subject
        if not subject:
            raise row.fail(columns.subject, "empty subject")
        session_date = row.date("session_date")
        label = row.text(columns.session) if columns.session in header else ""
        protocol_text = row.text("task_protocol")
        if not protocol_text:
            raise row.fail("task_protocol", "empty task protocol")
        protocol = short_protocol(protocol_text)
        ephys = row.flag(columns.ephys_rig) if columns.ephys_rig in header else False
        delay = row.number_or_nan(columns.start_delay) if columns.start_delay in header else None
        if delay is not None and delay < 0:
            raise row.fail(columns.start_delay, "a start delay cannot be negative")
        key = (subject, session_date, label)
        session = sessions.get(key)
        if session is None:
            if not is_id(subject):
                raise _bad_subject(row, subject, columns.subject in header, columns.subject)
            session = sessions[key] = IblSession(
                subject, session_date, label, protocol, ephys, delay or 0.0, number
            )
        else:
            for column, value, first in (
                ("task_protocol", protocol, session.task_protocol),
                (columns.ephys_rig, ephys, session.ephys_rig),
                (columns.start_delay, delay or 0.0, session.start_delay_s),
            ):
                if value != first:
                    raise row.fail(
                        column,
                        f"differs from the session's first row (row {session.first_row}): one "
                        f"value per session",
                    )
        choice = row.integer("choice", (-1, 0, 1))
        feedback = row.integer("feedbackType", (-1, 1))
        if choice == 0 and feedback == 1:
            raise row.fail("feedbackType", "a no-go trial (choice 0) cannot be rewarded")
        trial = IblTrial(
            contrast_left=row.fraction("contrastLeft"),
            contrast_right=row.fraction("contrastRight"),
            choice=choice,
            feedback_type=feedback,
            probability_left=row.fraction("probabilityLeft"),
            response_time=row.number_or_nan("response_times"),
            stim_on_time=row.number_or_nan("stimOn_times"),
        )
        index = row.number_or_nan(columns.trial_index) if columns.trial_index in header else None
        session._order.append((index if index is not None else math.inf, len(session.trials)))
        session.trials.append(trial)
    ordered = sorted(sessions.values(), key=lambda s: (s.subject, *session_order(s)))
    for session in ordered:
        if any(index != math.inf for index, _ in session._order):
            seen = [index for index, _ in session._order]
            if len(set(seen)) != len(seen):
                raise TrialTableError(
                    f"{path}: subject {session.subject} {session.session_date}: column "
                    f"{columns.trial_index}: the same trial index twice in one session"
                )
            session.trials = [session.trials[i] for _, i in sorted(session._order)]
    return ordered


def _bad_subject(row: _Row, subject: str, from_column: bool, column: str) -> TrialTableError:
    """Why ``subject`` cannot be a mouse id: from the subject column, or from the file name
    (a table without that column)."""
    try:
        check_id(subject, "subject")
    except ValueError as exc:
        reason = str(exc)
    else:  # pragma: no cover - is_id and check_id agree
        reason = f"subject {subject!r} is not a mouse id"
    if from_column:
        return row.fail(column, reason)
    return TrialTableError(
        f"{row.path}: the table has no {column} column, so its file name is the subject, and "
        f"{reason}; add a {column} column or rename the file"
    )


def session_order(session: IblSession) -> tuple[str, tuple[int, float, str]]:
    """Sort key of a subject's sessions: by date, then by label (numerically when it is a
    number, so session 10 comes after session 9)."""
    try:
        number = float(session.label)
    except ValueError:
        return session.session_date, (1, 0.0, session.label)
    return session.session_date, (0, number, session.label)


def event_id(*parts: object) -> str:
    """A deterministic event id (the same table gives the same events): the text of
    ``uuid.uuid5`` of the parts joined by ``/``, worked out from the SHA-1 directly (a trial
    table of 8 mice takes 290k of them; building UUID objects cost a third of the events)."""
    return _uuid5_text(hashlib.sha1(_NAMESPACE_BYTES + "/".join(map(str, parts)).encode()))


def _sibling(model: TrialCompleted, fields: dict[str, Any]) -> TrialCompleted:
    """``model.model_copy(update=fields)``, as pydantic's ``model_construct`` builds an
    instance (its ``__dict__``, fields set, no extra, no private attributes): 0.8 us instead
    of 2.1. A pydantic that stores instances otherwise fails the twin test."""
    sibling = TrialCompleted.__new__(TrialCompleted)
    values = model.__dict__.copy()
    values.update(fields)
    object.__setattr__(sibling, "__dict__", values)
    object.__setattr__(sibling, "__pydantic_fields_set__", model.model_fields_set)
    object.__setattr__(sibling, "__pydantic_extra__", None)
    object.__setattr__(sibling, "__pydantic_private__", None)
    return sibling


def _whole_milliseconds(moment: datetime) -> datetime:
    """``to_utc_millis`` of a UTC timestamp (the model's normalisation, without the checks)."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def numbered_event_ids(count: int, *parts: object) -> list[str]:
    """``[event_id(*parts, 0), ..., event_id(*parts, count - 1)]``, hashing the common part
    once."""
    common = hashlib.sha1(_NAMESPACE_BYTES + "/".join(map(str, (*parts, ""))).encode())
    ids: list[str] = []
    for number in range(count):
        digest = common.copy()
        digest.update(str(number).encode())
        ids.append(_uuid5_text(digest))
    return ids


def _uuid5_text(sha1: Any) -> str:
    digest = bytearray(sha1.digest())
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    text = digest[:16].hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


BATCH_RIG = "ibl-batch"
"""The rig id of the events built from a trial table."""


def session_events(
    session: IblSession,
    *,
    mouse_id: str,
    session_id: str,
    stage: str,
    curriculum_name: str,
    curriculum_version: str,
    start: datetime,
    rig_id: str = BATCH_RIG,
) -> list[Event]:
    """The events a rig would send for one session: SessionStarted, a TrialCompleted per
    trial, SessionEnded (see the module docstring for the encoding)."""
    common: dict[str, Any] = {"mouse_id": mouse_id, "rig_id": rig_id, "session_id": session_id}
    ids = numbered_event_ids(len(session.trials), session_id, "trial")
    utc = start.astimezone(UTC)
    first: TrialCompleted | None = None
    trials: list[Event] = []
    for index, (trial, elapsed) in enumerate(_timed(session)):
        fields = _trial_fields(trial, index, ids[index], utc + timedelta(seconds=elapsed))
        # The first trial is validated by its model; the others differ from it only in
        # values the table reader checked (floats, an outcome, a side, the index) and are
        # copies of it with those values, normalised as the model would (the timestamp to
        # the millisecond): tests/curricula/test_ibl_events.py holds each to its validated
        # twin. Validating 36k trials field by field cost a fifth of the run.
        if first is None:
            first = TrialCompleted(**fields, **common)
            trials.append(first)
        else:
            trials.append(_sibling(first, fields))
    return [
        _session_started(session, common, stage, curriculum_name, curriculum_version, start),
        *trials,
        _session_ended(session, common, start),
    ]


class _QuietTrial(NamedTuple):
    """What folding a trial quietly reads of it (``TrainingCore.fold_quietly``,
    ``SessionStats.add_all``), with the values its TrialCompleted would have."""

    session_id: str
    rig_id: str
    trial_index: int
    outcome: str
    response_side: str | None
    target_side: str | None
    reaction_time_s: float | None
    trial_parameters: dict[str, float]
    correction_trial: bool = False


def _quiet_trials(session: IblSession, session_id: str, rig_id: str) -> list[_QuietTrial]:
    """The session's trials as :class:`_QuietTrial` records: for a session whose trials fold
    quietly, what :func:`session_events` gives without the ids, times and models nothing
    reads then."""
    return [
        _QuietTrial(
            session_id,
            rig_id,
            index,
            trial.outcome,
            trial.response_side,
            trial.target_side,
            trial.reaction_time_s,
            _trial_parameters(trial),
        )
        for index, trial in enumerate(session.trials)
    ]


def first_trial(session: IblSession, common: dict[str, Any], start: datetime) -> TrialCompleted:
    """The session's first TrialCompleted, as :func:`session_events` gives it (validated)."""
    trial, elapsed = next(_timed(session))
    event = numbered_event_ids(1, common["session_id"], "trial")[0]
    moment = start.astimezone(UTC) + timedelta(seconds=elapsed)
    return TrialCompleted(**_trial_fields(trial, 0, event, moment), **common)


def _trial_fields(trial: IblTrial, index: int, event: str, moment: datetime) -> dict[str, Any]:
    return {
        "event_id": event,
        "occurred_at": _whole_milliseconds(moment),
        "trial_index": index,
        "outcome": trial.outcome,
        "target_side": trial.target_side,
        "response_side": trial.response_side,
        "reaction_time_s": trial.reaction_time_s,
        "trial_parameters": _trial_parameters(trial),
    }


def _timed(session: IblSession) -> Iterator[tuple[IblTrial, float]]:
    """Each trial with its time in seconds from the session's start: its response (else its
    stimulus) time, never earlier than the trial before; a second after it when it has none."""
    elapsed = 0.0
    for trial in session.trials:
        moment = trial.response_time if trial.response_time is not None else trial.stim_on_time
        elapsed = max(elapsed, moment if moment is not None else elapsed + 1.0)
        yield trial, elapsed


def _trial_parameters(trial: IblTrial) -> dict[str, float]:
    parameters: dict[str, float] = {}
    if trial.contrast_left is not None:
        parameters["contrast_left"] = trial.contrast_left
    if trial.contrast_right is not None:
        parameters["contrast_right"] = trial.contrast_right
    if trial.probability_left is not None:
        parameters["probability_left"] = trial.probability_left
    return parameters


def _session_started(
    session: IblSession,
    common: dict[str, Any],
    stage: str,
    curriculum_name: str,
    curriculum_version: str,
    start: datetime,
) -> SessionStarted:
    return SessionStarted(
        event_id=event_id(common["session_id"], "start"),
        occurred_at=start,
        stage=stage,
        curriculum_name=curriculum_name,
        curriculum_version=curriculum_version,
        parameters={
            "task_protocol": session.task_protocol,
            "ephys_rig": session.ephys_rig,
            "session_start_delay_s": session.start_delay_s,
        },
        session_date=session.session_date,
        **common,
    )


def _session_ended(session: IblSession, common: dict[str, Any], start: datetime) -> SessionEnded:
    duration = 1.0 + max((elapsed for _, elapsed in _timed(session)), default=0.0)
    return SessionEnded(
        event_id=event_id(common["session_id"], "end"),
        occurred_at=start + timedelta(seconds=duration),
        n_trials=len(session.trials),
        end_reason="completed",
        duration_s=duration,
        **common,
    )


PSYCHOMETRIC_METRICS = frozenset(
    {"psych_bias", "psych_threshold", "psych_lapse_low", "psych_lapse_high"}
)
"""The metrics that read a psychometric fit (services/domain/metric_library.py)."""

PREFETCH_FITS = 1500
"""Most fits prefetched in one lockstep run (the subjects are taken in groups of about this
many fits; the fit cache keeps more than that, so none is evicted before it is read)."""

PsychWindow = tuple[str, int, float | None]
"""A psychometric fit a curriculum reads: ``("dates", k, block)`` or ``("sessions", k,
block)`` (block None: every trial)."""


def psychometric_windows(curriculum: CurriculumEngine) -> list[PsychWindow]:
    """Every psychometric fit the curriculum's conditions, rules, warnings, policies and
    reports read (the arguments of its ``psych_*`` calls), in first-seen order; empty for a
    curriculum that reads none (or is not a compiled curriculum file)."""
    from shaping.services.curricula.rules import MetricCall, Node

    expressions = getattr(curriculum, "_expressions", None)
    if expressions is None:
        return []
    found: dict[PsychWindow, None] = {}

    def walk(node: object) -> None:
        if isinstance(node, MetricCall) and node.name in PSYCHOMETRIC_METRICS:
            arguments = dict(node.arguments)
            block = arguments.pop("block", None)
            for unit in ("dates", "sessions"):
                size = arguments.pop(unit, None)
                if isinstance(size, int) and not arguments:
                    found[(unit, size, None if block is None else float(block))] = None
        if isinstance(node, Node) and dataclasses.is_dataclass(node):
            for item in dataclasses.fields(node):
                value = getattr(node, item.name)
                for child in value if isinstance(value, list | tuple) else (value,):
                    if isinstance(child, Node):
                        walk(child)

    for expression in expressions():
        walk(expression.root)
    return list(found)


Cells = dict[tuple[str, float], list[int]]
"""A session's psychometric table: (block key, signed contrast) -> [trials, rightward]."""


def _session_cells(session: IblSession) -> Cells:
    """What the session's TrialCompleted events add to its SessionStats.psych: trials and
    rightward choices per block and signed contrast (services/domain/session_stats.py)."""
    cells: Cells = {}
    keys: dict[tuple[float | None, float | None, float | None], tuple[str, float] | None] = {}
    for trial in session.trials:
        # The reader gives finite floats or None, so equal triples give equal keys.
        triple = (trial.contrast_left, trial.contrast_right, trial.probability_left)
        if triple in keys:
            key = keys[triple]
        else:
            parameters = {
                name: value
                for name, value in zip(("contrast_left", "contrast_right"), triple, strict=False)
                if value is not None
            }
            contrast = signed_contrast(parameters)
            key = keys[triple] = (
                None if contrast is None else (block_key(trial.probability_left), contrast)
            )
        if key is None:
            continue
        cell = cells.setdefault(key, [0, 0])
        cell[0] += 1
        cell[1] += trial.response_side == "right"  # never a miss (a no-go has no side)
    return cells


Record = tuple[str, str, Cells]
"""What a window reads of one session: its date, its task protocol and its cells."""


def _pooled(units: Sequence[Sequence[Record]], block: float | None) -> dict[float, list[int]]:
    """[trials, rightward] per signed contrast over the window's sessions, in one block (None:
    every trial), as the metric library's ``_cells`` pools them."""
    wanted = None if block is None else block_key(block)
    total: dict[float, list[int]] = {}
    for unit in units:
        for _, _, cells in unit:
            for (key, contrast), (n, right) in cells.items():
                if wanted is not None and key != wanted:
                    continue
                cell = total.setdefault(contrast, [0, 0])
                cell[0] += n
                cell[1] += right
    return total


def _has_trials(units: Sequence[Sequence[Record]], block: float) -> bool:
    return any(n for n, _ in _pooled(units, block).values())


def _window_requests(records: Sequence[Record], windows: Sequence[PsychWindow]) -> list[FitRequest]:
    """The fits read by the decisions after each of a mouse's sessions (``records``, in the
    order they are judged): per window, the pooled trials per signed contrast as the metric
    library pools the sessions' statistics (dates=k: the session's date and the k-1 dates
    before it, a date's sessions pooled; sessions=k: the last k sessions; habituation dates and
    sessions carry no data), with the fit's place in ibllib's sequence."""
    from shaping.services.domain.metric_registry import HABITUATION
    from shaping.services.domain.psychometric import block_fit_position, fit_request
    from shaping.services.domain.state import MAX_SESSION_HISTORY

    requests: list[FitRequest] = []
    history: list[Record] = []
    for record in records:
        history = [*history[-(MAX_SESSION_HISTORY - 1) :], record]
        for unit, size, block in windows:
            if unit == "dates":
                days = sorted({day for day, _, _ in history if day <= record[0]})[-size:]
                groups = [[h for h in history if h[0] == day] for day in days]
            else:
                groups = [[h] for h in history[-size:]]
            kept = [g for g in groups if g[-1][1] != HABITUATION]
            cells = _pooled(kept, block)
            contrasts = sorted(cells)
            after = block_fit_position(block, functools.partial(_has_trials, kept))
            requests.append(
                fit_request(
                    contrasts,
                    [cells[c][0] for c in contrasts],
                    [cells[c][1] for c in contrasts],
                    after=after,
                )
            )
    return requests


def fit_requests(
    sessions: Sequence[IblSession], windows: Sequence[PsychWindow]
) -> list[FitRequest]:
    """The psychometric fits the decisions on these sessions will read (per subject, after
    each session, in the order ``evaluate_sessions`` sends them), from the trial table.

    These are what ``psychometric.fit_many`` can fit in one batch ahead of the decisions. A
    decision whose window differed would find no fit cached and fit its own (the cache is
    keyed by the exact data): this decides only how fast the decisions are, never what they
    find."""
    by_subject: dict[str, list[IblSession]] = {}
    for session in sessions:
        by_subject.setdefault(session.subject, []).append(session)
    requests: list[FitRequest] = []
    for own in by_subject.values():
        records = [
            (s.session_date, s.task_protocol, _session_cells(s))
            for s in sorted(own, key=session_order)
        ]
        requests += _window_requests(records, windows)
    return requests


def _cell_key(parameters: Mapping[str, object]) -> tuple[str, float] | None:
    """A trial's (block key, signed contrast), as SessionStats.add files it (None: no contrast)."""
    contrast = signed_contrast(parameters)
    if contrast is None:
        return None
    block = parameters.get("probability_left")
    number = (
        float(block)
        if isinstance(block, int | float) and not isinstance(block, bool) and math.isfinite(block)
        else None
    )
    return block_key(number), contrast


def history_fit_requests(
    events: Iterable[Event], windows: Sequence[PsychWindow]
) -> list[FitRequest]:
    """The psychometric fits the decisions on a stored history of events will read (per
    mouse, after each SessionEnded, sessions judged in the order they end), from the events
    themselves: what a replay or a recompute of that history can fit in one batch ahead
    (see :func:`fit_requests`)."""
    open_sessions: dict[tuple[str, str], tuple[str, str, Cells]] = {}
    records: dict[str, list[Record]] = {}
    keys: dict[tuple[object, object, object], tuple[str, float] | None] = {}
    for event in events:
        if isinstance(event, TrialCompleted):
            found = open_sessions.get((event.mouse_id, event.session_id or ""))
            if found is None:
                continue
            parameters = event.trial_parameters
            # A session's trials take few (contrast, block) values: each is worked out once.
            memo = (
                parameters.get("contrast_left"),
                parameters.get("contrast_right"),
                parameters.get("probability_left"),
            )
            try:
                key = keys[memo]
            except KeyError:
                key = keys[memo] = _cell_key(parameters)
            except TypeError:  # an unhashable parameter value
                key = _cell_key(parameters)
            if key is None:
                continue
            cell = found[2].setdefault(key, [0, 0])
            cell[0] += 1
            cell[1] += event.outcome != "miss" and event.response_side == "right"
        elif isinstance(event, SessionStarted):
            protocol = event.parameters.get("task_protocol")
            open_sessions[(event.mouse_id, event.session_id or "")] = (
                event.effective_date,
                protocol if isinstance(protocol, str) else "",
                {},
            )
        elif isinstance(event, SessionEnded):
            ended = open_sessions.pop((event.mouse_id, event.session_id or ""), None)
            if ended is not None:
                records.setdefault(event.mouse_id, []).append(ended)
    requests: list[FitRequest] = []
    for own in records.values():
        requests += _window_requests(own, windows)
    return requests


def prefetch_fits(sessions: Sequence[IblSession], curriculum: CurriculumEngine) -> int:
    """Fits, in one lockstep run, every psychometric fit the curriculum's decisions on these
    sessions will read, into the fit cache; returns how many were asked (0 when the
    curriculum reads none)."""
    windows = psychometric_windows(curriculum)
    if not windows:
        return 0
    from shaping.services.domain.psychometric import fit_many

    requests = fit_requests(sessions, windows)
    fit_many(requests)
    return len(requests)


def prefetch_history_fits(events: Iterable[Event], curriculum: CurriculumEngine) -> int:
    """As :func:`prefetch_fits`, for a stored history of events (a replay, a recompute)."""
    windows = psychometric_windows(curriculum)
    if not windows:
        return 0
    from shaping.services.domain.psychometric import fit_many

    requests = history_fit_requests(events, windows)
    fit_many(requests)
    return len(requests)


class BatchError(ValueError):
    """The event path refused an event of the table (the message says which and why)."""


@dataclass(frozen=True)
class DateStatus:
    """A subject's status after the sessions of one date, with the decision's evidence."""

    subject: str
    session_date: str
    task_protocols: tuple[str, ...]
    n_trials: int
    previous_status: str
    decision: StageTransitioned
    warnings: tuple[TrainingWarning, ...] = ()

    @property
    def status(self) -> str:
        """The status reached on this date (the stage of the next session)."""
        return self.decision.to_stage

    def row(self, metric_names: Sequence[str]) -> dict[str, Any]:
        """The status table's row: fixed columns, the reported metrics, warnings, evidence."""
        decision = self.decision
        out: dict[str, Any] = {
            "subject": self.subject,
            "session_date": self.session_date,
            "task_protocol": "+".join(self.task_protocols),
            "sessions": len(self.task_protocols),
            "n_trials": self.n_trials,
            "previous_status": self.previous_status,
            "status": self.status,
            "decision": decision.decision,
            "rule": decision.rule or "",
            "curriculum_name": decision.curriculum_name,
            "curriculum_version": decision.curriculum_version,
        }
        for name in metric_names:
            out[name] = decision.metrics.get(name)
        out["warnings"] = ";".join(w.kind for w in self.warnings)
        out["evidence"] = json.dumps(
            [e.model_dump(mode="json") for e in decision.rule_evaluations], separators=(",", ":")
        )
        return out


def evaluate_sessions(
    sessions: Sequence[IblSession],
    curriculum: CurriculumEngine,
    catalog: CurriculumCatalog | None = None,
) -> list[DateStatus]:
    """Folds every subject's sessions, in date order, through the training core.

    Each subject is enrolled on ``curriculum``; each session runs at the stage the core
    assigned after the previous one, as a rig would. Returns one status per subject and date.

    The events go to :meth:`TrainingCore.handle_gated` with no welfare gate, the function the
    processor's step runs on every event it decodes (these subjects are not on water
    restriction, so the gate would change nothing); each session's trials go as one run to
    :meth:`TrainingCore.handle_trials`, which ends in the same state and outputs. The wire is
    left out: an event built here and validated by its model is the event the step would
    decode from its Avro bytes, and the encoding, decoding and per-message bookkeeping cost
    four fifths of the time.

    Args:
        sessions: the trials, by session.
        curriculum: the curriculum every subject is enrolled on.
        catalog: the curricula the core knows (default: ``curriculum`` alone).

    Raises:
        BatchError: when the core refuses an event (it cannot have happened).
    """
    with _fewer_collections():
        return _evaluate_sessions(sessions, curriculum, catalog)


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Python's cycle collector, kept off what the run does not free: the objects alive at
    the start (the trial table: 288k trials for 8 mice) are frozen out of its passes, and the
    youngest generation is collected after 20,000 allocations instead of 700. Nothing here
    makes reference cycles; the run made that many objects that each pass walked the whole
    table, a fifth of the time of 8 mice. Both settings are put back at the end."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(thresholds[0], 20_000), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def _evaluate_sessions(
    sessions: Sequence[IblSession],
    curriculum: CurriculumEngine,
    catalog: CurriculumCatalog | None,
) -> list[DateStatus]:
    from shaping.services.domain import TrainingCore, initial_state
    from shaping.services.domain.errors import ImpossibleEvent

    core = TrainingCore(catalog or CurriculumCatalog([curriculum]))
    by_subject: dict[str, list[IblSession]] = {}
    for session in sessions:
        by_subject.setdefault(session.subject, []).append(session)
    statuses: list[DateStatus] = []
    windows = psychometric_windows(curriculum)
    prefetched: set[str] = set()
    subjects = list(by_subject)
    for position, subject in enumerate(subjects):
        if windows and subject not in prefetched:
            # The fits of this subject and the next ones, up to PREFETCH_FITS, in one run.
            group: list[IblSession] = []
            for other in subjects[position:]:
                if group and len(group) + len(by_subject[other]) * len(windows) > PREFETCH_FITS:
                    break
                group.extend(by_subject[other])
                prefetched.add(other)
            _prefetch(group, windows)
        own = sorted(by_subject[subject], key=session_order)
        first_day = datetime.fromisoformat(own[0].session_date).replace(tzinfo=UTC)
        state = initial_state(subject)

        def fold(events: Sequence[Event], what: str) -> list[Event]:
            nonlocal state
            outputs: list[Event] = []
            for run in _runs_of_trials(events):
                try:
                    if isinstance(run, Event):
                        state, emitted = core.handle_gated(state, run, None)
                    else:
                        state, emitted = core.handle_trials(state, run)
                except ImpossibleEvent as exc:
                    raise BatchError(f"{what}: the processor refused an event: {exc}") from exc
                for output in emitted:
                    if isinstance(output, EventRejected):
                        raise BatchError(f"{what}: the processor refused an event: {output.reason}")
                outputs.extend(emitted)
            return outputs

        def fold_session(
            session: IblSession,
            session_id: str,
            assignment: AssignmentIssued,
            start: datetime,
            what: str,
        ) -> list[Event]:
            """Folds a session's events (:func:`session_events`). Its trials are first offered
            to the core as :class:`_QuietTrial` records, which it folds at once when they only
            add to the session's statistics (``TrainingCore.fold_quietly``: what folding the
            events would give, tested in tests/curricula/test_ibl_events.py); only otherwise
            are the trial events built and folded."""
            nonlocal state
            mouse = state.mouse_id
            common = {"mouse_id": mouse, "rig_id": BATCH_RIG, "session_id": session_id}
            started = _session_started(
                session,
                common,
                assignment.stage,
                assignment.curriculum_name,
                assignment.curriculum_version,
                start,
            )
            outputs = fold([started], what)
            folded = None
            if len(session.trials) > 1:
                first_trial(session, common, start)  # the first trial passes its model
                folded = core.fold_quietly(state, _quiet_trials(session, session_id, BATCH_RIG))
            if folded is not None:
                state = folded
            elif session.trials:
                events = session_events(
                    session,
                    mouse_id=mouse,
                    session_id=session_id,
                    stage=assignment.stage,
                    curriculum_name=assignment.curriculum_name,
                    curriculum_version=assignment.curriculum_version,
                    start=start,
                )
                outputs.extend(fold(events[1:-1], what))
            outputs.extend(fold([_session_ended(session, common, start)], what))
            return outputs

        enrolment = MouseEnrolled(
            event_id=event_id(subject, "enrolled", curriculum.name, curriculum.version),
            mouse_id=subject,
            occurred_at=first_day,
            curriculum_name=curriculum.name,
            curriculum_version=curriculum.version,
            enrolled_by="shaping evaluate",
        )
        assignment = _assignment(fold([enrolment], f"subject {subject}"), subject)
        for day, day_sessions in _by_date(own):
            previous = assignment.stage
            outputs: list[Event] = []
            for number, session in enumerate(day_sessions):
                start = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(
                    hours=8 + 2 * number
                )
                emitted = fold_session(
                    session,
                    event_id(subject, day, session.label or number),
                    assignment,
                    start,
                    f"subject {subject} session {day}",
                )
                assignment = _assignment(emitted, subject, assignment)
                outputs.extend(emitted)
            decisions = [e for e in outputs if isinstance(e, StageTransitioned)]
            if not decisions:
                raise BatchError(f"subject {subject} {day}: the processor made no decision")
            statuses.append(
                DateStatus(
                    subject=subject,
                    session_date=day,
                    task_protocols=tuple(s.task_protocol for s in day_sessions),
                    n_trials=sum(len(s.trials) for s in day_sessions),
                    previous_status=previous,
                    decision=decisions[-1],
                    warnings=tuple(e for e in outputs if isinstance(e, TrainingWarning)),
                )
            )
    return statuses


def _runs_of_trials(events: Sequence[Event]) -> Iterator[Event | list[TrialCompleted]]:
    """``events`` in order, each run of consecutive TrialCompleted as one list (for
    :meth:`TrainingCore.handle_trials`), any other event alone."""
    run: list[TrialCompleted] = []
    for event in events:
        if isinstance(event, TrialCompleted):
            run.append(event)
            continue
        if run:
            yield run
            run = []
        yield event
    if run:
        yield run


def _assignment(
    outputs: Sequence[Event], subject: str, current: AssignmentIssued | None = None
) -> AssignmentIssued:
    """The newest assignment among ``outputs`` (else ``current``).

    Raises:
        BatchError: there is none at all.
    """
    for output in reversed(outputs):
        if isinstance(output, AssignmentIssued):
            return output
    if current is None:
        raise BatchError(f"subject {subject}: the processor issued no assignment")
    return current


def _prefetch(sessions: Sequence[IblSession], windows: Sequence[PsychWindow]) -> None:
    from shaping.services.domain.psychometric import fit_many

    fit_many(fit_requests(sessions, windows))


def _by_date(sessions: Sequence[IblSession]) -> Iterator[tuple[str, list[IblSession]]]:
    day: list[IblSession] = []
    for session in sessions:
        if day and day[0].session_date != session.session_date:
            yield day[0].session_date, day
            day = []
        day.append(session)
    if day:
        yield day[0].session_date, day


def reported_metrics(statuses: Sequence[DateStatus]) -> list[str]:
    """Names of the metrics the decisions report, in first-seen order; the elements of a
    reported series (``n_trials[-3]``, ``n_trials[-2]``, ``n_trials[-1]``) together, oldest
    first."""
    bases: dict[str, set[str]] = {}
    for status in statuses:
        for name in status.decision.metrics:
            bases.setdefault(name.split("[", 1)[0], set()).add(name)

    def position(name: str) -> int:
        index = name.partition("[")[2].rstrip("]")
        return int(index) if index.lstrip("-").isdigit() else 0

    return [name for names in bases.values() for name in sorted(names, key=position)]


def write_statuses(path: Path, statuses: Sequence[DateStatus]) -> None:
    """Writes the status table as CSV: one row per subject and date (no value: empty cell)."""
    metrics = reported_metrics(statuses)
    columns = [*STATUS_COLUMNS, *metrics, "warnings", "evidence"]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for status in statuses:
            row = status.row(metrics)
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


__all__ = [
    "STATUS_COLUMNS",
    "TRIAL_COLUMNS",
    "BatchError",
    "DateStatus",
    "IblSession",
    "IblTrial",
    "TrialColumns",
    "TrialTableError",
    "evaluate_sessions",
    "fit_requests",
    "history_fit_requests",
    "prefetch_fits",
    "prefetch_history_fits",
    "psychometric_windows",
    "read_trials",
    "session_events",
    "short_protocol",
    "write_statuses",
]
