"""Reading a lab's welfare policy file (YAML), checked like a curriculum: every problem is
reported with the file and the line at fault, and nothing is guessed (an unknown key or
method, or a threshold out of range, rejects the file).

The file (examples in ``policies/``)::

    policy: lab-85                  # its name, shown with every status
    zone: Europe/Lisbon             # where the lab's day begins (default UTC)
    expected_weight:
      method: reference_percent     # or growth_curve
      growth_curve:                 # growth_curve only: expected grams by age, per sex
        - {age_days: 56, F: 18.0, M: 22.0}
        - {age_days: 84, F: 20.5, M: 25.5}
    thresholds:
      minimum_percent: 85           # warning at or below (75 to 90)
      attention_margin: 2           # attention at or below minimum + margin
    requirement:
      ml_per_gram: 0.04             # per gram net of the implant
      ml_per_gram_below_minimum: 0.05
      minimum_ml: 1.0
      minimum_ml_below_minimum: 1.0
    supplement: {min_ml: 1.0, max_ml: 3.5}   # above max_ml: alert animal services
    weighing:
      by_hour: 12                   # a restricted mouse is weighed by then (lab time)
      max_jump_percent: 10          # larger changes need --confirm
      plausible_grams: [8, 60]
    water: {largest_ml: 10}         # the largest single entry

Every section and key but ``policy`` is optional; what is left out keeps the default of
:class:`~shaping.services.domain.welfare.WelfarePolicy`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shaping.services.curricula.errors import CurriculumInvalid, Problem
from shaping.services.curricula.loader import parse_text
from shaping.services.domain.welfare import (
    EXPECTED_METHODS,
    MINIMUM_PERCENT_RANGE,
    GrowthCurve,
    WelfarePolicy,
)

SECTIONS: dict[str, tuple[str, ...]] = {
    "expected_weight": ("method", "growth_curve"),
    "thresholds": ("minimum_percent", "attention_margin"),
    "requirement": (
        "ml_per_gram",
        "ml_per_gram_below_minimum",
        "minimum_ml",
        "minimum_ml_below_minimum",
    ),
    "supplement": ("min_ml", "max_ml"),
    "weighing": ("by_hour", "max_jump_percent", "plausible_grams"),
    "water": ("largest_ml",),
}
"""Each section of a policy file and the keys it may hold."""

TOP_LEVEL = ("policy", "zone", *SECTIONS)

CURVE_KEYS = ("age_days", "F", "M")


class PolicyInvalid(ValueError):
    """A welfare policy file was rejected; ``problems`` says where and why."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"welfare policy rejected ({len(self.problems)} problem(s)):\n{lines}")


class _Checker:
    def __init__(self, file: str, lines: Mapping[tuple[Any, ...], int]) -> None:
        self.file = file
        self.lines = lines
        self.problems: list[Problem] = []

    def line(self, path: tuple[Any, ...]) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def fail(self, path: tuple[Any, ...], message: str) -> None:
        self.problems.append(Problem(message, self.file, self.line(path)))

    def mapping(self, value: Any, path: tuple[Any, ...], allowed: Sequence[str]) -> dict[str, Any]:
        where = ".".join(str(p) for p in path) or "the file"
        if not isinstance(value, dict):
            self.fail(path, f"{where} must be a mapping of keys to values")
            return {}
        for key in value:
            if key not in allowed:
                self.fail(
                    (*path, key), f"unknown key {key!r} in {where} (known: {', '.join(allowed)})"
                )
        return {k: v for k, v in value.items() if k in allowed}

    def number(
        self,
        section: dict[str, Any],
        path: tuple[Any, ...],
        key: str,
        low: float | None = None,
        high: float | None = None,
        positive: bool = False,
    ) -> float | None:
        if key not in section:
            return None
        value = section[key]
        where = ".".join(str(p) for p in (*path, key))
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.fail((*path, key), f"{where} must be a number, not {value!r}")
            return None
        if positive and value <= 0:
            self.fail((*path, key), f"{where} must be more than 0, not {value!r}")
            return None
        if (low is not None and value < low) or (high is not None and value > high):
            if low is None:
                bounds = f"at most {high:g}"
            elif high is None:
                bounds = f"at least {low:g}"
            else:
                bounds = f"between {low:g} and {high:g}"
            self.fail((*path, key), f"{where} must be {bounds}, not {value!r}")
            return None
        return float(value)


