"""The reach task on gpiozero mock pins, driven by a scripted mouse on a virtual clock.

The scripted mouse watches the cue pins and touches a spout (or not) as its script says; a
recorder logs every output pin change in virtual time, so the tests check what the hardware
did (valve open time, sync line, actuator positions), not only what the events say. The
harness is tests/support/reach_harness.py (the safety tests drive it too).
"""

from __future__ import annotations

from typing import Any

import pytest

from shaping.rig.config import (
    SIDES,
    ActuatorSettings,
    ValveCalibration,
)
from shaping.rig.errors import CalibrationError, ParameterError
from shaping.rig.reach import reach_results
from shaping.rig.task.adaptation import TaskState
from shaping.rig.task.parameters import ReachParameters
from shaping.rig.task.rewards import RewardPlan
from tests.support.reach_harness import BASE, OUTPUTS, Harness, Step
from tests.support.rig import PINS, START


def test_a_correct_reach_opens_the_target_valve_for_the_calibrated_time() -> None:
    rig = Harness({**BASE, "reward_volume_ul": 4.0}, [Step("target", 0.5)] * 3)
    ended = rig.run()
    trials = rig.trials()
    assert [t.outcome for t in trials] == ["correct"] * 3
    assert ended.n_trials == 3 and ended.end_reason == "max_trials"
    for trial in trials:
        assert trial.response_side == trial.target_side
        assert trial.reaction_time_s == pytest.approx(0.5)
        assert trial.reward_volume_ul == pytest.approx(4.0)
        assert trial.trial_parameters["reward_ms"] == pytest.approx(40.0)  # 4 µL at 1e-4 ml/ms
    opened = sorted(rig.spans("valve_left") + rig.spans("valve_right"))
    assert len(opened) == 3
    assert all(off - on == pytest.approx(0.040) for on, off in opened)
    targets = [t.target_side for t in trials]
    valves = [d for _, d, s in rig.changes if d.startswith("valve") and s]
    assert valves == [f"valve_{side}" for side in targets]


def test_the_sync_line_is_high_exactly_while_a_cue_is_lit() -> None:
    rig = Harness({**BASE, "max_trials": 4}, [Step("target", 0.7), Step(None), Step("other")])
    rig.run()
    cues = sorted(rig.spans("cue_left") + rig.spans("cue_right"))
    assert len(cues) == 4
    assert rig.spans("sync") == cues


def test_an_incorrect_reach_gets_no_water_and_a_timeout_before_the_next_trial() -> None:
    rig = Harness({**BASE, "max_trials": 2, "timeout_s": 6.0}, [Step("other", 0.4)])
    rig.run()
    first, _ = rig.trials()
    assert first.outcome == "incorrect" and first.reward_volume_ul == 0
    assert first.response_side != first.target_side
    assert not any(d.startswith("valve") for _, d, _ in rig.changes[:4])
    response = rig.onsets[0][0] + 0.4
    assert rig.onsets[1][0] >= response + 6.0 + 1.0  # timeout, then at least iti_min_s
    assert first.occurred_at.timestamp() == pytest.approx(response + 6.0)


def test_no_touch_is_a_miss_and_a_late_touch_within_the_window_still_counts() -> None:
    rig = Harness(
        {**BASE, "max_trials": 2, "cue_duration_s": 2.0, "response_window_s": 5.0},
        [Step(None), Step("target", 3.0)],
    )
    rig.run()
    miss, late = rig.trials()
    assert miss.outcome == "miss" and miss.response_side is None
    assert late.outcome == "correct" and late.reaction_time_s == pytest.approx(3.0)
    cue_spans = sorted(rig.spans("cue_left") + rig.spans("cue_right"))
    assert cue_spans[0][1] - cue_spans[0][0] == pytest.approx(2.0)  # the cue lasts 2 s
    assert miss.occurred_at.timestamp() == pytest.approx(rig.onsets[0][0] + 5.0)
    assert late.trial_parameters["response_window_s"] == 5.0


def test_a_paw_lift_breaks_the_interval_which_restarts_after_the_timeout() -> None:
    rig = Harness({**BASE, "max_trials": 1, "iti_min_s": 4.0, "iti_max_s": 4.0})
    t0 = START.timestamp()
    rig.lift(t0 + 1.0, "left")
    rig.lift(t0 + 3.0, "right")  # during the timeout: recorded, restarts nothing
    rig.run()
    first, second = rig.movements()
    assert (first.movement, first.side, first.phase, first.restarted_iti) == (
        "paw_lift",
        "left",
        "iti",
        True,
    )
    assert (second.side, second.restarted_iti) == ("right", False)
    assert first.trial_index == second.trial_index == 0
    # timeout (8 s) after the lift at 1 s, the right paw is back at 3.3 s, then a full 4 s.
    assert rig.onsets[0][0] == pytest.approx(t0 + 1.0 + 8.0 + 4.0)


