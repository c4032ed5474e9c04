"""Late sessions: a session that arrives after later sessions of its mouse were judged.

A rig that was offline drains its outbox late, so a mouse's sessions can reach the processor
out of date order. A late session is never judged out of order. The mouse is recomputed from
it: its record is inserted among the kept records in date order, then it and every session
after it are judged again, in order, each from the stage the recomputed decision before it
reached (IBL recomputes its training status per date, open loop, from the previous date's
recomputed status). The corrected decisions are NEW events: each StageTransitioned names the
decision it replaces in ``supersedes``, and one AssignmentIssued for the mouse's current stage
supersedes the assignment in force. The log is never rewritten. docs/recompute.md explains it
for users.

Sessions are ordered by (session date, start time, session id): two sessions of one date are
judged in the order they started, and a session that sorts before the newest judged one is
late, whatever its date.

What a recompute needs is kept per mouse, bounded: the records of the newest
``MAX_SESSION_HISTORY`` sessions (``MouseState.history``) and, parallel to them, a
:class:`~services.domain.state.JudgedSession` per judged session (``MouseState.judged``). A
late session that sorts before the kept sessions, or whose re-judging would read sessions
or trials that are no longer kept, is refused (dead letter) with the reason and the limit.
Replaying the log (``shaping replay``) meets it at the same place and refuses it again.

Event ids derive from the late session's SessionEnded, so a redelivered late session that
meets the state before it (the processor stopped before storing it) yields the same events.
Once stored, the late session is a judged session and a redelivered end of it changes nothing.

Pure functions, no I/O: :class:`shaping.services.domain.core.TrainingCore` calls them. Each
session is judged again by :func:`shaping.services.domain.judge.judge_session`, the function
that judges a session as it ends; the dependency runs one way (core -> recompute -> judge).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from datetime import datetime

from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    Parameters,
    SessionEnded,
    SessionStarted,
    SessionSummary,
    StageTransitioned,
)
from shaping.services.domain.curriculum import CurriculumCatalog, CurriculumEngine, Evaluation
from shaping.services.domain.errors import CurriculumError, ImpossibleEvent
from shaping.services.domain.judge import (
    decision_outputs,
    describe_decision,
    judge_session,
    next_parameters,
)
from shaping.services.domain.metrics import append_record
from shaping.services.domain.outputs import derived_event_id, issue_assignment
from shaping.services.domain.state import (
    MAX_SESSION_HISTORY,
    MAX_TRIAL_WINDOW,
    JudgedSession,
    MouseState,
    OpenSession,
    SessionRecord,
)

MAX_PARKED_SESSIONS = 2
"""Sessions in progress a state keeps besides ``open_session``; the oldest is dropped beyond
(a rig that crashed mid-session never ends its session)."""

LIMIT = (
    f"the limit: a mouse's state keeps its newest {MAX_SESSION_HISTORY} sessions, and about "
    f"its last {MAX_TRIAL_WINDOW} trials one by one (docs/recompute.md); the session's events "
    "stay on the events topic"
)
"""Ends the reason of a late session refused because what its recompute needs is not kept."""

OrderKey = tuple[str, datetime, str]


# -- ordering --------------------------------------------------------------------------------


def session_date_of(session: OpenSession, fallback: datetime) -> str:
    """A session's calendar date: its own, else the UTC date it started (or ``fallback``)."""
    if session.session_date:
        return session.session_date
    return (session.started_at or fallback).date().isoformat()


def start_key(event: SessionStarted) -> OrderKey:
    """Where a starting session will sort among the mouse's sessions."""
    return (event.effective_date, event.occurred_at, event.session_id or "")


def insertion_index(judged: Sequence[JudgedSession], key: OrderKey) -> int:
    """Where a session with ``key`` goes among the judged sessions (kept in key order)."""
    return bisect.bisect_right([entry.order_key for entry in judged], key)


def is_late(state: MouseState, key: OrderKey) -> bool:
    """Whether a session with ``key`` sorts before the newest judged session."""
    return bool(state.judged) and key < state.judged[-1].order_key


def judged_index(state: MouseState, session_id: str | None) -> int | None:
    """Position of a session in ``state.judged``, or None when it is not kept there."""
    for index in range(len(state.judged) - 1, -1, -1):
        if state.judged[index].session_id == session_id:
            return index
    return None


