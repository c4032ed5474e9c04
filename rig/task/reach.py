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

The parts the loop uses live beside it: the parameters and their checks
(:mod:`shaping.rig.task.parameters`), the rewards (:mod:`shaping.rig.task.rewards`), the
adaptation (:mod:`shaping.rig.task.adaptation`) and the events it records
(:mod:`shaping.rig.task.recording`). The agent runs it through
:class:`shaping.rig.task.pins.PinTask`.

The rig's safety limits (``[safety]`` of its config, :class:`shaping.rig.config.SafetyLimits`) bound
every session whatever its assignment says (the agent refuses an assignment outside them before
the session; this is the second line): no reward opens a valve longer than
``max_reward_ms_per_trial`` or gives more than ``max_reward_ul_per_trial`` (a larger one is cut
to the limit, and the trial records what was given), and the session ends at
``max_session_minutes`` (``end_reason = "safety_time_limit"``), at ``max_trials``
(``"safety_max_trials"``) or before a reward would take the session's water past
``max_reward_ul_per_session`` (``"safety_reward_limit"``), whichever comes first, when it comes
before the assignment's own limit.

A curriculum that judges sessions after every trial may send the mouse a new assignment during
the session (:mod:`shaping.rig.task.midsession`): the task asks ``restart`` at every trial
boundary (after a trial, and again at the end of the next trial's interval, before its cue),
and when it answers, the task starts over with the new parameters (spouts, cue, adaptation; a
new interval), its trial numbers, counts, water and time running on, every limit above still
holding over the whole session. ``SessionEnded.metrics`` then says how many restarts there were
and the first trial run after one.

A trial counts as a correction trial (``TrialCompleted.correction_trial``) when the previous
trial with a response was incorrect: the definition reach's d' uses to exclude them.

Randomness (targets, interval lengths) comes from ``task_seed`` and the trial index, so a
session can be audited and resumed exactly after a crash.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from shaping.rig.config import SIDES, SafetyLimits, Side
from shaping.rig.hardware.devices import InputBus, InputEvent, RigHardware
from shaping.rig.task.adaptation import TaskState, adapt, choose_target, record_outcome
from shaping.rig.task.clock import Clock
from shaping.rig.task.midsession import FIRST_TRIAL_METRIC, RESTARTS_METRIC, Restart
from shaping.rig.task.parameters import ReachParameters
from shaping.rig.task.recording import Outcome, Phase, SessionRecorder, TrialProgress
from shaping.rig.task.rewards import RewardPlan
from shaping.schemas.events import WATER_EARNED_METRIC, SessionEnded

SAFETY_END_REASONS = ("safety_time_limit", "safety_max_trials", "safety_reward_limit")
"""``SessionEnded.end_reason`` of a session the rig's safety limits ended before the
assignment's own limits did (the schema's ``end_reason`` is free text; these are the rig's)."""


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
        restart: asked at every trial boundary: the parameters to start over with now (an
            assignment issued during the session, already screened), or None to go on.
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
    restart: Callable[[], Restart | None] | None = None
    restarts: list[int] = field(init=False, default_factory=list)
    _end_at: float = field(init=False)
    _time_reason: str = field(init=False)
    _max_trials: int = field(init=False)
    _trials_reason: str = field(init=False)
    _open_ms: dict[Side, float] = field(init=False)
    _volume_ul: dict[Side, float] = field(init=False)

    def __post_init__(self) -> None:
        self._configure()

    def _configure(self) -> None:
        """The session's end, trial limit and rewards from its parameters and the rig's limits
        (again after a restart: the session's start and the rig's limits stay)."""
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
        while True:
            self._boundary(state)
            largest_reward = max(self._volume_ul.values())
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
            if not self._intertrial_interval(state, rng):
                continue
            if self._boundary(state):
                continue  # started over: the next trial gets a new interval
            self._trial(state, target)
        self.hardware.all_off()
        metrics = dict(self.session_metrics() or {}) if self.session_metrics else {}
        if self.restarts:
            metrics[RESTARTS_METRIC] = float(len(self.restarts))
            metrics[FIRST_TRIAL_METRIC] = float(self.restarts[0])
        if all(volume > 0 for volume in self._volume_ul.values()):
            # The water the rewards delivered, through the valves' calibration (µL -> mL); not
            # reported when a valve gives rewards by duration without a calibration.
            metrics[WATER_EARNED_METRIC] = round(state.reward_ul / 1000.0, 6)
        return self.recorder.ended(
            state.n_trials,
            reason,
            self.clock.now() - self.session_start,
            metrics or None,
        )

    def _boundary(self, state: TaskState) -> bool:
        """A trial boundary: starts over with an assignment issued during the session, if one
        came (see the module docstring); True when it did."""
        if self.restart is None:
            return False
        update = self.restart()
        if update is None:
            return False
        self.hardware.all_off()
        self.params, self.rewards = update.params, update.rewards
        self._configure()
        state.restart(self.params)
        self._position_spouts(state)
        self.restarts.append(state.trial_index)
        return True

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
