"""A two-spout reach (or lick) task in the manner of reach, configured by the assignment.

One trial::

    inter-trial interval   the mouse must rest its paws on the paw-rest sensors; then a
                           countdown drawn from [iti_min_s, iti_max_s] runs. Lifting a paw or
                           touching a spout breaks it: a timeout of timeout_s follows and the
                           interval starts over (reach's resets and spontaneous reaches).
    cue                    the target spout's LED lights for cue_duration_s; the sync output is
                           high while it is lit.
    response               the first spout touched within response_window_s of cue onset
                           (default: the cue duration, as in reach) is the response: the target
                           is correct, the other spout incorrect, none a miss.
    outcome                correct: the target's valve opens (by duration, or by volume through
                           the valve's calibration); incorrect: a timeout of timeout_s.

In-session adaptation (reach's rule, reimplemented): before each trial the task looks at the
last ``adapt_window`` trials at the spout the trial uses. When their hit rate reaches
``adapt_hit_rate`` and at least ``adapt_every`` trials passed since the last change, the task
moves that spout one position out, else the other spout, and once both are at
``spout_position_max`` it shortens the cue by ``cue_duration_factor`` down to
``cue_duration_min_s``. Every TrialCompleted carries the values its trial ran with in
``trial_parameters`` (``cue_duration_s``, ``response_window_s``, ``spout_position_left``,
``spout_position_right``, ``reward_ms``), so the last trial of a session says what the next
assignment should carry over.

Parameters, read from the assignment (a missing one takes its default; a wrong type is an
error before the session starts):

==========================  ===========  ================================================
name                        default      meaning
==========================  ===========  ================================================
session_minutes             30           session length limit
max_trials                  none         stop after this many trials
iti_min_s, iti_max_s        4, 6         inter-trial interval range (seconds)
timeout_s                   8            after an incorrect reach and after a broken ITI
cue_duration_s              10           cue length at session start (adapts)
cue_duration_min_s          2            shortest cue adaptation may reach
cue_duration_factor         0.997        cue shortening per adaptation step
response_window_s           cue length   how long after cue onset a touch counts
reward_ms                   70 if no     valve opening time; wins over reward_volume_ul
                            volume
reward_volume_ul            none         reward by volume through the valve calibration
spout_position_left/right   1            spout positions at session start (1..max, adapt)
spout_position_max          7            furthest spout position
adapt                       true         in-session adaptation on or off
adapt_window                15           trials per spout the hit rate looks at
adapt_hit_rate              0.9          hit rate that triggers a step
adapt_every                 5            trials between two steps
adapt_with_incorrects       false        count incorrect reaches as hits (reach's option)
target_side                 random       random, left or right
p_left                      0.5          chance of a left target when random
repeat_after_incorrect      false        correction trials: repeat the target after an error
require_paw_rest            true         wait for the paws to rest before the countdown
recent_outcomes_left/right  ""           carried-over adaptation window, oldest first,
                                         ``c`` correct, ``i`` incorrect, ``m`` miss
==========================  ===========  ================================================

The rig's safety limits (``[safety]`` of its config, :class:`shaping.rig.config.SafetyLimits`) bound
every session whatever its assignment says (the agent refuses an assignment outside them before
the session; this is the second line): no reward opens a valve longer than
``max_reward_ms_per_trial`` or gives more than ``max_reward_ul_per_trial`` (a larger one is cut
to the limit, and the trial records what was given), and the session ends at
``max_session_minutes`` (``end_reason = "safety_time_limit"``), at ``max_trials``
(``"safety_max_trials"``) or before a reward would take the session's water past
``max_reward_ul_per_session`` (``"safety_reward_limit"``), whichever comes first, when it comes
before the assignment's own limit.

A trial counts as a correction trial (``TrialCompleted.correction_trial``) when the previous
trial with a response was incorrect: the definition reach's d' uses to exclude them.

Randomness (targets, interval lengths) comes from ``task_seed`` and the trial index, so a
session can be audited and resumed exactly after a crash.
"""

from __future__ import annotations

