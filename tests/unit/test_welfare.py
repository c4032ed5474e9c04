"""Welfare math (services/domain/welfare.py) with numbers checked by hand against the anchors:
Alyx's 0.04 mL/g (0.05 mL/g at or below the minimum) net of the implant, attention at the
minimum + 2 %, warning at or below the minimum; AIND's supplements clipped to 1-3.5 mL, above
which animal services are alerted."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from shaping.services.domain.state import Husbandry, Restriction, WaterEntry, WeightEntry
from shaping.services.domain.welfare import (
    GrowthCurve,
    WelfarePolicy,
    expected_grams,
    percent_of_expected,
    status_of,
    water_problem,
    weight_problem,
    welfare_status,
)

DAY = date(2026, 3, 2)
MORNING = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
POLICY = WelfarePolicy(
    name="test", minimum_percent=80.0, minimum_ml=0.5, minimum_ml_below_minimum=0.5
)


def restricted(
    *weights: float, implant: float = 2.0, reference: float = 25.0, **kw: object
) -> Husbandry:
    """A mouse restricted a week ago (reference 25 g, implant 2 g), weighed this morning."""
    start = MORNING - timedelta(days=7)
    return Husbandry(
        weights=tuple(
            WeightEntry(at=MORNING - timedelta(hours=len(weights) - 1 - i), grams=g)
            for i, g in enumerate(weights)
        ),
        restriction=Restriction(
            started_at=start,
            reference_grams=reference,
            reference_method="measured",
            implant_grams=implant,
            **kw,  # type: ignore[arg-type]
        ),
    )


def test_percent_is_net_of_the_implant() -> None:
    # (21 - 2) / (25 - 2) = 19 / 23 = 82.61 %
    assert percent_of_expected(21.0, 25.0, 2.0) == pytest.approx(82.6087, abs=1e-4)
    assert percent_of_expected(21.0, 25.0, 0.0) == pytest.approx(84.0)


@pytest.mark.parametrize(
    ("grams", "percent", "status", "required"),
    [
        # 19/23 = 82.61 %: above 80 + 2: ok; 0.04 mL/g x 19 g = 0.76 mL
        (21.0, 82.6087, "ok", 0.76),
        # 18.8/23 = 81.74 %: at or below 82: attention; 0.04 x 18.8 = 0.752 mL
        (20.8, 81.7391, "attention", 0.752),
        # 18.4/23 = 80.00 %: at the minimum: warning; the higher rate, 0.05 x 18.4 = 0.92 mL
        (20.4, 80.0, "warning", 0.92),
        # 17/23 = 73.9 %: below: warning; 0.05 x 17 = 0.85 mL
        (19.0, 73.913, "warning", 0.85),
    ],
)
def test_status_and_requirement_by_hand(
    grams: float, percent: float, status: str, required: float
) -> None:
    found = welfare_status(restricted(grams), POLICY, DAY)
    assert found.percent == pytest.approx(percent, abs=1e-3)
    assert found.status == status
    assert found.requirement_ml == pytest.approx(required)
    assert found.expected_grams == 25.0


def test_attention_starts_exactly_at_minimum_plus_margin() -> None:
    assert status_of(82.0, POLICY) == "attention"
    assert status_of(82.01, POLICY) == "ok"
    assert status_of(80.0, POLICY) == "warning"
    assert status_of(80.01, POLICY) == "attention"
    lab85 = WelfarePolicy(minimum_percent=85.0)
    assert [status_of(p, lab85) for p in (85.0, 86.5, 87.0, 87.5)] == [
        "warning",
        "attention",
        "attention",
        "ok",
    ]


def test_the_minimum_ml_is_the_floor_of_the_requirement() -> None:
    policy = WelfarePolicy(minimum_ml=1.0)  # 0.04 x 19 = 0.76 < 1.0
    assert welfare_status(restricted(21.0), policy, DAY).requirement_ml == 1.0


def test_water_given_today_counts_and_the_supplement_is_clipped() -> None:
    water = (
        WaterEntry(at=MORNING + timedelta(hours=2), ml=0.3, kind="earned"),
        WaterEntry(at=MORNING - timedelta(days=1), ml=2.0, kind="supplement"),  # yesterday
    )
    husbandry = restricted(20.4).model_copy(update={"water": water})
    found = welfare_status(husbandry, POLICY, DAY)
    assert dict(found.water_ml) == {"earned": 0.3}
    # 0.92 required - 0.3 earned = 0.62 still due; the smallest supplement is 1 mL
    assert found.still_required_ml == pytest.approx(0.62)
    assert found.supplement_ml == 1.0 and not found.alert_animal_services


def test_more_due_than_the_largest_supplement_alerts_animal_services() -> None:
    # 50 g, implant 2 g, reference 80 g: 48/78 = 61.5 %, warning: 0.05 x 48 = 2.4 mL due
    husbandry = restricted(50.0, reference=80.0)
    policy = WelfarePolicy(supplement_max_ml=2.0)
    found = welfare_status(husbandry, policy, DAY)
    assert found.still_required_ml == pytest.approx(2.4)
    assert found.supplement_ml == 2.0 and found.alert_animal_services
    assert "alert animal services" in found.advice()


def test_free_access_meets_the_day() -> None:
    water = (WaterEntry(at=MORNING, ml=0.0, kind="free_access"),)
    found = welfare_status(restricted(21.0).model_copy(update={"water": water}), POLICY, DAY)
    assert found.free_access and found.still_required_ml == 0.0 and found.supplement_ml == 0.0


def test_a_restricted_mouse_not_weighed_today() -> None:
    husbandry = restricted(21.0)
    tomorrow = DAY + timedelta(days=1)
    noon = datetime(2026, 3, 3, 12, 30, tzinfo=UTC)
    found = welfare_status(husbandry, POLICY, tomorrow, now=noon)
    assert found.status == "not_weighed_today" and not found.weighed_today
    assert found.weigh_overdue  # past the policy's hour (12)
    assert found.requirement_ml == pytest.approx(0.76)  # from the last weight
    early = welfare_status(husbandry, POLICY, tomorrow, now=noon.replace(hour=8))
    assert not early.weigh_overdue


def test_an_unrestricted_mouse_has_no_requirement() -> None:
    found = welfare_status(Husbandry(weights=(WeightEntry(at=MORNING, grams=22.0),)), POLICY, DAY)
    assert found.status == "unrestricted" and found.requirement_ml is None


def test_the_lab_day_follows_the_policy_zone() -> None:
    from zoneinfo import ZoneInfo

    late = datetime(2026, 3, 2, 23, 30, tzinfo=UTC)  # already 3 March in Tokyo
    tokyo = WelfarePolicy(zone=ZoneInfo("Asia/Tokyo"))
    assert tokyo.day_of(late) == date(2026, 3, 3)
    assert WelfarePolicy().day_of(late) == date(2026, 3, 2)


def test_the_growth_curve_scales_the_reference_with_age() -> None:
    curve = GrowthCurve({"F": ((56.0, 18.0), (84.0, 20.5))})
    policy = WelfarePolicy(expected_method="growth_curve", growth_curve=curve)
    born = (MORNING - timedelta(days=7)).date() - timedelta(days=56)  # 56 days old at start
    husbandry = restricted(20.0, reference=20.0, birth_date=born.isoformat(), sex="F")
    # 63 days old today: the curve is 18 + 2.5 x 7/28 = 18.625 g; the net reference (18 g)
    # grows by 18.625/18: expected = 2 + 18 x 18.625 / 18 = 20.625 g
    assert expected_grams(husbandry, policy, DAY) == pytest.approx(20.625)
    # Without a birth date the reference itself is expected.
    assert expected_grams(restricted(20.0, reference=20.0), policy, DAY) == 20.0
    # U: the mean of both sexes, when the curve has both.
    both = GrowthCurve({"F": ((0.0, 10.0), (100.0, 20.0)), "M": ((0.0, 12.0), (100.0, 24.0))})
    assert both.grams("U", 50.0) == pytest.approx(16.5)
    assert curve.grams("M", 60.0) is None


def test_implausible_weights_and_jumps() -> None:
    husbandry = restricted(24.0)
    assert "not a plausible weight" in (weight_problem(husbandry, 240.0, True, POLICY) or "")
    jump = weight_problem(husbandry, 21.0, False, POLICY)
    assert jump is not None and "12.5 % below the last weight (24 g" in jump and "--confirm" in jump
    assert weight_problem(husbandry, 21.0, True, POLICY) is None
    assert weight_problem(husbandry, 22.0, False, POLICY) is None  # 8.3 %
    assert weight_problem(Husbandry(), 21.0, False, POLICY) is None  # no last weight
    assert water_problem(12.0, "supplement", POLICY) is not None
    assert water_problem(3.0, "supplement", POLICY) is None
