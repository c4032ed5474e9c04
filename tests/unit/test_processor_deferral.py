"""A mouse that only gained trials is not written after every batch.

Under load a batch touches dozens of mice, each with a trial or two, and writing each one's
open-sessions record after every batch is what the loaded latency tail was made of
(bench/REPORT.md, (c)). ``FaustProcessor(defer_s=...)`` (services/processor/app.py, "Deferred
writes" in its docstring) keeps such a mouse's newer state in memory and writes it once: when
the mouse changes more than its open sessions (a session end: the whole state), when it has
waited ``defer_s``, or when the stream goes idle (an empty batch). Its inputs are acknowledged
only when the record carrying them is on the broker.

Checked here, with the stand-in producer of test_processor_pipeline.py, at every step: every
acknowledged input is folded into its mouse's state as the tables hold it (what a restart would
read), so a crash at any point loses nothing. And refusals, failures and revocations leave
every mouse as a clean run leaves it, every input acknowledged once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from faust.types import TP

from shaping.schemas.codec import encode_key
from shaping.schemas.events import EventRejected, TrialCompleted
from shaping.services.processor import app as processor_app
from tests.support.story import enrolled, session, trials
from tests.unit.test_processor_batches import CODEC, FakeEvent, Log, interleave, make_rig
from tests.unit.test_processor_pipeline import Pipeline, make_pipeline, settled


def two_sessions() -> tuple[list[FakeEvent], list[FakeEvent]]:
    """A (partition 0) and B (partition 1): enrolled, then a session each of 44 and 50
    trials; A's session ends, B's does not."""
    log = Log()
    a = log.of([enrolled("A"), *session("A", "a-1", trials(correct=40, incorrect=4))])
    b = log.of([enrolled("B"), *session("B", "b-1", trials(correct=20, incorrect=30))[:-1]], 1)
    return a, b


def in_batches(a: list[FakeEvent], b: list[FakeEvent]) -> list[list[FakeEvent]]:
    """Enrolments and session starts; three batches of trials only; A's last trials and its
    session end with more of B's trials."""
    return [
        interleave(a[:2], b[:2]),
        interleave(a[2:12], b[2:12]),
        interleave(a[12:22], b[12:22]),
        interleave(a[22:32], b[22:32]),
        interleave(a[32:], b[32:42]),
    ]


def deferring(now: list[float], defer_s: float = 1.0) -> Pipeline:
    pipe = make_pipeline(defer_s=defer_s)
    pipe.processor.clock = lambda: now[0]
    return pipe


def assert_acknowledged_inputs_are_stored(pipe: Pipeline) -> None:
    """What a restart would find: every acknowledged trial is in its mouse's stored state, or
    parked on the dead-letter topic."""
    parked = {
        (e.source_topic, e.source_partition, e.source_offset)
        for e in map(CODEC.decode, pipe.outputs())
        if isinstance(e, EventRejected)
    }
    for event in pipe.acked:
        decoded = CODEC.decode(event.value)
        message = event.message
        if not isinstance(decoded, TrialCompleted):
            continue
        if (message.topic, message.partition, message.offset) in parked:
            continue
        offsets = pipe.stored(decoded.mouse_id).input_offsets
        assert offsets.get(f"{message.topic}/{message.partition}", -1) >= message.offset, (
            f"{decoded.mouse_id}'s trial at offset {message.offset} was acknowledged but is not "
            "in its stored state"
        )


def clean_states(batches: list[list[FakeEvent]]) -> Any:
    rig = make_rig()
    for batch in batches:
        asyncio.run(rig.processor.handle_batch(batch))  # type: ignore[arg-type]
    return rig


def test_a_mouse_that_only_gained_trials_is_written_once_with_its_session_end_or_when_the_stream_is_idle() -> (  # noqa: E501
    None
):
    a, b = two_sessions()
    batches = in_batches(a, b)
    now = [0.0]

    async def scenario() -> Pipeline:
        pipe = deferring(now)
        await pipe.processor.handle_batch(batches[0])  # type: ignore[arg-type]
        await settled(lambda: len(pipe.acked) == 4)
        assert pipe.records() == 2  # enrolments and session starts: whole records, at once
        for batch in batches[1:4]:
            await pipe.processor.handle_batch(batch)  # type: ignore[arg-type]
            await settled(lambda: True)
            assert_acknowledged_inputs_are_stored(pipe)
        assert pipe.records() == 2 and len(pipe.acked) == 4  # trials only: nothing written yet
        await pipe.processor.handle_batch(batches[4])  # type: ignore[arg-type]
        await settled(lambda: len(pipe.acked) == 4 + 45)
        # A's session ended: one whole record carries its 44 trials, and they are acknowledged.
        assert pipe.records() == 3
        assert {CODEC.decode(e.value).mouse_id for e in pipe.acked[4:]} == {"A"}
        assert_acknowledged_inputs_are_stored(pipe)
        await pipe.processor.handle_batch([])  # the stream is idle: B is written too
        await settled(lambda: len(pipe.acked) == sum(map(len, batches)))
        assert pipe.records() == 4
        assert_acknowledged_inputs_are_stored(pipe)
        return pipe

    pipe = asyncio.run(scenario())
    clean = clean_states(batches)
    for mouse in "AB":
        assert pipe.stored(mouse) == clean.stored(mouse)
    assert clean.writes("A") + clean.writes("B") == 2 * len(batches)  # the undeferred count
    assert sorted(map(id, pipe.acked)) == sorted(id(e) for batch in batches for e in batch)


