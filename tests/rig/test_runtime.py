"""One rig runtime: the agent runs every session behind the transport port, with a task.

Given a transport and a task, when the agent runs a session, then the events the task recorded
go out through the transport (the outbox on Kafka, in one batch for the scripted task), and
the assignment it ran is the one the transport gave, held against the safety limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shaping.rig.agent import RigAgent, RunOptions
from shaping.rig.config import RigConfig, SafetyLimits
from shaping.rig.link.outbox import OutboxTransport
from shaping.rig.link.store import RigStore
from shaping.rig.safety import UnsafeAssignmentRefusedError
from shaping.rig.sim.lab import LabPlan, lab_agents, run_lab
from shaping.rig.sim.mouse import SimulatedMouse
from shaping.rig.task.scripted import ScriptedTask, run_simulated_session
from shaping.schemas.events import AssignmentIssued, Event, SessionEnded, SessionStarted
from shaping.schemas.topics import TopicNames
from tests.support.rig import CODEC, assignment

WHEN = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class RecordingTransport:
    """A transport that hands out fixed assignments and keeps every publish call."""

    def __init__(self, *assignments: AssignmentIssued) -> None:
        self.assignments = {a.mouse_id: a for a in assignments}
        self.calls: list[list[Event]] = []
        self.asked: list[tuple[str, int, float]] = []

    def publish(self, events: Sequence[Event]) -> None:
        self.calls.append(list(events))

    def latest_assignment(
        self, mouse_id: str, min_session_number: int = 1, timeout_s: float = 0.0
    ) -> AssignmentIssued | None:
        self.asked.append((mouse_id, min_session_number, timeout_s))
        return self.assignments.get(mouse_id)


class QuietDisplay:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)

    def session_started(self, *args: object) -> None: ...

    def trial(self, *args: object) -> None: ...

    def session_ended(self, *args: object) -> None: ...

    def decision(self, *args: object) -> None: ...


def scripted_agent(transport: RecordingTransport, limits: SafetyLimits | None = None) -> RigAgent:
    task = ScriptedTask({"M001": SimulatedMouse("M001", 3)})
    config = RigConfig.simulated("rig-1", ["M001"], limits)
    return RigAgent(config, QuietDisplay(), transport, task)


SAFE = {"max_trials": 40, "session_minutes": 30, "reward_volume_ul": 3}


def test_the_scripted_session_goes_out_through_the_transport_in_one_batch() -> None:
    given = assignment(parameters=SAFE)
    transport = RecordingTransport(given)
    report = scripted_agent(transport).run(
        RunOptions("M001", start=WHEN, assignment_timeout_s=0.0, session_number=1)
    )
    expected = run_simulated_session(SimulatedMouse("M001", 3), given, "rig-1", WHEN)
    assert transport.calls == [expected]  # the same session, published once, whole
    assert transport.asked == [("M001", 1, 0.0)]
    assert report.assignment == given and report.screening is not None
    assert report.screening.safe and not report.started.assignment_stale
    assert isinstance(report.ended, SessionEnded) and report.ended.n_trials == 40


def test_an_assignment_older_than_the_session_expected_runs_as_stale() -> None:
    transport = RecordingTransport(assignment(parameters=SAFE, session_number=2))
    report = scripted_agent(transport).run(
        RunOptions("M001", start=WHEN, assignment_timeout_s=0.0, session_number=3)
    )
    started = transport.calls[0][0]
    assert isinstance(started, SessionStarted) and started == report.started
    assert started.assignment_stale is True
    assert started.assignment_stale_reason == (
        "the assignment for session 3 had not arrived after 0 s; ran the one for session 2"
    )
    assert started.assignment_wait_s is None  # the scripted task does not measure the wait


def test_an_unsafe_assignment_is_refused_before_the_task_runs() -> None:
    transport = RecordingTransport(assignment(parameters={**SAFE, "max_trials": 5000}))
    with pytest.raises(UnsafeAssignmentRefusedError) as refused:
        scripted_agent(transport).run(RunOptions("M001", start=WHEN, assignment_timeout_s=0.0))
    assert refused.value.screening is not None and refused.value.screening.run is None
    assert transport.calls == []


def test_the_lab_runs_one_agent_per_rig_with_the_scripted_task() -> None:
    plan = LabPlan(n_mice=3, n_rigs=2, n_days=1)
    agents = lab_agents(plan, RecordingTransport(), ScriptedTask({}), SafetyLimits())
    assert {rig: agent.config.mice for rig, agent in agents.items()} == {
        "rig-1": ("M001", "M003"),
        "rig-2": ("M002",),
    }
    assert all(isinstance(agent.task, ScriptedTask) for agent in agents.values())


def test_a_lab_session_is_one_publish_after_the_enrolments() -> None:
    plan = LabPlan(n_mice=1, n_rigs=1, n_days=2, seed=3)
    transport = RecordingTransport(assignment(parameters=SAFE))
    run = run_lab(plan, transport)
    assert [len(call) for call in transport.calls[1:]] == [42, 42]  # start, 40 trials, end
    assert [s.started for s in run.sessions] == [call[0] for call in transport.calls[1:]]


def test_the_outbox_transport_keeps_events_and_answers_from_its_cache_offline(
    tmp_path: Path,
) -> None:
    store = RigStore(tmp_path / "rig.sqlite", CODEC)
    link = OutboxTransport(
        store, "127.0.0.1:1", TopicNames.with_prefix("shaping"), ("M001",), "test-rig", CODEC
    )
    assert link.latest_assignment("M001", 1, 5.0) is None  # offline: no wait, no assignment
    cached = assignment(parameters=SAFE, session_number=4)
    store.save_assignment(cached)
    assert link.latest_assignment("M001", 5, 5.0) == cached  # the newest it has, older
    events = run_simulated_session(SimulatedMouse("M001", 3), cached, "rig-1", WHEN)
    link.publish(events)
    link.publish(events)  # stored once
    assert store.unsent_count() == len(events)
    assert [r.event_id for r in store.unsent(limit=1000)] == [e.event_id for e in events]
