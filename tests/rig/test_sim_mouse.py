"""The one simulated mouse: the scripted task and the reach box run the same mouse."""

from __future__ import annotations

import random

from shaping.rig.config import ActuatorSettings, parse_pin_map
from shaping.rig.sim.mouse import SimulatedMouse
from shaping.rig.sim.reach_box import build_simulated_rig
from tests.support.rig import PINS, START


def test_the_reach_box_holds_the_mouse_the_scripted_task_runs() -> None:
    # given a mouse and seed, in the reach box and in the scripted task
    rig = build_simulated_rig(parse_pin_map(PINS), ActuatorSettings(), "M001", 7, START.timestamp())
    scripted = SimulatedMouse("M001", 7)

    # then it is one mouse: same nature, and rewards teach both the same way
    assert isinstance(rig.mouse.mouse, SimulatedMouse)
    assert rig.mouse.skill == scripted.skill
    assert rig.mouse.mouse.learning_rate == scripted.learning_rate
    for _ in range(50):
        rig.mouse.reward()
        scripted.learn()
    rig.mouse.rest()
    scripted.rest()
    assert rig.mouse.skill == scripted.skill


def test_restoring_outcomes_rebuilds_the_skill_it_lived_to() -> None:
    # given a mouse that lived through two sessions, one unfinished
    lived = SimulatedMouse("M002", 3)
    history = [["correct", "incorrect", "correct"], ["miss", "correct"]]
    for index, outcomes in enumerate(history):
        for outcome in outcomes:
            if outcome == "correct":
                lived.learn()
        if index == 0:
            lived.rest()

    # when a fresh copy (after a crash) restores the outcomes, twice
    restored = SimulatedMouse("M002", 3)
    restored.restore(history)
    restored.restore(history)

    # then it has the skill the mouse had, not twice the learning
    assert restored.skill == lived.skill


def test_a_spout_further_away_makes_the_mouse_less_sure() -> None:
    mouse = SimulatedMouse("M003", 1)
    mouse.skill = 0.9

    def hit_rate(distance: float) -> float:
        rng = random.Random(5)
        answers = [mouse.answer(rng, distance=distance) for _ in range(4000)]
        return sum(a.correct is True for a in answers) / len(answers)

    assert hit_rate(1.0) < hit_rate(0.0) - 0.1