def test_a_mouse_deferred_longer_than_defer_s_is_written_with_the_next_batch_whoever_it_is_of() -> (
    None
):
    a, b = two_sessions()
    now = [0.0]

    async def scenario() -> Pipeline:
        pipe = deferring(now)
        await pipe.processor.handle_batch(interleave(a[:2], b[:2]))  # type: ignore[arg-type]
        await pipe.processor.handle_batch(interleave(a[2:10], b[2:10]))  # type: ignore[arg-type]
        now[0] = 0.5
        await pipe.processor.handle_batch(a[10:20])  # type: ignore[arg-type]
        await settled(lambda: True)
        assert pipe.records() == 2  # neither has waited 1 s yet
        now[0] = 1.0
        await pipe.processor.handle_batch(a[20:25])  # type: ignore[arg-type]
        # Both waited 1 s (since their first deferred batch): a batch takes an eighth of the
        # deferred mice, plus one, so A's is written now (it is in the batch) and B's, due
        # since as long, with the next batch, so that mice deferred together spread out.
        await settled(lambda: len(pipe.acked) == 4 + 8 + 10 + 5)
        assert pipe.records() == 3
        assert_acknowledged_inputs_are_stored(pipe)
        await pipe.processor.handle_batch(a[25:27])  # type: ignore[arg-type]
        await settled(lambda: len(pipe.acked) == 4 + 8 + 8 + 10 + 5)
        assert pipe.records() == 4
        assert_acknowledged_inputs_are_stored(pipe)
        return pipe

    pipe = asyncio.run(scenario())
    assert pipe.stored("A").open_session is not None
    assert pipe.stored("A").open_session.last_trial_index == 22  # type: ignore[union-attr]
    assert pipe.processor.deferred.keys() == {encode_key("A")}  # a[25:27], not due yet
    assert pipe.stored("B").open_session.last_trial_index == 7  # type: ignore[union-attr]


def test_a_refused_deferred_write_costs_no_input_and_leaves_every_mouse_as_a_clean_run() -> None:
    """The idle flush's records are refused; the next batch finds it: every state not stored
    goes back to the stored one, and every input not acknowledged is processed again, one at a
    time, before that batch."""
    a, b = two_sessions()
    batches = in_batches(a, b)
    now = [0.0]

    async def scenario() -> Pipeline:
        pipe = deferring(now)
        for batch in batches[:3]:
            await pipe.processor.handle_batch(batch)  # type: ignore[arg-type]
        pipe.producer.mode = "refuse"
        await pipe.processor.handle_batch([])  # the flush of A and B: refused
        await settled(lambda: True)
        assert len(pipe.acked) == 4
        pipe.producer.mode = "ack"
        for batch in batches[3:]:
            await pipe.processor.handle_batch(batch)  # type: ignore[arg-type]
        await pipe.processor.handle_batch([])
        await settled(lambda: len(pipe.acked) == sum(map(len, batches)))
        assert_acknowledged_inputs_are_stored(pipe)
        return pipe

    pipe = asyncio.run(scenario())
    clean = clean_states(batches)
    for mouse in "AB":
        assert pipe.stored(mouse) == clean.stored(mouse)
    sent = [CODEC.decode(value) for value in pipe.outputs()]
    assert not [e for e in sent if isinstance(e, EventRejected)]  # nothing parked
    assert {e.event_id for e in sent} == {CODEC.decode(value).event_id for _, value in clean.sent}
    assert len({id(e) for e in pipe.acked}) == len(pipe.acked)  # none acknowledged twice


