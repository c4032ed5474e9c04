"""Small builders of Shaping events for tests, with readable defaults.

Times are minutes after :data:`T0`; event ids are UUIDs derived from a readable name (see
:func:`event_id`), so a failing test shows which event it was and reruns build identical events.
:func:`mouse_story` builds a whole training history in causal order, each event tagged with the
topic it is published to.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    EventRejected,
    MouseEnrolled,
    Observation,
    Parameters,
    RuleEvaluation,
    SessionEnded,
    SessionStarted,
    SessionSummary,
    StageTransitioned,
    TrialCompleted,
)

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
"""Start of every test story (a Monday morning, UTC)."""

CURRICULUM = "test_curriculum"
CURRICULUM_VERSION = "1.0.0"

_NAMESPACE = uuid.UUID("0b6b2a4e-8c1f-4d8e-9a51-3c2f7d1e5a90")


def at(minute: float) -> datetime:
    """The instant ``minute`` minutes after :data:`T0`."""
    return T0 + timedelta(minutes=minute)


def event_id(name: str) -> str:
    """A UUID derived from ``name``: stable across runs, distinct for distinct names."""
    return str(uuid.uuid5(_NAMESPACE, name))


def stage_parameters(stage: str) -> Parameters:
    """A plausible, stage-specific parameter set."""
    level = int(stage.rsplit("_", 1)[-1]) if stage[-1].isdigit() else 0
    return {
        "stage_label": stage,
        "reward_volume_ul": 3.0 - 0.25 * level,
        "max_trials": 300 + 100 * level,
        "correction_trials": level < 2,
        "stimulus_duration_s": None,
    }


def mouse_enrolled(
    mouse_id: str,
    *,
    minute: float = 0.0,
    name: str | None = None,
    enrolled_by: str = "operator",
    start_stage: str | None = None,
) -> MouseEnrolled:
    """An operator enrolled ``mouse_id`` on the test curriculum."""
    return MouseEnrolled(
        event_id=event_id(name or f"{mouse_id}/enrolled@{minute}"),
        mouse_id=mouse_id,
        occurred_at=at(minute),
        curriculum_name=CURRICULUM,
        curriculum_version=CURRICULUM_VERSION,
        start_stage=start_stage,
        enrolled_by=enrolled_by,
    )


def assignment_issued(
    mouse_id: str,
    stage: str,
    *,
    session_number: int,
    sessions_at_stage: int = 0,
    reason: str = "enrolled",
    minute: float = 0.0,
    name: str | None = None,
    causation_id: str | None = None,
    parameters: Parameters | None = None,
) -> AssignmentIssued:
    """The processor told ``mouse_id``'s next session (number ``session_number``) what to run."""
    return AssignmentIssued(
        event_id=event_id(name or f"{mouse_id}/assignment/{session_number}@{minute}"),
        mouse_id=mouse_id,
        occurred_at=at(minute),
        causation_id=causation_id,
        stage=stage,
        parameters=stage_parameters(stage) if parameters is None else parameters,
        curriculum_name=CURRICULUM,
        curriculum_version=CURRICULUM_VERSION,
        reason=reason,
        reason_detail=f"{reason} ({stage})",
        sessions_at_stage=sessions_at_stage,
        session_number=session_number,
    )


def session_started(
    mouse_id: str,
    session_id: str,
    stage: str,
    *,
    assignment_id: str | None,
    minute: float,
    rig_id: str = "rig-1",
    parameters: Parameters | None = None,
) -> SessionStarted:
    """A rig started session ``session_id`` of ``mouse_id`` at ``stage``."""
    return SessionStarted(
        event_id=event_id(f"{session_id}/started"),
        mouse_id=mouse_id,
        rig_id=rig_id,
        session_id=session_id,
        occurred_at=at(minute),
        stage=stage,
        curriculum_name=CURRICULUM,
        curriculum_version=CURRICULUM_VERSION,
        parameters=stage_parameters(stage) if parameters is None else parameters,
        assignment_id=assignment_id,
    )


