"""The welfare gate: a mouse on water restriction trains only on a day it was weighed at or
above its minimum weight, or released by a trainer.

Pure functions of a mouse's state, the event being processed, what the core decided from it,
the lab's welfare policy and the log's time (:class:`WelfareGate`): the broker's time of the
message the processor's step is handling, never a rig's clock (the embedded runtime, whose
log has no broker time, uses the event's own time). The lab day is that time in the policy's
time zone.

What the gate adds to the core's outputs (:func:`gate_outputs`), for a restricted mouse only
(a mouse not on restriction gets exactly what the core decided):

- every AssignmentIssued carries ``welfare`` (:class:`~shaping.schemas.events.AssignmentWelfare`):
  the day's figures, ``cleared_on`` (kept from the mouse's current assignment only when that
  was cleared on the same lab day, so the next day's first session needs a weighing again)
  and ``held_reason`` while a hold is in force;
- a WeightRecorded re-issues the current assignment (same session number, a new id derived
  from the weight's): cleared for the day (reason ``cleared``) when the weight is above the
  minimum, else an AssignmentHeld with the reason and the figures, followed by the assignment
  re-issued not cleared, held (reason ``held``; the newest record of the mouse on the
  compacted assignments topic stays an assignment);
- a HoldReleased (a trainer's ReleaseHold) re-issues it cleared for the day (``released``);
- a RestrictionStarted re-issues it with the welfare (``restricted``), a RestrictionEnded
  without (``unrestricted``), so that a rig learns of either from its assignments;
- a SessionStarted of a held mouse, or of one not cleared for the day, is kept (the rig ran
  it) and flagged with a TrainingWarning ``ran_while_held``.

A mouse that is ejected, or has no assignment yet, gets no re-issued assignment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from shaping.schemas.events import (
    AssignmentHeld,
    AssignmentIssued,
    AssignmentWelfare,
    Event,
    HoldReleased,
    RestrictionEnded,
    RestrictionStarted,
    SessionStarted,
    TrainingWarning,
    TrialCompleted,
    WeightRecorded,
)
from shaping.services.domain.outputs import derived_event_id, reissue_assignment
from shaping.services.domain.state import Husbandry, MouseState
from shaping.services.domain.welfare import WelfarePolicy, WelfareStatus, welfare_status

RAN_WHILE_HELD = "ran_while_held"
"""The kind of the TrainingWarning for a session a restricted mouse started while held or not
cleared for the day."""

REISSUE_REASONS = ("cleared", "held", "released", "restricted", "unrestricted")
"""The reasons of the assignments the gate re-issues."""


@dataclass(frozen=True)
class WelfareGate:
    """The lab's welfare policy and the log's time of the message being processed.

    Attributes:
        policy: the lab's welfare policy (its minimum, its time zone).
        at: the log's time (the broker's time of the message; see the module's doc).
    """

    policy: WelfarePolicy
    at: datetime

    @property
    def day(self) -> date:
        """The lab day of :attr:`at`."""
        return self.policy.day_of(self.at)


def concerns_gate(before: MouseState, after: MouseState, event: Event) -> bool:
    """Whether the gate may change anything: the mouse is (or was, or becomes) on restriction,
    and the event is new (not a redelivery) and not a trial."""
    if isinstance(event, TrialCompleted) or before.seen(event.event_id):
        return False
    return before.husbandry.restriction is not None or after.husbandry.restriction is not None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _welfare(
    status: WelfareStatus, cleared_on: date | None, held_reason: str | None
) -> AssignmentWelfare:
    return AssignmentWelfare(
        restricted=True,
        cleared_on=None if cleared_on is None else cleared_on.isoformat(),
        status=status.status,
        percent_of_expected=_round(status.percent, 2),
        water_required_ml_today=_round(status.requirement_ml, 3),
        water_given_ml_today=round(status.given_ml, 3),
        water_still_due_ml=_round(status.still_required_ml, 3),
        supplement_ml=round(status.supplement_ml, 3),
        supplement_exceeds_cap=status.alert_animal_services,
        held_reason=held_reason,
    )


def _status(husbandry: Husbandry, gate: WelfareGate) -> WelfareStatus:
    return welfare_status(husbandry, gate.policy, gate.day, gate.at)


def _weighed_now(husbandry: Husbandry, gate: WelfareGate) -> Husbandry:
    """The record with its newest weight dated the log's time: the weighing being processed
    counts for the lab day of the log, whatever the clock of the PC that sent it."""
    newest = husbandry.weights[-1].model_copy(update={"at": gate.at})
    return husbandry.model_copy(update={"weights": (*husbandry.weights[:-1], newest)})


def weight_in_words(status: WelfareStatus, policy: WelfarePolicy) -> str:
    """``17.1 g is 78.1 % of expected 21.9 g (minimum 80 %)``: the newest weight against the
    policy's minimum."""
    grams = "?" if status.latest_grams is None else f"{status.latest_grams:g}"
    percent = "?" if status.percent is None else f"{status.percent:.1f}"
    expected = "?" if status.expected_grams is None else f"{status.expected_grams:.1f}"
    return (
        f"{grams} g is {percent} % of expected {expected} g (minimum {policy.minimum_percent:g} %)"
    )


