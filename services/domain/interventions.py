"""What trainers do by hand, and what travels with every decision.

A trainer can move a mouse to a stage (StageOverridden), take it out of training
(MouseEjected), or adjust some of its parameters within what its curriculum allows
(ParametersAdjusted). Each is judged against the mouse's state like any other event: one the
processor cannot honour is impossible (dead letter, with the reason); one it honours issues an
AssignmentIssued at once, so rigs learn about it before the next session.

The same module applies the per-mouse adjustments on top of a stage's parameters, which every
assignment carries (what else a decision carries is in :mod:`shaping.services.domain.judge`).
Pure functions, no I/O; :class:`shaping.services.domain.core.TrainingCore` calls them through
:data:`DECISIONS` and :data:`FOLDS`.

Semantics (docs/interventions.md explains them for trainers):

* An override is refused while the mouse is in a session: the decision on that session would
  replace it. Otherwise the next session runs the overridden stage and is judged by that
  stage's rules; ``sessions_at_stage`` restarts at the new stage (the stage actually run
  counts, as in AIND's closed loop).
* An ejected mouse gets an assignment with reason ``ejected`` (the compacted assignments topic
  keeps it as the mouse's latest, so every rig learns it, even one offline for weeks) and the
  rig refuses to run it. Its new sessions and their trials are refused; the session in
  progress when it was ejected may still finish (its data is kept, it is not judged). An
  ejected mouse may be enrolled again; it starts over on the curriculum it is enrolled on,
  with its past sessions kept in its history, and without its adjustments.
* Adjustments are validated against the mouse's current stage. They stay in force across
  stages and apply at every stage that allows them; at a stage that does not allow one, the
  stage's own value holds (the assignment's ``adjustments`` lists what was applied). A value
  of None clears an adjustment.

An operator may also name the rigs a mouse may train on (RigsAllowed): a restriction, not a
change of training, so it issues no assignment. Once a mouse has a list, each of its rig facts
(SessionStarted, TrialCompleted, SessionEnded, MovementDetected) from a rig not on it is
impossible (:func:`check_rig`), whatever the rig claims otherwise; this layer stands on top of
Kafka's ACLs (docs/security.md). A new list replaces the one in force at once, so a session in
progress on a rig the new list leaves out is refused from its next fact on (an operator can
cut off a rig they no longer trust mid-session). The list outlives an ejection and a
re-enrolment: only another RigsAllowed changes it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    MouseEjected,
    Parameters,
    ParametersAdjusted,
    ParamValue,
    RigsAllowed,
    StageOverridden,
)
from shaping.services.domain.curriculum import CurriculumEngine
from shaping.services.domain.errors import CurriculumError, ImpossibleEvent
from shaping.services.domain.outputs import intervention_assignment_id, issue_assignment
from shaping.services.domain.state import MouseState

INTERVENTIONS = (StageOverridden, MouseEjected, ParametersAdjusted)
"""Events a trainer sends to change a mouse's training by hand (the keys of :data:`FOLDS` and
:data:`DECISIONS`)."""

EJECTED = "ejected"
"""The ``reason`` of the assignment that tells rigs a mouse is out of training."""


@runtime_checkable
class AdjustableCurriculum(Protocol):
    """A curriculum that allows per-mouse adjustments (``CompiledCurriculum`` is one)."""

    def check_adjustments(self, stage: str, requested: Mapping[str, ParamValue | None]) -> None:
        """Raises CurriculumError naming every requested adjustment ``stage`` does not allow
        (a None value clears an adjustment and is always allowed)."""
        ...

    def adjusted_parameters(
        self,
        stage: str,
        adjustments: Mapping[str, ParamValue | None],
        parameters: Parameters | None = None,
    ) -> tuple[Parameters, Parameters, dict[str, str]]:
        """``parameters`` with the adjustments ``stage`` allows applied on top; returns them,
        the adjustments applied, and why each other one was not."""
        ...


def check_adjustments(
    curriculum: CurriculumEngine, stage: str, requested: Mapping[str, ParamValue]
) -> None:
    """Checks that ``stage`` of ``curriculum`` allows every requested adjustment.

    Raises:
        CurriculumError: naming each adjustment that is not allowed (or that the curriculum
            allows no adjustments at all).
    """
    if not requested:
        return
    if not isinstance(curriculum, AdjustableCurriculum):
        raise CurriculumError(
            f"{curriculum.name} {curriculum.version} allows no per-mouse adjustments"
        )
    curriculum.check_adjustments(stage, dict(requested))


def apply_adjustments(
    curriculum: CurriculumEngine, stage: str, parameters: Parameters, adjustments: Parameters
) -> tuple[Parameters, Parameters, list[str]]:
    """Applies the mouse's adjustments that ``stage`` allows on top of ``parameters``.

    Returns:
        The adjusted parameters, the adjustments applied, and the names of those kept but not
        applied because the stage does not allow them.
    """
    if not adjustments:
        return dict(parameters), {}, []
    if not isinstance(curriculum, AdjustableCurriculum):
        return dict(parameters), {}, sorted(adjustments)
    result, applied, skipped = curriculum.adjusted_parameters(stage, adjustments, parameters)
    return result, applied, sorted(skipped)


def _adjustment_note(applied: Parameters, skipped: Sequence[str], stage: str) -> str:
    parts = []
    if applied:
        shown = ", ".join(f"{k}={v!r}" for k, v in applied.items())
        parts.append(f"Per-mouse adjustments: {shown}.")
    if skipped:
        parts.append(f"Not allowed at {stage}, so not applied: {', '.join(skipped)}.")
    return " ".join(parts)


def with_adjustments(
    assignment: AssignmentIssued, state: MouseState, curriculum: CurriculumEngine
) -> AssignmentIssued:
    """The assignment with the mouse's adjustments applied to its parameters and listed."""
    if not state.adjustments:
        return assignment
    parameters, applied, skipped = apply_adjustments(
        curriculum, assignment.stage, assignment.parameters, state.adjustments
    )
    note = _adjustment_note(applied, skipped, assignment.stage)
    detail = f"{assignment.reason_detail} {note}".strip()
    return assignment.model_copy(
        update={"parameters": parameters, "adjustments": applied, "reason_detail": detail}
    )


