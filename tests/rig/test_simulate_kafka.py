"""``shaping rig simulate`` on a real Kafka broker continues from the assignments topic: it
reads the topic to its end, does not enrol a mouse the topic knows, runs that mouse's next
session on the day after the newest assignment, and says which decision it still waits for.
(No processor runs here: the assignment is written by the test, as the processor would.)"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from shaping.schemas.events import AssignmentIssued, MouseEnrolled, SessionStarted
from shaping.schemas.topics import TopicNames
from shaping.services.cli import app
from tests.support.kafka_io import Publisher, TopicReader

pytestmark = pytest.mark.kafka


def test_simulate_continues_a_mouse_the_assignments_topic_knows(
    kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    prefix = kafka_topics.events.rsplit(".", 1)[0]
    known = AssignmentIssued(
        mouse_id="M001",
        occurred_at=datetime(2026, 3, 4, 10, 30, tzinfo=UTC),
        stage="s2_training",
        parameters={"max_trials": 20, "session_minutes": 10},
        curriculum_name="basic-shaping",
        curriculum_version="0.1.0",
        reason="progress",
        reason_detail="progress to s2_training",
        sessions_at_stage=0,
        session_number=6,
    )
    with Publisher(kafka_bootstrap, kafka_topics.assignments) as publisher:
        publisher.events([known])
    args = ["rig", "simulate", "--mice", "1", "--rigs", "1", "--days", "1", "--wait", "1"]
    args += ["--bootstrap", kafka_bootstrap, "--prefix", prefix]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "days 2026-03-05 to 2026-03-05" in lines
    assert "M001: continued from session 6" in lines
    assert "day 1 rig-1 M001 session 6: s2_training" in lines
    with TopicReader(kafka_bootstrap, [kafka_topics.events]) as reader:
        reader.wait_for(
            lambda rs: any(isinstance(r.event, SessionStarted) for r in rs),
            what="the session",
        )
        reader.poll(1.0)
        enrolled = reader.events(event_type=MouseEnrolled)
        [session] = reader.events(event_type=SessionStarted)
    assert enrolled == []  # M001 is continued, not enrolled (started over) again
    assert session.session_id == "M001-20260305T0900"
    assert session.assignment_id == known.event_id
    # no processor judged it: the run says so, and the next run starts from session 6 again
    assert "M001: no decision on session 6 yet" in result.output
