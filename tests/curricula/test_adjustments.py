"""Per-mouse parameter adjustments on the curriculum side: `check_adjustment` judges a
trainer's request against the stage's allowed adjustments and limits, and `adjusted_parameters`
applies a mouse's adjustments where its stage allows them."""

from __future__ import annotations

import pytest
import yaml

from shaping.services.curricula.engine import CompiledCurriculum
from shaping.services.curricula.validate import compile_curriculum
from shaping.services.domain.errors import CurriculumError
from tests.support.scripts import REPO

BASIC = yaml.safe_load((REPO / "curricula" / "basic-shaping.yaml").read_text())


def basic(**changes: object) -> CompiledCurriculum:
    document = {**BASIC, **changes}
    return compile_curriculum(document)


def with_stage_adjustment() -> CompiledCurriculum:
    """basic-shaping where s2_training alone also lets trainers change the difficulty."""
    stages = [dict(s) for s in BASIC["stages"]]
    stages[1]["adjustable"] = {"difficulty": {"minimum": 0.1, "maximum": 0.5}}
    return basic(stages=stages)


def test_an_adjustment_within_the_limits_is_allowed() -> None:
    curriculum = basic()
    curriculum.check_adjustment("s2_training", "max_trials", 500)
    curriculum.check_adjustment("s2_training", "session_minutes", 60)
    curriculum.check_adjustment("s2_training", "max_trials", 100)  # bounds are inclusive
    curriculum.check_adjustment("s2_training", "max_trials", None)  # clearing: always


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("max_trials", 5000, "max_trials = 5000 is outside the allowed >= 100 and <= 1000"),
        ("max_trials", 99, "max_trials = 99 is outside the allowed >= 100 and <= 1000"),
        (
            "difficulty",
            0.1,
            "difficulty is not adjustable at s2_training (adjustable there: max_trials, "
            "session_minutes)",
        ),
        ("max_trials", 250.5, "max_trials = 250.5 is not of the type of its value 300"),
        ("max_trials", True, "max_trials = True is not of the type of its value 300"),
        ("max_trials", "lots", "max_trials = 'lots' is not of the type of its value 300"),
    ],
)
def test_an_adjustment_outside_what_the_curriculum_allows_is_refused(
    name: str, value: object, message: str
) -> None:
    with pytest.raises(CurriculumError) as caught:
        basic().check_adjustment("s2_training", name, value)  # type: ignore[arg-type]
    assert str(caught.value) == message


def test_an_unknown_stage_is_an_error_too() -> None:
    with pytest.raises(CurriculumError, match="has no stage 's9'"):
        basic().check_adjustment("s9", "max_trials", 500)


def test_several_refusals_are_reported_together() -> None:
    with pytest.raises(CurriculumError) as caught:
        basic().check_adjustments(
            "s1_habituation", {"max_trials": 5000, "difficulty": 0.2, "session_minutes": 30}
        )
    assert str(caught.value).split("; ") == [
        "max_trials = 5000 is outside the allowed >= 100 and <= 1000",
        "difficulty is not adjustable at s1_habituation (adjustable there: max_trials, "
        "session_minutes)",
    ]


def test_a_stage_can_allow_more_than_the_curriculum() -> None:
    curriculum = with_stage_adjustment()
    curriculum.check_adjustment("s2_training", "difficulty", 0.2)
    with pytest.raises(CurriculumError, match="difficulty is not adjustable at s3_full_task"):
        curriculum.check_adjustment("s3_full_task", "difficulty", 0.2)


def test_adjustments_apply_where_the_stage_allows_them() -> None:
    curriculum = with_stage_adjustment()
    adjustments = {"max_trials": 600, "difficulty": 0.2, "session_minutes": None}
    at_s2, applied, skipped = curriculum.adjusted_parameters("s2_training", adjustments)
    assert applied == {"difficulty": 0.2, "max_trials": 600}
    assert skipped == {}
    assert at_s2 == {**curriculum.parameters("s2_training"), **applied}

    at_s3, applied, skipped = curriculum.adjusted_parameters("s3_full_task", adjustments)
    assert applied == {"max_trials": 600}
    assert at_s3["difficulty"] == curriculum.parameters("s3_full_task")["difficulty"] == 0.6
    assert skipped == {
        "difficulty": "difficulty is not adjustable at s3_full_task (adjustable there: "
        "max_trials, session_minutes)"
    }


def test_adjustments_go_on_top_of_what_the_policies_computed() -> None:
    curriculum = basic()
    computed = {**curriculum.parameters("s2_training"), "timeout_s": 9.5, "max_trials": 350}
    parameters, applied, _ = curriculum.adjusted_parameters(
        "s2_training", {"max_trials": 700}, computed
    )
    assert parameters == {**computed, "max_trials": 700}
    assert applied == {"max_trials": 700}


def test_adjust_puts_the_stage_value_back_when_an_adjustment_is_cleared() -> None:
    curriculum = basic()
    adjusted = curriculum.adjust(
        "s2_training", curriculum.parameters("s2_training"), {"max_trials": 500}
    )
    assert adjusted["max_trials"] == 500
    cleared = curriculum.adjust("s2_training", adjusted, {"max_trials": None})
    assert cleared == curriculum.parameters("s2_training")
