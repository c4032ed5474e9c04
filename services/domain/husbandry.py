"""Husbandry on the log: weights, water, water restrictions and notes, folded into a mouse's
state like any other fact.

Only an operator's command causes these events (RecordWeight, GiveWater, StartRestriction,
EndRestriction, AddNote; ``schemas/commands.py``). What the log's history decides is checked
here, for the command's dry run and for every fold alike: the mouse must be known (enrolled
once; an ejected mouse is still weighed and watered), a restriction is started only when none
is in force and ended only when one is. What the lab's welfare policy decides (a plausible
weight, no jump from the last one unless confirmed, no huge water entry) is checked on the
command only (:func:`policy_problem`, called by the processor's step), so that a policy
changed later never makes a replay refuse a fact the log already holds.

Holding a restricted mouse is :mod:`shaping.services.domain.gating`'s (the state keeps the hold
in force, folded here from AssignmentHeld, HoldReleased and the end of a restriction), and
:mod:`shaping.services.domain.welfare` turns the record into a day's status with the lab's
policy. The water a session's rewards delivered is folded from its SessionEnded
(:func:`with_earned_water`). Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from shaping.schemas.events import (
    WATER_EARNED_METRIC,
    AssignmentHeld,
    Event,
    HoldReleased,
    HusbandryNote,
    RestrictionEnded,
    RestrictionStarted,
    SessionEnded,
    WaterGiven,
    WeightRecorded,
)
from shaping.services.domain.errors import ImpossibleEvent
from shaping.services.domain.state import (
    WATER_KEPT,
    WATER_WINDOW_HOURS,
    WEIGHTS_KEPT,
    Hold,
    Husbandry,
    MouseState,
    Restriction,
    WaterEntry,
    WeightEntry,
)
from shaping.services.domain.welfare import WelfarePolicy, water_problem, weight_problem

HUSBANDRY = (
    WeightRecorded,
    WaterGiven,
    RestrictionStarted,
    RestrictionEnded,
    HusbandryNote,
    HoldReleased,
)
"""The husbandry events (the keys of :data:`DECISIONS`)."""


def _known(state: MouseState, event: Event) -> None:
    if not state.enrolled:
        raise ImpossibleEvent(
            f"mouse {event.mouse_id!r} is not known to the processor (it was never enrolled): "
            f"no {event.event_type} is recorded for it; check the mouse id"
        )


def decide_husbandry(state: MouseState, event: Event) -> list[Event]:
    """Nothing follows from a husbandry fact (no assignment); it is checked against the
    mouse's history.

    Raises:
        ImpossibleEvent: the mouse was never enrolled; a restriction started while one is in
            force, or ended while none is; a hold released for a mouse not on restriction.
    """
    if state.seen(event.event_id):
        return []
    _known(state, event)
    restriction = state.husbandry.restriction
    if isinstance(event, RestrictionStarted) and restriction is not None:
        raise ImpossibleEvent(
            f"mouse {event.mouse_id!r} is already on water restriction since "
            f"{restriction.started_at.date().isoformat()} (reference "
            f"{restriction.reference_grams:g} g): end it before starting another"
        )
    if isinstance(event, RestrictionEnded) and restriction is None:
        raise ImpossibleEvent(f"mouse {event.mouse_id!r} is not on water restriction")
    if isinstance(event, HoldReleased) and restriction is None:
        raise ImpossibleEvent(
            f"mouse {event.mouse_id!r} is not on water restriction: nothing holds it, there is "
            "nothing to release"
        )
    return []


def policy_problem(state: MouseState, event: Event, policy: WelfarePolicy) -> str | None:
    """Why the lab's welfare policy refuses the fact a command asks for, or None (checked on
    commands only: see the module's docstring)."""
    if isinstance(event, WeightRecorded):
        return weight_problem(state.husbandry, event.grams, event.confirmed, policy)
    if isinstance(event, WaterGiven):
        return water_problem(event.ml, event.kind, policy)
    if isinstance(event, RestrictionStarted):
        return weight_problem(Husbandry(), event.reference_grams, True, policy)
    return None


def _with(state: MouseState, ids: tuple[str, ...], **changes: Any) -> MouseState:
    husbandry = state.husbandry.model_copy(update=changes)
    return state.model_copy(update={"husbandry": husbandry, "recent_event_ids": ids})


def _fold_weight(state: MouseState, event: WeightRecorded, ids: tuple[str, ...]) -> MouseState:
    entry = WeightEntry(at=event.occurred_at, grams=event.grams)
    return _with(state, ids, weights=(*state.husbandry.weights, entry)[-WEIGHTS_KEPT:])


def _kept_water(husbandry: Husbandry, entry: WaterEntry) -> tuple[WaterEntry, ...]:
    kept = (*husbandry.water, entry)
    since = max(e.at for e in kept) - timedelta(hours=WATER_WINDOW_HOURS)
    return tuple(e for e in kept if e.at >= since)[-WATER_KEPT:]


def _fold_water(state: MouseState, event: WaterGiven, ids: tuple[str, ...]) -> MouseState:
    entry = WaterEntry(
        at=event.occurred_at, ml=event.ml, kind=event.kind, water_type=event.water_type
    )
    return _with(state, ids, water=_kept_water(state.husbandry, entry))


def earned_water_ml(event: SessionEnded) -> float | None:
    """The water a session's rewards delivered, as its rig reported it (the SessionEnded's
    ``water_earned_ml`` metric); None when not reported or not a positive volume."""
    value = event.metrics.get(WATER_EARNED_METRIC)
    if value is None or value <= 0:
        return None
    return value


def with_earned_water(state: MouseState, event: SessionEnded) -> MouseState:
    """The state with a session's earned water added to the mouse's water (kind ``earned``,
    at the session's end); the same state when the rig reported none. The SessionEnded is the
    fact: no WaterGiven is needed (the projector writes the earned row from it too)."""
    ml = earned_water_ml(event)
    if ml is None:
        return state
    entry = WaterEntry(at=event.occurred_at, ml=ml, kind="earned", water_type="water")
    husbandry = state.husbandry.model_copy(update={"water": _kept_water(state.husbandry, entry)})
    return state.model_copy(update={"husbandry": husbandry})


def _fold_started(state: MouseState, event: RestrictionStarted, ids: tuple[str, ...]) -> MouseState:
    restriction = Restriction(
        started_at=event.occurred_at,
        reference_grams=event.reference_grams,
        reference_method=event.reference_method,
        implant_grams=event.implant_grams,
        birth_date=event.birth_date,
        sex=event.sex,
    )
    return _with(state, ids, restriction=restriction)


def _fold_ended(state: MouseState, event: RestrictionEnded, ids: tuple[str, ...]) -> MouseState:
    return _with(state, ids, restriction=None, hold=None)


def _fold_released(state: MouseState, event: HoldReleased, ids: tuple[str, ...]) -> MouseState:
    return _with(state, ids, hold=None)


def _fold_held(state: MouseState, event: AssignmentHeld, ids: tuple[str, ...]) -> MouseState:
    hold = Hold(at=event.held_at, reason=event.reason, event_id=event.event_id)
    return _with(state, ids, hold=hold)


FOLDS: dict[type[Event], Callable[[MouseState, Any, tuple[str, ...]], MouseState]] = {
    WeightRecorded: _fold_weight,
    WaterGiven: _fold_water,
    RestrictionStarted: _fold_started,
    RestrictionEnded: _fold_ended,
    HoldReleased: _fold_released,
    AssignmentHeld: _fold_held,
}
"""How each husbandry fact (and the processor's own AssignmentHeld) changes the state (a note
only enters the recent-id window)."""
