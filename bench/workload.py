"""The benchmark workload: simulated mice running long sessions on the built-in curriculum.

Sessions come from :func:`shaping.rig.task.scripted.run_simulated_session` (the rig's own
simulator), each from the assignment the pure core issued after the previous session, with
``max_trials`` set to the wanted session length and the time limit lifted so every session has
exactly that many trials. Everything is generated (and encoded) before any clock starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shaping.rig.sim.mouse import SimulatedMouse
from shaping.rig.task.scripted import run_simulated_session
from shaping.schemas.codec import default_codec, encode_key
from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    MouseEnrolled,
    SessionEnded,
    TrialCompleted,
)
from shaping.services.curricula.catalog import default_catalog
from shaping.services.domain import TrainingCore, initial_state

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SEED = 20260302
CURRICULUM = "basic-shaping"


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


def build_workload(
    n_mice: int, sessions_per_mouse: int, trials_per_session: int, tag: str = "B"
) -> Workload:
    """Simulates every mouse's sessions, following the core's real decisions."""
    core = TrainingCore(default_catalog())
    sims = {m: SimulatedMouse(m, SEED) for m in mouse_ids(n_mice, tag)}
    enrolments = [enrolment(sim) for sim in sims.values()]
    states = {}
    assignments: dict[str, AssignmentIssued] = {}
    for enrolled in enrolments:
        state, outputs = core.handle(initial_state(enrolled.mouse_id), enrolled)
        states[enrolled.mouse_id] = state
        assignments[enrolled.mouse_id] = _assignment_in(outputs)
    sessions: list[list[Event]] = []
    last_session: dict[str, str] = {}
    for number in range(sessions_per_mouse):
        for index, (mouse_id, sim) in enumerate(sims.items()):
            started_at = START + timedelta(days=number, minutes=index)
            assignment = session_parameters(assignments[mouse_id], trials_per_session)
            events = run_simulated_session(sim, assignment, f"rig-{index % 4 + 1}", started_at)
            state = states[mouse_id]
            for event in events:
                state, outputs = core.handle(state, event)
                if isinstance(event, SessionEnded):
                    assignments[mouse_id] = _assignment_in(outputs)
            states[mouse_id] = state
            sessions.append(events)
            last_session[mouse_id] = events[-1].session_id or ""
    return Workload(list(sims), enrolments, sessions, last_session)


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
