"""The rig's safety limits, applied to an assignment before its session starts.

The processor decides what a mouse's next session runs, but a rig does not trust an assignment
with the animal: a bug, a wrong adjustment or a forged record on the assignments topic could
ask for 500 µL of water per trial, a 600-minute session or 5,000 trials. Every rig checks the
assignment it is about to run against the limits of its config (``[safety]``,
:class:`rig.config.SafetyLimits`) with :func:`screen_assignment`: the agent before ``rig run``
starts a session, the simulated lab before each simulated session. One outside them is
refused: nothing runs, or the newest assignment of the mouse the rig received that passes
them (``on_violation``); the caller says so on screen, in its log and in its metrics.

The parameters checked are the ones the session would run with: the assignment's, and the
task's default for each it leaves out.

==========================  ================================================================
parameter                   limit
==========================  ================================================================
``reward_volume_ul``        ``max_reward_ul_per_trial``
``reward_ms``               ``max_reward_ms_per_trial``
(the reward plan)           per valve: µL given (``reward_ms`` on a calibrated valve) and ms
                            open (``reward_volume_ul`` through the calibration)
``session_minutes``         ``max_session_minutes``
``max_trials``              ``max_trials``
any name                    ``[safety.parameters] name = [low, high]``
==========================  ================================================================

A value these limits cannot be checked against (text where a number belongs, NaN, infinity)
is a violation too. The per-session water is a limit of the running session (the task stops
before a reward would pass it), not of the assignment.

The welfare gate (:func:`welfare_refusal`) is the same kind of check: a mouse on water
restriction whose assignment is held, or not cleared for the rig's day, does not start. The
rig's day is its own clock's local date (it has no other); the processor judges the day on
the broker's time and flags a session a rig started anyway (``ran_while_held``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Literal

from shaping.rig.config import SafetyLimits
from shaping.rig.errors import RigError
from shaping.rig.evidence import EJECTED
from shaping.schemas.events import AssignmentIssued, ParamValue

log = logging.getLogger(__name__)

UnsafeAction = Literal["refused", "ran_last_safe"]
UNSAFE_ACTIONS: tuple[UnsafeAction, ...] = ("ran_last_safe", "refused")
"""What a rig did with an assignment outside its limits (the ``action`` label of
``shaping_rig_unsafe_assignments_total``): ran nothing, or the last safe assignment."""

LIMITED: dict[str, str] = {
    "reward_volume_ul": "max_reward_ul_per_trial",
    "reward_ms": "max_reward_ms_per_trial",
    "session_minutes": "max_session_minutes",
    "max_trials": "max_trials",
}
"""The task's parameters with a limit of their own: name -> the ``[safety]`` setting (and
attribute of SafetyLimits) that bounds it."""

RewardsOf = Callable[[Mapping[str, ParamValue]], Mapping[str, tuple[float, float]]]
"""Computes, from the parameters a session runs with, each valve's reward: (ms open, µL)."""

_SHOWN = 40
"""A value in a message is cut to this many characters (a forged one may be huge)."""


class UnsafeAssignmentRefusedError(RigError):
    """The assignment lies outside the rig's safety limits and nothing safe can run instead.

    Attributes:
        screening: what the screening found (None when the caller did not give it).
    """

    def __init__(self, message: str, screening: Screening | None = None) -> None:
        super().__init__(message)
        self.screening = screening


@dataclass(frozen=True)
class Violation:
    """A parameter outside the rig's safety limits.

    Attributes:
        parameter: its name.
        value: the value the session would run with.
        rule: the limit, as written in the config (``safety.max_trials = 2000``).
        problem: how the value breaks it (``is above``, ``is outside``, ``is no number for``).
    """

    parameter: str
    value: ParamValue
    rule: str
    problem: str = "is above"

    def describe(self) -> str:
        """``max_trials = 5000 is above safety.max_trials = 2000``."""
        return f"{self.parameter} = {_show(self.value)} {self.problem} {self.rule}"


