"""The simulated mouse: a seeded learning agent whose accuracy improves with training.

It stands in for an animal in demos, tests and benchmarks, in both simulated tasks:

- the fast scripted task (:class:`shaping.rig.task.scripted.ScriptedTask`), which the demo,
  ``shaping rig simulate``, the end-to-end tests and the benchmarks run, asks it for whole
  trials (:meth:`SimulatedMouse.respond`);
- the simulated reach box (:mod:`shaping.rig.sim.reach_box`) gives it a body on gpiozero's mock
  pins: the body sees a cue and asks the mouse how it answers (:meth:`SimulatedMouse.answer`),
  and tells it when a valve gave water (:meth:`SimulatedMouse.learn`).

One nature (skill and learning rate, drawn from the mouse's own stream) and one response model
serve both, so the same seed gives the same mouse wherever it trains. The scripted task draws
from the mouse's stream, so a mouse's behaviour depends only on its seed and its own sessions,
whatever order the lab runs them in. The reach box passes a stream seeded per trial instead,
and rebuilds the skill from the outcomes the mouse lived through (:meth:`restore`), so a
session resumed after a crash replays exactly.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TrialResponse:
    """What the mouse did on one trial."""

    outcome: str
    target_side: str
    response_side: str | None
    reaction_time_s: float | None


@dataclass(frozen=True)
class Answer:
    """How the mouse answers one cue: whether it engages, how fast, and whether it is right."""

    engaged: bool
    reaction_time_s: float
    correct: bool | None
    """None when the mouse did not respond (not engaged, or slower than the window)."""


class SimulatedMouse:
    """A mouse that learns a two-choice task.

    Skill (0..1) grows with every reward at a per-mouse learning rate and decays a little
    between sessions. Harder stimuli (``difficulty`` 0..1) lower accuracy for the same skill; a
    spout further away (``distance`` 0..1) makes the mouse slower, less engaged and less sure;
    a short response window turns slow responses into misses.

    Args:
        mouse_id: the mouse.
        seed: lab seed; the mouse's own random stream derives from it and the id.
    """

    def __init__(self, mouse_id: str, seed: int) -> None:
        self.mouse_id = mouse_id
        self.seed = seed
        self.rng = random.Random(f"{seed}:{mouse_id}")
        self.learning_rate = self.rng.uniform(0.0003, 0.003)
        self.skill = self.rng.uniform(0.0, 0.1)
        self._born_with = self.skill

    def new_id(self) -> str:
        """A UUID drawn from the mouse's random stream (deterministic for a seed)."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    # -- learning -----------------------------------------------------------------------------

    def learn(self) -> None:
        """The mouse got water for an answer: it learns a little."""
        self.skill += self.learning_rate * (1 - self.skill)

    def rest(self) -> None:
        """Between sessions the mouse forgets a little."""
        self.skill *= 0.97

    def restore(self, sessions: Iterable[Sequence[str]]) -> None:
        """Sets the skill the mouse had after living through these outcomes (one list per
        session, the last one possibly unfinished), from the skill it was born with."""
        self.skill = self._born_with
        sessions = list(sessions)
        for index, outcomes in enumerate(sessions):
            for outcome in outcomes:
                if outcome == "correct":
                    self.learn()
            if index < len(sessions) - 1:
                self.rest()

    # -- answering ----------------------------------------------------------------------------

    def answer(
        self,
        rng: random.Random,
        difficulty: float = 0.0,
        response_window_s: float = math.inf,
        distance: float = 0.0,
    ) -> Answer:
        """How the mouse answers a cue, drawn from ``rng``; it does not learn here (a reward
        teaches it, :meth:`learn`)."""
        skill = self.skill
        median_rt = 0.4 + 1.2 * (1 - skill) + 0.5 * distance
        reaction = math.exp(rng.gauss(math.log(median_rt), 0.5))
        engaged = rng.random() < 0.75 + 0.24 * skill - 0.2 * distance
        if not engaged or reaction > response_window_s:
            return Answer(engaged, reaction, None)
        p_correct = 0.5 + 0.47 * skill ** (1 + difficulty) * (1 - 0.4 * distance)
        return Answer(True, reaction, rng.random() < p_correct)

    def respond(self, difficulty: float, response_window_s: float) -> TrialResponse:
        """Runs one whole trial from the mouse's own stream, and learns from a correct one."""
        target = self.rng.choice(("left", "right"))
        answer = self.answer(self.rng, difficulty, response_window_s)
        if answer.correct is None:
            return TrialResponse("miss", target, None, None)
        if answer.correct:
            self.learn()
        side = target if answer.correct else ("right" if target == "left" else "left")
        outcome = "correct" if answer.correct else "incorrect"
        return TrialResponse(outcome, target, side, answer.reaction_time_s)