# -- open sessions (keyed by session id) -------------------------------------------------------


def focus_session(state: MouseState, session_id: str | None) -> MouseState:
    """The state with the session ``session_id`` as ``open_session`` when it is parked (the
    current one is parked in its place); unchanged otherwise."""
    current = state.open_session
    if session_id is None or (current is not None and current.session_id == session_id):
        return state
    parked = [s for s in state.parked_sessions if s.session_id == session_id]
    if not parked:
        return state
    others = tuple(s for s in state.parked_sessions if s.session_id != session_id)
    if current is not None:
        others = (*others, current)[-MAX_PARKED_SESSIONS:]
    return state.model_copy(update={"open_session": parked[0], "parked_sessions": others})


def start_session(state: MouseState, started: OpenSession, ids: tuple[str, ...]) -> MouseState:
    """Folds a session start: it becomes ``open_session``; a session still in progress with
    another id is parked, and one with the same id (a restarted session) is replaced."""
    parked = tuple(s for s in state.parked_sessions if s.session_id != started.session_id)
    current = state.open_session
    if current is not None and current.session_id != started.session_id:
        parked = (*parked, current)[-MAX_PARKED_SESSIONS:]
    return state.model_copy(
        update={"open_session": started, "parked_sessions": parked, "recent_event_ids": ids}
    )


def is_open(state: MouseState, session_id: str | None) -> bool:
    """Whether ``session_id`` is in progress (open or parked)."""
    if state.open_session is not None and state.open_session.session_id == session_id:
        return True
    return any(s.session_id == session_id for s in state.parked_sessions)


def was_judged(state: MouseState, session_id: str | None) -> bool:
    """Whether ``session_id`` already ended and was judged (as far as the state remembers)."""
    if session_id is None:
        return False
    return session_id == state.last_closed_session_id or judged_index(state, session_id) is not None


# -- folding ---------------------------------------------------------------------------------


def judged_entry(state: MouseState, session: OpenSession, ended: SessionEnded) -> JudgedSession:
    """The judged-session entry of a session as it ends (decision fields still empty).

    ``state`` is the state before the end is folded. The operator stage is the mouse's stage
    when it differs from where the decision before sent it (an override or a migration in
    between); a late session has none (what the operators did since is about later sessions).
    """
    responded = session.n_correct + session.n_incorrect
    entry = JudgedSession(
        session_id=session.session_id,
        session_date=session_date_of(session, ended.occurred_at),
        started_at=session.started_at or ended.occurred_at,
        rig_id=session.rig_id or ended.rig_id,
        ended_event_id=ended.event_id,
        ended_at=ended.occurred_at,
        summary=SessionSummary(
            n_trials=session.n_trials,
            n_correct=session.n_correct,
            n_incorrect=session.n_incorrect,
            n_miss=session.n_miss,
            accuracy=session.n_correct / responded if responded else None,
            duration_s=ended.duration_s,
            end_reason=ended.end_reason,
        ),
        curriculum_version=state.curriculum_version or "",
        stage=session.stage,
        to_stage=session.stage,
    )
    if is_late(state, entry.order_key):
        return entry
    before = state.judged[-1].to_stage if state.judged else state.enrolled_stage
    if before is not None and state.stage is not None and state.stage != before:
        entry = entry.model_copy(update={"operator_stage": state.stage})
    return entry


def append_judged(state: MouseState, entry: JudgedSession) -> tuple[JudgedSession, ...]:
    """``state.judged`` with an in-order session's entry appended (bounded like history)."""
    return (*state.judged, entry)[-MAX_SESSION_HISTORY:]


def closed(state: MouseState, session_id: str) -> dict[str, object]:
    """The open-session fields once ``session_id`` ended. A parked session stays parked until
    its own trials or end arrive (one a crashed rig never ends must not look in progress)."""
    parked = tuple(s for s in state.parked_sessions if s.session_id != session_id)
    current = state.open_session
    if current is not None and current.session_id != session_id:
        return {"open_session": current, "parked_sessions": parked}
    return {"open_session": None, "parked_sessions": parked}