# -- judging the interventions ----------------------------------------------------------------


def _check_enrolled(state: MouseState, event: Event, what: str) -> None:
    if not state.enrolled:
        raise ImpossibleEvent(f"cannot {what} mouse {event.mouse_id!r}: it is not enrolled")
    if state.ejected:
        raise ImpossibleEvent(
            f"cannot {what} mouse {event.mouse_id!r}: it was ejected ({state.ejected_reason}); "
            "enrol it again to train it"
        )


def _issued_at(state: MouseState, event: Event) -> datetime:
    """When an assignment caused by an operator's event is issued: the event's time, but never
    before the assignment in force (an operator's clock may lag a rig's), so the newest
    assignment is also the latest in time."""
    last = state.last_assignment
    if last is not None and last.occurred_at > event.occurred_at:
        return last.occurred_at
    return event.occurred_at


def _assignment(
    state: MouseState,
    event: Event,
    curriculum: CurriculumEngine,
    stage: str,
    parameters: Parameters,
    reason: str,
    detail: str,
    sessions_at_stage: int,
) -> AssignmentIssued:
    return issue_assignment(
        event,
        curriculum,
        stage,
        parameters=parameters,
        reason=reason,
        detail=detail,
        sessions_at_stage=sessions_at_stage,
        session_number=state.session_total + 1,
        event_id=intervention_assignment_id(event),
        issued_at=_issued_at(state, event),
    )


