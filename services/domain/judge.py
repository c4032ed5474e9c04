"""Judging a finished session: the one way a session is judged, whether it is judged as it ends
(:meth:`shaping.services.domain.core.TrainingCore.decide` on a SessionEnded) or judged again
by a recompute after a late session (:func:`shaping.services.domain.recompute.recompute`).

A stage whose curriculum marks rules ``evaluate: trial`` is also judged during the session,
after every trial (:func:`judge_during_session`), on the state as if the session ended after
that trial (:func:`session_so_far`); a session is judged once: during the session when such a
rule holds, else at its end.

:func:`judge_session` evaluates the curriculum's rules on the mouse's state folded up to the
session and returns the decision as a StageTransitioned; :func:`decision_outputs` adds what a
decision carries to the rig (its warnings, and the next assignment with the evidence, metrics
and the mouse's adjustments). Pure functions, no I/O.
"""

from __future__ import annotations

from datetime import datetime

from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    Parameters,
    SessionSummary,
    StageTransitioned,
    TrainingWarning,
    TrialCompleted,
)
from shaping.services.domain.curriculum import CurriculumEngine, Evaluation, evaluate_after_trial
from shaping.services.domain.interventions import with_adjustments
from shaping.services.domain.metrics import (
    SessionMetrics,
    append_record,
    count_session,
    session_record,
)
from shaping.services.domain.outputs import warning_event_id
from shaping.services.domain.state import JudgedSession, MouseState, OpenSession

MID_SESSION = "mid_session"
"""``session_summary.end_reason`` of a decision taken during its session, after a trial (the
session had not ended): what tells such a decision from one taken at the session's end."""


def judge_session(
    view: MouseState,
    entry: JudgedSession,
    stage: str,
    curriculum: CurriculumEngine,
    cause: Event,
    *,
    decision_id: str,
    rig_id: str | None,
    occurred_at: datetime,
    running: Parameters | None = None,
    supersedes: str | None = None,
) -> tuple[Evaluation, StageTransitioned]:
    """Judges one finished session by ``curriculum`` and states the decision.

    Args:
        view: the mouse's state folded up to the end of the judged session: its history ends
            with the session's record, and its counters (``sessions_at_stage``,
            ``session_total``) count it.
        entry: the judged session (its id, date and summary).
        stage: the stage the session is judged at (the stage it ran, or in a recompute the
            stage the recomputed decision before it reached).
        curriculum: the curriculum version that judges it.
        cause: the SessionEnded that leads to the judgement (the late one in a recompute).
        decision_id: the StageTransitioned's id.
        rig_id: the rig named in the decision.
        occurred_at: when the decision is made.
        running: the parameters the session ran with, which in-stage policies continue from
            (None: the stage's own).
        supersedes: the decision this one replaces (a recompute's).

    Returns:
        The evaluation and the StageTransitioned that states it.
    """
    evaluation = curriculum.evaluate(stage, SessionMetrics(view), running)
    transition = _stated(
        view,
        curriculum,
        evaluation,
        decision_id=decision_id,
        rig_id=rig_id,
        session_id=entry.session_id,
        occurred_at=occurred_at,
        cause=cause,
        session_date=entry.session_date,
        summary=entry.summary,
        supersedes=supersedes,
    )
    return evaluation, transition


def _stated(
    view: MouseState,
    curriculum: CurriculumEngine,
    evaluation: Evaluation,
    *,
    decision_id: str,
    rig_id: str | None,
    session_id: str,
    occurred_at: datetime,
    cause: Event,
    session_date: str,
    summary: SessionSummary,
    supersedes: str | None = None,
) -> StageTransitioned:
    """The StageTransitioned that states ``evaluation`` of a session of ``view``'s mouse."""
    return StageTransitioned(
        event_id=decision_id,
        mouse_id=view.mouse_id,
        rig_id=rig_id,
        session_id=session_id,
        occurred_at=occurred_at,
        causation_id=cause.event_id,
        curriculum_name=curriculum.name,
        curriculum_version=curriculum.version,
        from_stage=evaluation.from_stage,
        to_stage=evaluation.to_stage,
        decision=evaluation.decision,
        rule=evaluation.rule,
        rule_evaluations=evaluation.rule_evaluations,
        metrics=evaluation.metrics,
        session_date=session_date,
        sessions_at_stage=view.sessions_at_stage,
        session_total=view.session_total,
        session_summary=summary,
        supersedes=supersedes,
    )


def session_so_far(state: MouseState, session: OpenSession) -> MouseState:
    """The mouse's state as if ``session`` (in progress, its trials folded so far) ended now:
    its record appended to the history (computed metrics only: nothing is reported before the
    end, and it has no duration yet) and the counters counting it, as the end would fold them.
    What a rule evaluated after a trial reads."""
    record = session_record(session)
    last_stage = state.history[-1].stage if state.history else None
    streak = state.run_streak + 1 if session.stage == last_stage else 1
    return state.model_copy(
        update={
            "history": append_record(state.history, record),
            "session_total": state.session_total + 1,
            "sessions_at_stage": streak,
            "run_streak": streak,
            "session_counts": count_session(state.session_counts, record),
        }
    )


