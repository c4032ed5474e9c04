"""Welfare math: a restricted mouse's expected weight, its status and its water for the day.

Pure functions of a mouse's husbandry record (:class:`~shaping.services.domain.state.Husbandry`,
folded from the log), a lab's :class:`WelfarePolicy` and a day; no I/O, no clock. The day
comes from the caller, from the log's time (a command's ``requested_at``, or the time a person
asks), never from a rig's clock; the policy's ``zone`` says where a lab's day begins.

The numbers follow what labs run (docs: the welfare side, IBL's Alyx and AIND's rig GUI):

- every weight is taken *net of the implant* (head plate): ``net = grams - implant_grams``;
- expected weight: the restriction's reference weight (``reference_percent``), or that
  reference scaled along the lab's growth curve from the mouse's age at the start of the
  restriction to its age today (``growth_curve``, when the birth date and sex are known);
- percent of expected: ``100 * (weight - implant) / (expected - implant)``;
- status: ``warning`` at or below the minimum percent, ``attention`` at or below minimum +
  margin (2 %), else ``ok``; ``not_weighed_today`` for a restricted mouse without a weight
  today; ``unrestricted`` for a mouse not on restriction;
- requirement for the day: ``ml_per_gram`` (0.04) times the net weight, or
  ``ml_per_gram_below_minimum`` (0.05) at or below the minimum, and never less than the
  matching minimum in mL; free access that day meets it;
- suggested supplement: what is still due, clipped to ``[supplement_min_ml,
  supplement_max_ml]``; more than the maximum still due means: alert animal services.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from typing import Literal

from shaping.services.domain.state import Husbandry, WeightEntry

ExpectedMethod = Literal["reference_percent", "growth_curve"]
EXPECTED_METHODS: tuple[ExpectedMethod, ...] = ("reference_percent", "growth_curve")

Status = Literal["ok", "attention", "warning", "not_weighed_today", "unrestricted"]

MINIMUM_PERCENT_RANGE = (75.0, 90.0)
"""The minimum percent of expected weight a policy may set (labs use 75, 80 or 85)."""


@dataclass(frozen=True)
class GrowthCurve:
    """Expected grams by age in days, per sex (``F``, ``M``; ``U`` uses their mean when both
    exist), interpolated linearly between points and held flat beyond the ends."""

    points: Mapping[str, tuple[tuple[float, float], ...]]

    def grams(self, sex: str | None, age_days: float) -> float | None:
        """The curve's grams at ``age_days`` for ``sex``; None when the curve has no such sex."""
        if sex is not None and sex in self.points:
            return _interpolate(self.points[sex], age_days)
        if sex in (None, "U") and "F" in self.points and "M" in self.points:
            female = _interpolate(self.points["F"], age_days)
            male = _interpolate(self.points["M"], age_days)
            return (female + male) / 2
        return None


def _interpolate(points: tuple[tuple[float, float], ...], x: float) -> float:
    ages = [a for a, _ in points]
    if x <= ages[0]:
        return points[0][1]
    if x >= ages[-1]:
        return points[-1][1]
    i = bisect.bisect_right(ages, x)
    (a0, g0), (a1, g1) = points[i - 1], points[i]
    return g0 + (g1 - g0) * (x - a0) / (a1 - a0)


@dataclass(frozen=True)
class WelfarePolicy:
    """A lab's welfare policy (``policies/*.yaml``, read by
    :func:`shaping.services.curricula.policy.load_policy`); the defaults are a cautious lab's.

    Attributes:
        name: the policy's name, shown with every status.
        expected_method: ``reference_percent`` or ``growth_curve``.
        growth_curve: the lab's curve (``growth_curve`` method only).
        minimum_percent: warning at or below this percent of expected weight (75 to 90).
        attention_margin: attention at or below ``minimum_percent`` + this.
        ml_per_gram, ml_per_gram_below_minimum: the daily requirement per net gram, above
            and at-or-below the minimum.
        minimum_ml, minimum_ml_below_minimum: the least requirement in mL of each.
        supplement_min_ml, supplement_max_ml: a suggested supplement is clipped to these;
            more still due than the maximum: alert animal services.
        weigh_by_hour: the hour (lab time, 0-23) by which a restricted mouse must be weighed.
        max_jump_percent: the largest change from the last weight accepted without
            confirmation.
        plausible_grams: the weights a mouse can have (low, high); others are refused.
        largest_water_ml: the largest single water entry accepted.
        zone: the lab's time zone (where its day begins).
    """

    name: str = "default"
    expected_method: ExpectedMethod = "reference_percent"
    growth_curve: GrowthCurve | None = None
    minimum_percent: float = 80.0
    attention_margin: float = 2.0
    ml_per_gram: float = 0.04
    ml_per_gram_below_minimum: float = 0.05
    minimum_ml: float = 1.0
    minimum_ml_below_minimum: float = 1.0
    supplement_min_ml: float = 1.0
    supplement_max_ml: float = 3.5
    weigh_by_hour: int = 12
    max_jump_percent: float = 10.0
    plausible_grams: tuple[float, float] = (8.0, 60.0)
    largest_water_ml: float = 10.0
    zone: tzinfo = field(default=UTC)

    def day_of(self, at: datetime) -> date:
        """The lab's calendar day of a moment."""
        return at.astimezone(self.zone).date()

    def hour_of(self, at: datetime) -> int:
        """The lab's hour of a moment."""
        return at.astimezone(self.zone).hour


