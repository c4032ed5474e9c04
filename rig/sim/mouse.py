"""A simulated mouse: a seeded learning agent whose accuracy improves with training.

It stands in for an animal in demos, tests and benchmarks. Its behaviour depends only on its
own seed and on the parameters of the sessions it runs, so the same seed gives the same mouse
whatever order the lab runs its sessions in.

It is the mouse model of the scripted task (:class:`shaping.rig.task.scripted.ScriptedTask`),
which the demo, ``shaping rig simulate``, the end-to-end tests and the benchmarks run. The
simulated reach box (:mod:`shaping.rig.sim.reach_box`) has a pin-level actor of its own,
:class:`~shaping.rig.sim.reach_box.SimulatedReacher`: its draws are seeded per trial, so a crashed
session replays exactly, and its skill depends on the spout's distance, neither of which this
model's single random stream can give without changing the demo's output.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class TrialResponse:
    """What the mouse did on one trial."""

    outcome: str
    target_side: str
    response_side: str | None
    reaction_time_s: float | None


class SimulatedMouse:
    """A mouse that learns a two-choice task.

    Skill (0..1) grows with every rewarded trial at a per-mouse learning rate and decays a
    little between sessions. Harder stimuli (``difficulty`` 0..1) lower accuracy for the same
    skill; a short response window turns slow responses into misses.

    Args:
        mouse_id: the mouse.
        seed: lab seed; the mouse's own random stream derives from it and the id.
    """

    def __init__(self, mouse_id: str, seed: int) -> None:
        self.mouse_id = mouse_id
        self.rng = random.Random(f"{seed}:{mouse_id}")
        self.learning_rate = self.rng.uniform(0.0003, 0.003)
        self.skill = self.rng.uniform(0.0, 0.1)

    def new_id(self) -> str:
        """A UUID drawn from the mouse's random stream (deterministic for a seed)."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def rest(self) -> None:
        """Between sessions the mouse forgets a little."""
        self.skill *= 0.97

    def respond(self, difficulty: float, response_window_s: float) -> TrialResponse:
        """Runs one trial and learns from its outcome."""
        target = self.rng.choice(("left", "right"))
        reaction = math.exp(self.rng.gauss(math.log(0.4 + 1.2 * (1 - self.skill)), 0.5))
        engaged = self.rng.random() < 0.75 + 0.24 * self.skill
        if not engaged or reaction > response_window_s:
            return TrialResponse("miss", target, None, None)
        p_correct = 0.5 + 0.47 * self.skill ** (1 + difficulty)
        correct = self.rng.random() < p_correct
        if correct:
            self.skill += self.learning_rate * (1 - self.skill)
        side = target if correct else ("right" if target == "left" else "left")
        return TrialResponse("correct" if correct else "incorrect", target, side, reaction)
