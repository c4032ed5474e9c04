"""Simulated husbandry for the lab driver: each mouse's body weight, and the trainer who weighs,
restricts, waters and releases.

The model is deliberately small and deterministic from the lab's seed (its own random stream
per mouse, so the mice's training behaviour is the same with or without it):

- a mouse has a free-drinking weight (21 to 27 g) and a daily need of water per gram of body
  weight (0.05 to 0.065 mL/g; the *lean* mouse of a plan needs :data:`LEAN_NEED_ML_PER_G`, more
  than a lab's requirement gives it, so it loses weight on restriction until it is held);
- overnight its weight moves by :data:`GRAMS_PER_ML` grams for every mL it drank above (or
  below) its need that day, never above its free-drinking weight and never by more than
  :data:`MAX_DAILY_CHANGE` of its weight (so no weighing needs a confirmation);
- the scale reads the weight to a tenth of a gram.

The simulated trainer (:class:`SimulatedTrainer`) builds the commands a person would send,
with ids and times from the same streams: on the first day it weighs each mouse and starts its
water restriction with that weight as the reference; every morning it weighs each mouse before
its session; after a session it gives the supplement the mouse's newest assignment suggests
(``welfare.supplement_ml``); when a rig refuses a held mouse, it gives extra water, checks the
mouse and releases it for the day with a reason, and from then on gives that mouse at least
:data:`CARE_ML` a day, so it recovers.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shaping.schemas.commands import Command, GiveWater, RecordWeight, ReleaseHold, StartRestriction
from shaping.schemas.events import AssignmentIssued

TRAINER = "sim-trainer"
"""Who the simulated trainer's commands are requested by."""

SCALE = "scale-1"
"""The simulated lab's scale."""

GRAMS_PER_ML = 0.8
"""Grams a mouse gains overnight per mL drunk above its need (loses per mL below)."""

NEED_ML_PER_G = (0.05, 0.065)
"""The range a mouse's daily water need per gram of body weight is drawn from."""

LEAN_NEED_ML_PER_G = 0.15
"""The lean mouse's daily need per gram: more than restriction gives it, so it loses weight."""

MAX_DAILY_CHANGE = 0.08
"""The largest overnight change of weight, as a fraction of the weight."""

CARE_ML = 3.0
"""The least water a day the trainer gives a mouse once it has been held (its supplement)."""


class SimulatedBody:
    """One simulated mouse's weight and the water it drank today.

    Args:
        mouse_id: the mouse.
        seed: the lab's seed (the body's stream derives from it and the id).
        lean: whether this is the plan's lean mouse.
    """

    def __init__(self, mouse_id: str, seed: int, lean: bool = False) -> None:
        self.mouse_id = mouse_id
        self.rng = random.Random(f"{seed}:{mouse_id}:husbandry")
        self.free_grams = round(self.rng.uniform(21.0, 27.0), 1)
        need = self.rng.uniform(*NEED_ML_PER_G)
        self.need_ml_per_g = LEAN_NEED_ML_PER_G if lean else need
        self.lean = lean
        self.grams = self.free_grams
        self.drunk_ml = 0.0

    def new_id(self) -> str:
        """A UUID from the body's stream (deterministic for a seed)."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def drink(self, ml: float) -> None:
        """The mouse drank ``ml`` (earned in a session, or given)."""
        self.drunk_ml += ml

    def night(self) -> None:
        """The night passes: the weight follows the day's water against the need."""
        change = GRAMS_PER_ML * (self.drunk_ml - self.need_ml_per_g * self.grams)
        limit = MAX_DAILY_CHANGE * self.grams
        change = max(-limit, min(limit, change))
        self.grams = min(self.free_grams, self.grams + change)
        self.drunk_ml = 0.0

    def reading(self) -> float:
        """What the scale shows (grams, one decimal)."""
        return round(self.grams, 1)


@dataclass(frozen=True)
class Release:
    """A hold the simulated trainer released, and why."""

    mouse_id: str
    day: int
    given_ml: float
    reason: str


class SimulatedTrainer:
    """The person who weighs and waters the simulated lab's mice (see the module's doc).

    Args:
        bodies: each mouse's body, by mouse id.
    """

    def __init__(self, bodies: dict[str, SimulatedBody]) -> None:
        self.bodies = bodies
        self.cared: set[str] = set()
        self.given_today: dict[str, float] = {}

    def _ask(self, mouse_id: str) -> dict[str, Any]:
        return {
            "command_id": self.bodies[mouse_id].new_id(),
            "mouse_id": mouse_id,
            "requested_by": TRAINER,
        }

    def morning(self, mouse_id: str, at: datetime, first_day: bool) -> list[Command]:
        """Weighs the mouse before its session; on the first day also starts its water
        restriction with that weight as the reference."""
        body = self.bodies[mouse_id]
        grams = body.reading()
        commands: list[Command] = [
            RecordWeight(**self._ask(mouse_id), requested_at=at, grams=grams, scale_id=SCALE)
        ]
        if first_day:
            commands.append(
                StartRestriction(
                    **self._ask(mouse_id),
                    requested_at=at.replace(second=30),
                    reference_grams=grams,
                    reference_method="measured",
                )
            )
        return commands

    def after_session(
        self,
        mouse_id: str,
        at: datetime,
        earned_ml: float,
        next_assignment: AssignmentIssued | None,
    ) -> list[Command]:
        """The mouse drank what it earned; the trainer gives the supplement its newest
        assignment suggests (for a mouse once held, enough for :data:`CARE_ML` of supplements
        that day)."""
        body = self.bodies[mouse_id]
        body.drink(earned_ml)
        welfare = None if next_assignment is None else next_assignment.welfare
        suggested = 0.0 if welfare is None else welfare.supplement_ml
        if mouse_id in self.cared:
            suggested = max(suggested, CARE_ML - self.given_today.get(mouse_id, 0.0))
        if suggested <= 0:
            return []
        self._give(mouse_id, suggested)
        return [
            GiveWater(
                **self._ask(mouse_id),
                requested_at=at,
                ml=round(suggested, 2),
                kind="supplement",
                water_type="water",
            )
        ]

    def on_hold(self, mouse_id: str, day: int, at: datetime) -> tuple[list[Command], Release]:
        """A rig refused the held mouse: the trainer gives it :data:`CARE_ML` of water, checks
        it and releases it for the day with a reason; it gets extra care from now on."""
        self._give(mouse_id, CARE_ML)
        self.cared.add(mouse_id)
        reason = (
            f"checked after the hold: bright and alert; {CARE_ML:g} mL extra water given now "
            f"and at least {CARE_ML:g} mL a day from now on; trains today under watch"
        )
        commands: list[Command] = [
            GiveWater(
                **self._ask(mouse_id),
                requested_at=at,
                ml=CARE_ML,
                kind="supplement",
                water_type="water",
            ),
            ReleaseHold(**self._ask(mouse_id), requested_at=at.replace(second=30), reason=reason),
        ]
        return commands, Release(mouse_id, day, CARE_ML, reason)

    def _give(self, mouse_id: str, ml: float) -> None:
        self.bodies[mouse_id].drink(ml)
        self.given_today[mouse_id] = self.given_today.get(mouse_id, 0.0) + ml

    def night(self) -> None:
        """Every mouse's night."""
        for body in self.bodies.values():
            body.night()
        self.given_today.clear()
