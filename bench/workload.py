"""The benchmark workload: simulated mice running long sessions on the built-in curriculum.

Sessions are run by the rig's own runtime: one :class:`~shaping.rig.agent.RigAgent` per rig
with the scripted task and the one simulated mouse, as in the demo. Its transport here is
:class:`CoreRig`, which folds what the rigs publish through the pure core in process and hands
each rig the assignment the core issued after the mouse's previous session, with ``max_trials``
set to the wanted session length and the time limit lifted, so every session has exactly that
many trials (the benchmark rigs' safety limits allow it). Everything is generated (and encoded)
before any clock starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from shaping.rig.agent import RigAgent, RunOptions
from shaping.rig.config import RigConfig, SafetyLimits
from shaping.rig.sim.mouse import SimulatedMouse
from shaping.rig.task.scripted import ScriptedTask
from shaping.schemas.codec import default_codec, encode_key
from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    MouseEnrolled,
    SessionEnded,
    TrialCompleted,
)
from shaping.services.curricula.catalog import default_catalog
from shaping.services.domain import MouseState, TrainingCore, initial_state

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SEED = 20260302
CURRICULUM = "basic-shaping"
N_RIGS = 4

BENCH_LIMITS = SafetyLimits(
    max_session_minutes=10**6, max_trials=10**6, max_reward_ul_per_session=10**9
)
"""The benchmark rigs' safety limits: sessions of any length (the time limit is lifted)."""


def mouse_ids(n_mice: int, tag: str = "B") -> list[str]:
    return [f"{tag}{i + 1:03d}" for i in range(n_mice)]


def session_parameters(assignment: AssignmentIssued, n_trials: int) -> AssignmentIssued:
    """The assignment with exactly ``n_trials`` trials per session and no time limit."""
    params = {**assignment.parameters, "max_trials": n_trials, "session_minutes": 10**6}
    return assignment.model_copy(update={"parameters": params})


def enrolment(mouse: SimulatedMouse) -> MouseEnrolled:
    return MouseEnrolled(
        event_id=mouse.new_id(),
        mouse_id=mouse.mouse_id,
        occurred_at=START,
        curriculum_name=CURRICULUM,
        enrolled_by="bench",
    )


@dataclass(frozen=True)
class Workload:
    """Enrolments, then sessions in publishing order (round robin over the mice).

    Attributes:
        mice: the mouse ids.
        enrolments: one MouseEnrolled per mouse.
        sessions: each session's events (SessionStarted, trials, SessionEnded), in the order a
            lab would publish them: session 1 of every mouse, then session 2, and so on.
        last_session: the id of each mouse's last session (its decision ends a Kafka run).
    """

    mice: list[str]
    enrolments: list[MouseEnrolled]
    sessions: list[list[Event]]
    last_session: dict[str, str]

    @property
    def n_sessions(self) -> int:
        return len(self.sessions)

    @property
    def n_trials(self) -> int:
        return sum(1 for s in self.sessions for e in s if isinstance(e, TrialCompleted))

    @property
    def n_events(self) -> int:
        """Every input event, enrolments included."""
        return len(self.enrolments) + sum(len(s) for s in self.sessions)

    def events(self) -> list[Event]:
        """Enrolments, then every session's events."""
        return [*self.enrolments, *(e for s in self.sessions for e in s)]

    def session_events(self) -> list[Event]:
        """Every session's events (no enrolments)."""
        return [e for s in self.sessions for e in s]

    def describe(self) -> str:
        per_session = self.n_trials // max(1, self.n_sessions)
        return (
            f"{self.n_trials:,} trials = {len(self.mice)} mice x "
            f"{self.n_sessions // max(1, len(self.mice))} sessions x {per_session} trials "
            f"({self.n_events:,} events with enrolments, session starts and ends)"
        )