def trial_completed(
    mouse_id: str,
    session_id: str,
    trial_index: int,
    outcome: str,
    *,
    minute: float,
    rig_id: str = "rig-1",
) -> TrialCompleted:
    """Trial ``trial_index`` of a session ended with ``outcome``."""
    return TrialCompleted(
        event_id=event_id(f"{session_id}/trial/{trial_index}"),
        mouse_id=mouse_id,
        rig_id=rig_id,
        session_id=session_id,
        occurred_at=at(minute),
        trial_index=trial_index,
        outcome=outcome,  # type: ignore[arg-type]
        target_side="left" if trial_index % 2 else "right",
        response_side=None if outcome == "miss" else "left",
        reaction_time_s=None if outcome == "miss" else 0.4,
        reward_volume_ul=3.0 if outcome == "correct" else 0.0,
    )


def session_ended(
    mouse_id: str,
    session_id: str,
    n_trials: int,
    *,
    minute: float,
    duration_s: float = 1800.0,
    end_reason: str = "completed",
    rig_id: str = "rig-1",
) -> SessionEnded:
    """A rig finished session ``session_id`` after ``n_trials`` trials."""
    return SessionEnded(
        event_id=event_id(f"{session_id}/ended"),
        mouse_id=mouse_id,
        rig_id=rig_id,
        session_id=session_id,
        occurred_at=at(minute),
        n_trials=n_trials,
        end_reason=end_reason,
        duration_s=duration_s,
    )


def session_summary(
    outcomes: Sequence[str], *, duration_s: float = 1800.0, end_reason: str = "completed"
) -> SessionSummary:
    """The counts of a session whose trials had ``outcomes``."""
    n_correct = sum(1 for o in outcomes if o == "correct")
    n_incorrect = sum(1 for o in outcomes if o == "incorrect")
    answered = n_correct + n_incorrect
    return SessionSummary(
        n_trials=len(outcomes),
        n_correct=n_correct,
        n_incorrect=n_incorrect,
        n_miss=len(outcomes) - answered,
        accuracy=n_correct / answered if answered else None,
        duration_s=duration_s,
        end_reason=end_reason,
    )


def stage_transitioned(
    mouse_id: str,
    session_id: str,
    *,
    from_stage: str,
    to_stage: str,
    decision: str,
    session_total: int,
    sessions_at_stage: int,
    outcomes: Sequence[str],
    minute: float,
    name: str | None = None,
    causation_id: str | None = None,
    duration_s: float = 1800.0,
) -> StageTransitioned:
    """The processor judged session ``session_id``: ``decision`` from one stage to another.

    The evidence is one rule, "accuracy of the session at least 0.8", whose verdict matches the
    decision (it held unless the decision is "stay").
    """
    summary = session_summary(outcomes, duration_s=duration_s)
    held = decision != "stay"
    evaluation = RuleEvaluation(
        rule="accuracy_at_least_0_8",
        description="Accuracy of the last session is at least 80 %.",
        decision="progress",
        to_stage=to_stage if held else f"{from_stage}_next",
        verdict=held,
        observations=[
            Observation(
                metric="accuracy",
                observed=summary.accuracy,
                comparator=">=",
                threshold=0.8,
                passed=held,
            )
        ],
    )
    return StageTransitioned(
        event_id=event_id(name or f"{session_id}/decision"),
        mouse_id=mouse_id,
        session_id=session_id,
        occurred_at=at(minute),
        causation_id=causation_id,
        curriculum_name=CURRICULUM,
        curriculum_version=CURRICULUM_VERSION,
        from_stage=from_stage,
        to_stage=to_stage,
        decision=decision,  # type: ignore[arg-type]
        rule=evaluation.rule if held else None,
        rule_evaluations=[evaluation],
        sessions_at_stage=sessions_at_stage,
        session_total=session_total,
        session_summary=summary,
    )