import random
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from shaping.rig.config import SIDES, SafetyLimits, Side, ValveCalibration
from shaping.rig.errors import CalibrationError, ParameterError
from shaping.rig.hardware.devices import InputBus, InputEvent, RigHardware
from shaping.rig.task.clock import Clock, to_datetime
from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    MovementDetected,
    ParamValue,
    SessionEnded,
    SessionStarted,
    TrialCompleted,
)

Outcome = Literal["correct", "incorrect", "miss"]
Phase = Literal["iti", "trial", "outcome"]

DEFAULT_REWARD_MS = 70.0
MAX_OPEN_MS = 1000.0
"""No reward opens a valve longer than this (a wrong calibration must not flood the rig)."""

SAFETY_END_REASONS = ("safety_time_limit", "safety_max_trials", "safety_reward_limit")
"""``SessionEnded.end_reason`` of a session the rig's safety limits ended before the
assignment's own limits did (the schema's ``end_reason`` is free text; these are the rig's)."""

_CODES: dict[str, str] = {"correct": "c", "incorrect": "i", "miss": "m"}
_EVENT_NAMESPACE = uuid.UUID("8a4f5b0e-3f4b-4f53-9d5e-6c0b7a1d2e91")


@dataclass(frozen=True)
class ReachParameters:
    """The task's parameters (see the module docstring for each one's meaning)."""

    session_minutes: float = 30.0
    max_trials: int | None = None
    iti_min_s: float = 4.0
    iti_max_s: float = 6.0
    timeout_s: float = 8.0
    cue_duration_s: float = 10.0
    cue_duration_min_s: float = 2.0
    cue_duration_factor: float = 0.997
    response_window_s: float | None = None
    reward_ms: float | None = None
    reward_volume_ul: float | None = None
    spout_position_left: int = 1
    spout_position_right: int = 1
    spout_position_max: int = 7
    adapt: bool = True
    adapt_window: int = 15
    adapt_hit_rate: float = 0.9
    adapt_every: int = 5
    adapt_with_incorrects: bool = False
    target_side: str = "random"
    p_left: float = 0.5
    repeat_after_incorrect: bool = False
    require_paw_rest: bool = True
    recent_outcomes_left: str = ""
    recent_outcomes_right: str = ""

    @classmethod
    def from_assignment(cls, parameters: Mapping[str, ParamValue]) -> ReachParameters:
        """Reads the task's parameters from an assignment; unknown names are ignored.

        Raises:
            ParameterError: a parameter has the wrong type or an impossible value (the
                message names it).
        """
        values: dict[str, Any] = {}
        for spec in fields(cls):
            if spec.name not in parameters or parameters[spec.name] is None:
                continue
            values[spec.name] = _coerce(spec.name, str(spec.type), parameters[spec.name])
        params = cls(**values)
        params.check()
        return params

    def check(self) -> None:
        """Raises ParameterError on an impossible combination."""
        rules: list[tuple[bool, str]] = [
            (self.session_minutes > 0, "session_minutes must be > 0"),
            (self.max_trials is None or self.max_trials > 0, "max_trials must be > 0"),
            (0 <= self.iti_min_s <= self.iti_max_s, "need 0 <= iti_min_s <= iti_max_s"),
            (self.timeout_s >= 0, "timeout_s must be >= 0"),
            (self.cue_duration_s > 0, "cue_duration_s must be > 0"),
            (
                0 < self.cue_duration_min_s <= self.cue_duration_s,
                "need 0 < cue_duration_min_s <= cue_duration_s",
            ),
            (0 < self.cue_duration_factor <= 1, "cue_duration_factor must be in (0, 1]"),
            (
                self.response_window_s is None or self.response_window_s > 0,
                "response_window_s must be > 0",
            ),
            (self.reward_ms is None or self.reward_ms > 0, "reward_ms must be > 0"),
            (
                self.reward_volume_ul is None or self.reward_volume_ul > 0,
                "reward_volume_ul must be > 0",
            ),
            (self.spout_position_max >= 1, "spout_position_max must be >= 1"),
            (
                1 <= self.spout_position_left <= self.spout_position_max
                and 1 <= self.spout_position_right <= self.spout_position_max,
                "spout positions must lie in 1..spout_position_max",
            ),
            (self.adapt_window >= 1, "adapt_window must be >= 1"),
            (0 <= self.adapt_hit_rate <= 1, "adapt_hit_rate must be in [0, 1]"),
            (self.adapt_every >= 1, "adapt_every must be >= 1"),
            (
                self.target_side in ("random", "left", "right"),
                "target_side must be random, left or right",
            ),
            (0 <= self.p_left <= 1, "p_left must be in [0, 1]"),
            (
                set(self.recent_outcomes_left + self.recent_outcomes_right) <= set("cim"),
                "recent_outcomes_left/right may only hold c, i and m",
            ),
        ]
        for ok, message in rules:
            if not ok:
                raise ParameterError(f"assignment parameters: {message}")

    def resolved(self) -> dict[str, ParamValue]:
        """Every parameter with the value the session runs with."""
        return {spec.name: getattr(self, spec.name) for spec in fields(self)}


