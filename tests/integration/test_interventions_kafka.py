"""Trainers' interventions end to end: real Kafka, the faust processor in its own process, the
projector on a real PostgreSQL, and the ``shaping enroll/override/eject/adjust`` commands, which
send commands to the commands topic and wait for the processor's answer.

One mouse is enrolled, adjusted, trains a session (its next assignment, as the rig caches it,
carries the adjustment), is overridden back a stage (the next session's decision judges the
overridden stage), is refused an override planned on a stale stage, and is ejected (no more
assignments; its next session goes to the dead-letter topic). The status tables show it all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from shaping.rig.link.follow import AssignmentFollower
from shaping.rig.link.store import RigStore
from shaping.schemas.codec import default_codec
from shaping.schemas.commands import answer_event_id
from shaping.schemas.events import (
    AssignmentIssued,
    EventRejected,
    MouseEjected,
    MouseEnrolled,
    StageOverridden,
)
from shaping.schemas.topics import TopicNames
from tests.support.kafka_io import Publisher, TopicReader
from tests.support.processes import wait_until
from tests.support.processor_stack import WAIT_S, Stack, fresh_database
from tests.support.story import enrolled, session, trials

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

GOOD = trials(correct=250)


@pytest.fixture
def stack(
    kafka_bootstrap: str, kafka_topics: TopicNames, postgres_url: str, tmp_path: Path
) -> Iterator[Stack]:
    running = Stack(kafka_bootstrap, kafka_topics, fresh_database(postgres_url), tmp_path)
    try:
        yield running
    finally:
        running.close()


def rig_cache(stack: Stack, mouse: str, tmp_path: Path) -> AssignmentIssued | None:
    """The assignment a rig of ``mouse`` caches after reading the topics to their end."""
    store = RigStore(tmp_path / "rig" / "rig.sqlite", codec=default_codec())
    follower = AssignmentFollower(
        store,
        stack.bootstrap,
        stack.topics.assignments,
        stack.topics.decisions,
        (mouse,),
        codec=default_codec(),
    )
    try:
        follower.catch_up(30)
    finally:
        follower.close()
    cached = store.cached_assignment(mouse)
    return cached.assignment if cached is not None else None


def test_override_eject_and_adjust_through_kafka_and_the_status_tables(
    stack: Stack, tmp_path: Path
) -> None:
    stack.publish([enrolled("M1")])
    stack.wait_for_status("M1", stage="s1_habituation", last_reason="enrolled")

    # An adjustment: honoured at once, and it reaches the rig's assignment after the session.
    code, out = stack.shaping("adjust", "M1", "--set", "max_trials=150", "--reason", "tires")
    assert code == 0 and "adjustment of M1 honoured" in out, out + stack.tail()
    stack.publish(session("M1", "s-1", GOOD))
    decision = stack.decision_on("s-1")
    assert (decision.decision, decision.to_stage) == ("progress", "s2_training")
    cached = wait_until(
        lambda: (
            (a := rig_cache(stack, "M1", tmp_path)) and a.causation_id == decision.event_id and a
        ),
        WAIT_S,
        "the rig to cache the assignment after s-1",
    )
    assert cached.stage == "s2_training" and cached.reason == "progress"
    assert cached.parameters["max_trials"] == 150  # s2_training's own is 300
    assert cached.adjustments == {"max_trials": 150}
    assert cached.evidence == decision.rule_evaluations
    stack.wait_for_status("M1", stage="s2_training", sessions_completed=1)

    # An override planned on a stage the mouse has left is refused by the processor.
    code, out = stack.shaping(
        "override", "M1", "--stage", "s3_full_task", "--from", "s1_habituation", "--reason", "x"
    )
    assert code == 1, out
    assert "refused the override of M1: mouse 'M1' is at 's2_training' now" in " ".join(out.split())
    assert "(command OverrideStage " in " ".join(out.split()), out

    # An override back to s1: the next session is judged by s1's rules.
    code, out = stack.shaping(
        "override", "M1", "--stage", "s1_habituation", "--reason", "lost weight"
    )
    assert code == 0 and "override of M1 honoured" in out and "stage s1_habituation" in out, out
    assert rig_cache(stack, "M1", tmp_path).stage == "s1_habituation"  # type: ignore[union-attr]
    stack.publish(session("M1", "s-2", GOOD, stage="s1_habituation", day=1))
    decision = stack.decision_on("s-2")
    assert (decision.from_stage, decision.rule, decision.to_stage) == (
        "s1_habituation",
        "engaged_and_accurate",
        "s2_training",
    )
    stack.wait_for_status("M1", stage="s2_training", sessions_completed=2)

    # An ejection: no more assignments; the next session is dead-lettered.
    code, out = stack.shaping("eject", "M1", "--reason", "end of experiment")
    assert code == 0 and "ejection of M1 honoured" in out, out
    ejected = rig_cache(stack, "M1", tmp_path)
    assert ejected is not None and ejected.reason == "ejected" and ejected.parameters == {}
    late = session("M1", "s-3", GOOD, stage="s2_training", day=2)
    stack.publish(late)
    refused = stack.reader.wait_for(
        lambda _: [
            e
            for e in stack.reader.events(event_type=EventRejected)
            if e.causation_id == late[0].event_id
        ],
        WAIT_S,
        "the dead letter of the session after the ejection",
        stack.tail,
    )
    assert refused[0].error_kind == "impossible"
    assert "which was ejected (end of experiment)" in refused[0].reason
    stack.reader.poll(2.0)
    after_ejection = [
        e
        for e in stack.reader.events(event_type=AssignmentIssued)
        if e.mouse_id == "M1" and e.session_number > ejected.session_number
    ]
    assert after_ejection == []

    # The status tables show it all.
    stack.wait_for_status("M1", last_reason="ejected")
    tables = wait_until(
        lambda: (
            (t := stack.tables())
            and len(t["interventions"]) == 4
            and all(r["honoured_at"] or r["refused_at"] for r in t["interventions"])
            and any("which was ejected" in r["reason"] for r in t["rejected_events"])
            and t
        ),
        WAIT_S,
        "the interventions in the status tables",
    )
    audit = sorted(tables["interventions"], key=lambda r: str(r["requested_at"]))
    assert [(r["kind"], r["to_stage"], r["requested_by"]) for r in audit] == [
        ("adjust", None, "ada"),
        ("override", "s3_full_task", "ada"),
        ("override", "s1_habituation", "ada"),
        ("eject", None, "ada"),
    ]
    assert json.loads(audit[0]["adjustments_json"]) == {"max_trials": 150}
    assert "is at 's2_training' now" in audit[1]["refused_reason"]
    assert (
        audit[2]["from_stage"] == "s2_training" and audit[2]["assigned_stage"] == "s1_habituation"
    )
    assert [r["reason"] for r in audit] == ["tires", "x", "lost weight", "end of experiment"]

    code, out = stack.shaping("status")
    assert code == 0 and any("M1" in line and "ejected" in line for line in out.splitlines()), out
    code, out = stack.shaping("history", "M1")
    flat = " ".join(out.split())
    assert code == 0, out
    for shown in (
        "adjust max_trials=150",
        "override s1_habituation -> s3_full_task",
        "override s2_training -> s1_habituation",
        "eject",
    ):
        assert shown in flat, flat


def command_id_in(out: str) -> str:
    """The command id a ``shaping`` command printed (``... (command ID, topic[p]@o) ...``)."""
    return out.split("(command ", 1)[1].split(",", 1)[0]


def test_commands_are_answered_on_the_log_and_bad_ones_become_dead_letters(stack: Stack) -> None:
    """An enrolment command is answered by its MouseEnrolled on the events topic (derived id),
    which the processor then applies; a refused command appends nothing and is explained; a
    malformed message on the commands topic becomes a dead letter and the next valid command is
    still processed."""
    events = TopicReader(stack.bootstrap, [stack.topics.events])
    try:
        code, out = stack.shaping("enroll", "M7", "--curriculum", "basic-shaping")
        assert code == 0, out + stack.tail()
        [enrolled_event] = events.wait_for(
            lambda _: events.events(event_type=MouseEnrolled), WAIT_S, "the MouseEnrolled"
        )
        assert enrolled_event.enrolled_by == "ada" and enrolled_event.causation_id
        assert enrolled_event.event_id == answer_event_id("M7", enrolled_event.causation_id)
        where = f"{stack.topics.events}["
        assert f"enrolled M7 on basic-shaping (event {enrolled_event.event_id}, {where}" in out
        stack.wait_for_status("M7", stage="s1_habituation", last_reason="enrolled")

        # Refused: a start stage the curriculum lacks. Nothing is appended; the reason is shown.
        code, out = stack.shaping(
            "enroll", "M8", "--curriculum", "basic-shaping", "--start-stage", "s9_nowhere"
        )
        flat = " ".join(out.split())
        assert code == 1, out
        assert "the processor refused the enrolment of M8" in flat and "s9_nowhere" in flat

        # A malformed message and an event on the commands topic: dead letters, and the next
        # command is processed all the same.
        with Publisher(stack.bootstrap, stack.topics.commands) as commands:
            commands.raw(b"M7", b"\x00 not a command")
            commands.raw(b"M7", default_codec().encode(enrolled_event))
        code, out = stack.shaping("eject", "M7", "--reason", "end of experiment")
        assert code == 0 and "ejection of M7 honoured" in out, out + stack.tail()
        ejected = events.wait_for(
            lambda _: events.events(event_type=MouseEjected), WAIT_S, "the MouseEjected"
        )[0]
        assert ejected.ejected_by == "ada" and ejected.reason == "end of experiment"
        stack.wait_for_status("M7", last_reason="ejected")
        letters = stack.reader.wait_for(
            lambda _: (
                [
                    e
                    for e in stack.reader.events(event_type=EventRejected)
                    if e.source_topic == stack.topics.commands
                ][2:]
                and [
                    e
                    for e in stack.reader.events(event_type=EventRejected)
                    if e.source_topic == stack.topics.commands
                ]
            ),
            WAIT_S,
            "the dead letters of the commands topic",
            stack.tail,
        )
        kinds = sorted((e.mouse_id, e.error_kind) for e in letters)
        assert kinds == [("M7", "invalid"), ("M7", "undecodable"), ("M8", "impossible")], kinds
        events.poll(2.0)
        appended = events.events()
        assert [type(e) for e in appended] == [MouseEnrolled, MouseEjected]
        assert not any(isinstance(e, StageOverridden) for e in appended)
        assert all(e.mouse_id == "M7" for e in appended)  # nothing for the refused M8
    finally:
        events.close()
    assert stack.processor.poll() is None, stack.tail()  # the processor never stopped