def event_rejected(
    mouse_id: str,
    *,
    source_topic: str,
    source_partition: int,
    source_offset: int,
    original_value: bytes,
    minute: float,
    reason: str = "not an Avro single-object message",
    error_kind: str = "undecodable",
    rejected_by: str = "processor",
) -> EventRejected:
    """The processor dead-lettered the message at ``source_topic/partition@offset``."""
    return EventRejected(
        event_id=event_id(f"rejected/{source_topic}/{source_partition}/{source_offset}"),
        mouse_id=mouse_id,
        occurred_at=at(minute),
        reason=reason,
        error_kind=error_kind,  # type: ignore[arg-type]
        source_topic=source_topic,
        source_partition=source_partition,
        source_offset=source_offset,
        original_key=mouse_id.encode(),
        original_value=original_value,
        rejected_by=rejected_by,
    )


@dataclass(frozen=True)
class Published:
    """An event as published: the kind of topic it goes to and the mouse that keys it.

    ``event`` is None for a message whose bytes are not an event (``raw`` holds them).
    """

    kind: str
    mouse_id: str
    event: Event | None
    raw: bytes | None = None


@dataclass(frozen=True)
class SessionPlan:
    """One session of a story: its trial outcomes and what the processor decides after it."""

    outcomes: Sequence[str]
    decision: str = "stay"
    to_stage: str | None = None  # None: the stage does not change


def mouse_story(
    mouse_id: str,
    sessions: Sequence[SessionPlan],
    *,
    first_stage: str = "stage_1",
    start_minute: float = 0.0,
    rig_id: str = "rig-1",
) -> list[Published]:
    """A mouse's history in causal order: enrollment, its first assignment, then per session the
    start, the trials, the end, the decision and the next assignment.

    Sessions are a day apart; events within a session a minute apart.
    """
    story: list[Published] = []
    enrolled = mouse_enrolled(mouse_id, minute=start_minute)
    story.append(Published("events", mouse_id, enrolled))
    assignment = assignment_issued(
        mouse_id,
        first_stage,
        session_number=1,
        reason="enrolled",
        minute=start_minute + 1,
        causation_id=enrolled.event_id,
    )
    story.append(Published("assignments", mouse_id, assignment))
    stage, at_stage = first_stage, 0
    for number, plan in enumerate(sessions, start=1):
        session_id = f"{mouse_id}-s{number}"
        minute = start_minute + number * 24 * 60
        story.append(
            Published(
                "events",
                mouse_id,
                session_started(
                    mouse_id,
                    session_id,
                    stage,
                    assignment_id=assignment.event_id,
                    minute=minute,
                    rig_id=rig_id,
                ),
            )
        )
        for index, outcome in enumerate(plan.outcomes):
            trial = trial_completed(
                mouse_id, session_id, index, outcome, minute=minute + 1 + index, rig_id=rig_id
            )
            story.append(Published("events", mouse_id, trial))
        end_minute = minute + 2 + len(plan.outcomes)
        ended = session_ended(
            mouse_id, session_id, len(plan.outcomes), minute=end_minute, rig_id=rig_id
        )
        story.append(Published("events", mouse_id, ended))
        at_stage += 1
        to_stage = plan.to_stage or stage
        decision = stage_transitioned(
            mouse_id,
            session_id,
            from_stage=stage,
            to_stage=to_stage,
            decision=plan.decision,
            session_total=number,
            sessions_at_stage=at_stage,
            outcomes=plan.outcomes,
            minute=end_minute + 1,
            causation_id=ended.event_id,
        )
        story.append(Published("decisions", mouse_id, decision))
        if plan.decision != "stay":
            stage, at_stage = to_stage, 0
        assignment = assignment_issued(
            mouse_id,
            stage,
            session_number=number + 1,
            sessions_at_stage=at_stage,
            reason=plan.decision,
            minute=end_minute + 2,
            causation_id=decision.event_id,
        )
        story.append(Published("assignments", mouse_id, assignment))
    return story
