"""The reach task on gpiozero mock pins, for tests: a virtual clock, a scripted mouse that
watches the cue pins and touches a spout (or not) as its script says, and a log of every output
pin change in virtual time (valve open time, sync line, actuator positions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shaping.rig.config import (
    SIDES,
    ActuatorSettings,
    SafetyLimits,
    ValveCalibration,
    parse_pin_map,
)
from shaping.rig.hardware.devices import InputBus, connect_inputs
from shaping.rig.hardware.gpio import build_gpiozero_hardware
from shaping.rig.reach import reach_session_metrics
from shaping.rig.sim.reach_box import mock_factory
from shaping.rig.task.adaptation import TaskState
from shaping.rig.task.clock import VirtualClock
from shaping.rig.task.parameters import ReachParameters
from shaping.rig.task.reach import ReachTask
from shaping.rig.task.recording import SessionRecorder
from shaping.rig.task.rewards import RewardPlan
from shaping.schemas.events import Event, MovementDetected, SessionEnded, TrialCompleted
from tests.support.rig import PINS, START

OUTPUTS = ("cue_left", "cue_right", "valve_left", "valve_right", "sync")
CALIBRATED = {side: ValveCalibration(side, 1e-4) for side in SIDES}


@dataclass
class Step:
    """What the scripted mouse does on one trial: touch ``side`` after ``rt`` s, or nothing."""

    side: str | None  # "target", "other", or None for no touch
    rt: float = 0.5
    lift_at: float | None = None  # lift the left paw this long after cue onset


@dataclass
class Harness:
    """A rig on mock pins, a virtual clock, a scripted mouse and a log of output changes."""

    params: dict[str, Any]
    script: list[Step] = field(default_factory=list)
    calibrations: dict[str, ValveCalibration] = field(default_factory=lambda: CALIBRATED)
    iti_lifts: list[float] = field(default_factory=list)  # seconds into each ITI wait
    limits: SafetyLimits | None = None  # the rig's safety limits (None: the defaults)

    def __post_init__(self) -> None:
        self.factory = mock_factory()
        self.pins = parse_pin_map(PINS)
        self.hardware = build_gpiozero_hardware(self.pins, ActuatorSettings(), self.factory)
        self.clock = VirtualClock(START.timestamp())
        self.bus = InputBus(self.clock)
        connect_inputs(self.hardware, self.bus)
        self.events: list[Event] = []
        self.changes: list[tuple[float, str, bool]] = []
        self.onsets: list[tuple[float, str, float]] = []  # time, side, actuator duty there
        self._last = dict.fromkeys(OUTPUTS, False)
        self._trial = 0
        for side in SIDES:
            self.factory.pin(PINS[f"paw_{side}"]).drive_high()  # paws on the rests
        self.clock.add_observer(self._watch)

    def _watch(self, now: float) -> None:
        for device in OUTPUTS:
            state = bool(self.factory.pin(PINS[device]).state)
            if state != self._last[device]:
                self.changes.append((now, device, state))
                self._last[device] = state
                if device.startswith("cue_") and state:
                    self._cue(now, device.removeprefix("cue_"))

    def _cue(self, now: float, target: str) -> None:
        duty = self.factory.pin(PINS[f"actuator_{target}"]).state
        self.onsets.append((now, target, duty))
        step = self.script[self._trial] if self._trial < len(self.script) else Step("target")
        self._trial += 1
        if step.lift_at is not None:
            self.lift(now + step.lift_at, "left")
        if step.side is None:
            return
        side = target if step.side == "target" else ("right" if target == "left" else "left")
        pin = self.factory.pin(PINS[f"touch_{side}"])
        self.clock.schedule(now + step.rt, pin.drive_high)
        self.clock.schedule(now + step.rt + 0.05, pin.drive_low)

    def lift(self, at: float, side: str = "left", seconds: float = 0.3) -> None:
        pin = self.factory.pin(PINS[f"paw_{side}"])
        self.clock.schedule(at, pin.drive_low)
        self.clock.schedule(at + seconds, pin.drive_high)

    def touch(self, at: float, side: str) -> None:
        pin = self.factory.pin(PINS[f"touch_{side}"])
        self.clock.schedule(at, pin.drive_high)
        self.clock.schedule(at + 0.05, pin.drive_low)

    def run(self, stop_at: float | None = None) -> SessionEnded:
        params = ReachParameters.from_assignment(self.params)
        recorder = SessionRecorder(self.events.append, self.clock, "M001", "rig-1", "S1")
        task = ReachTask(
            hardware=self.hardware,
            clock=self.clock,
            bus=self.bus,
            params=params,
            rewards=RewardPlan.plan(params, self.calibrations),
            recorder=recorder,
            session_start=self.clock.now(),
            task_seed=42,
            session_metrics=lambda: reach_session_metrics(self.events),
            limits=self.limits or SafetyLimits(),
        )
        if stop_at is not None:
            self.clock.schedule(START.timestamp() + stop_at, self.bus.interrupt)
        try:
            return task.run(TaskState.start(params))
        finally:
            self._watch(self.clock.now())  # the outputs' final state
            self.hardware.close()

    def trials(self) -> list[TrialCompleted]:
        return [e for e in self.events if isinstance(e, TrialCompleted)]

    def movements(self) -> list[MovementDetected]:
        return [e for e in self.events if isinstance(e, MovementDetected)]

    def spans(self, device: str) -> list[tuple[float, float]]:
        """(on, off) times of an output."""
        ons = [t for t, d, s in self.changes if d == device and s]
        offs = [t for t, d, s in self.changes if d == device and not s]
        return list(zip(ons, offs, strict=True))


BASE = {"max_trials": 3, "iti_min_s": 1.0, "iti_max_s": 2.0, "timeout_s": 8.0}