def judge_during_session(
    view: MouseState,
    session: OpenSession,
    curriculum: CurriculumEngine,
    trial: TrialCompleted,
    *,
    decision_id: str,
    session_date: str,
) -> tuple[Evaluation, StageTransitioned] | None:
    """Judges the session in progress after ``trial`` by the stage's ``evaluate: trial`` rules.

    Args:
        view: :func:`session_so_far` of the state with ``trial`` folded in.
        session: the session in progress (``trial`` folded in).
        curriculum: the curriculum version in force.
        trial: the trial just completed (the decision's cause).
        decision_id: the StageTransitioned's id.
        session_date: the session's calendar date.

    Returns:
        None when no such rule holds (or the curriculum has none at the stage); else the
        evaluation and the StageTransitioned that states it, whose summary counts the trials
        so far and says ``end_reason`` :data:`MID_SESSION`.
    """
    evaluation = evaluate_after_trial(curriculum, session.stage, SessionMetrics(view))
    if evaluation is None:
        return None
    stats = session.stats
    responded = stats.n_correct + stats.n_incorrect
    elapsed = (
        (trial.occurred_at - session.started_at).total_seconds()
        if session.started_at is not None
        else 0.0
    )
    transition = _stated(
        view,
        curriculum,
        evaluation,
        decision_id=decision_id,
        rig_id=trial.rig_id,
        session_id=session.session_id,
        occurred_at=trial.occurred_at,
        cause=trial,
        session_date=session_date,
        summary=SessionSummary(
            n_trials=stats.n_trials,
            n_correct=stats.n_correct,
            n_incorrect=stats.n_incorrect,
            n_miss=stats.n_miss,
            accuracy=stats.n_correct / responded if responded else None,
            duration_s=max(0.0, elapsed),
            end_reason=MID_SESSION,
        ),
    )
    return evaluation, transition


def decided_during(state: MouseState, session: OpenSession) -> bool:
    """Whether the session in progress was already judged during it (a decision after one of
    its trials): it is not judged again, neither after later trials nor at its end."""
    decision = state.last_decision
    return (
        decision is not None
        and decision.session_id == session.session_id
        and decision.session_summary.end_reason == MID_SESSION
        and state.last_closed_session_id != session.session_id
    )


def next_parameters(evaluation: Evaluation, curriculum: CurriculumEngine) -> Parameters:
    """The next session's parameters after a decision: the ones in-stage policies computed,
    else the stage's own."""
    if evaluation.parameters is not None:
        return evaluation.parameters
    return curriculum.parameters(evaluation.to_stage)


def describe_decision(
    evaluation: Evaluation, *, recomputed: bool = False, after_trial: int | None = None
) -> str:
    """The decision in words, as its assignment gives it (a recompute's in a shorter form,
    within a sentence about the late session; a decision during the session says after which
    trial, ``after_trial`` being its 1-based count)."""
    if after_trial is not None and evaluation.rule is not None:
        rule = next(r for r in evaluation.rule_evaluations if r.rule == evaluation.rule)
        return (
            f"mid-session, after trial {after_trial}: {evaluation.decision} to "
            f"{evaluation.to_stage}: {rule.description}"
        )
    if evaluation.rule is not None:
        rule = next(r for r in evaluation.rule_evaluations if r.rule == evaluation.rule)
        return f"{evaluation.decision} to {evaluation.to_stage}: {rule.description}"
    if recomputed:
        return f"no rule held; stays at {evaluation.from_stage}."
    detail = f"No rule held; stays at {evaluation.from_stage}."
    if evaluation.changes:
        changed = ", ".join(f"{k} = {v!r}" for k, v in evaluation.changes.items())
        detail += f" In-stage policies set {changed}."
    return detail


def warning_events(
    cause: Event, transition: StageTransitioned, evaluation: Evaluation
) -> list[TrainingWarning]:
    """A TrainingWarning per warning rule that held in ``evaluation``, caused by the decision.

    Ids derive from the decision's id and the warning's position, so a decision made again
    (a redelivered session end) raises the same warnings with the same ids.
    """
    return [
        TrainingWarning(
            event_id=warning_event_id(transition.event_id, index, warning.rule),
            mouse_id=transition.mouse_id,
            rig_id=cause.rig_id,
            session_id=transition.session_id,
            occurred_at=transition.occurred_at,
            causation_id=transition.event_id,
            kind=warning.rule,
            message=warning.description,
            stage=evaluation.from_stage,
            curriculum_name=transition.curriculum_name,
            curriculum_version=transition.curriculum_version,
            evidence=[warning],
        )
        for index, warning in enumerate(evaluation.warnings)
    ]


def decision_outputs(
    state: MouseState,
    cause: Event,
    transition: StageTransitioned,
    assignment: AssignmentIssued,
    evaluation: Evaluation,
    curriculum: CurriculumEngine,
) -> list[Event]:
    """The events of one decision: the transition, its warnings, and the next assignment with
    the evidence, metrics and warnings it carries to the rig and the mouse's adjustments.

    Anything that judges a session (a session's end, a recompute) ends here, so every
    decision's assignment carries the same things.
    """
    assignment = assignment.model_copy(
        update={
            "evidence": list(evaluation.rule_evaluations),
            "metrics": dict(evaluation.metrics),
            "warnings": [w.description for w in evaluation.warnings],
        }
    )
    assignment = with_adjustments(assignment, state, curriculum)
    return [transition, *warning_events(cause, transition, evaluation), assignment]