def _cleared_before(before: MouseState, gate: WelfareGate) -> date | None:
    """The lab day the mouse's current assignment is cleared for, when it is the log's day
    and no hold is in force; else None."""
    last = before.last_assignment
    if before.husbandry.hold is not None or last is None or last.welfare is None:
        return None
    cleared = last.welfare.cleared_on
    return gate.day if cleared == gate.day.isoformat() else None


def _with_welfare(assignment: AssignmentIssued, welfare: AssignmentWelfare) -> AssignmentIssued:
    return assignment.model_copy(update={"welfare": welfare})


def _reissued(
    after: MouseState,
    cause: Event,
    welfare: AssignmentWelfare | None,
    reason: str,
    detail: str,
) -> AssignmentIssued | None:
    """The mouse's current assignment again, for ``cause`` (a new id derived from it, its time,
    caused by it), with ``welfare``; None for an ejected mouse or one without an assignment."""
    last = after.last_assignment
    if last is None or after.ejected or not after.enrolled:
        return None
    return reissue_assignment(last, cause, reason=reason, detail=detail, welfare=welfare)


def _on_weight(after: MouseState, event: WeightRecorded, gate: WelfareGate) -> list[Event]:
    husbandry = _weighed_now(after.husbandry, gate)
    status = _status(husbandry, gate)
    words = weight_in_words(status, gate.policy)
    if status.status != "warning":
        detail = f"Cleared to train on {gate.day.isoformat()}: {words}."
        issued = _reissued(after, event, _welfare(status, gate.day, None), "cleared", detail)
        return [] if issued is None else [issued]
    last = after.last_assignment
    if last is None or after.ejected or not after.enrolled:
        return []
    reason = f"{words}, at or below the minimum"
    welfare = _welfare(status, None, reason)
    held = AssignmentHeld(
        event_id=derived_event_id(event, "AssignmentHeld"),
        mouse_id=event.mouse_id,
        occurred_at=event.occurred_at,
        causation_id=event.event_id,
        session_number=last.session_number,
        reason=reason,
        held_at=gate.at,
        welfare=welfare,
    )
    detail = (
        f"Held on {gate.day.isoformat()}: {reason}. Weigh it again, or a trainer releases it "
        f"(shaping release {event.mouse_id} --reason ...)."
    )
    issued = _reissued(after, event, welfare, "held", detail)
    return [held] if issued is None else [held, issued]


