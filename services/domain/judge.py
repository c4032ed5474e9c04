"""Judging a finished session: the one way a session is judged, whether it is judged as it ends
(:meth:`shaping.services.domain.core.TrainingCore.decide` on a SessionEnded) or judged again
by a recompute after a late session (:func:`shaping.services.domain.recompute.recompute`).

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
    StageTransitioned,
    TrainingWarning,
)
from shaping.services.domain.curriculum import CurriculumEngine, Evaluation
from shaping.services.domain.interventions import with_adjustments
from shaping.services.domain.metrics import SessionMetrics
from shaping.services.domain.outputs import warning_event_id
from shaping.services.domain.state import JudgedSession, MouseState


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
    transition = StageTransitioned(
        event_id=decision_id,
        mouse_id=view.mouse_id,
        rig_id=rig_id,
        session_id=entry.session_id,
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
        session_date=entry.session_date,
        sessions_at_stage=view.sessions_at_stage,
        session_total=view.session_total,
        session_summary=entry.summary,
        supersedes=supersedes,
    )
    return evaluation, transition


def next_parameters(evaluation: Evaluation, curriculum: CurriculumEngine) -> Parameters:
    """The next session's parameters after a decision: the ones in-stage policies computed,
    else the stage's own."""
    if evaluation.parameters is not None:
        return evaluation.parameters
    return curriculum.parameters(evaluation.to_stage)


def describe_decision(evaluation: Evaluation, *, recomputed: bool = False) -> str:
    """The decision in words, as its assignment gives it (a recompute's in a shorter form,
    within a sentence about the late session)."""
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
