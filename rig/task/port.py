"""The port between the rig agent and what a session runs: a :class:`Task`.

The agent (:class:`shaping.rig.agent.RigAgent`) chooses the assignment, holds it against the
rig's safety limits, and hands it to a task with a :class:`SessionRequest`; the task runs the
session and records every event through ``request.publish`` (which goes to the agent's
:class:`~shaping.rig.link.transport.RigTransport`). Two tasks implement it:

- :class:`shaping.rig.task.pins.PinTask`: reach's task on the rig's devices (gpiozero pins, or
  gpiozero's mock pins with a simulated mouse in the box and a virtual clock). What ``shaping
  rig run`` runs. Each event is published as it happens.
- :class:`shaping.rig.task.scripted.ScriptedTask`: a fast scripted session of the simulated
  mouse (:class:`shaping.rig.sim.mouse.SimulatedMouse`), for the demo, ``shaping rig
  simulate``, the end-to-end tests and the benchmarks. A session is published in one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from shaping.rig.config import SafetyLimits
from shaping.rig.safety import RewardsOf
from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    ParamValue,
    SessionEnded,
    SessionStarted,
)

Publish = Callable[[Sequence[Event]], None]
"""Records events: in order, durably, before it returns (the agent's transport)."""

Newest = Callable[[str], AssignmentIssued | None]
"""Given the session in progress, the newest assignment the rig holds for the mouse, read
without waiting (the agent's link is polled, never blocked on): asked at every trial boundary,
so an assignment issued during the session is applied at the next one
(:mod:`shaping.rig.task.midsession`)."""


@dataclass(frozen=True)
class ChosenAssignment:
    """The assignment a new session runs, and whether the rig knew it was stale.

    Attributes:
        assignment: the assignment.
        stale_reason: why the rig knows it is not the mouse's current assignment (None: it is
            the current one, as far as the rig can tell).
        waited_s: how long the rig waited for the current assignment (0: it did not wait;
            None: it did not measure the wait).
    """

    assignment: AssignmentIssued
    stale_reason: str | None = None
    waited_s: float | None = 0.0


@dataclass(frozen=True)
class SessionRequest:
    """A session the agent asks a task to run.

    Attributes:
        mouse_id, rig_id: who trains where.
        chosen: the assignment, screened; None: resume the mouse's interrupted session
            (:meth:`Task.interrupted`).
        limits: the rig's safety limits, which the session keeps within.
        publish: where every event goes.
        simulate: run on mock pins with a simulated mouse (the pin task).
        seed: the simulated mouse's seed.
        start: when the session starts (a simulated session; None: now).
        pace: a simulated session on pins runs at most this many times faster than real time.
        newest: how the task reads the mouse's newest assignment at a trial boundary (None:
            it never applies an assignment during a session).
    """

    mouse_id: str
    rig_id: str
    chosen: ChosenAssignment | None
    limits: SafetyLimits
    publish: Publish
    simulate: bool = False
    seed: int = 1
    start: datetime | None = None
    pace: float | None = None
    newest: Newest | None = None


@dataclass
class TaskOutcome:
    """What a session did.

    Attributes:
        started: its SessionStarted (the one recorded before, for a resumed session).
        ended: its SessionEnded.
        state: the task's own state at the end (the pin task's
            :class:`~shaping.rig.task.adaptation.TaskState`; None for the scripted task).
        resumed: whether it continued an interrupted session.
        events: the events it published in this run (the scripted task; the pin task leaves
            them in the journal).
    """

    started: SessionStarted
    ended: SessionEnded
    state: Any = None
    resumed: bool = False
    events: Sequence[Event] = ()


class Task(Protocol):
    """What a rig runs in a session (see the module's doc)."""

    name: str
    """The task's name in what the rig says (``reach``, ``scripted``)."""

    def defaults(self) -> Mapping[str, ParamValue]:
        """The task's value of each parameter an assignment leaves out (the safety screening
        holds these too)."""
        ...

    def rewards(self) -> RewardsOf | None:
        """The reward each valve gives for a parameter set, through the rig's calibrations
        (None: the task opens no valve of its own)."""
        ...

    def interrupted(self, mouse_id: str) -> SessionStarted | None:
        """A session of the mouse that started and never ended, which the next run resumes
        (None: none; a task without a journal never has one)."""
        ...

    def close_interrupted(self, mouse_id: str, publish: Publish) -> SessionEnded:
        """Ends the mouse's interrupted session at the time of its last event."""
        ...

    def run(self, request: SessionRequest) -> TaskOutcome:
        """Runs (or resumes) the session and records its events through ``request.publish``.

        Raises:
            RigError: a parameter or the hardware is wrong; nothing was recorded.
        """
        ...