def check_policy(data: Any, file: str, lines: Mapping[tuple[Any, ...], int]) -> WelfarePolicy:
    """Checks a parsed policy document and builds the policy.

    Raises:
        PolicyInvalid: with every problem found, each with its line.
    """
    c = _Checker(file, lines)
    top = c.mapping(data, (), TOP_LEVEL)
    values: dict[str, Any] = {}
    name = top.get("policy")
    if not isinstance(name, str) or not name.strip():
        c.fail(("policy",), "give the policy a name: `policy: <name>`")
    else:
        values["name"] = name.strip()
    if "zone" in top:
        zone = top["zone"]
        try:
            values["zone"] = ZoneInfo(str(zone))
        except (ZoneInfoNotFoundError, ValueError):
            c.fail(("zone",), f"unknown time zone {zone!r} (e.g. Europe/London, UTC)")
    sections = {
        key: c.mapping(top[key], (key,), allowed) for key, allowed in SECTIONS.items() if key in top
    }
    expected = sections.get("expected_weight", {})
    method = expected.get("method", "reference_percent")
    if method not in EXPECTED_METHODS:
        c.fail(
            ("expected_weight", "method"),
            f"unknown expected-weight method {method!r} (known: {', '.join(EXPECTED_METHODS)})",
        )
    else:
        values["expected_method"] = method
    if "growth_curve" in expected:
        if method != "growth_curve":
            c.fail(
                ("expected_weight", "growth_curve"),
                "a growth_curve table is only read with `method: growth_curve`",
            )
        else:
            values["growth_curve"] = _curve(c, expected["growth_curve"])
    elif method == "growth_curve":
        c.fail(
            ("expected_weight", "method"),
            "method growth_curve needs a growth_curve table (age_days and grams by sex)",
        )
    thresholds = sections.get("thresholds", {})
    low, high = MINIMUM_PERCENT_RANGE
    for key, target, kwargs in (
        ("minimum_percent", "minimum_percent", {"low": low, "high": high}),
        ("attention_margin", "attention_margin", {"low": 0.0, "high": 10.0}),
    ):
        found = c.number(thresholds, ("thresholds",), key, **kwargs)  # type: ignore[arg-type]
        if found is not None:
            values[target] = found
    requirement = sections.get("requirement", {})
    for key in SECTIONS["requirement"]:
        found = c.number(
            requirement, ("requirement",), key, low=0.0, high=1.0 if "gram" in key else 10.0
        )
        if found is not None:
            values[key] = found
    supplement = sections.get("supplement", {})
    for key, target in (("min_ml", "supplement_min_ml"), ("max_ml", "supplement_max_ml")):
        found = c.number(supplement, ("supplement",), key, low=0.0, high=10.0)
        if found is not None:
            values[target] = found
    if values.get("supplement_min_ml", 1.0) > values.get("supplement_max_ml", 3.5):
        c.fail(("supplement",), "supplement min_ml must not be more than max_ml")
    weighing = sections.get("weighing", {})
    hour = c.number(weighing, ("weighing",), "by_hour", low=0, high=23)
    if hour is not None:
        if hour != int(hour):
            c.fail(("weighing", "by_hour"), f"weighing.by_hour must be a whole hour, not {hour:g}")
        else:
            values["weigh_by_hour"] = int(hour)
    jump = c.number(weighing, ("weighing",), "max_jump_percent", low=1.0, high=50.0)
    if jump is not None:
        values["max_jump_percent"] = jump
    if "plausible_grams" in weighing:
        values.update(_plausible(c, weighing["plausible_grams"]))
    largest = c.number(
        sections.get("water", {}), ("water",), "largest_ml", positive=True, high=100.0
    )
    if largest is not None:
        values["largest_water_ml"] = largest
    if c.problems:
        raise PolicyInvalid(c.problems)
    return WelfarePolicy(**values)


def _plausible(c: _Checker, value: Any) -> dict[str, Any]:
    path = ("weighing", "plausible_grams")
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        or not 0 < value[0] < value[1]
    ):
        c.fail(
            path, f"weighing.plausible_grams must be [low, high] with 0 < low < high, not {value!r}"
        )
        return {}
    return {"plausible_grams": (float(value[0]), float(value[1]))}


def _curve(c: _Checker, value: Any) -> GrowthCurve | None:
    path: tuple[Any, ...] = ("expected_weight", "growth_curve")
    if not isinstance(value, list) or not value:
        c.fail(path, "growth_curve must be a list of rows like {age_days: 56, F: 18.0, M: 22.0}")
        return None
    points: dict[str, list[tuple[float, float]]] = {"F": [], "M": []}
    before = len(c.problems)
    for index, row in enumerate(value):
        here = (*path, index)
        fields = c.mapping(row, here, CURVE_KEYS)
        age = c.number(fields, here, "age_days", low=0.0, high=3650.0)
        if "age_days" not in fields:
            c.fail(here, "each growth_curve row needs age_days")
        sexes = [s for s in ("F", "M") if s in fields]
        if not sexes:
            c.fail(here, "each growth_curve row needs grams for F, M or both")
        for sex in sexes:
            grams = c.number(fields, here, sex, positive=True, high=200.0)
            if age is not None and grams is not None:
                if points[sex] and age <= points[sex][-1][0]:
                    last = points[sex][-1][0]
                    c.fail(
                        (*here, "age_days"),
                        f"growth_curve ages must increase ({sex}: {age:g} after {last:g})",
                    )
                else:
                    points[sex].append((age, grams))
    if len(c.problems) > before:
        return None
    curve = {name: tuple(p) for name, p in points.items() if p}
    for name, kept in curve.items():
        if len(kept) < 2:
            c.fail(path, f"growth_curve needs at least two ages for {name}")
            return None
    return GrowthCurve(curve)


def parse_policy(text: str, file: str = "<policy>") -> WelfarePolicy:
    """Parses and checks a policy's YAML text.

    Raises:
        PolicyInvalid: a syntax error, a duplicate key, or any problem of the content, with
            its line.
    """
    try:
        data, lines = parse_text(text, file)
    except CurriculumInvalid as exc:
        raise PolicyInvalid(exc.problems) from None
    return check_policy(data, file, lines)


def load_policy(path: Path) -> WelfarePolicy:
    """Reads and checks a welfare policy file.

    Raises:
        PolicyInvalid: the file cannot be read, or any problem of :func:`parse_policy`.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyInvalid([Problem(f"cannot read: {exc.strerror}", str(path))]) from None
    return parse_policy(text, str(path))
