"""Valve calibration: how many millilitres a valve gives per millisecond open.

The guided procedure (``shaping rig calibrate VALVE``) opens the valve ``pulses`` times for
each of a few durations, the person at the rig weighs the water each time (1 g = 1 ml), and the
slope of a least-squares line through the origin, volume per pulse against opening time, is the
calibration. Rewards by volume then open the valve for ``volume / ml_per_ms``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rig.clock import Clock
from rig.devices import Valve
from rig.errors import CalibrationError


@dataclass(frozen=True)
class CalibrationPoint:
    """One measurement: ``pulses`` openings of ``open_ms`` gave ``grams`` of water."""

    open_ms: float
    pulses: int
    grams: float

    @property
    def ml_per_pulse(self) -> float:
        """Volume of one opening (water: 1 g = 1 ml)."""
        return self.grams / self.pulses

    def as_dict(self) -> dict[str, float]:
        """The point as stored with the calibration."""
        return {"open_ms": self.open_ms, "pulses": self.pulses, "grams": self.grams}


def fit_ml_per_ms(points: Sequence[CalibrationPoint]) -> float:
    """Least-squares slope through the origin of volume per pulse against opening time.

    Raises:
        CalibrationError: no points, or a slope that is not positive.
    """
    if not points:
        raise CalibrationError("no measurements to calibrate from")
    numerator = sum(p.ml_per_pulse * p.open_ms for p in points)
    denominator = sum(p.open_ms**2 for p in points)
    slope = numerator / denominator if denominator else 0.0
    if slope <= 0:
        raise CalibrationError("the measurements give no water per millisecond; weigh again")
    return slope


def dispense(valve: Valve, clock: Clock, open_ms: float, pulses: int, gap_ms: float) -> None:
    """Opens the valve ``pulses`` times for ``open_ms``, ``gap_ms`` apart; always closes it."""
    try:
        for pulse in range(pulses):
            valve.open()
            clock.sleep(open_ms / 1000)
            valve.close()
            if pulse < pulses - 1:
                clock.sleep(gap_ms / 1000)
    finally:
        valve.close()


def parse_grams(text: str) -> float:
    """Reads a weight typed by a person (``0.61``, ``0,61``, ``0.61 g``).

    Raises:
        ValueError: with a message saying what is expected.
    """
    cleaned = text.strip().lower().removesuffix("g").strip().replace(",", ".")
    try:
        grams = float(cleaned)
    except ValueError:
        raise ValueError(f"{text.strip()!r} is not a weight; type grams, e.g. 0.61") from None
    if not grams > 0 or grams != grams or grams == float("inf"):
        raise ValueError("the weight must be a positive number of grams")
    return grams
