"""A lab's welfare policy file is checked like a curriculum: every problem with the file and the
line at fault; unknown keys and methods, and thresholds out of range, are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from shaping.services.curricula.policy import PolicyInvalid, load_policy, parse_policy
from tests.support.scripts import REPO

POLICIES = REPO / "policies"

GOOD = """\
policy: lab-85
zone: Europe/Lisbon
expected_weight:
  method: reference_percent
thresholds:
  minimum_percent: 85
  attention_margin: 2
requirement:
  ml_per_gram: 0.04
  ml_per_gram_below_minimum: 0.05
  minimum_ml: 1.0
supplement: {min_ml: 1.0, max_ml: 3.5}
weighing:
  by_hour: 11
  max_jump_percent: 12
  plausible_grams: [10, 50]
water: {largest_ml: 8}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyInvalid) as caught:
        parse_policy(text, "lab.yaml")
    return [str(p) for p in caught.value.problems]


def test_the_shipped_policies_load() -> None:
    lab85 = load_policy(POLICIES / "lab-85.yaml")
    assert (lab85.name, lab85.expected_method, lab85.minimum_percent) == (
        "lab-85",
        "reference_percent",
        85.0,
    )
    london = load_policy(POLICIES / "london-formula.yaml")
    assert london.expected_method == "growth_curve" and london.growth_curve is not None
    assert london.growth_curve.grams("F", 56) == 18.0


def test_a_policy_sets_every_value() -> None:
    policy = parse_policy(GOOD)
    assert policy.minimum_percent == 85.0 and policy.attention_margin == 2.0
    assert (policy.ml_per_gram, policy.ml_per_gram_below_minimum) == (0.04, 0.05)
    assert (policy.supplement_min_ml, policy.supplement_max_ml) == (1.0, 3.5)
    assert (policy.weigh_by_hour, policy.max_jump_percent) == (11, 12.0)
    assert policy.plausible_grams == (10.0, 50.0) and policy.largest_water_ml == 8.0
    assert str(policy.zone) == "Europe/Lisbon"


def test_an_unknown_key_is_refused_with_its_line() -> None:
    text = GOOD.replace("  attention_margin: 2\n", "  attention_margin: 2\n  warn_at: 83\n")
    assert problems(text) == [
        "lab.yaml:8: unknown key 'warn_at' in thresholds (known: minimum_percent, attention_margin)"
    ]
    assert problems(GOOD + "alerts: {}\n")[0].startswith("lab.yaml:18: unknown key 'alerts'")


def test_an_unknown_method_is_refused_with_its_line() -> None:
    text = GOOD.replace("method: reference_percent", "method: zscore")
    assert problems(text) == [
        "lab.yaml:4: unknown expected-weight method 'zscore' (known: reference_percent, "
        "growth_curve)"
    ]


@pytest.mark.parametrize("value", ["70", "95", "eighty"])
def test_a_minimum_out_of_range_is_refused_with_its_line(value: str) -> None:
    [problem] = problems(GOOD.replace("minimum_percent: 85", f"minimum_percent: {value}"))
    assert problem.startswith("lab.yaml:6: thresholds.minimum_percent must be")


def test_every_problem_is_reported_at_once() -> None:
    text = (
        GOOD.replace("minimum_percent: 85", "minimum_percent: 60")
        .replace("by_hour: 11", "by_hour: 25")
        .replace("[10, 50]", "[50, 10]")
        .replace("Europe/Lisbon", "Mars/Olympus")
    )
    lines = [p.split(":")[1] for p in problems(text)]
    assert sorted(lines, key=int) == ["2", "6", "14", "16"]


def test_growth_curve_problems() -> None:
    no_table = GOOD.replace("method: reference_percent", "method: growth_curve")
    assert "needs a growth_curve table" in problems(no_table)[0]
    curve = (
        "policy: x\nexpected_weight:\n  method: growth_curve\n  growth_curve:\n"
        "    - {age_days: 56, F: 18.0}\n    - {age_days: 50, F: 19.0}\n"
    )
    assert problems(curve) == ["lab.yaml:6: growth_curve ages must increase (F: 50 after 56)"]
    stray = GOOD.replace(
        "  method: reference_percent\n",
        "  method: reference_percent\n  growth_curve:\n    - {age_days: 1, F: 1}\n",
    )
    assert "only read with `method: growth_curve`" in problems(stray)[0]


def test_syntax_errors_and_duplicates_have_lines(tmp_path: Path) -> None:
    assert problems("policy: x\npolicy: y\n") == [
        "lab.yaml:2: key 'policy' is given twice (first on line 1)"
    ]
    assert problems("policy: [x\n")[0].startswith("lab.yaml:")
    assert "give the policy a name" in problems("zone: UTC\n")[0]
    with pytest.raises(PolicyInvalid, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")
