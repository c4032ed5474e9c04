"""A simulated lab: mice spread over rigs, one session per mouse per day.

The same driver runs the embedded demo and the Kafka end-to-end tests: it only talks to a
:class:`~rig.transport.RigTransport`, so both paths see the same events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from rig.errors import NoAssignmentError
from rig.session import run_simulated_session
from rig.sim import SimulatedMouse
from rig.transport import RigTransport
from schemas.events import AssignmentIssued, MouseEnrolled, SessionStarted

DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC)


@dataclass(frozen=True)
class LabPlan:
    """Who trains where and for how long."""

    n_mice: int = 8
    n_rigs: int = 4
    n_days: int = 10
    seed: int = 7
    curriculum: str = "basic-shaping"
    start: datetime = DEFAULT_START
    first_session_hour: int = 9
    slot_minutes: int = 50

    def mice(self) -> list[tuple[str, str]]:
        """(mouse_id, rig_id) pairs: mice are dealt round-robin to rigs."""
        return [(f"M{i + 1:03d}", f"rig-{i % self.n_rigs + 1}") for i in range(self.n_mice)]


@dataclass
class SessionRecord:
    """A session the lab ran and the assignment it was configured from."""

    mouse_id: str
    rig_id: str
    day: int
    started: SessionStarted
    assignment: AssignmentIssued
    stale_assignment: bool


@dataclass
class LabRun:
    """Everything the simulated lab did."""

    plan: LabPlan
    sessions: list[SessionRecord] = field(default_factory=list)


def run_lab(plan: LabPlan, transport: RigTransport, wait_s: float = 0.0) -> LabRun:
    """Enrolls the plan's mice, then runs every day's sessions through ``transport``.

    Before each session the rig reads the mouse's latest assignment; on the Kafka path it waits
    up to ``wait_s`` for the decision on the previous session. A rig that never got an
    assignment cannot run (NoAssignmentError).
    """
    run = LabRun(plan)
    mice = {mouse_id: SimulatedMouse(mouse_id, plan.seed) for mouse_id, _ in plan.mice()}
    transport.publish(
        [
            MouseEnrolled(
                event_id=mouse.new_id(),
                mouse_id=mouse_id,
                occurred_at=plan.start,
                curriculum_name=plan.curriculum,
                enrolled_by="lab-simulation",
            )
            for mouse_id, mouse in mice.items()
        ]
    )
    sessions_done = dict.fromkeys(mice, 0)
    for day in range(plan.n_days):
        day_start = plan.start + timedelta(days=day, hours=plan.first_session_hour)
        for rig_index in range(plan.n_rigs):
            rig_id = f"rig-{rig_index + 1}"
            on_rig = [m for m, r in plan.mice() if r == rig_id]
            for slot, mouse_id in enumerate(on_rig):
                wanted = sessions_done[mouse_id] + 1
                assignment = transport.latest_assignment(mouse_id, wanted, wait_s)
                if assignment is None:
                    raise NoAssignmentError(f"no assignment for {mouse_id}; is it enrolled?")
                started_at = day_start + timedelta(minutes=slot * plan.slot_minutes)
                events = run_simulated_session(mice[mouse_id], assignment, rig_id, started_at)
                transport.publish(events)
                sessions_done[mouse_id] += 1
                started = events[0]
                assert isinstance(started, SessionStarted)
                run.sessions.append(
                    SessionRecord(
                        mouse_id,
                        rig_id,
                        day,
                        started,
                        assignment,
                        assignment.session_number < wanted,
                    )
                )
    return run