def _on_release(after: MouseState, event: HoldReleased, gate: WelfareGate) -> list[Event]:
    status = _status(after.husbandry, gate)
    by = f" by {event.released_by}" if event.released_by else ""
    detail = f"Released for {gate.day.isoformat()}{by}: {event.reason}"
    issued = _reissued(after, event, _welfare(status, gate.day, None), "released", detail)
    return [] if issued is None else [issued]


def _on_restriction(after: MouseState, event: Event, gate: WelfareGate) -> list[Event]:
    if isinstance(event, RestrictionEnded):
        detail = "Water restriction ended: no weighing is needed before training."
        issued = _reissued(after, event, None, "unrestricted", detail)
        return [] if issued is None else [issued]
    status = _status(after.husbandry, gate)
    cleared = gate.day if status.weighed_today and status.status != "warning" else None
    restriction = after.husbandry.restriction
    reference = "" if restriction is None else f" (reference {restriction.reference_grams:g} g)"
    detail = f"On water restriction{reference}: weigh the mouse before each day's training" + (
        f"; cleared for {gate.day.isoformat()} by today's weight." if cleared else "."
    )
    issued = _reissued(after, event, _welfare(status, cleared, None), "restricted", detail)
    return [] if issued is None else [issued]


def _ran_while_held(before: MouseState, event: SessionStarted, gate: WelfareGate) -> Event | None:
    if before.husbandry.restriction is None:
        return None
    hold = before.husbandry.hold
    if hold is not None:
        why = f"while held ({hold.reason})"
    elif _cleared_before(before, gate) is None:
        why = (
            f"under water restriction without being cleared to train on {gate.day.isoformat()} "
            "(not weighed that day above its minimum, nor released)"
        )
    else:
        return None
    rig = f" on {event.rig_id}" if event.rig_id else ""
    return TrainingWarning(
        event_id=derived_event_id(event, "TrainingWarning"),
        mouse_id=event.mouse_id,
        rig_id=event.rig_id,
        session_id=event.session_id,
        occurred_at=event.occurred_at,
        causation_id=event.event_id,
        kind=RAN_WHILE_HELD,
        message=(
            f"{event.mouse_id} started session {event.session_id}{rig} {why}; the session is "
            "kept, check the mouse"
        ),
        stage=event.stage,
        curriculum_name=event.curriculum_name,
        curriculum_version=event.curriculum_version,
    )


def gate_outputs(
    before: MouseState,
    after: MouseState,
    event: Event,
    outputs: Sequence[Event],
    gate: WelfareGate,
) -> list[Event]:
    """The core's outputs for ``event`` with the welfare gate applied (see the module's doc).

    Args:
        before: the mouse's state before ``event``.
        after: the state with ``event`` folded in (not yet its outputs).
        event: the event being processed.
        outputs: what the core decided from it.
        gate: the policy and the log's time.
    """
    if not concerns_gate(before, after, event):
        return list(outputs)
    result: list[Event] = []
    if isinstance(event, SessionStarted):
        warning = _ran_while_held(before, event, gate)
        if warning is not None:
            result.append(warning)
    restricted = after.husbandry.restriction is not None
    hold = after.husbandry.hold
    for output in outputs:
        if isinstance(output, AssignmentIssued) and restricted:
            cleared = _cleared_before(before, gate) if hold is None else None
            reason = None if hold is None else hold.reason
            output = _with_welfare(
                output, _welfare(_status(after.husbandry, gate), cleared, reason)
            )
        result.append(output)
    if isinstance(event, WeightRecorded) and restricted:
        result.extend(_on_weight(after, event, gate))
    elif isinstance(event, HoldReleased) and restricted:
        result.extend(_on_release(after, event, gate))
    elif isinstance(event, RestrictionStarted | RestrictionEnded):
        result.extend(_on_restriction(after, event, gate))
    return result


__all__ = [
    "RAN_WHILE_HELD",
    "REISSUE_REASONS",
    "WelfareGate",
    "concerns_gate",
    "gate_outputs",
    "weight_in_words",
]