DEFAULT_POLICY = WelfarePolicy()
"""The policy in force where a lab has configured none."""


@dataclass(frozen=True)
class WelfareStatus:
    """A mouse's welfare on one day (what ``shaping welfare`` shows).

    Attributes:
        day: the lab day.
        policy: the policy's name.
        restricted: whether the mouse is on water restriction.
        status: ok, attention, warning, not_weighed_today or unrestricted.
        latest_grams, latest_at: the newest weight (any day), if any.
        weighed_today: whether the newest weight is of ``day``.
        expected_grams: the expected weight (gross, implant included), when restricted.
        percent: the newest weight's percent of expected (net of implant), when known.
        water_ml: water given on ``day`` by kind (earned, supplement, free_access).
        free_access: whether the mouse had free access to water on ``day``.
        requirement_ml: the day's requirement (None: not restricted).
        still_required_ml: what is still due today (0 when met).
        supplement_ml: the suggested supplement (0: none needed).
        alert_animal_services: more is due than the largest supplement.
        weigh_overdue: restricted, not weighed today, and past the policy's hour.
    """

    day: date
    policy: str
    restricted: bool
    status: Status
    latest_grams: float | None = None
    latest_at: datetime | None = None
    weighed_today: bool = False
    expected_grams: float | None = None
    percent: float | None = None
    water_ml: Mapping[str, float] = field(default_factory=dict)
    free_access: bool = False
    requirement_ml: float | None = None
    still_required_ml: float | None = None
    supplement_ml: float = 0.0
    alert_animal_services: bool = False
    weigh_overdue: bool = False

    @property
    def given_ml(self) -> float:
        """All water given on the day."""
        return sum(self.water_ml.values())

    def advice(self) -> str:
        """One line for a person: what to do now."""
        if not self.restricted:
            return "not on water restriction"
        parts = []
        if self.status == "not_weighed_today":
            parts.append("weigh the mouse" + (" (overdue)" if self.weigh_overdue else ""))
        if self.status == "warning":
            parts.append("at or below the minimum weight: check the mouse, give water")
        if self.alert_animal_services:
            parts.append(
                f"{self.still_required_ml:.2f} mL still due, more than a supplement of "
                f"{self.supplement_ml:.2f} mL: alert animal services"
            )
        elif self.supplement_ml > 0:
            parts.append(f"give {self.supplement_ml:.2f} mL")
        return "; ".join(parts) or "nothing due"


def expected_grams(husbandry: Husbandry, policy: WelfarePolicy, day: date) -> float | None:
    """The mouse's expected weight on ``day`` (gross, implant included); None when it is not
    restricted."""
    restriction = husbandry.restriction
    if restriction is None:
        return None
    implant = restriction.implant_grams
    reference_net = restriction.reference_grams - implant
    if (
        policy.expected_method == "growth_curve"
        and policy.growth_curve is not None
        and restriction.birth_date is not None
    ):
        born = date.fromisoformat(restriction.birth_date)
        start_day = policy.day_of(restriction.started_at)
        at_start = policy.growth_curve.grams(restriction.sex, (start_day - born).days)
        now = policy.growth_curve.grams(restriction.sex, (day - born).days)
        if at_start is not None and now is not None and at_start > 0:
            return implant + reference_net * now / at_start
    return restriction.reference_grams


def percent_of_expected(grams: float, expected: float, implant: float) -> float | None:
    """``100 * (grams - implant) / (expected - implant)``; None when the expected net weight is
    not positive."""
    net_expected = expected - implant
    if net_expected <= 0:
        return None
    return 100.0 * (grams - implant) / net_expected


def status_of(percent: float | None, policy: WelfarePolicy) -> Status:
    """``warning`` at or below the minimum, ``attention`` at or below minimum + margin, else
    ``ok`` (and ``ok`` when no percent is known)."""
    if percent is None:
        return "ok"
    # Rounded to a hundredth so that a weight exactly at a threshold counts as at it.
    shown = round(percent, 2)
    if shown <= policy.minimum_percent:
        return "warning"
    if shown <= policy.minimum_percent + policy.attention_margin:
        return "attention"
    return "ok"