class CoreRig:
    """A :class:`~shaping.rig.link.transport.RigTransport` that folds the rigs' events through
    the pure core in process, and hands out the core's assignments with exactly
    ``trials_per_session`` trials and no time limit.

    Attributes:
        sessions: each session the rigs published, in order.
    """

    def __init__(self, core: TrainingCore, trials_per_session: int) -> None:
        self.core = core
        self.trials_per_session = trials_per_session
        self.states: dict[str, MouseState] = {}
        self.assignments: dict[str, AssignmentIssued] = {}
        self.sessions: list[list[Event]] = []

    def publish(self, events: Sequence[Event]) -> None:
        for event in events:
            state = self.states.get(event.mouse_id) or initial_state(event.mouse_id)
            self.states[event.mouse_id], outputs = self.core.handle(state, event)
            if isinstance(event, (MouseEnrolled, SessionEnded)):
                self.assignments[event.mouse_id] = _assignment_in(outputs)
        if events and isinstance(events[-1], SessionEnded):
            self.sessions.append(list(events))

    def latest_assignment(
        self, mouse_id: str, min_session_number: int = 1, timeout_s: float = 0.0
    ) -> AssignmentIssued | None:
        found = self.assignments.get(mouse_id)
        return None if found is None else session_parameters(found, self.trials_per_session)


def bench_agents(
    transport: Any, mice: Mapping[str, SimulatedMouse], display: Any
) -> dict[str, RigAgent]:
    """One rig agent per rig (``rig-1`` .. ``rig-4``; mouse *i* on rig *i* mod 4), each with the
    scripted task over ``mice`` and the benchmark's limits."""
    on_rig: dict[str, list[str]] = {}
    for index, mouse_id in enumerate(mice):
        on_rig.setdefault(rig_of(index), []).append(mouse_id)
    task = ScriptedTask(mice)
    return {
        rig_id: RigAgent(RigConfig.simulated(rig_id, ids, BENCH_LIMITS), display, transport, task)
        for rig_id, ids in on_rig.items()
    }


def rig_of(index: int) -> str:
    """The rig of the ``index``-th mouse."""
    return f"rig-{index % N_RIGS + 1}"


class QuietDisplay:
    """A benchmark rig's screen: shows nothing."""

    def message(self, text: str) -> None:
        return None

    def session_started(self, started: Any, params: Any, resumed_at: int | None) -> None:
        return None

    def trial(self, progress: Any, stage: str) -> None:
        return None

    def session_ended(self, ended: Any, state: Any) -> None:
        return None

    def decision(self, decision: Any, assignment: Any) -> None:
        return None


def build_workload(
    n_mice: int, sessions_per_mouse: int, trials_per_session: int, tag: str = "B"
) -> Workload:
    """Runs every mouse's sessions on the rig runtime, following the core's real decisions."""
    sims = {m: SimulatedMouse(m, SEED) for m in mouse_ids(n_mice, tag)}
    lab = CoreRig(TrainingCore(default_catalog()), trials_per_session)
    agents = bench_agents(lab, sims, QuietDisplay())
    enrolments = [enrolment(sim) for sim in sims.values()]
    lab.publish(enrolments)
    last_session: dict[str, str] = {}
    for number in range(sessions_per_mouse):
        for index, mouse_id in enumerate(sims):
            options = RunOptions(
                mouse_id,
                start=START + timedelta(days=number, minutes=index),
                session_number=number + 1,
            )
            report = agents[rig_of(index)].run(options)
            last_session[mouse_id] = report.session_id
    return Workload(list(sims), enrolments, lab.sessions, last_session)


def _assignment_in(outputs: list[Event]) -> AssignmentIssued:
    found = [e for e in outputs if isinstance(e, AssignmentIssued)]
    if not found:
        raise RuntimeError(f"the core issued no assignment: {outputs}")
    return found[-1]


@dataclass(frozen=True)
class Encoded:
    """Kafka keys and values of events, in order, and how many of them are trials."""

    keys: list[bytes]
    values: list[bytes]
    n_trials: int

    def __len__(self) -> int:
        return len(self.values)

    @property
    def mean_value_bytes(self) -> float:
        return sum(map(len, self.values)) / max(1, len(self.values))


def encode(events: list[Event]) -> Encoded:
    codec = default_codec()
    return Encoded(
        [encode_key(e.mouse_id) for e in events],
        [codec.encode(e) for e in events],
        sum(1 for e in events if isinstance(e, TrialCompleted)),
    )