def decide_overridden(
    state: MouseState, event: StageOverridden, curriculum: CurriculumEngine
) -> list[Event]:
    """The assignment of the stage a trainer chose.

    Raises:
        ImpossibleEvent: the mouse is not enrolled or was ejected, the stage does not exist in
            the mouse's curriculum version, the mouse is no longer at ``from_stage``, or it is
            in a session.
    """
    _check_enrolled(state, event, "override the stage of")
    if not curriculum.has_stage(event.to_stage):
        names = list(getattr(curriculum, "stage_names", []))
        close = difflib.get_close_matches(event.to_stage, names, n=3, cutoff=0.5)
        hint = (
            f"; did you mean {' or '.join(close)}?" if close else f" (stages: {', '.join(names)})"
        )
        raise ImpossibleEvent(
            f"{curriculum.name} {curriculum.version} has no stage {event.to_stage!r}{hint}"
        )
    if event.from_stage is not None and event.from_stage != state.stage:
        raise ImpossibleEvent(
            f"mouse {event.mouse_id!r} is at {state.stage!r} now, not {event.from_stage!r}: "
            "check its status and override again"
        )
    session = state.open_session
    if session is not None:
        raise ImpossibleEvent(
            f"mouse {event.mouse_id!r} is in session {session.session_id!r} (stage "
            f"{session.stage!r}); the decision on it would replace the override: override "
            "after the session ends"
        )
    moved = event.to_stage != state.stage
    who = event.overridden_by or "a trainer"
    detail = f"Overridden by {who}: {state.stage} -> {event.to_stage}. Reason: {event.reason}"
    assignment = _assignment(
        state,
        event,
        curriculum,
        event.to_stage,
        curriculum.parameters(event.to_stage),
        "override",
        detail,
        0 if moved else state.sessions_at_stage,
    )
    return [with_adjustments(assignment, state, curriculum)]


def decide_ejected(
    state: MouseState, event: MouseEjected, curriculum: CurriculumEngine
) -> list[Event]:
    """The ``ejected`` assignment that tells rigs the mouse is out of training.

    Raises:
        ImpossibleEvent: the mouse is not enrolled or already ejected.
    """
    _check_enrolled(state, event, "eject")
    who = event.ejected_by or "a trainer"
    detail = (
        f"Ejected by {who}. Reason: {event.reason}. No more sessions: rigs refuse this "
        "assignment; enrol the mouse again to train it."
    )
    stage = state.stage or curriculum.first_stage
    return [
        _assignment(state, event, curriculum, stage, {}, EJECTED, detail, state.sessions_at_stage)
    ]


def adjusted(state: MouseState, event: ParametersAdjusted) -> Parameters:
    """The mouse's adjustments after ``event`` (None values clear)."""
    kept = {k: v for k, v in state.adjustments.items() if k not in event.adjustments}
    return {**kept, **{k: v for k, v in event.adjustments.items() if v is not None}}


def decide_adjusted(
    state: MouseState, event: ParametersAdjusted, curriculum: CurriculumEngine
) -> list[Event]:
    """An assignment of the mouse's current stage with the adjustments in force at once.

    Raises:
        ImpossibleEvent: the mouse is not enrolled or was ejected, nothing is adjusted, a
            cleared parameter has no adjustment, or the current stage does not allow a value.
    """
    _check_enrolled(state, event, "adjust the parameters of")
    if not event.adjustments:
        raise ImpossibleEvent("ParametersAdjusted without any adjustment")
    stage = state.stage or curriculum.first_stage
    cleared = sorted(k for k, v in event.adjustments.items() if v is None)
    unknown = [k for k in cleared if k not in state.adjustments]
    if unknown:
        current = ", ".join(sorted(state.adjustments)) or "none"
        raise ImpossibleEvent(
            f"mouse {event.mouse_id!r} has no adjustment of {', '.join(unknown)} to clear "
            f"(adjusted: {current})"
        )
    requested = {k: v for k, v in event.adjustments.items() if v is not None}
    try:
        check_adjustments(curriculum, stage, requested)
    except CurriculumError as exc:
        raise ImpossibleEvent(
            f"{curriculum.name} {curriculum.version} does not allow this at {stage}: {exc}"
        ) from exc
    own = curriculum.parameters(stage)
    last = state.last_assignment
    base = dict(last.parameters) if last is not None and last.stage == stage else own
    for key in cleared:  # back to the stage's own value
        if key in own:
            base[key] = own[key]
        else:
            base.pop(key, None)
    who = event.adjusted_by or "a trainer"
    changes = ", ".join(
        f"{k} cleared" if v is None else f"{k}={v!r}" for k, v in sorted(event.adjustments.items())
    )
    detail = f"Adjusted by {who}: {changes}. Reason: {event.reason}"
    assignment = _assignment(
        state, event, curriculum, stage, base, "adjusted", detail, state.sessions_at_stage
    )
    after = state.model_copy(update={"adjustments": adjusted(state, event)})
    return [with_adjustments(assignment, after, curriculum)]


