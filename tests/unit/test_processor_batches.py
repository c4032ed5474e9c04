"""The faust processor's batches, on small stand-ins for faust's tables and topics.

``FaustProcessor.handle_batch`` (services/processor/app.py) processes a batch against the
states in memory, publishes every output of the batch, then writes each touched mouse's state
once. Checked here without a broker: one write per mouse per batch, a failing message in the
middle of a batch parked alone with the rest processed in order, a state of another format
stopping the batch with nothing published, and the states in memory following the partition
assignment. (The same on a real broker, with a SIGKILL between publishing and storing:
tests/integration/test_processor_batches_kafka.py.)
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, get_args

import pytest
from faust.types import TP

from shaping.schemas.codec import default_codec, encode_key
from shaping.schemas.events import Event, EventRejected
from shaping.schemas.topics import TopicKind
from shaping.services.domain import MouseState
from shaping.services.processor import app as processor_app
from shaping.services.processor.state_store import (
    SESSIONS_MAGIC,
    STATE_MAGIC,
    StateFormatError,
    encode_state,
    join_sessions,
)
from shaping.services.processor.step import ProcessorStep, StepResult
from tests.support.story import core, enrolled, session, trials

CODEC = default_codec()
EVENTS = "t.events"


@dataclass
class FakeMessage:
    topic: str
    partition: int
    offset: int
    timestamp: float | None = None

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


@dataclass
class FakeEvent:
    key: bytes
    value: bytes
    message: FakeMessage


class FakeTopic:
    """Records what is sent (topic kind, value), in order."""

    def __init__(self, kind: str, sent: list[tuple[str, bytes]]) -> None:
        self.kind = kind
        self.sent = sent

    def get_topic_name(self) -> str:
        return f"t.{self.kind}"

    async def send(self, key: bytes, value: bytes, headers: Any) -> asyncio.Future[None]:
        self.sent.append((self.kind, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@dataclass
class FakeTable:
    """A table as a mapping that counts the writes of each key."""

    data: dict[bytes, bytes] = field(default_factory=dict)
    writes: Counter[bytes] = field(default_factory=Counter)

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.data[key] = value
        self.writes[key] += 1


@dataclass
class Rig:
    processor: processor_app.FaustProcessor
    table: FakeTable
    sessions: FakeTable
    sent: list[tuple[str, bytes]]

    def stored(self, mouse: str) -> MouseState:
        key = encode_key(mouse)
        return join_sessions(self.table.data[key], self.sessions.data.get(key))

    def writes(self, mouse: str) -> int:
        key = encode_key(mouse)
        return self.table.writes[key] + self.sessions.writes[key]

    def events(self, kind: str) -> list[Event]:
        return [CODEC.decode(value) for k, value in self.sent if k == kind]


def make_rig() -> Rig:
    sent: list[tuple[str, bytes]] = []
    table, sessions = FakeTable(), FakeTable()
    outputs: dict[TopicKind, Any] = {kind: FakeTopic(kind, sent) for kind in get_args(TopicKind)}
    processor = processor_app.FaustProcessor(
        app=None,  # type: ignore[arg-type]  # only the metrics would use it
        step=ProcessorStep(core(), CODEC),
        table=table,  # type: ignore[arg-type]
        outputs=outputs,  # type: ignore[arg-type]
        sessions=sessions,  # type: ignore[arg-type]
    )
    return Rig(processor, table, sessions, sent)


class Log:
    """Messages of the events topic, offsets counted per partition."""

    def __init__(self) -> None:
        self.next: Counter[int] = Counter()

    def of(self, stream: list[Event], partition: int = 0) -> list[FakeEvent]:
        out = []
        for event in stream:
            offset = self.next[partition]
            self.next[partition] += 1
            message = FakeMessage(EVENTS, partition, offset)
            out.append(FakeEvent(encode_key(event.mouse_id), CODEC.encode(event), message))
        return out


def interleave(*streams: list[FakeEvent]) -> list[FakeEvent]:
    merged: list[FakeEvent] = []
    longest = max(len(s) for s in streams)
    for i in range(longest):
        merged.extend(s[i] for s in streams if i < len(s))
    return merged


def run(processor: processor_app.FaustProcessor, batch: list[FakeEvent]) -> list[StepResult]:
    return asyncio.run(processor.handle_batch(batch))  # type: ignore[arg-type]


def test_a_batch_writes_each_touched_mouse_once() -> None:
    rig = make_rig()
    log = Log()
    a = log.of([enrolled("A"), *session("A", "a-1", trials(correct=30, incorrect=10))[:21]])
    b = log.of([enrolled("B"), *session("B", "b-1", trials(correct=30, incorrect=10))[:11]], 1)
    results = run(rig.processor, interleave(a, b))

    assert [r.outcome for r in results] == ["accepted"] * len(results)
    assert (rig.writes("A"), rig.writes("B")) == (1, 1)  # 22 and 12 messages
    assert rig.stored("A").open_session is not None
    assert rig.stored("A").open_session.n_trials == 20  # type: ignore[union-attr]
    assert rig.stored("B").open_session.n_trials == 10  # type: ignore[union-attr]
    # The state in memory is the stored one.
    assert rig.processor.live[encode_key("A")].state == rig.stored("A")
    # Outputs in input order: A's enrolment and assignment before B's.
    assert [e.mouse_id for e in rig.events("assignments")] == ["A", "B"]

    # A batch of trials only: one open-sessions record per mouse, no state record.
    more = interleave(
        log.of(session("A", "a-1", trials(correct=30, incorrect=10))[21:31]),
        log.of(session("B", "b-1", trials(correct=30, incorrect=10))[11:21], 1),
    )
    run(rig.processor, more)
    key_a = encode_key("A")
    assert (rig.table.writes[key_a], rig.sessions.writes[key_a]) == (1, 1)
    assert rig.sessions.data[key_a].startswith(SESSIONS_MAGIC)
    assert rig.stored("A").open_session.n_trials == 30  # type: ignore[union-attr]
    assert rig.stored("B").open_session.n_trials == 20  # type: ignore[union-attr]
    assert rig.stored("A").input_offsets == {f"{EVENTS}/0": more[-2].message.offset}


def test_a_failing_message_in_the_middle_of_a_batch_is_parked_alone_and_the_rest_go_on_in_order(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(processor_app, "RETRY_PAUSE_S", 0.0)
    rig = make_rig()
    log = Log()
    a = log.of([enrolled("A"), *session("A", "a-1", trials(correct=8, incorrect=2))])
    b = log.of([enrolled("B"), *session("B", "b-1", trials(correct=8, incorrect=2))])
    batch = interleave(a, b)
    poison = a[6]  # one of A's trials, in the middle of the batch
    step = rig.processor.step
    real = step.admit  # the first thing the batch does with an event (then its run is folded)

    def failing(state: Any, key: Any, value: Any, topic: str, part: int, offset: int, *rest: Any):
        if offset == poison.message.offset:
            raise RuntimeError("the disk is on fire")
        return real(state, key, value, topic, part, offset, *rest)

    monkeypatch.setattr(step, "admit", failing)
    with caplog.at_level(logging.WARNING):
        results = run(rig.processor, batch)

    outcomes = [r.outcome for r in results]
    index = batch.index(poison)
    assert outcomes[index] == "rejected"
    assert outcomes[:index] + outcomes[index + 1 :] == ["accepted"] * (len(batch) - 1)
    [parked] = rig.events("dead_letter")
    assert isinstance(parked, EventRejected)
    assert (parked.error_kind, parked.source_offset) == ("failed", poison.message.offset)
    assert "the disk is on fire" in parked.reason
    assert "processing them one at a time" in caplog.text
    assert caplog.text.count("failed (attempt") == processor_app.ATTEMPTS - 1
    # Nothing else lost: A has every trial but the parked one, B all of its; both judged.
    assert [d.mouse_id for d in rig.events("decisions")] == ["A", "B"]
    [a_summary, b_summary] = [d.session_summary for d in rig.events("decisions")]  # type: ignore[attr-defined]
    assert (a_summary.n_trials, b_summary.n_trials) == (9, 10)
    assigned = [(e.mouse_id, e.session_number) for e in rig.events("assignments")]
    assert assigned == [("A", 1), ("B", 1), ("A", 2), ("B", 2)]
    assert rig.stored("A").input_offsets == {f"{EVENTS}/0": a[-1].message.offset}


def test_a_state_of_another_format_stops_the_batch_before_anything_is_published(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = make_rig()
    rig.table.data[encode_key("OLD")] = b"SMS3" + encode_state(MouseState(mouse_id="OLD"))[4:]
    log = Log()
    batch = log.of([enrolled("NEW"), enrolled("OLD"), enrolled("LATER")])
    with caplog.at_level(logging.INFO), pytest.raises(StateFormatError):
        run(rig.processor, batch)
    assert rig.sent == []  # NEW's outputs did not leave: the batch is not acknowledged
    assert rig.table.writes == Counter()
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1 and "'OLD'" in critical[0].getMessage()


def test_the_states_in_memory_follow_the_assignment() -> None:
    rig = make_rig()
    log = Log()
    batch = log.of([enrolled("A")], 0) + log.of([enrolled("B")], 1) + log.of([enrolled("C")], 2)
    run(rig.processor, batch)
    live = rig.processor.live
    assert set(live) == {b"A", b"B", b"C"}
    assert rig.table.data[b"A"].startswith(STATE_MAGIC)

    asyncio.run(rig.processor.on_partitions_revoked(None, {TP(EVENTS, 0), TP("t.commands", 0)}))
    assert set(live) == {b"B", b"C"}
    asyncio.run(rig.processor.on_partitions_assigned(None, {TP(EVENTS, 1), TP("t.commands", 1)}))
    assert set(live) == {b"B"}
    asyncio.run(rig.processor.on_recovered())
    assert live == {}

    # Read again from the table on the next message: the mouse is still enrolled there.
    [result] = run(rig.processor, log.of(session("A", "a-1", [])[:1], 0))
    assert result.outcome == "accepted"
    assert live[b"A"].state.open_session is not None
    assert rig.stored("A") == live[b"A"].state


def test_the_heap_is_settled_before_the_first_batch_and_again_after_a_recovery_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settled: list[int] = []
    monkeypatch.setattr(processor_app, "settle_heap", lambda: settled.append(1))
    rig = make_rig()
    log = Log()
    run(rig.processor, log.of([enrolled("A"), enrolled("B")]))
    assert settled == []  # not asked: the collector is left alone (tests, embedded uses)

    rig.processor.settle_heap = True
    asyncio.run(rig.processor.on_recovered())
    run(rig.processor, log.of([enrolled("C"), enrolled("D")]))
    run(rig.processor, log.of([enrolled("E"), enrolled("F")]))
    assert settled == [1]  # once, before the first batch after the recovery
    asyncio.run(rig.processor.on_recovered())
    run(rig.processor, log.of([enrolled("G")]))
    assert settled == [1, 1]


def test_settling_the_heap_freezes_what_is_alive_out_of_the_collector() -> None:
    before = gc.get_freeze_count()
    try:
        processor_app.settle_heap()
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()


def test_ugly_messages_amid_a_run_of_trials_become_dead_letters_and_cost_no_trial() -> None:
    rig = make_rig()
    log = Log()
    story = [enrolled("A"), *session("A", "a-1", trials(correct=8, incorrect=2))]
    broker_time = story[0].occurred_at.timestamp()
    good = log.of(story)
    for event in good:
        event.message.timestamp = broker_time
    key = encode_key("A")
    a_trial = story[3]
    far_future = a_trial.model_copy(
        update={"event_id": "ev-future", "occurred_at": a_trial.occurred_at.replace(year=9999)}
    )
    ugly_values = {
        "huge": b"\xc3\x01" + b"\xff" * 1_000_000,
        "empty": b"",
        "nul": b"\x00" * 64,
        "future": CODEC.encode(far_future),
        "old id": CODEC.encode(a_trial),  # a trial sent again, at a new offset
    }
    ugly = []
    for value in ugly_values.values():
        [event] = log.of([story[0]])  # a place in the log, then the ugly value put there
        ugly.append(
            FakeEvent(key, value, FakeMessage(EVENTS, 0, event.message.offset, broker_time))
        )
    # The ugly messages land among the trials (after the first few), in log order.
    batch = good[:5] + ugly + good[5:]
    for offset, event in enumerate(batch):
        event.message.offset = offset

    results = run(rig.processor, batch)

    by_name = dict(zip(ugly_values, results[5 : 5 + len(ugly)], strict=True))
    for name in ("huge", "empty", "nul", "future"):
        assert by_name[name].outcome == "rejected", name
        [dead] = by_name[name].outputs
        assert isinstance(dead.event, EventRejected)
        assert dead.event.reason and "\\x00" not in dead.event.reason
        assert len(dead.event.original_value or b"") <= 64 * 1024
    assert by_name["future"].outputs[0].event.error_kind == "clock"  # type: ignore[attr-defined]
    assert by_name["old id"].outcome == "duplicate" and by_name["old id"].outputs == []
    # Every good message folded, none twice: the session judged on its 10 trials.
    good_results = results[:5] + results[5 + len(ugly) :]
    assert [r.outcome for r in good_results] == ["accepted"] * len(good)
    [decision] = rig.events("decisions")
    assert decision.session_summary.n_trials == 10  # type: ignore[attr-defined]