def test_adaptation_moves_the_spout_out_then_the_other_then_shortens_the_cue() -> None:
    params = {
        **BASE,
        "max_trials": 17,
        "target_side": "left",
        "adapt_window": 3,
        "adapt_hit_rate": 1.0,
        "adapt_every": 2,
        "spout_position_max": 3,
        "cue_duration_s": 5.0,
        "cue_duration_min_s": 4.0,
        "cue_duration_factor": 0.9,
    }
    rig = Harness(params)  # the scripted mouse is always right
    rig.run()
    seen = [
        (
            t.trial_parameters["spout_position_left"],
            t.trial_parameters["spout_position_right"],
            t.trial_parameters["cue_duration_s"],
        )
        for t in rig.trials()
    ]
    expected = (
        [(1, 1, 5.0)] * 3
        + [(2, 1, 5.0)] * 2
        + [(3, 1, 5.0)] * 2
        + [(3, 2, 5.0)] * 2
        + [(3, 3, 5.0)] * 2
        + [(3, 3, 4.5)] * 2
        + [(3, 3, 4.05)] * 2
        + [(3, 3, 4.0)] * 2
    )
    assert seen == expected
    settings = ActuatorSettings()
    # The actuator had moved before each cue came on.
    assert [round(duty, 6) for _, _, duty in rig.onsets] == [
        round(settings.duty(left), 6) for left, _, _ in expected
    ]


def test_correction_trials_follow_an_incorrect_response_and_can_repeat_its_target() -> None:
    script = [Step("other"), Step("target"), Step("other"), Step(None), Step("target")]
    rig = Harness({**BASE, "max_trials": 5, "repeat_after_incorrect": True}, script)
    rig.run()
    trials = rig.trials()
    assert [t.outcome for t in trials] == ["incorrect", "correct", "incorrect", "miss", "correct"]
    assert [t.correction_trial for t in trials] == [False, True, False, True, True]
    targets = [t.target_side for t in trials]
    assert targets[1] == targets[0] and targets[3] == targets[2] and targets[4] == targets[2]


def test_the_session_ends_at_its_time_limit_even_if_the_mouse_never_rests() -> None:
    rig = Harness({"session_minutes": 0.5})
    for side in SIDES:
        rig.factory.pin(PINS[f"paw_{side}"]).drive_low()
    rig.lift(START.timestamp() + 1, "left", 100)  # no effect: already lifted
    ended = rig.run()
    assert ended.end_reason == "time_limit"
    assert ended.n_trials == 0 and not rig.trials()
    assert ended.duration_s == pytest.approx(30.0)


def test_an_operator_stop_ends_the_session_without_a_partial_trial() -> None:
    rig = Harness({**BASE, "max_trials": 10, "cue_duration_s": 10.0}, [Step("target")] * 2)
    rig.script.append(Step(None))  # the third cue gets no answer: stopped during it
    ended = rig.run(stop_at=12.0)
    assert ended.end_reason == "aborted"
    assert len(rig.onsets) == 3 and rig.onsets[2][0] < START.timestamp() + 12
    assert ended.n_trials == len(rig.trials()) == 2
    assert not any(bool(rig.factory.pin(PINS[d]).state) for d in OUTPUTS)


@pytest.mark.parametrize(
    ("parameters", "words"),
    [
        ({"cue_duration_s": "long"}, "cue_duration_s must be a number, got 'long'"),
        ({"max_trials": 2.5}, "max_trials must be a whole number"),
        ({"adapt": 1}, "adapt must be true or false"),
        ({"iti_min_s": 6, "iti_max_s": 4}, "iti_min_s <= iti_max_s"),
        ({"spout_position_left": 9}, "spout positions"),
        ({"target_side": "middle"}, "target_side must be random, left or right"),
        ({"recent_outcomes_left": "cx"}, "may only hold c, i and m"),
    ],
)
def test_wrong_parameters_are_refused_before_the_session(
    parameters: dict[str, Any], words: str
) -> None:
    with pytest.raises(ParameterError, match=words):
        ReachParameters.from_assignment(parameters)


def test_parameters_take_documented_defaults_and_ignore_other_tasks_names() -> None:
    params = ReachParameters.from_assignment(
        {"difficulty": 0.3, "session_minutes": 45, "max_trials": 200.0}
    )
    assert params.session_minutes == 45.0 and params.max_trials == 200
    assert (params.iti_min_s, params.iti_max_s, params.timeout_s) == (4.0, 6.0, 8.0)
    assert (params.cue_duration_s, params.adapt_window, params.adapt_hit_rate) == (10.0, 15, 0.9)
    assert "difficulty" not in params.resolved()


