"""Small statistics for benchmark figures (no numpy needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    if low == high:
        return ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


@dataclass(frozen=True)
class Figure:
    """One reported figure: the median over repeats, with every repeat's value kept.

    Attributes:
        section: ``core``, ``kafka`` or ``latency``.
        name: what was measured, as shown in the table.
        unit: ``events/s``, ``msgs/s``, ``ms``...
        repeats: the value of each repeat.
        note: a short remark for the table (workload size, what is timed).
        baseline: True for raw Kafka comparison figures.
    """

    section: str
    name: str
    unit: str
    repeats: tuple[float, ...]
    note: str = ""
    baseline: bool = False

    @property
    def value(self) -> float:
        return median(self.repeats)


@dataclass
class Results:
    """Figures collected by a run, in the order they were measured."""

    figures: list[Figure] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        print(
            f"  {figure.name}: {format_value(figure.value, figure.unit)} {figure.unit}", flush=True
        )

    def detail(self, text: str) -> None:
        """A line of context (sizes, per-repeat remarks) for the report's notes."""
        self.details.append(text)


def format_value(value: float, unit: str) -> str:
    """Rates without decimals and thousands separators, milliseconds with one or two."""
    if unit == "ms":
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"
