"""Reach's in-session adaptation: where a session stands (:class:`TaskState`), the step before
each trial (:func:`adapt`), the fold of a finished trial (:func:`record_outcome`) and the choice of
the next target (:func:`choose_target`).

Before each trial the task looks at the last ``adapt_window`` trials at the spout the trial
uses. When their hit rate reaches ``adapt_hit_rate`` and at least ``adapt_every`` trials passed
since the last change, it moves that spout one position out, else the other spout, and once
both are at ``spout_position_max`` it shortens the cue by ``cue_duration_factor`` down to
``cue_duration_min_s``.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from shaping.rig.config import SIDES, Side
from shaping.rig.task.parameters import ReachParameters
from shaping.schemas.events import TrialCompleted

_CODES: dict[str, str] = {"correct": "c", "incorrect": "i", "miss": "m"}


@dataclass
class TaskState:
    """Where a session stands: the next trial, the adapted settings, the running counts.

    A state is a fold over the session's trials (:meth:`after_trials`), which is how a session
    interrupted by a crash resumes with exactly the settings it had.
    """

    positions: dict[Side, int]
    cue_duration_s: float
    recent: dict[Side, deque[str]]
    trial_index: int = 0
    steps_since_change: int = 1
    last_target: Side | None = None
    last_response_incorrect: bool = False
    n_correct: int = 0
    n_incorrect: int = 0
    n_miss: int = 0
    movements_in_trial: int = 0
    reward_ul: float = 0.0

    @classmethod
    def start(cls, params: ReachParameters) -> TaskState:
        """The state at the start of a session."""
        return cls(
            positions={"left": params.spout_position_left, "right": params.spout_position_right},
            cue_duration_s=params.cue_duration_s,
            recent={
                "left": deque(params.recent_outcomes_left, maxlen=params.adapt_window),
                "right": deque(params.recent_outcomes_right, maxlen=params.adapt_window),
            },
        )

    @classmethod
    def after_trials(cls, params: ReachParameters, trials: Iterable[TrialCompleted]) -> TaskState:
        """The state after the given trials of a session (for resuming it)."""
        state = cls.start(params)
        for trial in trials:
            target: Side = "right" if trial.target_side == "right" else "left"
            adapt(state, target, params)
            recorded = trial.trial_parameters
            # The recorded values are what the trial ran with; trust them over the replay.
            for side in SIDES:
                position = recorded.get(f"spout_position_{side}")
                if isinstance(position, int):
                    state.positions[side] = position
            cue = recorded.get("cue_duration_s")
            if isinstance(cue, int | float) and not isinstance(cue, bool):
                state.cue_duration_s = float(cue)
            record_outcome(state, target, trial.outcome)
            state.reward_ul += trial.reward_volume_ul
        return state

    def restart(self, params: ReachParameters) -> None:
        """Starts the task over with ``params`` in the middle of a session (an assignment
        issued during it, :mod:`shaping.rig.task.midsession`): the spouts, the cue and the
        adaptation windows start from the new parameters; the trial numbers, the counts and the
        water run on."""
        fresh = TaskState.start(params)
        self.positions = fresh.positions
        self.cue_duration_s = fresh.cue_duration_s
        self.recent = fresh.recent
        self.steps_since_change = fresh.steps_since_change
        self.last_target = None
        self.last_response_incorrect = False

    @property
    def n_trials(self) -> int:
        """Trials done."""
        return self.n_correct + self.n_incorrect + self.n_miss

    @property
    def accuracy(self) -> float | None:
        """Fraction correct among trials with a response."""
        responded = self.n_correct + self.n_incorrect
        return self.n_correct / responded if responded else None


def adapt(state: TaskState, target: Side, params: ReachParameters) -> None:
    """Reach's in-session adaptation before a trial at ``target`` (see the module docstring)."""
    state.steps_since_change -= 1
    if not params.adapt:
        return
    window = state.recent[target]
    hits = sum(
        1 for code in window if code == "c" or (params.adapt_with_incorrects and code == "i")
    )
    # As in reach, the rate is over the full window size: a short history cannot trigger a step.
    if hits / params.adapt_window < params.adapt_hit_rate or state.steps_since_change > 0:
        return
    state.steps_since_change = params.adapt_every
    other: Side = "right" if target == "left" else "left"
    if state.positions[target] < params.spout_position_max:
        state.positions[target] += 1
    elif state.positions[other] < params.spout_position_max:
        state.positions[other] += 1
    elif state.cue_duration_s > params.cue_duration_min_s:
        state.cue_duration_s = max(
            round(state.cue_duration_s * params.cue_duration_factor, 3), params.cue_duration_min_s
        )


def record_outcome(state: TaskState, target: Side, outcome: str) -> None:
    """Folds a finished trial into the state."""
    state.recent[target].append(_CODES[outcome])
    if outcome == "correct":
        state.n_correct += 1
    elif outcome == "incorrect":
        state.n_incorrect += 1
    else:
        state.n_miss += 1
    if outcome != "miss":
        state.last_response_incorrect = outcome == "incorrect"
    state.last_target = target
    state.trial_index += 1
    state.movements_in_trial = 0


def choose_target(rng: random.Random, state: TaskState, params: ReachParameters) -> Side:
    """The spout of the next trial."""
    draw = rng.random()
    if params.repeat_after_incorrect and state.last_response_incorrect and state.last_target:
        return state.last_target
    if params.target_side in ("left", "right"):
        return "left" if params.target_side == "left" else "right"
    return "left" if draw < params.p_left else "right"
