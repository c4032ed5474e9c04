"""Reach's task on the rig's devices: the :class:`~shaping.rig.task.port.Task` ``shaping rig
run`` runs.

A session runs on the rig's gpiozero devices and the system clock, or, in simulation
(``--simulate``), on gpiozero's mock pins with a simulated mouse in the box
(:mod:`shaping.rig.sim.reach_box`) and a virtual clock. Every event is published as it
happens, so the journal (the rig's outbox) holds the session up to its last event: a session
that started and never ended (the rig crashed or was killed) is resumed from there, with the
same parameters and seed and the adapted settings as they were after its last trial.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from shaping.rig.config import RigConfig, ValveCalibration
from shaping.rig.errors import RigError
from shaping.rig.hardware.devices import InputBus, RigHardware, connect_inputs, disconnect_inputs
from shaping.rig.link.store import OpenSession, RigStore
from shaping.rig.reach import reach_session_metrics
from shaping.rig.safety import RewardsOf, describe_assignment
from shaping.rig.task.adaptation import TaskState
from shaping.rig.task.clock import Clock, SystemClock, to_datetime
from shaping.rig.task.midsession import Restart, issued_during, prepare
from shaping.rig.task.parameters import ReachParameters
from shaping.rig.task.port import ChosenAssignment, Publish, SessionRequest, TaskOutcome
from shaping.rig.task.reach import ReachTask
from shaping.rig.task.recording import SessionRecorder, TrialProgress
from shaping.rig.task.rewards import RewardPlan
from shaping.schemas.events import (
    WATER_EARNED_METRIC,
    Event,
    MovementDetected,
    ParamValue,
    SessionEnded,
    SessionStarted,
    TrialCompleted,
)

log = logging.getLogger(__name__)


class SessionDisplay(Protocol):
    """What the person at the rig sees of a session."""

    def message(self, text: str) -> None:
        """A line of information."""
        ...

    def session_started(
        self, started: SessionStarted, params: ReachParameters, resumed_at: int | None
    ) -> None:
        """The session starts (or resumes at trial ``resumed_at``)."""
        ...

    def trial(self, progress: TrialProgress, stage: str) -> None:
        """A trial finished."""
        ...

    def session_ended(self, ended: SessionEnded, state: TaskState) -> None:
        """The session ended."""
        ...


def reach_rewards(calibrations: Mapping[str, ValveCalibration]) -> RewardsOf:
    """Each valve's reward (ms open, µL) for a parameter set, as the reach task would give it
    through these calibrations (what the safety screening holds against the limits)."""

    def rewards(parameters: Mapping[str, ParamValue]) -> dict[str, tuple[float, float]]:
        plan = RewardPlan.plan(ReachParameters.from_assignment(parameters), calibrations)
        return {side: (plan.open_ms[side], plan.volume_ul[side]) for side in plan.open_ms}

    return rewards


class PinTask:
    """Reach's task on the rig's pins (see the module's doc).

    Args:
        config: the rig's config (pins, actuators, valves, safety limits).
        store: the rig's store: the journal an interrupted session resumes from, the valve
            calibrations, a simulated mouse's past outcomes.
        display: what the person at the rig sees.
    """

    name = "reach"

    def __init__(self, config: RigConfig, store: RigStore, display: SessionDisplay) -> None:
        self.config = config
        self.store = store
        self.display = display

    # -- the port -------------------------------------------------------------------------------

    def defaults(self) -> Mapping[str, ParamValue]:
        return ReachParameters().resolved()

    def rewards(self) -> RewardsOf:
        return reach_rewards(self.calibrations())

    def calibrations(self) -> dict[str, ValveCalibration]:
        """Valve calibrations in force: the config file's, replaced by stored calibrations."""
        return {**self.config.valves, **self.store.calibrations()}

    def interrupted(self, mouse_id: str) -> SessionStarted | None:
        open_session = self.store.open_session(mouse_id)
        return open_session.started if open_session is not None else None

    def close_interrupted(self, mouse_id: str, publish: Publish) -> SessionEnded:
        open_session = self.store.open_session(mouse_id)
        if open_session is None:
            raise RigError(f"{mouse_id} has no interrupted session")
        return self._close(open_session, publish)

    def run(self, request: SessionRequest) -> TaskOutcome:
        mouse = request.mouse_id
        open_session = self.store.open_session(mouse) if request.chosen is None else None
        if open_session is not None:
            params = ReachParameters.from_assignment(open_session.started.parameters)
            seed = _task_seed(open_session.started.parameters)
        else:
            if request.chosen is None:
                raise RigError(f"{mouse} has no interrupted session to resume")
            assignment = request.chosen.assignment
            params = ReachParameters.from_assignment(assignment.parameters)
            seed = (
                random.Random(f"{request.seed}:{mouse}:{assignment.event_id}").getrandbits(31)
                if request.simulate
                else random.SystemRandom().getrandbits(31)
            )
        rewards = RewardPlan.plan(params, self.calibrations())
        runtime = self._runtime(request, open_session)
        try:
            return self._session(request, runtime, open_session, params, rewards, seed)
        finally:
            disconnect_inputs(runtime.hardware)
            runtime.hardware.close()

    # -- a session ------------------------------------------------------------------------------

    def _session(
        self,
        request: SessionRequest,
        runtime: _Runtime,
        open_session: OpenSession | None,
        params: ReachParameters,
        rewards: RewardPlan,
        seed: int,
    ) -> TaskOutcome:
        mouse = request.mouse_id
        clock = runtime.clock
        bus = InputBus(clock)
        connect_inputs(runtime.hardware, bus)
        if open_session is not None:
            started = open_session.started
            session_id = started.session_id or ""
            trials = [e for e in open_session.events if isinstance(e, TrialCompleted)]
            state = TaskState.after_trials(params, trials)
            if not request.simulate:
                # A real session continues: movements already recorded for the next trial
                # stay, and new ones are numbered after them.
                state.movements_in_trial = sum(
                    1
                    for e in open_session.events
                    if isinstance(e, MovementDetected) and e.trial_index == state.trial_index
                )
            session_start = started.occurred_at.timestamp()
            minutes = min(params.session_minutes, request.limits.max_session_minutes)
            if session_start + minutes * 60 <= clock.now():
                ended = self._close(open_session, request.publish)
                self.display.message(
                    f"session {session_id} was interrupted after {state.n_trials} trials and "
                    "its time is over; closed it"
                )
                return TaskOutcome(started, ended, state, resumed=True)
            self.display.message(
                f"resuming session {session_id} of {mouse} at trial {state.trial_index + 1} "
                f"(interrupted after {state.n_trials} trials)"
            )
        else:
            session_start = clock.now()
            session_id = f"{mouse}-{request.rig_id}-{to_datetime(session_start):%Y%m%dT%H%M%S}"
            if self.store.events(session_id):
                raise RigError(
                    f"session {session_id} already exists on this rig; a simulated session "
                    "needs a later --start"
                )
            state = TaskState.start(params)
        recorder = SessionRecorder(
            self._sink(request.publish, runtime), clock, mouse, request.rig_id, session_id
        )
        if runtime.begin_cycle is not None:
            runtime.begin_cycle(session_id, state.trial_index)
        if open_session is None:
            assert request.chosen is not None
            chosen = request.chosen
            parameters: dict[str, ParamValue] = {
                **params.resolved(),
                **chosen.assignment.parameters,
                "task_seed": seed,
            }
            started = _record_started(recorder, chosen, parameters)
            unused = sorted(set(chosen.assignment.parameters) - set(params.resolved()))
            if unused:
                # Visible, not fatal: a curriculum may carry another task's parameters, but a
                # misspelt name would otherwise leave its default in force unnoticed.
                self.display.message(f"not used by the reach task: {', '.join(unused)}")
        stage = [started.stage]  # the stage running now (an assignment may change it)
        self.display.session_started(
            started, params, state.trial_index if open_session is not None else None
        )
        task = ReachTask(
            hardware=runtime.hardware,
            clock=clock,
            bus=bus,
            params=params,
            rewards=rewards,
            recorder=recorder,
            session_start=session_start,
            task_seed=seed,
            on_trial=lambda progress: self.display.trial(progress, stage[0]),
            session_metrics=lambda: reach_session_metrics(self.store.events(session_id)),
            limits=request.limits,
            restart=self._restarter(request, session_id, stage, state),
        )
        for cut in task.reward_cuts():
            log.warning("%s: %s", mouse, cut)
            self.display.message(f"SAFETY: {cut}")
        with _interrupt_on_sigint(bus):
            ended = task.run(state)
        self.display.session_ended(ended, state)
        return TaskOutcome(started, ended, state, resumed=open_session is not None)

    def _restarter(
        self, request: SessionRequest, session_id: str, stage: list[str], state: TaskState
    ) -> Callable[[], Restart | None] | None:
        """What the task asks at each trial boundary: an assignment issued during this session
        (it names the session) that the rig has not applied yet and that passes the rig's
        safety limits, to start over with (:mod:`shaping.rig.task.midsession`). One outside
        the limits is said, logged and recorded, and the session goes on as it runs."""
        newest = request.newest
        if newest is None:
            return None
        mouse = request.mouse_id
        seen: set[str] = set()

        def restart() -> Restart | None:
            assignment = newest(session_id)
            if assignment is None or not issued_during(assignment, session_id):
                return None
            if assignment.event_id in seen:
                return None
            seen.add(assignment.event_id)
            prepared = prepare(assignment, request.limits, self.calibrations())
            if isinstance(prepared, str):
                text = (
                    f"NOT APPLIED during session {session_id}: the assignment "
                    f"({describe_assignment(assignment)}) is {prepared}; the session goes on "
                    f"at {stage[0]}"
                )
                log.warning("%s: %s", mouse, text)
                self.display.message(text)
                self.store.record_unsafe_assignment(
                    mouse, assignment.event_id, "refused", prepared, None
                )
                return None
            text = (
                f"during session {session_id}: {assignment.reason} to {assignment.stage} "
                f"({assignment.reason_detail}); the task starts over at trial "
                f"{state.trial_index + 1} with the new stage's parameters"
            )
            log.info("%s: %s", mouse, text)
            self.display.message(text)
            stage[0] = assignment.stage
            return prepared

        return restart

    def _sink(self, publish: Publish, runtime: _Runtime) -> Callable[[Event], None]:
        def record(event: Event) -> None:
            publish([event])
            if runtime.begin_cycle is not None and isinstance(event, TrialCompleted):
                runtime.begin_cycle(event.session_id or "", event.trial_index + 1)

        return record

    def _close(self, open_session: OpenSession, publish: Publish) -> SessionEnded:
        """Ends a session the rig could not finish, at the time of its last event."""
        started = open_session.started
        trials = [e for e in open_session.events if isinstance(e, TrialCompleted)]
        last = open_session.events[-1].occurred_at
        recorder = SessionRecorder(
            lambda event: publish([event]),
            _FixedClock(last.timestamp()),
            started.mouse_id,
            started.rig_id or self.config.rig_id,
            started.session_id or "",
        )
        metrics = dict(reach_session_metrics(open_session.events) or {})
        delivered_ul = sum(t.reward_volume_ul for t in trials)
        if delivered_ul > 0:  # the water its recorded rewards delivered, in mL
            metrics[WATER_EARNED_METRIC] = round(delivered_ul / 1000.0, 6)
        return recorder.ended(
            len(trials),
            "interrupted",
            last.timestamp() - started.occurred_at.timestamp(),
            metrics,
        )

    def _runtime(self, request: SessionRequest, open_session: OpenSession | None) -> _Runtime:
        if not request.simulate:
            from shaping.rig.hardware.gpio import build_gpiozero_hardware

            hardware = build_gpiozero_hardware(self.config.pins, self.config.actuators)
            return _Runtime(hardware, SystemClock(), None)
        from shaping.rig.sim.reach_box import build_simulated_rig

        if open_session is not None:
            # A simulated session resumes where its last trial ended: the simulation is
            # deterministic from there, and what it re-records is already in the outbox.
            start = next(
                e.occurred_at
                for e in reversed(open_session.events)
                if isinstance(e, TrialCompleted | SessionStarted)
            )
        else:
            start = request.start or datetime.now(UTC)
        rig = build_simulated_rig(
            self.config.pins,
            self.config.actuators,
            request.mouse_id,
            request.seed,
            start.timestamp(),
            request.pace,
        )
        rig.mouse.restore(self._outcome_history(request.mouse_id))
        return _Runtime(rig.hardware, rig.clock, rig.mouse.begin_cycle)

    def _outcome_history(self, mouse: str) -> list[list[str]]:
        sessions: dict[str, list[str]] = {}
        for event in self.store.mouse_events(mouse, ["SessionStarted", "TrialCompleted"]):
            if isinstance(event, SessionStarted):
                sessions[event.session_id or ""] = []
            elif isinstance(event, TrialCompleted):
                sessions.setdefault(event.session_id or "", []).append(event.outcome)
        history = list(sessions.values())
        # A new session starts after a rest; a resumed one continues the last list.
        open_session = self.store.open_session(mouse)
        if open_session is None:
            history.append([])
        return history


def _record_started(
    recorder: SessionRecorder,
    chosen: ChosenAssignment,
    parameters: dict[str, ParamValue],
) -> SessionStarted:
    """Records SessionStarted, with whether the assignment was stale and the wait for it."""
    # The recorder builds the event (its id, time and envelope); it is stored once the
    # assignment's freshness is added.
    built: list[Event] = []
    sink, recorder.sink = recorder.sink, built.append
    try:
        recorder.started(chosen.assignment, parameters)
    finally:
        recorder.sink = sink
    started = built[0].model_copy(
        update={
            "assignment_stale": chosen.stale_reason is not None,
            "assignment_wait_s": chosen.waited_s,
            "assignment_stale_reason": chosen.stale_reason,
        }
    )
    assert isinstance(started, SessionStarted)
    recorder.sink(started)
    return started


@dataclass
class _Runtime:
    hardware: RigHardware
    clock: Clock
    begin_cycle: Callable[[str, int], None] | None


class _FixedClock:
    """A clock stuck at one time (for closing an interrupted session)."""

    def __init__(self, at: float) -> None:
        self.at = at

    def now(self) -> float:
        return self.at

    def sleep(self, seconds: float) -> None:
        return None

    def wait(self, flag: threading.Event, timeout_s: float) -> bool:
        return flag.is_set()


def _task_seed(parameters: Mapping[str, ParamValue]) -> int:
    seed = parameters.get("task_seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        return seed
    raise RigError("the interrupted session does not record its task_seed; use --abandon")


@contextmanager
def _interrupt_on_sigint(bus: InputBus) -> Iterator[None]:
    """Ctrl-C ends the session cleanly (like reach's handler) instead of killing the task."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        bus.interrupt()

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