def counted(
    counts: dict[str, dict[str, int]], record: SessionRecord, delta: int
) -> dict[str, dict[str, int]]:
    """``MouseState.session_counts`` with ``record`` counted ``delta`` more times at its
    stage (by stage, then task protocol; empty counts are dropped)."""
    by_protocol = dict(counts.get(record.stage, {}))
    protocol = record.task_protocol or ""
    value = by_protocol.get(protocol, 0) + delta
    if value:
        by_protocol[protocol] = value
    else:
        by_protocol.pop(protocol, None)
    updated = dict(counts)
    if by_protocol:
        updated[record.stage] = by_protocol
    else:
        updated.pop(record.stage, None)
    return updated


def insert_late(
    state: MouseState,
    record: SessionRecord,
    entry: JudgedSession,
    ids: tuple[str, ...],
    counts: dict[str, dict[str, int]],
) -> MouseState:
    """Folds the end of a late session: its record and entry go in key order; the decisions
    that follow (the recompute's) set the stages and counters.

    Args:
        state: the state before the end, with the late session as ``open_session``.
        record: the late session's record.
        entry: its judged-session entry.
        ids: the recent-id window with the SessionEnded's id.
        counts: ``state.session_counts`` with the late session counted.
    """
    index = insertion_index(state.judged, entry.order_key)
    offset = len(state.history) - len(state.judged)
    history = [*state.history[: offset + index], record, *state.history[offset + index :]]
    judged = (*state.judged[:index], entry, *state.judged[index:])
    return state.model_copy(
        update={
            **closed(state, entry.session_id),
            "session_total": state.session_total + 1,
            # Trimmed as if appended in order: records keep their per-trial strings while the
            # records after them hold less than a whole trial window.
            "history": append_record(history[:-1], history[-1]),
            "judged": judged[-MAX_SESSION_HISTORY:],
            "session_counts": counts,
            "recent_event_ids": ids,
        }
    )


def fold_decision(state: MouseState, event: StageTransitioned, ids: tuple[str, ...]) -> MouseState:
    """Folds a decision on a judged session (one just ended, or one re-judged).

    The session's entry and record take the decision's stage; a decision on the newest session
    also sets the mouse's stage and counters. A decision on a session the state does not keep
    only sets the mouse's stage (older states, hand-made logs).
    """
    moved = event.to_stage != event.from_stage
    index = judged_index(state, event.session_id)
    if index is None:
        return state.model_copy(
            update={
                "stage": event.to_stage,
                "sessions_at_stage": 0 if moved else state.sessions_at_stage,
                "last_decision": event,
                "recent_event_ids": ids,
            }
        )
    entry = state.judged[index].model_copy(
        update={
            "decision_id": event.event_id,
            "stage": event.from_stage,
            "to_stage": event.to_stage,
            "decision": event.decision,
            "sessions_at_stage": event.sessions_at_stage,
            "session_total": event.session_total,
            "curriculum_version": event.curriculum_version,
        }
    )
    judged = (*state.judged[:index], entry, *state.judged[index + 1 :])
    update: dict[str, object] = {"judged": judged, "recent_event_ids": ids}
    position = len(state.history) - len(state.judged) + index
    record = state.history[position]
    if record.stage != event.from_stage:
        counts = counted(state.session_counts, record, -1)
        record = record.model_copy(update={"stage": event.from_stage})
        update["session_counts"] = counted(counts, record, 1)
        update["history"] = (*state.history[:position], record, *state.history[position + 1 :])
    if index == len(state.judged) - 1:
        update.update(
            {
                "stage": event.to_stage,
                "sessions_at_stage": 0 if moved else event.sessions_at_stage,
                "run_streak": event.sessions_at_stage,
                "session_total": event.session_total,
                "last_decision": event,
            }
        )
    return state.model_copy(update=update)


# -- deciding --------------------------------------------------------------------------------


