"""Time for the task: the wall clock on a rig, a virtual clock in simulation.

The task never calls :mod:`time` itself. It asks a :class:`Clock` for the time, to sleep, and
to wait for an input with a timeout. On a Raspberry Pi that is :class:`SystemClock`. In
simulation, :class:`VirtualClock` is a discrete-event scheduler: waiting runs the simulated
mouse's scheduled actions (which drive gpiozero mock pins, whose callbacks reach the task) in
time order, so an hour-long session runs in a second with exactly the code a Pi runs.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Time as the task sees it, in seconds since the Unix epoch (UTC)."""

    def now(self) -> float:
        """The current time."""
        ...

    def sleep(self, seconds: float) -> None:
        """Lets ``seconds`` pass."""
        ...

    def wait(self, flag: threading.Event, timeout_s: float) -> bool:
        """Waits until ``flag`` is set or ``timeout_s`` pass; returns whether it is set."""
        ...


def to_datetime(seconds: float) -> datetime:
    """A clock reading as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


class SystemClock:
    """The real time of the machine."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        """Sleeps for real."""
        if seconds > 0:
            time.sleep(seconds)

    def wait(self, flag: threading.Event, timeout_s: float) -> bool:
        """Blocks on the flag (set from gpiozero's callback threads)."""
        return flag.wait(max(0.0, timeout_s))


@dataclass(order=True)
class _Scheduled:
    at_ms: int
    order: int
    action: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)


def _ceil_ms(seconds: float) -> int:
    # Never earlier than asked; the epsilon absorbs float error (0.04 s is 40 ms, not 41).
    return math.ceil(seconds * 1000 - 1e-6)


class ScheduledAction:
    """Handle of an action scheduled on a :class:`VirtualClock`."""

    def __init__(self, entry: _Scheduled) -> None:
        self._entry = entry

    @property
    def at(self) -> float:
        """When the action runs."""
        return self._entry.at_ms / 1000

    def cancel(self) -> None:
        """Makes sure the action never runs."""
        self._entry.cancelled = True


class VirtualClock:
    """A discrete-event clock for simulation.

    Time moves only when the task sleeps or waits. Before time moves, and after every
    scheduled action, the clock calls its observers (the simulated mouse looks at the output
    pins then and schedules what it does next).

    Virtual time moves in whole milliseconds, the resolution of event timestamps, so a
    simulated session resumed from its recorded events continues at exactly the time it had.

    Args:
        start: the time the clock shows first (seconds since the epoch).
        pace: if given, time runs at most ``pace`` times faster than real time (for demos);
            None runs as fast as the machine can.
    """

    def __init__(self, start: float, pace: float | None = None) -> None:
        self._ms = round(start * 1000)
        self._pace = pace
        self._queue: list[_Scheduled] = []
        self._order = itertools.count()
        self._observers: list[Callable[[float], None]] = []

    def now(self) -> float:
        """The virtual time."""
        return self._ms / 1000

    def schedule(self, at: float, action: Callable[[], None]) -> ScheduledAction:
        """Runs ``action`` when the clock reaches ``at`` (never in the past)."""
        entry = _Scheduled(max(_ceil_ms(at), self._ms), next(self._order), action)
        heapq.heappush(self._queue, entry)
        return ScheduledAction(entry)

    def add_observer(self, observer: Callable[[float], None]) -> None:
        """Calls ``observer(now)`` whenever outputs may have changed."""
        self._observers.append(observer)

    def sleep(self, seconds: float) -> None:
        """Runs the scheduled actions of the next ``seconds``."""
        self._advance(_ceil_ms(self.now() + max(0.0, seconds)), None)

    def wait(self, flag: threading.Event, timeout_s: float) -> bool:
        """Runs scheduled actions in time order until one sets ``flag`` or time is up."""
        self._advance(_ceil_ms(self.now() + max(0.0, timeout_s)), flag)
        return flag.is_set()

    def _advance(self, deadline_ms: int, flag: threading.Event | None) -> None:
        self._notify()
        while flag is None or not flag.is_set():
            while self._queue and self._queue[0].cancelled:
                heapq.heappop(self._queue)
            if not self._queue or self._queue[0].at_ms > deadline_ms:
                self._move_to(deadline_ms)
                return
            entry = heapq.heappop(self._queue)
            self._move_to(entry.at_ms)
            entry.action()
            self._notify()

    def _move_to(self, at_ms: int) -> None:
        if at_ms > self._ms and self._pace:
            time.sleep((at_ms - self._ms) / 1000 / self._pace)
        self._ms = max(self._ms, at_ms)

    def _notify(self) -> None:
        now = self.now()
        for observer in self._observers:
            observer(now)
