"""Operators' commands through the processing step and the embedded runtime: a command is
judged by a dry run of the event it asks for; honoured, that event is appended to the events
topic and folded from there; refused, one dead letter names the command and nothing changes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from shaping.schemas.codec import default_codec, encode_key
from shaping.schemas.commands import (
    AdjustParameters,
    Command,
    EjectMouse,
    EnrolMouse,
    OverrideStage,
)
from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    EventRejected,
    MouseEnrolled,
    StageOverridden,
)
from shaping.services.embedded.runtime import EmbeddedRuntime
from shaping.services.processor.step import ProcessorStep
from tests.support.story import T0, session, trials
from tests.support.wiring import embedded_runtime, sql_store

GOOD = trials(correct=250)
TOPIC = "shaping.commands"


def enrol(mouse: str = "M1", **fields: Any) -> EnrolMouse:
    return EnrolMouse(
        mouse_id=mouse,
        requested_by="ada",
        requested_at=T0,
        curriculum_name=fields.pop("curriculum_name", "basic-shaping"),
        **fields,
    )


def override(mouse: str = "M1", to: str = "s3_full_task", **fields: Any) -> OverrideStage:
    at = T0 + timedelta(days=fields.pop("day", 1))
    return OverrideStage(
        mouse_id=mouse, requested_by="ada", requested_at=at, to_stage=to, reason="r", **fields
    )


def on_topic(runtime: EmbeddedRuntime, topic: str) -> list[Event]:
    return [default_codec().decode(r.value) for r in runtime.log.read(topic)]


def test_an_honoured_command_is_answered_by_its_event_on_the_events_topic() -> None:
    runtime = embedded_runtime()
    command = enrol(notes="cage 7")
    runtime.send_commands([command])
    [event] = on_topic(runtime, runtime.topics.events)
    assert isinstance(event, MouseEnrolled)
    assert event == command.answer()
    assert (event.event_id, event.causation_id, event.enrolled_by) == (
        command.answer_id,
        command.command_id,
        "ada",
    )
    # ... and the processor folded it from there, like any event.
    assert runtime.states["M1"].enrolled and runtime.states["M1"].stage == "s1_habituation"
    [assignment] = on_topic(runtime, runtime.topics.assignments)
    assert isinstance(assignment, AssignmentIssued)
    assert assignment.causation_id == command.answer_id
    assert on_topic(runtime, runtime.topics.accepted) == [event]
    assert on_topic(runtime, runtime.topics.dead_letter) == []


def test_a_refused_command_changes_nothing_and_is_explained() -> None:
    runtime = embedded_runtime()
    runtime.send_commands([enrol()])
    before = runtime.states["M1"]
    log_before = len(runtime.log)
    stale = override(from_stage="s2_training")
    runtime.send_commands([stale])
    assert runtime.states["M1"] == before
    new = runtime.log.records()[log_before:]
    assert [r.topic for r in new] == [runtime.topics.commands, runtime.topics.dead_letter]
    refusal = default_codec().decode(new[1].value)
    assert isinstance(refusal, EventRejected)
    assert refusal.error_kind == "impossible"
    assert refusal.causation_id == stale.command_id
    assert (refusal.source_topic, refusal.source_offset) == (runtime.topics.commands, 1)
    assert refusal.reason.startswith("mouse 'M1' is at 's1_habituation' now, not 's2_training'")
    assert f"(command OverrideStage {stale.command_id}, asked by ada)" in refusal.reason
    assert default_codec().decode_command(refusal.original_value) == stale


def test_a_malformed_command_is_a_dead_letter_and_the_next_one_is_processed() -> None:
    runtime = embedded_runtime()
    runtime.send_raw_command(b"M1", b"\x00 not a command")
    runtime.send_raw_command(b"M1", default_codec().encode(session("M1", "s-1", GOOD)[0]))
    runtime.send_commands([enrol()])
    refusals = on_topic(runtime, runtime.topics.dead_letter)
    assert [(r.error_kind, r.source_offset) for r in refusals] == [  # type: ignore[attr-defined]
        ("undecodable", 0),
        ("invalid", 1),
    ]
    assert "not an Avro single-object message" in refusals[0].reason  # type: ignore[attr-defined]
    assert "SessionStarted is an event, not a command" in refusals[1].reason  # type: ignore[attr-defined]
    assert runtime.states["M1"].enrolled


def test_a_command_sent_to_the_events_topic_is_refused_as_invalid() -> None:
    runtime = embedded_runtime()
    runtime.publish_raw(encode_key("M1"), default_codec().encode(enrol()))
    [refusal] = on_topic(runtime, runtime.topics.dead_letter)
    assert isinstance(refusal, EventRejected) and refusal.error_kind == "invalid"
    assert "EnrolMouse is a command, not an event" in refusal.reason
    assert "M1" not in runtime.states


def test_the_old_operator_events_on_the_events_topic_still_work() -> None:
    runtime = embedded_runtime()
    runtime.send_commands([enrol()])
    direct = StageOverridden(
        mouse_id="M1", occurred_at=T0 + timedelta(days=1), to_stage="s2_training", reason="r"
    )
    runtime.publish([direct])
    assert runtime.states["M1"].stage == "s2_training"
    assert runtime.assignments["M1"].causation_id == direct.event_id


def step_and_state() -> tuple[ProcessorStep, Any]:
    runtime = embedded_runtime()
    runtime.send_commands([enrol()])
    return runtime.step, runtime.states["M1"]


def judge(step: ProcessorStep, state: Any, command: Command | bytes, **kw: Any) -> Any:
    value = command if isinstance(command, bytes) else default_codec().encode(command)
    key = kw.pop("key", b"M1")
    return step.process_command(state, key, value, TOPIC, 0, kw.pop("offset", 5), **kw)


def test_the_dry_run_leaves_the_state_as_it_was() -> None:
    step, state = step_and_state()
    copy = state.model_copy(deep=True)
    for command in (
        override(),
        override(from_stage="nowhere"),
        EjectMouse(mouse_id="M1", requested_by="ada", requested_at=T0, reason="done"),
    ):
        result = judge(step, state, command)
        assert result.state is None
        assert state == copy
        assert result.command == command and result.event is None


def test_a_command_is_answered_the_same_way_twice_and_not_after_its_event_was_folded() -> None:
    step, state = step_and_state()
    command = override()
    first, again = judge(step, state, command), judge(step, state, command)
    assert first.outcome == "accepted" and [o.topic_kind for o in first.outputs] == ["events"]
    assert [o.value for o in again.outputs] == [o.value for o in first.outputs]
    answer = first.outputs[0]
    assert answer.key == b"M1" and answer.event.event_id == command.answer_id
    folded = step.process(state, b"M1", answer.value, "shaping.events", 0, 9)
    assert folded.outcome == "accepted"
    late = judge(step, folded.state, command)  # redelivered after its event was folded
    assert (late.outcome, late.outputs) == ("duplicate", [])


def test_a_reused_command_id_with_other_content_is_refused() -> None:
    step, state = step_and_state()
    command = override()
    answer = judge(step, state, command).outputs[0]
    folded = step.process(state, b"M1", answer.value, "shaping.events", 0, 9).state
    reused = override(command_id=command.command_id, to="s2_training")
    [refusal] = judge(step, folded, reused).outputs
    assert refusal.event.error_kind == "duplicate"
    assert "command id" in refusal.event.reason and "different content" in refusal.event.reason


def test_a_command_keyed_by_another_mouse_is_invalid() -> None:
    step, state = step_and_state()
    [refusal] = judge(step, state, override(), key=b"M2").outputs
    assert refusal.event.error_kind == "invalid" and "must be the mouse id" in refusal.event.reason


def test_a_command_dated_far_from_the_brokers_time_is_refused() -> None:
    step, state = step_and_state()
    result = judge(step, state, override(), timestamp=T0 - timedelta(days=1))
    [refusal] = result.outputs
    assert refusal.event.error_kind == "clock"
    assert refusal.event.reason.startswith("requested_at ")


def test_a_command_read_long_after_the_broker_took_it_is_refused_and_changes_nothing() -> None:
    """A processor under a new consumer group reads the commands topic from its start: an old
    enrolment or ejection must not be acted on again, whatever the state says now."""
    step, state = step_and_state()
    copy = state.model_copy(deep=True)
    taken = T0 + timedelta(days=1)
    fresh = judge(step, state, override(), timestamp=taken, now=taken + timedelta(minutes=59))
    assert fresh.outcome == "accepted"
    late = judge(step, state, override(), timestamp=taken, now=taken + timedelta(hours=3))
    [refusal] = late.outputs
    assert late.outcome == "rejected" and refusal.event.error_kind == "clock"
    assert "3.0 hours before the processor read it (at most 60 minutes" in refusal.event.reason
    assert "not acted on this late" in refusal.event.reason
    assert refusal.event.reason.endswith("asked by ada)")
    assert state == copy


def test_a_bug_while_judging_parks_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    step, state = step_and_state()

    def broken(*args: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(step.core, "handle", broken)
    [parked] = judge(step, state, override()).outputs
    assert parked.event.error_kind == "failed" and "RuntimeError" in parked.event.reason


def test_an_adjustment_command_reaches_the_assignment() -> None:
    runtime = embedded_runtime()
    runtime.send_commands([enrol()])
    runtime.publish(session("M1", "s-1", GOOD))
    adjust = AdjustParameters(
        mouse_id="M1",
        requested_by="ada",
        requested_at=T0 + timedelta(days=2),
        adjustments={"max_trials": 150},
        reason="tires",
    )
    runtime.send_commands([adjust])
    assignment = runtime.assignments["M1"]
    assert assignment.causation_id == adjust.answer_id
    assert assignment.adjustments == {"max_trials": 150}


def test_the_status_tables_audit_honoured_and_refused_commands(tmp_path: Path) -> None:
    store = sql_store(f"sqlite:///{tmp_path / 'status.sqlite'}")
    try:
        runtime = embedded_runtime(store)
        honoured, refused = override(to="s2_training"), override(from_stage="nowhere", day=2)
        runtime.send_commands([enrol(), honoured, refused])
        rows = {r["event_id"]: r for r in store.snapshot()["interventions"]}
        assert set(rows) == {honoured.answer_id, refused.answer_id}
        ok, no = rows[honoured.answer_id], rows[refused.answer_id]
        assert (ok["kind"], ok["requested_by"], ok["assigned_stage"]) == (
            "override",
            "ada",
            "s2_training",
        )
        assert (no["kind"], no["to_stage"], no["from_stage"]) == (
            "override",
            "s3_full_task",
            "nowhere",
        )
        assert "is at 's2_training' now" in no["refused_reason"]
    finally:
        store.close()
