"""The fast scripted session: one training session of the simulated mouse from an assignment,
computed trial by trial without pins or clocks (:func:`run_simulated_session`), and the
:class:`~shaping.rig.task.port.Task` that runs it for the rig agent (:class:`ScriptedTask`)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from shaping.rig.config import SafetyLimits
from shaping.rig.errors import RigError
from shaping.rig.sim.mouse import SimulatedMouse
from shaping.rig.task.port import Publish, SessionRequest, TaskOutcome
from shaping.schemas.events import (
    WATER_EARNED_METRIC,
    AssignmentIssued,
    Event,
    ParamValue,
    SessionEnded,
    SessionStarted,
    TrialCompleted,
)

REWARD_CONSUMPTION_S = 1.5

SIMULATED_DEFAULTS: dict[str, ParamValue] = {
    "max_trials": 300,
    "session_minutes": 45,
    "iti_min_s": 2,
    "iti_max_s": 4,
    "response_window_s": 10,
    "timeout_s": 8,
    "difficulty": 0,
    "reward_volume_ul": 3,
}
"""The value a simulated session runs with for each parameter its assignment leaves out (the
rig's safety limits hold these too: :func:`shaping.rig.sim.lab.run_lab`)."""


def _number(parameters: Mapping[str, ParamValue], name: str, default: float) -> float:
    value = parameters.get(name, default)
    return float(value) if isinstance(value, int | float) else default


def run_simulated_session(
    mouse: SimulatedMouse,
    assignment: AssignmentIssued,
    rig_id: str,
    started_at: datetime,
    stale_reason: str | None = None,
    limits: SafetyLimits | None = None,
) -> list[Event]:
    """Runs a session with exactly the assignment's parameters on a simulated mouse.

    ``stale_reason`` says why the simulated rig knows the assignment is stale (its
    SessionStarted then records ``assignment_stale``); the simulated lab does not measure
    its wait, so ``assignment_wait_s`` stays None.

    The session stops at ``max_trials`` or when ``session_minutes`` have passed, whichever
    comes first. Trial times advance by the inter-trial interval drawn from
    ``[iti_min_s, iti_max_s]``, the response, reward consumption and the error timeout.

    The rig's safety ``limits`` (the defaults unless given) bound it as they bound a real session
    (:class:`~shaping.rig.task.reach.ReachTask`): no reward above ``max_reward_ul_per_trial``, and
    the session ends at ``max_trials`` (``safety_max_trials``), ``max_session_minutes``
    (``safety_time_limit``) or before a reward would take it past ``max_reward_ul_per_session``
    (``safety_reward_limit``) when these come first.

    Returns:
        SessionStarted, one TrialCompleted per trial, and SessionEnded, in order.
    """
    params = dict(assignment.parameters)
    session_id = f"{mouse.mouse_id}-{started_at:%Y%m%dT%H%M}"
    events: list[Event] = [
        SessionStarted(
            event_id=mouse.new_id(),
            occurred_at=started_at,
            stage=assignment.stage,
            curriculum_name=assignment.curriculum_name,
            curriculum_version=assignment.curriculum_version,
            parameters=params,
            assignment_id=assignment.event_id,
            assignment_stale=stale_reason is not None,
            assignment_stale_reason=stale_reason,
            mouse_id=mouse.mouse_id,
            rig_id=rig_id,
            session_id=session_id,
        )
    ]
    limits = limits or SafetyLimits()

    def number(name: str) -> float:
        default = SIMULATED_DEFAULTS[name]
        assert isinstance(default, int | float)
        return _number(params, name, default)

    max_trials = int(number("max_trials"))
    limit_s = number("session_minutes") * 60
    iti_min, iti_max = number("iti_min_s"), number("iti_max_s")
    window = number("response_window_s")
    timeout = number("timeout_s")
    difficulty = number("difficulty")
    reward = min(number("reward_volume_ul"), limits.max_reward_ul_per_trial)
    trials_reason = "max_trials"
    if max_trials > limits.max_trials:
        max_trials, trials_reason = limits.max_trials, "safety_max_trials"
    time_reason = "time_limit"
    if limit_s > limits.max_session_minutes * 60:
        limit_s, time_reason = limits.max_session_minutes * 60, "safety_time_limit"
    given_ul = 0.0
    elapsed = 0.0
    n = 0
    end_reason = trials_reason
    while n < max_trials:
        if elapsed >= limit_s:
            end_reason = time_reason
            break
        if given_ul + reward > limits.max_reward_ul_per_session:
            end_reason = "safety_reward_limit"
            break
        response = mouse.respond(difficulty, window)
        elapsed += mouse.rng.uniform(iti_min, iti_max)
        elapsed += response.reaction_time_s if response.reaction_time_s is not None else window
        correct = response.outcome == "correct"
        elapsed += REWARD_CONSUMPTION_S if correct else timeout
        given_ul += reward if correct else 0.0
        events.append(
            TrialCompleted(
                event_id=mouse.new_id(),
                occurred_at=started_at + timedelta(seconds=elapsed),
                trial_index=n,
                outcome=response.outcome,  # type: ignore[arg-type]
                target_side=response.target_side,
                response_side=response.response_side,
                reaction_time_s=response.reaction_time_s,
                reward_volume_ul=reward if correct else 0.0,
                mouse_id=mouse.mouse_id,
                rig_id=rig_id,
                session_id=session_id,
            )
        )
        n += 1
    events.append(
        SessionEnded(
            event_id=mouse.new_id(),
            occurred_at=started_at + timedelta(seconds=elapsed),
            n_trials=n,
            end_reason=end_reason,
            duration_s=round(elapsed, 3),
            # The water its rewards delivered (reward_volume_ul x rewarded trials), in mL: the
            # processor records it as the mouse's earned water.
            metrics={WATER_EARNED_METRIC: round(given_ul / 1000.0, 6)},
            mouse_id=mouse.mouse_id,
            rig_id=rig_id,
            session_id=session_id,
        )
    )
    mouse.rest()
    return events


class ScriptedTask:
    """The fast scripted session (:func:`run_simulated_session`) as a
    :class:`~shaping.rig.task.port.Task`: each mouse is a :class:`SimulatedMouse` (the one
    simulated mouse model), and a session is published in one batch.

    Args:
        mice: the simulated mice by id (a mouse keeps its skill and its random stream from one
            session to the next).
    """

    name = "scripted"

    def __init__(self, mice: Mapping[str, SimulatedMouse]) -> None:
        self.mice = mice

    def defaults(self) -> Mapping[str, ParamValue]:
        return SIMULATED_DEFAULTS

    def rewards(self) -> None:
        return None

    def interrupted(self, mouse_id: str) -> SessionStarted | None:
        return None  # a scripted session runs whole or not at all

    def close_interrupted(self, mouse_id: str, publish: Publish) -> SessionEnded:
        raise RigError(f"a scripted session of {mouse_id} is never left unfinished")

    def run(self, request: SessionRequest) -> TaskOutcome:
        """Runs the session at ``request.start`` and publishes its events in one batch.

        Raises:
            RigError: the task has no simulated mouse ``request.mouse_id``, or no start time.
        """
        mouse = self.mice.get(request.mouse_id)
        if mouse is None:
            raise RigError(f"the scripted task has no simulated mouse {request.mouse_id}")
        if request.chosen is None or request.start is None:
            raise RigError("a scripted session needs an assignment and a start time")
        events = run_simulated_session(
            mouse,
            request.chosen.assignment,
            request.rig_id,
            request.start,
            request.chosen.stale_reason,
            request.limits,
        )
        request.publish(events)
        started, ended = events[0], events[-1]
        assert isinstance(started, SessionStarted) and isinstance(ended, SessionEnded)
        return TaskOutcome(started, ended, None, False, events)