def requirement_ml(
    grams: float | None, implant: float, below_minimum: bool, policy: WelfarePolicy
) -> float:
    """The day's water requirement: mL per net gram (the higher rate at or below the
    minimum), never less than the matching minimum in mL."""
    if below_minimum:
        rate, least = policy.ml_per_gram_below_minimum, policy.minimum_ml_below_minimum
    else:
        rate, least = policy.ml_per_gram, policy.minimum_ml
    if grams is None:
        return least
    return max(least, rate * max(grams - implant, 0.0))


def supplement(still_due: float, policy: WelfarePolicy) -> tuple[float, bool]:
    """The suggested supplement for what is still due, and whether more is due than the
    largest supplement (alert animal services)."""
    if still_due <= 0:
        return 0.0, False
    suggested = min(max(still_due, policy.supplement_min_ml), policy.supplement_max_ml)
    return suggested, still_due > policy.supplement_max_ml


def _latest(husbandry: Husbandry) -> WeightEntry | None:
    return husbandry.weights[-1] if husbandry.weights else None


def welfare_status(
    husbandry: Husbandry, policy: WelfarePolicy, day: date, now: datetime | None = None
) -> WelfareStatus:
    """The mouse's welfare on ``day`` (a lab day, see :meth:`WelfarePolicy.day_of`).

    Args:
        now: the moment asked at (the log's time), for ``weigh_overdue``; None: not judged.
    """
    latest = _latest(husbandry)
    latest_grams = latest.grams if latest is not None else None
    latest_at = latest.at if latest is not None else None
    weighed_today = latest is not None and policy.day_of(latest.at) == day
    water: dict[str, float] = {}
    for entry in husbandry.water:
        if policy.day_of(entry.at) == day:
            water[entry.kind] = round(water.get(entry.kind, 0.0) + entry.ml, 6)
    free = "free_access" in water
    restriction = husbandry.restriction
    if restriction is None:
        return WelfareStatus(
            day,
            policy.name,
            False,
            "unrestricted",
            latest_grams,
            latest_at,
            weighed_today,
            water_ml=water,
            free_access=free,
        )
    expected = expected_grams(husbandry, policy, day)
    implant = restriction.implant_grams
    percent = (
        percent_of_expected(latest_grams, expected, implant)
        if latest_grams is not None and expected is not None
        else None
    )
    status = status_of(percent, policy)
    below = status == "warning"
    if not weighed_today:
        status = "not_weighed_today"
    required = requirement_ml(latest_grams, implant, below, policy)
    given = sum(water.values())
    still = 0.0 if free else max(0.0, round(required - given, 6))
    suggested, alert = supplement(still, policy)
    overdue = (
        not weighed_today
        and now is not None
        and policy.day_of(now) == day
        and policy.hour_of(now) >= policy.weigh_by_hour
    )
    return WelfareStatus(
        day,
        policy.name,
        True,
        status,
        latest_grams,
        latest_at,
        weighed_today,
        expected,
        percent,
        water,
        free,
        required,
        still,
        suggested,
        alert,
        overdue,
    )


def weight_problem(
    husbandry: Husbandry, grams: float, confirmed: bool, policy: WelfarePolicy
) -> str | None:
    """Why a new weight is refused by the policy, or None: outside the plausible range
    (always), or further than ``max_jump_percent`` from the last weight (unless confirmed)."""
    low, high = policy.plausible_grams
    if not low <= grams <= high:
        return (
            f"{grams:g} g is not a plausible weight for a mouse (policy {policy.name}: "
            f"{low:g} to {high:g} g); check the scale and the unit"
        )
    last = _latest(husbandry)
    if last is None or confirmed:
        return None
    change = 100.0 * (grams - last.grams) / last.grams
    if abs(change) > policy.max_jump_percent:
        direction = "below" if change < 0 else "above"
        return (
            f"{grams:g} g is {abs(change):.1f} % {direction} the last weight ({last.grams:g} g "
            f"on {policy.day_of(last.at).isoformat()}); policy {policy.name} accepts at most "
            f"{policy.max_jump_percent:g} % without confirmation: weigh again, or confirm it "
            "(--confirm)"
        )
    return None


def water_problem(ml: float, kind: str, policy: WelfarePolicy) -> str | None:
    """Why a water entry is refused by the policy, or None (more than its largest entry)."""
    if ml > policy.largest_water_ml:
        return (
            f"{ml:g} mL of {kind} water in one entry is more than policy {policy.name} accepts "
            f"({policy.largest_water_ml:g} mL); check the volume and the unit"
        )
    return None
