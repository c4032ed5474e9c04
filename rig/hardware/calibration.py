"""Valve calibration: how many millilitres a valve gives per millisecond open.

The guided procedure (``shaping rig calibrate VALVE``) opens the valve ``pulses`` times for
each of a few durations, the person at the rig weighs the water each time (1 g = 1 ml), and the
slope of a least-squares line through the origin, volume per pulse against opening time, is the
calibration. Rewards by volume then open the valve for ``volume / ml_per_ms``.

Before it is saved, :func:`check_calibration` holds it against the valve's
:class:`~rig.config.CalibrationBounds`: a measurement or slope outside the hard bounds is
refused, one outside the plausible bounds (or measurements that disagree with each other, or an
opening too short for a solenoid valve) is saved only when the person says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from shaping.rig.config import CalibrationBounds
from shaping.rig.errors import CalibrationError
from shaping.rig.hardware.devices import Valve
from shaping.rig.task.clock import Clock


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


DISAGREEMENT = 0.5
"""How far (as a fraction of the fitted slope) one measurement's µL per ms may lie from the
fit before the measurements are said to disagree (a mistyped weight, a valve that sticks)."""

SHORTEST_OPENING_MS = 5.0
"""A solenoid valve hardly opens in less time: shorter openings give unreliable volumes."""


@dataclass(frozen=True)
class CalibrationCheck:
    """What :func:`check_calibration` found.

    Attributes:
        refused: reasons the calibration is impossible (outside the hard bounds).
        warnings: reasons it is implausible (outside the plausible bounds, and more).
    """

    refused: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing refused and nothing implausible."""
        return not self.refused and not self.warnings


def _outside(value: float, bounds: tuple[float, float]) -> bool:
    return not bounds[0] <= value <= bounds[1]


def check_calibration(
    points: Sequence[CalibrationPoint], ml_per_ms: float, bounds: CalibrationBounds
) -> CalibrationCheck:
    """Holds each measurement's volume per opening and the fitted slope against ``bounds``."""
    check = CalibrationCheck()
    for point in points:
        ul = point.ml_per_pulse * 1000
        where = f"{point.pulses} x {point.open_ms:g} ms gave {ul:.3g} µL per opening"
        if _outside(ul, bounds.hard_ul_per_opening):
            low, high = bounds.hard_ul_per_opening
            check.refused.append(f"{where}; a valve gives {low:g} to {high:g} µL")
        elif _outside(ul, bounds.ul_per_opening):
            low, high = bounds.ul_per_opening
            check.warnings.append(f"{where}; plausible: {low:g} to {high:g} µL")
        if point.open_ms < SHORTEST_OPENING_MS:
            check.warnings.append(
                f"{point.open_ms:g} ms is shorter than a solenoid valve needs to open "
                f"({SHORTEST_OPENING_MS:g} ms); measure longer openings"
            )
        rate = point.ml_per_pulse / point.open_ms
        if len(points) > 1 and abs(rate - ml_per_ms) > DISAGREEMENT * ml_per_ms:
            check.warnings.append(
                f"the measurements disagree: {point.open_ms:g} ms gave {rate * 1000:.3g} µL/ms, "
                f"the fit through all of them {ml_per_ms * 1000:.3g} µL/ms; weigh again"
            )
    slope = ml_per_ms * 1000
    if _outside(slope, bounds.hard_ul_per_ms):
        low, high = bounds.hard_ul_per_ms
        check.refused.append(f"the slope {slope:.3g} µL/ms is impossible ({low:g} to {high:g})")
    elif _outside(slope, bounds.ul_per_ms):
        low, high = bounds.ul_per_ms
        check.warnings.append(f"the slope {slope:.3g} µL/ms is implausible ({low:g} to {high:g})")
    return check


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