def test_a_batch_that_fails_takes_the_deferred_mice_back_to_their_stored_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The producer raises while a batch writes (a deferred mouse is due in it): the batch is
    processed again one message at a time, and so are the deferred mice's waiting inputs."""
    monkeypatch.setattr(processor_app, "RETRY_PAUSE_S", 0.0)
    a, b = two_sessions()
    batches = in_batches(a, b)
    now = [0.0]

    async def scenario() -> Pipeline:
        pipe = deferring(now)
        for batch in batches[:4]:
            await pipe.processor.handle_batch(batch)  # type: ignore[arg-type]
        send = pipe.producer.send
        failures = [1]

        async def flaky(*args: Any) -> Any:
            if failures[0]:
                failures[0] -= 1
                raise RuntimeError("KafkaTimeoutError: the producer's buffer is full")
            return await send(*args)

        pipe.producer.send = flaky  # type: ignore[method-assign]
        results = await pipe.processor.handle_batch(batches[4])  # type: ignore[arg-type]
        assert [r.outcome for r in results] == ["accepted"] * len(batches[4])
        await pipe.processor.handle_batch([])
        await settled(lambda: len(pipe.acked) == sum(map(len, batches)))
        assert_acknowledged_inputs_are_stored(pipe)
        return pipe

    pipe = asyncio.run(scenario())
    clean = clean_states(batches)
    for mouse in "AB":
        assert pipe.stored(mouse) == clean.stored(mouse)
    assert len({id(e) for e in pipe.acked}) == len(pipe.acked)


def test_the_deferred_mice_of_a_revoked_partition_are_dropped_unwritten_and_unacknowledged() -> (
    None
):
    a, b = two_sessions()
    batches = in_batches(a, b)
    now = [0.0]

    async def scenario() -> Pipeline:
        pipe = deferring(now)
        await pipe.processor.on_partitions_assigned(
            None, {TP(a[0].message.topic, p) for p in (0, 1)}
        )
        for batch in batches[:3]:
            await pipe.processor.handle_batch(batch)  # type: ignore[arg-type]
        await settled(lambda: True)
        await pipe.processor.on_partitions_revoked(None, {TP(b[0].message.topic, 1)})
        await pipe.processor.handle_batch([])
        await settled(lambda: len(pipe.acked) == 4 + 20)
        return pipe

    pipe = asyncio.run(scenario())
    assert pipe.records() == 3  # the two first records and A's, never B's trials
    assert {CODEC.decode(e.value).mouse_id for e in pipe.acked[4:]} == {"A"}
    assert encode_key("B") not in pipe.processor.live
    assert encode_key("B") not in pipe.processor.deferred
    assert_acknowledged_inputs_are_stored(pipe)


def test_a_deferred_mouse_whose_record_cannot_be_written_costs_the_other_mice_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """B's records always fail. When B is due, the batch fails; the deferred mice go back to
    their stored states and every waiting input goes again one at a time, written at once: B's
    are parked (each fails alone), A's session is judged and stored as a clean run's."""
    monkeypatch.setattr(processor_app, "RETRY_PAUSE_S", 0.0)
    a, b = two_sessions()
    batches = in_batches(a, b)
    now = [0.0]

    async def scenario() -> Pipeline:
        pipe = deferring(now)
        for batch in batches[:4]:
            await pipe.processor.handle_batch(batch)  # type: ignore[arg-type]
        send = pipe.producer.send

        async def refuses_b(topic: str, key: bytes, *args: Any) -> Any:
            if key == encode_key("B"):
                raise RuntimeError("RecordTooLargeError: B's record cannot be sent")
            return await send(topic, key, *args)

        pipe.producer.send = refuses_b  # type: ignore[method-assign]
        now[0] = 5.0  # both are due with the next batch
        await pipe.processor.handle_batch(batches[4])  # type: ignore[arg-type]
        await settled(lambda: len(pipe.acked) == sum(map(len, batches)))
        assert_acknowledged_inputs_are_stored(pipe)
        return pipe

    pipe = asyncio.run(scenario())
    clean = clean_states(batches)
    assert pipe.stored("A") == clean.stored("A")
    sent = [CODEC.decode(value) for value in pipe.outputs()]
    parked = [e for e in sent if isinstance(e, EventRejected)]
    assert parked and {e.mouse_id for e in parked} == {"B"}
    assert all(e.error_kind == "failed" for e in parked)
    decided = [e for e in sent if e.event_type == "StageTransitioned"]
    # A's decision, sent again (the same id) when its batch went again: a duplicate by id.
    assert {e.mouse_id for e in decided} == {"A"} and len({e.event_id for e in decided}) == 1
    assert len({id(e) for e in pipe.acked}) == len(pipe.acked)