def _coerce(name: str, annotation: str, value: ParamValue) -> Any:
    kind = annotation.replace(" | None", "")
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif kind == "str" and isinstance(value, str):
        return value
    wanted = {"bool": "true or false", "int": "a whole number", "float": "a number"}
    raise ParameterError(
        f"assignment parameter {name} must be {wanted.get(kind, 'text')}, "
        f"got {value!r} ({type(value).__name__})"
    )


@dataclass(frozen=True)
class RewardPlan:
    """How long each valve opens for a reward and how much water that gives.

    Attributes:
        open_ms: milliseconds per valve.
        volume_ul: microlitres per valve (0 when given by duration on an uncalibrated valve).
    """

    open_ms: Mapping[Side, float]
    volume_ul: Mapping[Side, float]

    @classmethod
    def plan(
        cls, params: ReachParameters, calibrations: Mapping[str, ValveCalibration]
    ) -> RewardPlan:
        """Rewards by duration (``reward_ms``) or by volume through each valve's calibration.

        Raises:
            CalibrationError: a reward by volume on a valve without calibration, or an
                opening longer than MAX_OPEN_MS.
        """
        open_ms: dict[Side, float] = {}
        volume: dict[Side, float] = {}
        for side in SIDES:
            calibration = calibrations.get(side)
            if params.reward_ms is not None or params.reward_volume_ul is None:
                open_ms[side] = params.reward_ms or DEFAULT_REWARD_MS
                volume[side] = calibration.ml_per_ms * open_ms[side] * 1000 if calibration else 0.0
            else:
                if calibration is None:
                    raise CalibrationError(
                        f"the assignment gives rewards by volume ({params.reward_volume_ul:g} "
                        f"µL) but the {side} valve has no calibration: run `shaping rig "
                        f"calibrate {side}` or set [valves.{side}] ml_per_ms in the config"
                    )
                open_ms[side] = calibration.open_ms(params.reward_volume_ul)
                volume[side] = params.reward_volume_ul
            if open_ms[side] > MAX_OPEN_MS:
                raise CalibrationError(
                    f"a reward would open the {side} valve for {open_ms[side]:.0f} ms (more "
                    f"than {MAX_OPEN_MS:.0f} ms); check its calibration and the reward"
                )
        return cls(open_ms, volume)


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


def session_event_id(session_id: str, *parts: object) -> str:
    """Deterministic id of a session's event: re-recording it after a crash gives the same id,
    so the outbox keeps one copy."""
    return str(uuid.uuid5(_EVENT_NAMESPACE, "/".join([session_id, *map(str, parts)])))