def check_recomputable(
    state: MouseState,
    key: OrderKey,
    session_id: str,
    curriculum: CurriculumEngine,
    own_trials: int = 0,
) -> None:
    """Refuses a late session whose recompute would need sessions the state no longer keeps.

    Re-judging from the late session reads the sessions before it as far back as the
    curriculum's rules do (``session_lookback`` sessions, ``date_lookback`` dates when the
    curriculum tells, ``trial_window`` trials kept trial by trial), and the decision on the
    session right before it. All of that must still be kept, unless the state keeps the
    mouse's whole history. ``own_trials`` is the late session's own responded trials (0 at its
    start: the check is then the strictest).

    Raises:
        ImpossibleEvent: naming what is missing and the limit.
    """
    index = insertion_index(state.judged, key)
    offset = len(state.history) - len(state.judged)
    before = state.history[: offset + index]
    # The whole history is kept: nothing before the late session was ever dropped.
    whole = offset == 0 and state.session_total == len(state.history)
    later = len(state.judged) - index
    problems = []
    if index == 0 and not whole:
        problems.append(
            f"it is older than the {len(state.judged)} judged sessions kept (the newest "
            f"{MAX_SESSION_HISTORY}; oldest kept: {state.judged[0].session_date})"
            if state.judged
            else "no judged session is kept"
        )
    lookback = int(getattr(curriculum, "session_lookback", 0) or 0)
    if lookback and not whole and len(before) < lookback - 1:
        problems.append(
            f"its rules read {lookback} sessions back but only {len(before)} sessions before "
            "it are kept"
        )
    dates = int(getattr(curriculum, "date_lookback", 0) or 0)
    earlier = {r.session_date for r in before if r.session_date and r.session_date < key[0]}
    if dates > 1 and not whole and len(earlier) < dates - 1:
        problems.append(
            f"its rules read {dates} dates back but the sessions kept before it cover "
            f"{len(earlier)} earlier date(s)"
        )
    window = int(getattr(curriculum, "trial_window", 0) or 0)
    needed = window - own_trials
    found, complete = _trials_with_detail(before, needed)
    if needed > 0 and found < needed and not (whole and complete):
        problems.append(
            f"its rules read the last {window} trials but the sessions before it keep only "
            f"{found} of them trial by trial"
        )
    if problems:
        raise ImpossibleEvent(
            f"session {session_id!r} of {key[0]} arrived after {later} later session(s) of "
            f"mouse {state.mouse_id!r} were judged, and they cannot be judged again: "
            + "; ".join(problems)
            + f"; {LIMIT}"
        )


def _trials_with_detail(records: Sequence[SessionRecord], needed: int) -> tuple[int, bool]:
    """Responded trials the newest of ``records`` keep trial by trial, counted back until
    ``needed`` are found or a record without its per-trial strings is met (a trial window
    stops there, as ``MetricView.recent_trials`` does); and whether every record was read."""
    found = 0
    for record in reversed(records):
        if found >= needed:
            return found, False
        if record.stats is None or not record.stats.detail:
            return found, False
        found += record.stats.n_responded
    return found, True


