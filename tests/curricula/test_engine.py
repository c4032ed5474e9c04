"""The curriculum engine inside the training core: first rule that holds wins, in-stage
policies carry parameters from session to session, per-mouse adjustments stay on-curriculum."""

from __future__ import annotations

import pytest

from shaping.schemas.events import AssignmentIssued, StageTransitioned
from shaping.services.curricula.catalog import default_catalog
from shaping.services.domain import CurriculumError, TrainingCore
from tests.support.story import enrolled, run, session, trials


def reach_core() -> TrainingCore:
    return TrainingCore(default_catalog([]))


def decisions_and_assignments(events: list) -> tuple[list, list]:  # type: ignore[type-arg]
    return (
        [e for e in events if isinstance(e, StageTransitioned)],
        [e for e in events if isinstance(e, AssignmentIssued)],
    )


def test_policies_move_the_spouts_out_and_shorten_the_cue_while_the_mouse_stays() -> None:
    core = reach_core()
    story = [
        enrolled("R1", curriculum_name="reach-task"),
        *session("R1", "h-1", trials(correct=25), stage="habituation"),
        *session("R1", "c-1", trials(correct=40), stage="cued_reaching", day=1),
        *session("R1", "c-2", trials(correct=34, incorrect=6), stage="cued_reaching", day=2),
        *session("R1", "c-3", trials(correct=10, incorrect=10), stage="cued_reaching", day=3),
    ]
    _, out = run(core, story, mouse="R1")
    decisions, assignments = decisions_and_assignments(out)
    assert [d.decision for d in decisions] == ["progress", "stay", "stay", "stay"]
    params = [
        (a.stage, a.parameters["spout_position_left"], a.parameters["cue_duration_s"])
        for a in assignments
    ]
    assert params == [
        ("habituation", 1, 10.0),
        ("cued_reaching", 2, 10.0),  # a new stage starts from its own parameters
        ("cued_reaching", 3, 8.0),  # 100% over 40 reaches: spouts out, cue 20% shorter
        ("cued_reaching", 3, 6.4),  # 85%: only the cue shortens
        ("cued_reaching", 3, 6.4),  # 50%: nothing changes, the progress made is kept
    ]
    assert isinstance(params[2][1], int)  # the parameter keeps its type
    # The policies' evaluations are part of the evidence, after the rules.
    evaluated = [(r.rule, r.decision, r.verdict) for r in decisions[1].rule_evaluations]
    assert evaluated == [
        ("accurate_for_three_sessions", "progress", False),
        ("stopped_reaching", "rollback", False),
        ("move_spouts_out", "policy", True),
        ("shorten_cue", "policy", True),
    ]
    assert (
        "In-stage policies set spout_position_left = 3, spout_position_right = 3, "
        "cue_duration_s = 8.0"
    ) in assignments[2].reason_detail


def test_leaving_the_stage_resets_what_the_policies_changed() -> None:
    core = reach_core()
    good = trials(correct=40)
    story = [
        enrolled("R2", curriculum_name="reach-task", start_stage="cued_reaching"),
        *session("R2", "c-1", good, stage="cued_reaching"),
        *session("R2", "c-2", good, stage="cued_reaching", day=1),
        *session("R2", "c-3", good, stage="cued_reaching", day=2),
    ]
    _, out = run(core, story, mouse="R2")
    decisions, assignments = decisions_and_assignments(out)
    assert [d.decision for d in decisions] == ["stay", "stay", "progress"]
    assert decisions[-1].rule == "accurate_for_three_sessions"
    assert (assignments[-1].stage, assignments[-1].parameters["spout_position_left"]) == (
        "full_task",
        7,
    )


def test_first_rule_that_holds_wins_and_none_means_stay() -> None:
    curriculum = default_catalog([]).get("basic-shaping")
    from tests.support.curricula import FakeMetrics

    both = FakeMetrics(
        counters={"sessions_at_stage": 3},
        series={"session_trials": [250]},
        windows={("accuracy", 200): 0.9},
    )
    evaluation = curriculum.evaluate("s3_full_task", both)
    assert (evaluation.decision, evaluation.rule) == ("graduate", "expert")
    assert [r.verdict for r in evaluation.rule_evaluations] == [True, False]
    nothing = FakeMetrics(series={"session_trials": [10]}, windows={("accuracy", 200): 0.7})
    evaluation = curriculum.evaluate("s3_full_task", nothing)
    assert (evaluation.decision, evaluation.to_stage, evaluation.rule) == (
        "stay",
        "s3_full_task",
        None,
    )
    assert curriculum.evaluate("graduated", both).rule_evaluations == []


def test_per_mouse_adjustments_stay_within_what_the_curriculum_allows() -> None:
    curriculum = default_catalog([]).get("basic-shaping")
    base = curriculum.parameters("s2_training")
    adjusted = curriculum.adjust("s2_training", base, {"max_trials": 500})  # type: ignore[attr-defined]
    assert adjusted["max_trials"] == 500 and adjusted["difficulty"] == base["difficulty"]
    with pytest.raises(
        CurriculumError, match="max_trials = 5000 is outside the allowed >= 100 and <= 1000"
    ):
        curriculum.adjust("s2_training", base, {"max_trials": 5000})  # type: ignore[attr-defined]
    with pytest.raises(CurriculumError, match="difficulty is not adjustable"):
        curriculum.adjust("s2_training", base, {"difficulty": 0.1})  # type: ignore[attr-defined]


def test_manual_rules_are_never_evaluated() -> None:
    curriculum = default_catalog([]).get("VisualBehavior_Task1A")
    from tests.support.curricula import FakeMetrics

    stage = curriculum.stage("6_images_A_handoff_ready")  # type: ignore[attr-defined]
    assert [r.rule.trigger for r in stage.rules] == ["auto", "manual"]
    engaged = FakeMetrics(
        counters={"session_total": 30, "sessions_at_stage": 3},
        series={"peak_dprime": [2.0, 2.1, 2.2], "engaged_trials": [300, 300, 300]},
    )
    evaluation = curriculum.evaluate("6_images_A_handoff_ready", engaged)
    assert evaluation.decision == "stay"
    assert [r.rule for r in evaluation.rule_evaluations] == [
        "to_7_images_a_handoff_lapsed_unless_meets_engagement_criteria"
    ]
    lapsed = FakeMetrics(series={"peak_dprime": [2.0, 0.5, 2.2], "engaged_trials": [300] * 3})
    assert curriculum.evaluate("6_images_A_handoff_ready", lapsed).to_stage == (
        "7_images_A_handoff_lapsed"
    )
