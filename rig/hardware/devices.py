"""The devices a two-spout reach or lick task talks to, as small ports.

The task only knows these interfaces. :mod:`shaping.rig.hardware.gpio` implements them with
gpiozero, which is what runs on a Raspberry Pi; in simulation the same gpiozero classes run on
gpiozero's mock pins, driven by a simulated mouse.

Sensors do not call the task directly: their callbacks push :class:`InputEvent` records onto an
:class:`InputBus`, which the task reads with a timeout. gpiozero calls back from its own threads
on a Pi, so the bus is thread-safe.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from shaping.rig.config import Side
from shaping.rig.task.clock import Clock

InputKind = Literal["touch", "paw_lift", "paw_rest"]


class CueLight(Protocol):
    """The LED that tells the mouse which spout to reach for."""

    def on(self) -> None:
        """Lights the cue."""
        ...

    def off(self) -> None:
        """Turns the cue off."""
        ...

    @property
    def is_lit(self) -> bool:
        """Whether the cue is on."""
        ...


class TouchSensor(Protocol):
    """A spout's touch or lick sensor."""

    @property
    def is_touched(self) -> bool:
        """Whether the spout is touched now."""
        ...

    def on_touch(self, callback: Callable[[], None] | None) -> None:
        """Calls ``callback`` each time the spout is touched (None removes it)."""
        ...


class PawRestSensor(Protocol):
    """A sensor that is active while a paw rests on it."""

    @property
    def is_resting(self) -> bool:
        """Whether the paw rests on the sensor now."""
        ...

    def on_change(
        self, lifted: Callable[[], None] | None, rested: Callable[[], None] | None
    ) -> None:
        """Calls ``lifted`` when the paw leaves the rest and ``rested`` when it comes back."""
        ...


class Valve(Protocol):
    """A reward solenoid valve."""

    def open(self) -> None:
        """Opens the valve (water flows)."""
        ...

    def close(self) -> None:
        """Closes the valve."""
        ...

    @property
    def is_open(self) -> bool:
        """Whether the valve is open."""
        ...


class SyncOutput(Protocol):
    """A digital line for synchronising recordings: high while a cue is on."""

    def high(self) -> None:
        """Raises the line."""
        ...

    def low(self) -> None:
        """Lowers the line."""
        ...

    @property
    def is_high(self) -> bool:
        """Whether the line is high."""
        ...


class SpoutActuator(Protocol):
    """A linear actuator that moves a spout away from (or towards) the mouse."""

    def move_to(self, position: int) -> None:
        """Moves the spout to ``position`` (1 is nearest the mouse)."""
        ...

    @property
    def position(self) -> int | None:
        """The last position commanded, None before the first move."""
        ...


@dataclass
class Spout:
    """Everything at one spout."""

    side: Side
    cue: CueLight
    touch: TouchSensor
    valve: Valve
    actuator: SpoutActuator | None = None


@dataclass
class RigHardware:
    """The devices of one rig, and how to release them."""

    spouts: dict[Side, Spout]
    paws: dict[Side, PawRestSensor] = field(default_factory=dict)
    sync: SyncOutput | None = None
    closers: list[Callable[[], None]] = field(default_factory=list)

    def all_off(self) -> None:
        """Cues off, valves closed, sync low: the safe state."""
        for spout in self.spouts.values():
            spout.cue.off()
            spout.valve.close()
        if self.sync is not None:
            self.sync.low()

    def close(self) -> None:
        """Puts every output in its safe state and releases the pins."""
        try:
            self.all_off()
        finally:
            for closer in reversed(self.closers):
                closer()
            self.closers.clear()


@dataclass(frozen=True)
class InputEvent:
    """Something a sensor reported.

    Attributes:
        kind: ``touch`` (a spout), ``paw_lift`` or ``paw_rest`` (a paw-rest sensor).
        side: which spout or paw.
        at: clock time of the report.
    """

    kind: InputKind
    side: Side
    at: float


class InputBus:
    """Sensor reports in arrival order, read by the task with a timeout.

    Args:
        clock: the task's clock (waiting on it lets a simulation advance).
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._events: deque[InputEvent] = deque()
        self._flag = threading.Event()
        self._interrupted = False

    def push(self, kind: InputKind, side: Side) -> None:
        """Records a report now (safe from any thread)."""
        with self._lock:
            self._events.append(InputEvent(kind, side, self._clock.now()))
            self._flag.set()

    def interrupt(self) -> None:
        """Wakes the reader for good (the operator stopped the session)."""
        with self._lock:
            self._interrupted = True
            self._flag.set()

    @property
    def interrupted(self) -> bool:
        """Whether :meth:`interrupt` was called."""
        return self._interrupted

    def clear(self) -> None:
        """Forgets unread reports."""
        with self._lock:
            self._events.clear()
            if not self._interrupted:
                self._flag.clear()

    def next(self, timeout_s: float) -> InputEvent | None:
        """The next report, waiting up to ``timeout_s``; None on timeout or interruption."""
        deadline = self._clock.now() + max(0.0, timeout_s)
        while True:
            with self._lock:
                if self._interrupted:
                    return None
                if self._events:
                    return self._events.popleft()
                self._flag.clear()
            remaining = deadline - self._clock.now()
            if remaining <= 0 or not self._clock.wait(self._flag, remaining):
                with self._lock:
                    if self._events and not self._interrupted:
                        return self._events.popleft()
                return None


def connect_inputs(hardware: RigHardware, bus: InputBus) -> None:
    """Routes every sensor of ``hardware`` to ``bus``."""
    for side, spout in hardware.spouts.items():
        spout.touch.on_touch(_pusher(bus, "touch", side))
    for side, paw in hardware.paws.items():
        paw.on_change(_pusher(bus, "paw_lift", side), _pusher(bus, "paw_rest", side))


def disconnect_inputs(hardware: RigHardware) -> None:
    """Removes the callbacks :func:`connect_inputs` installed."""
    for spout in hardware.spouts.values():
        spout.touch.on_touch(None)
    for paw in hardware.paws.values():
        paw.on_change(None, None)


def _pusher(bus: InputBus, kind: InputKind, side: Side) -> Callable[[], None]:
    def push() -> None:
        bus.push(kind, side)

    return push