def recompute(
    state: MouseState,
    after: MouseState,
    event: SessionEnded,
    catalog: CurriculumCatalog,
) -> list[Event]:
    """The corrected decisions after a late session, and the mouse's new assignment.

    Every session from the late one on is judged by :func:`~shaping.services.domain.judge.
    judge_session`, as a session is judged when it ends.

    Args:
        state: the state before the late session's end.
        after: ``state`` with the end folded (the late record inserted in key order).
        event: the late session's SessionEnded.
        catalog: the curricula known, where the versions of the mouse's curriculum that
            judged its sessions are found.

    Returns:
        A StageTransitioned for the late session, one superseding the decision in force for
        every session after it (in order), then the last decision's warnings and one
        AssignmentIssued superseding the assignment in force.

    Raises:
        ImpossibleEvent: when a version of the mouse's curriculum is unknown, or a recomputed
            stage does not exist in the curriculum version a session is judged by (a
            renaming migration in between).
    """
    judged = after.judged
    late = judged_index(after, event.session_id)
    assert late is not None, "the late session's end was folded"
    offset = len(after.history) - len(judged)
    base_total = after.session_total - len(judged)
    records = list(after.history)
    counts = dict(after.session_counts)
    for record in records[offset + late :]:
        counts = counted(counts, record, -1)
    if late > 0:
        previous = judged[late - 1]
        stage_before, streak = previous.to_stage, previous.sessions_at_stage
        last_stage: str | None = records[offset + late - 1].stage
    else:
        stage_before = (
            after.enrolled_stage
            or _version(catalog, state, judged[late].curriculum_version).first_stage
        )
        streak, last_stage = 0, records[offset - 1].stage if offset else None
    # The late session is judged by the version in force for the session it comes before.
    versions = [e.curriculum_version for e in judged]
    versions[late] = versions[late + 1] if late + 1 < len(judged) else versions[late]
    corrected_at = max(
        [event.occurred_at, *(e.ended_at for e in judged)]
        + ([state.last_assignment.occurred_at] if state.last_assignment else [])
    )
    running: Parameters | None = None
    outputs: list[Event] = []
    for index in range(late, len(judged)):
        entry = judged[index]
        curriculum = _version(catalog, state, versions[index] or (state.curriculum_version or ""))
        stage = entry.operator_stage or stage_before
        if not curriculum.has_stage(stage):
            raise ImpossibleEvent(
                f"recomputing mouse {state.mouse_id!r} after the late session "
                f"{event.session_id!r}: session {entry.session_id!r} would be judged at "
                f"{stage!r}, which {curriculum.name} {curriculum.version} does not have; "
                + "a recompute cannot cross a migration that renamed stages (docs/recompute.md)"
            )
        streak = streak + 1 if stage == last_stage else 1
        total = base_total + index + 1
        position = offset + index
        records[position] = records[position].model_copy(update={"stage": stage})
        counts = counted(counts, records[position], 1)
        view = after.model_copy(
            update={
                "history": tuple(records[: position + 1]),
                "session_total": total,
                "sessions_at_stage": streak,
                "run_streak": streak,
                "stage": stage,
                "session_counts": counts,
                "open_session": None,
                "parked_sessions": (),
            }
        )
        is_late_one = index == late
        evaluation, transition = judge_session(
            view,
            entry,
            stage,
            curriculum,
            event,
            decision_id=derived_event_id(
                event,
                "StageTransitioned" if is_late_one else f"StageTransitioned/{entry.session_id}",
            ),
            rig_id=entry.rig_id,
            occurred_at=event.occurred_at if is_late_one else corrected_at,
            running=None if is_late_one else running,
            supersedes=None if is_late_one else (entry.decision_id or None),
        )
        if evaluation.from_stage != stage:  # an alias: the record keeps the stage's name
            counts = counted(counts, records[position], -1)
            records[position] = records[position].model_copy(
                update={"stage": evaluation.from_stage}
            )
            counts = counted(counts, records[position], 1)
        if index < len(judged) - 1:
            outputs.append(transition)
        stage_before, last_stage = evaluation.to_stage, evaluation.from_stage
        running = next_parameters(evaluation, curriculum)
    assignment = _assignment(
        state, event, transition, evaluation, curriculum, running, corrected_at, streak
    )
    return [
        *outputs,
        *decision_outputs(state, event, transition, assignment, evaluation, curriculum),
    ]


def _version(catalog: CurriculumCatalog, state: MouseState, version: str) -> CurriculumEngine:
    """A version of the mouse's curriculum (its newest when ``version`` is empty).

    Raises:
        ImpossibleEvent: when the catalog does not know it.
    """
    try:
        return catalog.get(state.curriculum_name or "", version or None)
    except CurriculumError as exc:
        raise ImpossibleEvent(str(exc)) from exc


def _assignment(
    state: MouseState,
    event: SessionEnded,
    transition: StageTransitioned,
    evaluation: Evaluation,
    curriculum: CurriculumEngine,
    parameters: Parameters | None,
    issued_at: datetime,
    streak: int,
) -> AssignmentIssued:
    """The assignment after a recompute: the stage the newest recomputed decision reached,
    or the stage an operator set after the newest session (an override stays in force)."""
    newest = state.judged[-1]
    operator = state.stage if state.stage is not None and state.stage != newest.to_stage else None
    stage = operator or evaluation.to_stage
    moved = stage != evaluation.from_stage
    late_date = transition.session_date
    detail = (
        f"Recomputed after the late session {event.session_id!r}"
        + (f" of {late_date}" if late_date else "")
        + f": {describe_decision(evaluation, recomputed=True)}"
        + (f" The stage {operator} an operator set stays in force." if operator else "")
    )
    return issue_assignment(
        event,
        curriculum,
        stage,
        parameters=None if operator is not None else parameters,
        reason=evaluation.decision,
        detail=detail,
        sessions_at_stage=0 if moved else streak,
        session_number=transition.session_total + 1,
        issued_at=issued_at,
        caused_by=transition.event_id,
        supersedes=state.last_assignment.event_id if state.last_assignment else None,
    )