def test_rewards_by_volume_need_a_calibration_and_a_sane_opening() -> None:
    by_volume = ReachParameters.from_assignment({"reward_volume_ul": 3.0})
    with pytest.raises(CalibrationError, match=r"right valve has no calibration.*calibrate right"):
        RewardPlan.plan(by_volume, {"left": ValveCalibration("left", 1e-4)})
    with pytest.raises(CalibrationError, match="for 3000 ms"):
        RewardPlan.plan(by_volume, {s: ValveCalibration(s, 1e-6) for s in SIDES})
    by_time = ReachParameters.from_assignment({"reward_ms": 55, "reward_volume_ul": 3.0})
    plan = RewardPlan.plan(by_time, {"left": ValveCalibration("left", 1e-4)})
    assert plan.open_ms == {"left": 55.0, "right": 55.0}
    assert plan.volume_ul["left"] == pytest.approx(5.5) and plan.volume_ul["right"] == 0.0
    assert RewardPlan.plan(ReachParameters(), {}).open_ms["left"] == 70.0  # reach's default


def test_a_state_folded_from_recorded_trials_equals_the_live_one() -> None:
    params = {**BASE, "max_trials": 12, "adapt_window": 3, "adapt_hit_rate": 0.6}
    script = [Step("target"), Step("other"), Step(None)] * 4
    rig = Harness(params, script)
    rig.run()
    folded = TaskState.after_trials(ReachParameters.from_assignment(params), rig.trials())
    last = rig.trials()[-1].trial_parameters
    assert folded.trial_index == 12
    assert (folded.n_correct, folded.n_incorrect, folded.n_miss) == (4, 4, 4)
    assert folded.positions == {
        "left": last["spout_position_left"],
        "right": last["spout_position_right"],
    }
    assert folded.last_response_incorrect is True


def test_the_events_hold_reachs_results_and_session_ended_reports_them() -> None:
    rig = Harness(
        {**BASE, "max_trials": 2, "iti_min_s": 4.0, "iti_max_s": 4.0, "timeout_s": 8.0},
        [Step("target", 1.0, lift_at=0.5), Step("other", 1.0, lift_at=3.0)],
    )
    t0 = START.timestamp()
    rig.lift(t0 + 1.0, "right")  # breaks the first interval: a reset
    rig.touch(t0 + 3.0, "left")  # during the timeout that follows: a spontaneous reach
    ended = rig.run()
    phases = [(m.movement, m.side, m.phase, m.trial_index) for m in rig.movements()]
    assert phases == [
        ("paw_lift", "right", "iti", 0),
        ("spout_touch", "left", "iti", 0),
        ("paw_lift", "left", "trial", 0),  # lift after the cue: reach's lift time, no reset
        ("paw_lift", "left", "outcome", 1),  # during the error timeout: a reset
    ]
    first, second = rig.trials()
    results = reach_results(rig.events)
    assert (results.resets, results.resets_l, results.resets_r) == (2, 1, 1)
    assert (results.spontaneous_reaches, results.spontaneous_reaches_l) == (1, 1)
    assert results.trials == 2
    side = {"left": "l", "right": "r"}
    assert getattr(results, f"correct_{side[first.target_side or '']}") == 1
    assert getattr(results, f"incorrect_{side[second.target_side or '']}") == 1
    assert ended.metrics == {
        "d_prime": pytest.approx(results.d_prime),
        "resets": 2.0,
        "spontaneous_reaches": 1.0,
        # The water the rewards delivered through the valves' calibration (issue 15).
        "water_earned_ml": pytest.approx((first.reward_volume_ul + second.reward_volume_ul) / 1000),
    }


def test_the_shipped_reach_curriculum_only_sets_parameters_the_task_reads() -> None:
    """The reach curriculum and the rig's task agree on parameter names (a misspelt name
    would silently leave the task on its default)."""
    from dataclasses import fields

    from shaping.rig.task.parameters import ReachParameters
    from shaping.services.curricula.catalog import default_catalog

    curriculum = default_catalog().get("reach-task")
    known = {f.name for f in fields(ReachParameters)}
    for stage in ("habituation", "cued_reaching", "full_task", "expert"):
        parameters = curriculum.parameters(stage)
        assert set(parameters) <= known, (stage, sorted(set(parameters) - known))
        ReachParameters.from_assignment(parameters)  # and every value is acceptable
