"""A simulated mouse in a simulated reach box, on gpiozero's mock pins.

:func:`build_simulated_rig` opens the rig's devices with :mod:`shaping.rig.hardware.gpio`, exactly
as on a Pi, but on gpiozero's ``MockFactory``; a :class:`SimulatedReacher` then plays the mouse. It
only touches pins: it *watches* the output pins (cue LEDs, valves, spout actuators) whenever the
virtual clock lets time pass, and *drives* the input pins (paw-rest and touch sensors), whose
gpiozero callbacks reach the task. So the task, the devices and the callbacks the simulation runs
are the ones a Raspberry Pi runs.

The reacher is only a body: the mouse in it is the one simulated mouse
(:class:`shaping.rig.sim.mouse.SimulatedMouse`), which decides how it answers a cue (its skill,
lower for a spout further away) and learns from every reward it sees the valve give. The body
fidgets (lifts a paw, touches a spout now and then) and turns the mouse's answers into paw lifts
and touches. Its random draws are seeded per trial (``begin_cycle``), and the mouse's skill is a
fold over the outcomes it lived through (``restore``), so a session resumed after a crash
replays exactly.

It is the pin-level actor of ``shaping rig run --simulate`` (the pin task on mock pins).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPWMPin

from shaping.rig.config import SIDES, ActuatorSettings, PinMap, PinSpec, Side
from shaping.rig.hardware.devices import RigHardware
from shaping.rig.hardware.gpio import build_gpiozero_hardware
from shaping.rig.sim.mouse import SimulatedMouse
from shaping.rig.task.clock import ScheduledAction, VirtualClock

TOUCH_S = 0.08
"""How long a spout touch lasts."""


class SimulatedReacher:
    """The body of a simulated mouse in a two-spout reach box, acting through gpiozero mock pins.

    Args:
        clock: the virtual clock (the mouse observes it and schedules its actions on it).
        factory: the mock pin factory the rig's devices were opened on.
        pins: the rig's pin map.
        actuators: actuator settings (to read a spout's position from its PWM duty).
        mouse_id, seed: identify the mouse; the same pair gives the same mouse.
    """

    def __init__(
        self,
        clock: VirtualClock,
        factory: Any,
        pins: PinMap,
        actuators: ActuatorSettings,
        mouse_id: str,
        seed: int,
    ) -> None:
        self.clock = clock
        self.pins = pins
        self.actuators = actuators
        self.mouse_id = mouse_id
        self.seed = seed
        self.mouse = SimulatedMouse(mouse_id, seed)
        self.rewards_seen = 0
        self._pin = {name: factory.pin(spec.pin) for name, spec in pins.specs.items()}
        self._rng = random.Random()
        self._pending: list[ScheduledAction] = []
        self._cue_seen: dict[Side, bool] = dict.fromkeys(SIDES, False)
        self._valve_seen: dict[Side, bool] = dict.fromkeys(SIDES, False)
        self._paw_busy: dict[Side, bool] = dict.fromkeys(SIDES, False)
        clock.add_observer(self.observe)

    # -- learning -----------------------------------------------------------------------------

    @property
    def skill(self) -> float:
        """The mouse's skill now."""
        return self.mouse.skill

    def reward(self) -> None:
        """The valve gave water: the mouse learns a little."""
        self.mouse.learn()
        self.rewards_seen += 1

    def rest(self) -> None:
        """Between sessions the mouse forgets a little."""
        self.mouse.rest()

    def restore(self, sessions: Iterable[Sequence[str]]) -> None:
        """Replays earlier outcomes (one list per session, the last one possibly unfinished):
        the skill the mouse had when it lived through them."""
        self.mouse.restore(sessions)

    # -- acting -------------------------------------------------------------------------------

    def begin_cycle(self, session_id: str, trial_index: int) -> None:
        """Starts trial ``trial_index``'s cycle: paws back on the rests, fresh random draws."""
        for action in self._pending:
            action.cancel()
        self._pending.clear()
        self._rng = random.Random(f"{self.seed}:{self.mouse_id}:{session_id}:{trial_index}")
        for side in SIDES:
            self._set_input(f"touch_{side}", False)
            self._set_input(f"paw_{side}", True)
            self._paw_busy[side] = False
            self._cue_seen[side] = self._output(f"cue_{side}")
            self._valve_seen[side] = self._output(f"valve_{side}")
        self._schedule_fidget(self.clock.now())
        self._schedule_spontaneous_reach(self.clock.now())

    def observe(self, now: float) -> None:
        """Looks at the output pins; reacts to a cue that just lit or a valve that opened."""
        for side in SIDES:
            lit = self._output(f"cue_{side}")
            if lit and not self._cue_seen[side]:
                self._answer_cue(side, now)
            self._cue_seen[side] = lit
            flowing = self._output(f"valve_{side}")
            if flowing and not self._valve_seen[side]:
                self.reward()
            self._valve_seen[side] = flowing

    def _answer_cue(self, target: Side, now: float) -> None:
        distance = (self._spout_position(target) - 1) / max(1, self.actuators.positions - 1)
        answer = self.mouse.answer(self._rng, distance=distance)
        if answer.correct is None:
            return
        reaction = answer.reaction_time_s
        side: Side = target if answer.correct else ("right" if target == "left" else "left")
        self._at(now + 0.6 * reaction, lambda: self._lift(side, 0.4 * reaction + 0.6))
        self._at(now + reaction, lambda: self._touch(side))

    def _schedule_fidget(self, after: float) -> None:
        rate = 0.25 * (1 - 0.6 * self.skill)
        self._at(after + self._rng.expovariate(rate), self._fidget)

    def _fidget(self) -> None:
        self._lift(self._rng.choice(SIDES), self._rng.uniform(0.3, 1.2))
        self._schedule_fidget(self.clock.now())

    def _schedule_spontaneous_reach(self, after: float) -> None:
        rate = 0.02 + 0.06 * self.skill
        self._at(after + self._rng.expovariate(rate), self._spontaneous_reach)

    def _spontaneous_reach(self) -> None:
        if not any(self._output(f"cue_{side}") for side in SIDES):
            self._touch(self._rng.choice(SIDES))
        self._schedule_spontaneous_reach(self.clock.now())

    def _lift(self, side: Side, seconds: float) -> None:
        if f"paw_{side}" not in self.pins or self._paw_busy[side]:
            return
        self._paw_busy[side] = True
        self._set_input(f"paw_{side}", False)

        def back() -> None:
            self._paw_busy[side] = False
            self._set_input(f"paw_{side}", True)

        self._at(self.clock.now() + seconds, back)

    def _touch(self, side: Side) -> None:
        self._set_input(f"touch_{side}", True)
        self._at(self.clock.now() + TOUCH_S, lambda: self._set_input(f"touch_{side}", False))

    # -- pins ---------------------------------------------------------------------------------

    def _at(self, at: float, action: Any) -> None:
        self._pending = [a for a in self._pending if a.at >= self.clock.now()]
        self._pending.append(self.clock.schedule(at, action))

    def _output(self, device: str) -> bool:
        spec = self.pins.get(device)
        if spec is None:
            return False
        return bool(self._pin[device].state) == spec.active_high

    def _spout_position(self, side: Side) -> int:
        device = f"actuator_{side}"
        spec = self.pins.get(device)
        if spec is None:
            return 1
        duty = float(self._pin[device].state)
        if not spec.active_high:
            duty = 1 - duty
        if duty <= 0:
            return 1
        step = self.actuators.pulse_ms_per_position / 20.0
        position = round((duty - self.actuators.duty(1)) / step) + 1 if step else 1
        return min(max(position, 1), self.actuators.positions)

    def _set_input(self, device: str, active: bool) -> None:
        spec: PinSpec | None = self.pins.get(device)
        if spec is None:
            return
        pin = self._pin[device]
        if active != spec.pull_up:
            pin.drive_high()
        else:
            pin.drive_low()


@dataclass
class SimulatedRig:
    """A rig's devices on mock pins, a virtual clock and the mouse in the box."""

    hardware: RigHardware
    clock: VirtualClock
    mouse: SimulatedReacher
    factory: Any


def mock_factory() -> Any:
    """A gpiozero mock pin factory whose pins also do PWM (for the spout actuators)."""
    return MockFactory(pin_class=MockPWMPin)


def build_simulated_rig(
    pins: PinMap,
    actuators: ActuatorSettings,
    mouse_id: str,
    seed: int,
    start: float,
    pace: float | None = None,
) -> SimulatedRig:
    """Opens the rig's devices on mock pins and puts a simulated mouse in the box."""
    factory = mock_factory()
    hardware = build_gpiozero_hardware(pins, actuators, pin_factory=factory)
    clock = VirtualClock(start, pace)
    mouse = SimulatedReacher(clock, factory, pins, actuators, mouse_id, seed)
    return SimulatedRig(hardware, clock, mouse, factory)