def _fold_overridden(state: MouseState, event: StageOverridden, ids: tuple[str, ...]) -> MouseState:
    moved = event.to_stage != state.stage
    return state.model_copy(
        update={
            "stage": event.to_stage,
            "sessions_at_stage": 0 if moved else state.sessions_at_stage,
            "recent_event_ids": ids,
        }
    )


def _fold_ejected(state: MouseState, event: MouseEjected, ids: tuple[str, ...]) -> MouseState:
    return state.model_copy(
        update={"ejected": True, "ejected_reason": event.reason, "recent_event_ids": ids}
    )


def _fold_adjusted(
    state: MouseState, event: ParametersAdjusted, ids: tuple[str, ...]
) -> MouseState:
    return state.model_copy(update={"adjustments": adjusted(state, event), "recent_event_ids": ids})


FOLDS: dict[type[Event], Callable[[MouseState, Any, tuple[str, ...]], MouseState]] = {
    StageOverridden: _fold_overridden,
    MouseEjected: _fold_ejected,
    ParametersAdjusted: _fold_adjusted,
}
"""How an accepted intervention is folded into the state, by its type (given the state, the
event and the recent-id window with its id; its assignment is folded after it)."""

DECISIONS: dict[type[Event], Callable[[MouseState, Any, CurriculumEngine], list[Event]]] = {
    StageOverridden: decide_overridden,
    MouseEjected: decide_ejected,
    ParametersAdjusted: decide_adjusted,
}
"""What follows from an intervention, by its type (given the mouse's state, the event and
its curriculum version)."""


def ejected_refusal(state: MouseState, what: str) -> ImpossibleEvent:
    """The error for a session event of an ejected mouse."""
    return ImpossibleEvent(
        f"{what} for mouse {state.mouse_id!r}, which was ejected ({state.ejected_reason}): it "
        "gets no more sessions; enrol it again to train it"
    )


# -- the rigs a mouse may train on ----------------------------------------------------------------


def decide_rigs_allowed(state: MouseState, event: RigsAllowed) -> list[Event]:
    """Nothing follows from a list of allowed rigs (rigs need no new assignment: the processor
    refuses the facts of the others).

    Raises:
        ImpossibleEvent: the mouse is not enrolled (a list for a mouse the processor does not
            know is most likely a typo of its id).
    """
    if state.seen(event.event_id):
        return []
    if not state.enrolled:
        raise ImpossibleEvent(f"cannot allow rigs for mouse {event.mouse_id!r}: it is not enrolled")
    return []


def fold_rigs_allowed(state: MouseState, event: RigsAllowed, ids: tuple[str, ...]) -> MouseState:
    """The mouse's allowed rigs become the event's list (it replaces the one in force)."""
    return state.model_copy(update={"allowed_rigs": tuple(event.rig_ids), "recent_event_ids": ids})


def check_rig(state: MouseState, event: Event) -> None:
    """Refuses a rig fact of a mouse from a rig the mouse is not allowed on.

    A mouse without a list (``allowed_rigs`` empty) may train on any rig. A fact that names no
    rig is refused once the mouse has a list.

    Raises:
        ImpossibleEvent: the fact comes from a rig that is not on the mouse's list; the message
            names the rigs allowed and the command that would allow this one.
    """
    allowed = state.allowed_rigs
    rig = event.rig_id
    if not allowed or rig in allowed:
        return
    mouse = event.mouse_id
    shown = ", ".join(allowed)
    if rig is None:
        raise ImpossibleEvent(
            f"mouse {mouse} may train only on rigs {shown}, and this {event.event_type} names "
            "no rig (rig_id is empty): it is refused"
        )
    raise ImpossibleEvent(
        f"mouse {mouse} is not allowed on rig {rig} (allowed: {shown}); an operator allows it "
        f"with `shaping rigs allow {mouse} {' '.join((*allowed, rig))}`"
    )