class SessionRecorder:
    """Builds a session's events and hands each to ``sink`` as it happens.

    Args:
        sink: receives every event, in order (the agent's outbox).
        clock: the task's clock (events are stamped with its time).
        mouse_id, rig_id, session_id: the envelope.
    """

    def __init__(
        self,
        sink: Callable[[Event], None],
        clock: Clock,
        mouse_id: str,
        rig_id: str,
        session_id: str,
    ) -> None:
        self.sink = sink
        self.clock = clock
        self.envelope = {"mouse_id": mouse_id, "rig_id": rig_id, "session_id": session_id}
        self.session_id = session_id

    def started(
        self, assignment: AssignmentIssued, parameters: Mapping[str, ParamValue]
    ) -> SessionStarted:
        """Records the session's start with its full parameter set."""
        event = SessionStarted(
            event_id=session_event_id(self.session_id, "started"),
            occurred_at=to_datetime(self.clock.now()),
            causation_id=assignment.event_id,
            stage=assignment.stage,
            curriculum_name=assignment.curriculum_name,
            curriculum_version=assignment.curriculum_version,
            parameters=dict(parameters),
            assignment_id=assignment.event_id,
            **self.envelope,  # type: ignore[arg-type]
        )
        self.sink(event)
        return event

    def movement(
        self,
        movement: Literal["paw_lift", "spout_touch"],
        side: Side,
        phase: Phase,
        trial_index: int,
        sequence: int,
        at: float,
        restarted_iti: bool,
    ) -> None:
        """Records a paw lift or spout touch outside the response."""
        self.sink(
            MovementDetected(
                event_id=session_event_id(self.session_id, "movement", trial_index, sequence),
                occurred_at=to_datetime(at),
                movement=movement,
                side=side,
                phase=phase,
                trial_index=trial_index,
                restarted_iti=restarted_iti,
                **self.envelope,  # type: ignore[arg-type]
            )
        )

    def trial(
        self,
        trial_index: int,
        outcome: Outcome,
        target: Side,
        response: Side | None,
        reaction_time_s: float | None,
        reward_volume_ul: float,
        correction_trial: bool,
        trial_parameters: dict[str, ParamValue],
    ) -> TrialCompleted:
        """Records a finished trial."""
        event = TrialCompleted(
            event_id=session_event_id(self.session_id, "trial", trial_index),
            occurred_at=to_datetime(self.clock.now()),
            trial_index=trial_index,
            outcome=outcome,
            target_side=target,
            response_side=response,
            reaction_time_s=None if reaction_time_s is None else round(reaction_time_s, 4),
            reward_volume_ul=round(reward_volume_ul, 4),
            correction_trial=correction_trial,
            trial_parameters=trial_parameters,
            **self.envelope,  # type: ignore[arg-type]
        )
        self.sink(event)
        return event

    def ended(
        self,
        n_trials: int,
        end_reason: str,
        duration_s: float,
        metrics: Mapping[str, float | None] | None = None,
    ) -> SessionEnded:
        """Records the end of the session, with the session metrics the rig reports."""
        event = SessionEnded(
            event_id=session_event_id(self.session_id, "ended"),
            occurred_at=to_datetime(self.clock.now()),
            n_trials=n_trials,
            end_reason=end_reason,
            duration_s=round(max(0.0, duration_s), 3),
            metrics=dict(metrics or {}),
            **self.envelope,  # type: ignore[arg-type]
        )
        self.sink(event)
        return event


@dataclass(frozen=True)
class TrialProgress:
    """What a display shows after each trial."""

    state: TaskState
    trial: TrialCompleted
    time_left_s: float


