"""Assignments issued during a session, and how the reach task applies them at a trial boundary.

A curriculum may judge a session after every trial (rules marked ``evaluate: trial``,
docs/curricula-ops.md): when such a rule holds, the processor publishes the decision and the
mouse's next assignment right after that trial, and the assignment names the session in
progress (``AssignmentIssued.session_id``). That is how a rig tells it from the assignment of
its next session: it applies now, at the next trial boundary, as Autopilot stops a task,
advances the subject and restarts it.

The reach task (:class:`shaping.rig.task.reach.ReachTask`) asks at every trial boundary (before
it starts the inter-trial interval of the next trial) and restarts with the new stage's
parameters: the spouts move to the stage's positions, the cue and the adaptation windows start
over, the next trial starts with a new interval. The session goes on: its trial numbers, its
counts, its water and its time run on, and the session's limits (time, trials, water) and the
rig's safety limits still hold over the whole session. The session's ``SessionEnded.metrics``
say what happened (:data:`RESTARTS_METRIC`, :data:`FIRST_TRIAL_METRIC`).

An assignment outside the rig's safety limits is never applied during a session: the rig says
so, records it (``shaping_rig_unsafe_assignments_total``) and goes on with the parameters it
runs. :func:`prepare` is the one check, used by the pin task and the benchmarks' rigs alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from shaping.rig.config import SafetyLimits, ValveCalibration
from shaping.rig.errors import RigError
from shaping.rig.evidence import EJECTED
from shaping.rig.safety import violations_of
from shaping.rig.task.parameters import ReachParameters
from shaping.rig.task.rewards import RewardPlan
from shaping.schemas.events import AssignmentIssued, ParamValue

RESTARTS_METRIC = "mid_session_restarts"
"""``SessionEnded.metrics``: how many assignments the session applied while it ran."""

FIRST_TRIAL_METRIC = "mid_session_first_trial"
"""``SessionEnded.metrics``: the index of the first trial run with an assignment applied during
the session (absent when none was)."""


def issued_during(assignment: AssignmentIssued | None, session_id: str) -> bool:
    """Whether ``assignment`` was issued during the session ``session_id`` (it names it) and is
    one a session applies (an ejection is not: the session ends as it would have)."""
    return (
        assignment is not None
        and bool(session_id)
        and assignment.session_id == session_id
        and assignment.reason != EJECTED
    )


@dataclass(frozen=True)
class Restart:
    """What the task restarts with: the assignment, its parameters and its rewards."""

    assignment: AssignmentIssued
    params: ReachParameters
    rewards: RewardPlan


def prepare(
    assignment: AssignmentIssued,
    limits: SafetyLimits,
    calibrations: Mapping[str, ValveCalibration],
) -> Restart | str:
    """The restart an assignment issued during a session asks for, or why the rig refuses it
    (a sentence): outside the rig's safety limits (with the task's defaults and its rewards
    through the valves' calibrations, as before a session), or parameters the task cannot
    run."""

    def rewards_of(parameters: Mapping[str, ParamValue]) -> dict[str, tuple[float, float]]:
        plan = RewardPlan.plan(ReachParameters.from_assignment(parameters), calibrations)
        return {side: (plan.open_ms[side], plan.volume_ul[side]) for side in plan.open_ms}

    try:
        violations = violations_of(assignment, limits, ReachParameters().resolved(), rewards_of)
        if violations:
            found = "; ".join(v.describe() for v in violations)
            return f"outside the rig's safety limits: {found}"
        params = ReachParameters.from_assignment(assignment.parameters)
        return Restart(assignment, params, RewardPlan.plan(params, calibrations))
    except RigError as exc:
        return f"cannot run: {exc}"