def _show(value: object) -> str:
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, str):
        text = repr(value)
    else:
        text = str(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _number(value: ParamValue) -> float | None:
    """The value as a finite number, None when it is none (text, bool, NaN, infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def check_parameters(
    parameters: Mapping[str, ParamValue],
    limits: SafetyLimits,
    defaults: Mapping[str, ParamValue] | None = None,
) -> list[Violation]:
    """The violations of the parameters a session would run with (empty: within the limits).

    Args:
        parameters: the assignment's parameters (a None value counts as left out).
        limits: the rig's limits.
        defaults: the task's value of each parameter the assignment leaves out.
    """
    values: dict[str, ParamValue] = {
        **{k: v for k, v in (defaults or {}).items() if v is not None},
        **{k: v for k, v in parameters.items() if v is not None},
    }
    violations: list[Violation] = []
    for name, key in LIMITED.items():
        if name not in values:
            continue
        limit = getattr(limits, key)
        rule = f"safety.{key} = {limit:g}"
        number = _number(values[name])
        if number is None:
            violations.append(Violation(name, values[name], rule, "is no number to check against"))
        elif number > limit:
            violations.append(Violation(name, values[name], rule))
    for name, (low, high) in limits.parameters.items():
        if name not in values:
            continue
        rule = f"safety.parameters.{name} = [{low:g}, {high:g}]"
        number = _number(values[name])
        if number is None:
            violations.append(Violation(name, values[name], rule, "is no number to check against"))
        elif not low <= number <= high:
            violations.append(Violation(name, values[name], rule, "is outside"))
    return violations


def check_rewards(
    rewards: Mapping[str, tuple[float, float]], limits: SafetyLimits
) -> list[Violation]:
    """The violations of a reward plan: per valve, (ms open, µL given) per reward."""
    violations: list[Violation] = []
    for valve, (open_ms, volume_ul) in sorted(rewards.items()):
        if open_ms > limits.max_reward_ms_per_trial:
            violations.append(
                Violation(
                    f"the {valve} valve's reward",
                    f"{open_ms:.0f} ms",
                    f"safety.max_reward_ms_per_trial = {limits.max_reward_ms_per_trial:g}",
                )
            )
        if volume_ul > limits.max_reward_ul_per_trial:
            violations.append(
                Violation(
                    f"the {valve} valve's reward",
                    f"{volume_ul:.3g} µL",
                    f"safety.max_reward_ul_per_trial = {limits.max_reward_ul_per_trial:g}",
                )
            )
    return violations


@dataclass(frozen=True)
class Screening:
    """What a rig runs for an assignment, after its safety limits.

    Attributes:
        assignment: the assignment the rig was about to run.
        violations: how it breaks the limits (empty: it is safe and runs).
        run: what runs: the assignment itself, the last safe one (``ran_last_safe``), or None
            (``refused``).
        limits: the limits it was held against.
    """

    assignment: AssignmentIssued
    violations: tuple[Violation, ...]
    run: AssignmentIssued | None
    limits: SafetyLimits

    @property
    def safe(self) -> bool:
        """Whether the assignment lies within the limits."""
        return not self.violations

    @property
    def action(self) -> UnsafeAction | None:
        """``refused`` or ``ran_last_safe`` for an unsafe assignment; None for a safe one."""
        if self.safe:
            return None
        return "refused" if self.run is None else "ran_last_safe"

    def message(self) -> str:
        """What the rig says (screen, log) about an unsafe assignment."""
        a = self.assignment
        head = (
            f"UNSAFE ASSIGNMENT for {a.mouse_id}: assignment {a.event_id} "
            f"({describe_assignment(a)}) is outside this rig's safety limits: "
            f"{'; '.join(v.describe() for v in self.violations)}."
        )
        if self.run is not None:
            return (
                f"{head} Running the last safe assignment instead ({self.run.event_id}: "
                f"{describe_assignment(self.run)}); the session records assignment_stale = true"
            )
        if self.limits.on_violation == "last_safe":
            return (
                f"{head} The rig would run the last safe assignment instead, but no earlier "
                f"assignment of {a.mouse_id} passes them: nothing runs "
                "(safety.on_violation = last_safe)"
            )
        return (
            f"{head} Refusing to run it (safety.on_violation = refuse): nothing runs; find who "
            "wrote it (a decision, a trainer's adjustment, a forged record) or check the rig's "
            "[safety] limits"
        )

    def stale_reason(self) -> str:
        """Why the session that runs the last safe assignment is not on the current one (the
        SessionStarted's ``assignment_stale_reason``)."""
        assert self.run is not None
        names = ", ".join(dict.fromkeys(v.parameter for v in self.violations))
        return (
            f"the assignment {self.assignment.event_id} for session "
            f"{self.assignment.session_number} is outside the rig's safety limits ({names}); "
            f"ran the last safe one, {self.run.event_id} for session {self.run.session_number}"
        )


def describe_assignment(a: AssignmentIssued) -> str:
    """``session 2, stage s2_training, basic-shaping 0.1.0; progress``."""
    return (
        f"session {a.session_number}, stage {a.stage}, {a.curriculum_name} "
        f"{a.curriculum_version}; {a.reason}"
    )


def violations_of(
    assignment: AssignmentIssued,
    limits: SafetyLimits,
    defaults: Mapping[str, ParamValue] | None = None,
    rewards: RewardsOf | None = None,
) -> list[Violation]:
    """How an assignment breaks the limits: its parameters (with the task's defaults), then,
    when they pass, the rewards they give through the rig's valves (``rewards``; its errors,
    such as a reward by volume on an uncalibrated valve, propagate)."""
    found = check_parameters(assignment.parameters, limits, defaults)
    if found or rewards is None:
        return found
    merged = {
        **{k: v for k, v in (defaults or {}).items() if v is not None},
        **{k: v for k, v in assignment.parameters.items() if v is not None},
    }
    return check_rewards(rewards(merged), limits)


def screen_assignment(
    assignment: AssignmentIssued,
    limits: SafetyLimits,
    history: Iterable[AssignmentIssued] = (),
    defaults: Mapping[str, ParamValue] | None = None,
    rewards: RewardsOf | None = None,
) -> Screening:
    """Holds the assignment a session is about to run against the rig's limits, and chooses
    what runs: the assignment when it is safe; else, under ``on_violation = "last_safe"``, the
    first of ``history`` (the mouse's assignments the rig received, newest first) that is safe;
    else nothing (also when an ejection comes first: the mouse is out of training).

    Both the agent (``rig run``) and the simulated lab call this before a session starts.

    Args:
        assignment: the assignment the rig was about to run.
        limits: the rig's ``[safety]``.
        history: earlier assignments of the mouse, newest first (the assignment itself may be
            among them; it is skipped).
        defaults: the task's value of each parameter an assignment leaves out.
        rewards: the rig's reward plan for a parameter set (see :data:`RewardsOf`).

    Raises:
        RigError: computing the assignment's rewards failed (a parameter of the wrong type,
            a reward by volume on a valve without calibration): the rig stops as before.
    """
    violations = violations_of(assignment, limits, defaults, rewards)
    if not violations:
        return Screening(assignment, (), assignment, limits)
    run: AssignmentIssued | None = None
    if limits.on_violation == "last_safe":
        for candidate in history:
            if candidate.event_id == assignment.event_id:
                continue
            if candidate.reason == EJECTED:
                break  # the newest safe word on the mouse took it out of training
            try:
                if not violations_of(candidate, limits, defaults, rewards):
                    run = candidate
                    break
            except RigError:
                continue  # one the rig could not run anyway is not safe
    return Screening(assignment, tuple(violations), run, limits)


# -- the welfare gate (issue 15): a restricted mouse trains only when cleared for the day --------


class MouseHeldError(RigError):
    """The mouse is on water restriction and held, or not cleared to train on the rig's day:
    nothing runs (the message says why and what to do)."""


def welfare_refusal(assignment: AssignmentIssued, today: date) -> str | None:
    """Why a session of the assignment's mouse must not start on ``today`` (the rig's own
    calendar day: it has no other clock), or None.

    A mouse not on water restriction (no ``welfare``) is never refused here. A restricted one is
    refused while held (``welfare.held_reason``), and when its assignment is not cleared for
    ``today`` (not weighed today above its minimum, nor released by a trainer).
    """
    welfare = assignment.welfare
    if welfare is None or not welfare.restricted:
        return None
    mouse = assignment.mouse_id
    if welfare.held_reason is not None:
        return (
            f"{mouse} is held: {welfare.held_reason}; weigh it again or ask a trainer to release "
            f"it: shaping release {mouse} --reason ..."
        )
    if welfare.cleared_on != today.isoformat():
        last = f" (last cleared on {welfare.cleared_on})" if welfare.cleared_on else ""
        return (
            f"{mouse} is under water restriction and not weighed today{last}: weigh it first "
            f"(shaping weigh {mouse} GRAMS)"
        )
    return None


def water_line(assignment: AssignmentIssued | None) -> str | None:
    """The water a restricted mouse still needs today and the suggested supplement, in words,
    from its assignment's welfare (None for a mouse not on restriction)."""
    welfare = None if assignment is None else assignment.welfare
    if assignment is None or welfare is None or not welfare.restricted:
        return None

    def ml(value: float | None) -> str:
        return "?" if value is None else f"{value:.2f} mL"

    given, required = ml(welfare.water_given_ml_today), ml(welfare.water_required_ml_today)
    line = (
        f"{assignment.mouse_id} water today: {given} given of {required} required; still due "
        f"{ml(welfare.water_still_due_ml)}"
    )
    if welfare.supplement_exceeds_cap:
        return (
            f"{line}; more than the largest supplement ({ml(welfare.supplement_ml)}): "
            "alert animal services"
        )
    if welfare.supplement_ml > 0:
        return f"{line}; suggested supplement {ml(welfare.supplement_ml)}"
    return f"{line}; no supplement needed"