@dataclass
class ReachTask:
    """Runs the task on a rig's hardware.

    Args:
        hardware: the rig's devices.
        clock: the task's clock.
        bus: the sensors' reports (already connected to ``hardware``).
        params: the session's parameters.
        rewards: valve opening times and volumes.
        recorder: where the session's events go.
        session_start: clock time the session started.
        task_seed: seed of the task's random draws.
        on_trial: called after every trial (for a display).
        session_metrics: called at the end; what it returns goes into
            ``SessionEnded.metrics`` (the agent reports reach's results there).
        limits: the rig's safety limits (see the module docstring); the defaults unless the
            rig's config sets them.
    """

    hardware: RigHardware
    clock: Clock
    bus: InputBus
    params: ReachParameters
    rewards: RewardPlan
    recorder: SessionRecorder
    session_start: float
    task_seed: int
    on_trial: Callable[[TrialProgress], None] | None = None
    session_metrics: Callable[[], Mapping[str, float | None]] | None = None
    limits: SafetyLimits = field(default_factory=SafetyLimits)
    _end_at: float = field(init=False)
    _time_reason: str = field(init=False)
    _max_trials: int = field(init=False)
    _trials_reason: str = field(init=False)
    _open_ms: dict[Side, float] = field(init=False)
    _volume_ul: dict[Side, float] = field(init=False)

    def __post_init__(self) -> None:
        limits = self.limits
        own_end = self.session_start + self.params.session_minutes * 60
        safe_end = self.session_start + limits.max_session_minutes * 60
        self._end_at = min(own_end, safe_end)
        self._time_reason = "safety_time_limit" if safe_end < own_end else "time_limit"
        own_trials = self.params.max_trials
        if own_trials is not None and own_trials <= limits.max_trials:
            self._max_trials, self._trials_reason = own_trials, "max_trials"
        else:
            self._max_trials, self._trials_reason = limits.max_trials, "safety_max_trials"
        # No reward beyond the per-trial limits: a larger one is cut (a valve gives water in
        # proportion to the time it is open).
        self._open_ms, self._volume_ul = {}, {}
        for side in SIDES:
            open_ms = self.rewards.open_ms[side]
            volume = self.rewards.volume_ul[side]
            factor = 1.0
            if open_ms > limits.max_reward_ms_per_trial:
                factor = limits.max_reward_ms_per_trial / open_ms
            if volume * factor > limits.max_reward_ul_per_trial:
                factor = limits.max_reward_ul_per_trial / volume
            self._open_ms[side] = open_ms * factor
            self._volume_ul[side] = volume * factor

    def reward_cuts(self) -> list[str]:
        """The rewards the safety limits cut, in words (empty: none)."""
        return [
            f"the {side} valve's reward is cut from {self.rewards.open_ms[side]:.0f} ms "
            f"({self.rewards.volume_ul[side]:.3g} µL) to {self._open_ms[side]:.0f} ms "
            f"({self._volume_ul[side]:.3g} µL) by the rig's safety limits"
            for side in SIDES
            if self._open_ms[side] < self.rewards.open_ms[side]
        ]

    def run(self, state: TaskState) -> SessionEnded:
        """Runs trials from ``state`` until the session ends; records SessionEnded.

        The session ends at ``session_minutes`` (checked between trials and during the
        inter-trial interval), at ``max_trials``, or when the bus is interrupted (the operator
        stopped it; an unfinished trial is dropped); and at the rig's safety limits, when they
        come first (``safety_time_limit``, ``safety_max_trials``, and ``safety_reward_limit``
        before a reward would take the session past its water limit).
        """
        self.hardware.all_off()
        self._position_spouts(state)
        largest_reward = max(self._volume_ul.values())
        while True:
            if self.bus.interrupted:
                reason = "aborted"
                break
            if state.trial_index >= self._max_trials:
                reason = self._trials_reason
                break
            if self._time_left() <= 0:
                reason = self._time_reason
                break
            if state.reward_ul + largest_reward > self.limits.max_reward_ul_per_session:
                reason = "safety_reward_limit"
                break
            rng = random.Random(f"{self.task_seed}:{state.trial_index}")
            target = choose_target(rng, state, self.params)
            adapt(state, target, self.params)
            self._position_spouts(state)
            if self._intertrial_interval(state, rng):
                self._trial(state, target)
        self.hardware.all_off()
        return self.recorder.ended(
            state.n_trials,
            reason,
            self.clock.now() - self.session_start,
            self.session_metrics() if self.session_metrics else None,
        )

    # -- phases -----------------------------------------------------------------------------

    def _intertrial_interval(self, state: TaskState, rng: random.Random) -> bool:
        """Runs the interval before a trial; False when the session ended during it."""
        self.bus.clear()
        while True:
            if self.params.require_paw_rest:
                while not all(paw.is_resting for paw in self.hardware.paws.values()):
                    event = self.bus.next(self._time_left())
                    if event is None:
                        return False
                    self._note(state, event, "iti", restarted=False)
            countdown_end = self.clock.now() + rng.uniform(
                self.params.iti_min_s, self.params.iti_max_s
            )
            breaker: InputEvent | None = None
            while (remaining := countdown_end - self.clock.now()) > 0:
                event = self.bus.next(remaining)
                if event is None:
                    if self.bus.interrupted:
                        return False
                    break
                if event.kind != "paw_rest":
                    breaker = event
                    break
            if breaker is None:
                return True
            self._note(state, breaker, "iti", restarted=True)
            self._idle(state, self.params.timeout_s, "iti")
            if self._time_left() <= 0 or self.bus.interrupted:
                return False

    def _trial(self, state: TaskState, target: Side) -> None:
        spout = self.hardware.spouts[target]
        cue_s = state.cue_duration_s
        window_s = self.params.response_window_s or cue_s
        self.bus.clear()
        onset = self.clock.now()
        spout.cue.on()
        if self.hardware.sync is not None:
            self.hardware.sync.high()
        cue_lit = True
        response: InputEvent | None = None
        while True:
            now = self.clock.now()
            if cue_lit and now >= onset + cue_s:
                self._cue_off(target)
                cue_lit = False
            if now >= onset + window_s:
                break
            wake = min(onset + cue_s, onset + window_s) if cue_lit else onset + window_s
            event = self.bus.next(wake - now)
            if event is None:
                if self.bus.interrupted:
                    self.hardware.all_off()
                    return
                continue
            if event.kind == "touch":
                response = event
                break
            self._note(state, event, "trial", restarted=False)
        self._cue_off(target)
        outcome: Outcome
        if response is None:
            outcome = "miss"
        elif response.side == target:
            outcome = "correct"
        else:
            outcome = "incorrect"
        reward_ul = 0.0
        if outcome == "correct":
            spout.valve.open()
            try:
                self._idle(state, self._open_ms[target] / 1000, "outcome")
            finally:
                spout.valve.close()
            reward_ul = self._volume_ul[target]
            state.reward_ul += reward_ul
        elif outcome == "incorrect":
            self._idle(state, self.params.timeout_s, "outcome")
        trial = self.recorder.trial(
            trial_index=state.trial_index,
            outcome=outcome,
            target=target,
            response=response.side if response else None,
            reaction_time_s=response.at - onset if response else None,
            reward_volume_ul=reward_ul,
            correction_trial=state.last_response_incorrect,
            trial_parameters={
                "cue_duration_s": cue_s,
                "response_window_s": window_s,
                "spout_position_left": state.positions["left"],
                "spout_position_right": state.positions["right"],
                "reward_ms": round(self._open_ms[target], 3),
            },
        )
        record_outcome(state, target, outcome)
        if self.on_trial is not None:
            self.on_trial(TrialProgress(state, trial, max(0.0, self._time_left())))

    # -- helpers ----------------------------------------------------------------------------

    def _cue_off(self, target: Side) -> None:
        self.hardware.spouts[target].cue.off()
        if self.hardware.sync is not None:
            self.hardware.sync.low()

    def _idle(self, state: TaskState, seconds: float, phase: Phase) -> None:
        """Lets ``seconds`` pass, recording the movements the sensors report meanwhile."""
        until = self.clock.now() + seconds
        while (remaining := until - self.clock.now()) > 0:
            event = self.bus.next(remaining)
            if event is None:
                return
            self._note(state, event, phase, restarted=False)

    def _note(self, state: TaskState, event: InputEvent, phase: Phase, restarted: bool) -> None:
        if event.kind == "paw_rest":
            return
        self.recorder.movement(
            "paw_lift" if event.kind == "paw_lift" else "spout_touch",
            event.side,
            phase,
            state.trial_index,
            state.movements_in_trial,
            event.at,
            restarted,
        )
        state.movements_in_trial += 1

    def _position_spouts(self, state: TaskState) -> None:
        for side, spout in self.hardware.spouts.items():
            if spout.actuator is not None and spout.actuator.position != state.positions[side]:
                spout.actuator.move_to(state.positions[side])

    def _time_left(self) -> float:
        return self._end_at - self.clock.now()
