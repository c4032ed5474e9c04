"""The processor's batches overlap: a batch's state records travel while the next batch is
processed, and nothing of that next batch leaves before they are on the broker.

``FaustProcessor`` (services/processor/app.py, "Delivery" in its docstring) sends a batch's
outputs and waits for the broker, sends each touched mouse's state record and returns without
waiting; the inputs are acknowledged once the broker took those records, whether or not another
batch came. Checked here with a stand-in producer whose acknowledgements the test gives, holds
back or refuses: what goes on the wire and in what order, when the inputs are acknowledged, and
that records the broker refuses cost no input and leave every mouse as a clean run leaves it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal, get_args

from faust.types import TP

from shaping.schemas.codec import encode_key
from shaping.schemas.events import EventRejected
from shaping.schemas.topics import TopicKind
from shaping.services.domain import MouseState
from shaping.services.processor import app as processor_app
from shaping.services.processor.state_store import join_sessions
from shaping.services.processor.step import ProcessorStep
from tests.support.story import core, enrolled, session, trials
from tests.unit.test_processor_batches import (
    CODEC,
    EVENTS,
    FakeEvent,
    FakeTable,
    FakeTopic,
    Log,
    interleave,
    make_rig,
)

Mode = Literal["ack", "hold", "refuse"]


class Changelog:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_topic_name(self) -> str:
        return self.name


@dataclass
class LoggedTable(FakeTable):
    """A table with a changelog: the processor sends its records to the producer."""

    changelog_topic: Changelog = field(default_factory=lambda: Changelog("t.changelog"))


class Producer:
    """Puts every record on ``wire`` and acknowledges it, holds it back, or refuses it."""

    def __init__(self, wire: list[tuple[str, bytes]]) -> None:
        self.wire = wire
        self.mode: Mode = "ack"
        self.held: list[asyncio.Future[None]] = []

    async def send(
        self, topic: str, key: bytes, value: bytes, partition: int, *_: Any
    ) -> asyncio.Future[None]:
        self.wire.append((topic, value))
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.mode == "ack":
            delivered.set_result(None)
        elif self.mode == "refuse":
            delivered.set_exception(RuntimeError("NotEnoughReplicas: the broker refused it"))
        else:
            self.held.append(delivered)
        return delivered

    def release(self) -> None:
        for delivered in self.held:
            delivered.set_result(None)
        self.held.clear()


@dataclass
class Pipeline:
    processor: processor_app.FaustProcessor
    producer: Producer
    table: LoggedTable
    sessions: LoggedTable
    wire: list[tuple[str, bytes]]
    acked: list[FakeEvent]

    def records(self) -> int:
        return sum(topic.endswith("changelog") for topic, _ in self.wire)

    def outputs(self) -> list[bytes]:
        return [value for topic, value in self.wire if not topic.endswith("changelog")]

    def stored(self, mouse: str) -> MouseState:
        key = encode_key(mouse)
        return join_sessions(self.table.data[key], self.sessions.data.get(key))


def make_pipeline(defer_s: float = 0.0) -> Pipeline:
    wire: list[tuple[str, bytes]] = []
    acked: list[FakeEvent] = []
    producer = Producer(wire)
    table = LoggedTable(changelog_topic=Changelog("t.state-changelog"))
    sessions = LoggedTable(changelog_topic=Changelog("t.sessions-changelog"))
    processor = processor_app.FaustProcessor(
        app=SimpleNamespace(producer=producer),  # type: ignore[arg-type]
        step=ProcessorStep(core(), CODEC),
        table=table,  # type: ignore[arg-type]
        outputs={kind: FakeTopic(kind, wire) for kind in get_args(TopicKind)},  # type: ignore[misc]
        sessions=sessions,  # type: ignore[arg-type]
        defer_s=defer_s,
    )

    async def acknowledge(event: Any) -> None:
        acked.append(event)

    processor.acknowledge = acknowledge
    return Pipeline(processor, producer, table, sessions, wire, acked)


def two_mice() -> tuple[list[FakeEvent], list[FakeEvent]]:
    """Two batches: A and B enrolled and 30 trials into their first session; then the rest of
    the session and its end (a decision each), and C enrolled."""
    log = Log()
    a = log.of([enrolled("A"), *session("A", "a-1", trials(correct=40, incorrect=4))])
    b = log.of([enrolled("B"), *session("B", "b-1", trials(correct=20, incorrect=30))], 1)
    c = log.of([enrolled("C")], 2)
    return interleave(a[:31], b[:31]), interleave(a[31:], b[31:], c)


async def settled(check: Callable[[], bool]) -> None:
    """Lets the event loop run until ``check`` holds (a few rounds at most)."""
    for _ in range(20):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("the processor never got there")


def test_a_batch_returns_with_its_state_records_in_flight_and_acknowledges_its_inputs_once_the_broker_took_them() -> (  # noqa: E501
    None
):
    first, _ = two_mice()

    async def scenario() -> None:
        pipe = make_pipeline()
        pipe.producer.mode = "hold"
        results = await pipe.processor.handle_batch(first)  # type: ignore[arg-type]
        assert [r.outcome for r in results].count("accepted") == len(first)
        assert pipe.records() == 2  # one record per mouse, sent
        assert pipe.acked == []  # ... and not on the broker yet: no input acknowledged
        assert pipe.table.data == {} and pipe.sessions.data == {}
        pipe.producer.release()  # the broker takes them; no other batch comes
        await settled(lambda: len(pipe.acked) == len(first))
        assert pipe.acked == first  # every input, in the order read
        assert set(pipe.table.data) == {encode_key("A"), encode_key("B")}
        assert pipe.stored("A").open_session is not None

    asyncio.run(scenario())


def test_nothing_of_the_next_batch_leaves_before_the_last_batchs_state_records_are_on_the_broker() -> (  # noqa: E501
    None
):
    first, second = two_mice()

    async def scenario() -> None:
        pipe = make_pipeline()
        pipe.producer.mode = "hold"
        await pipe.processor.handle_batch(first)  # type: ignore[arg-type]
        on_wire = len(pipe.wire)
        pipe.producer.mode = "ack"
        next_batch = asyncio.ensure_future(pipe.processor.handle_batch(second))  # type: ignore[arg-type]
        for _ in range(10):
            await asyncio.sleep(0)
        # The second batch is processed (it is waiting to publish) but nothing of it left.
        assert not next_batch.done() and len(pipe.wire) == on_wire and pipe.acked == []
        pipe.producer.release()
        results = await next_batch
        decisions = [r for r in results if any(o.topic_kind == "decisions" for o in r.outputs)]
        assert len(decisions) == 2  # A's and B's sessions were judged
        # On the wire: the first batch's outputs and records, then the second's.
        topics = [topic for topic, _ in pipe.wire]
        assert topics[on_wire:].count("decisions") == 2
        assert all(t.endswith("changelog") for t in topics[on_wire - 2 : on_wire])
        await settled(lambda: len(pipe.acked) == len(first) + len(second))
        assert pipe.acked == first + second

    asyncio.run(scenario())


def mouse_outputs(pipe: Pipeline, mouse: str) -> int:
    return [CODEC.decode(value).mouse_id for value in pipe.outputs()].count(mouse)


def refused_then_next() -> tuple[list[list[FakeEvent]], list[FakeEvent]]:
    """A's and B's enrolment and first session (A on partition 0, B on 1), in batches, the
    second of which has its records refused; and the batch that comes after it."""
    log = Log()
    a = log.of(
        [
            enrolled("A"),
            *session("A", "a-1", trials(correct=20, incorrect=30)),
            *session("A", "a-2", trials(correct=20, incorrect=30), day=1),
        ]
    )
    b = log.of([enrolled("B"), *session("B", "b-1", trials(correct=20, incorrect=30))], 1)
    refused = interleave(a[53:64], b[:11])  # A's second session starts, B's first
    return [a[:53], refused], interleave(a[64:74], b[11:21])


def test_state_records_the_broker_refuses_undo_their_batch_whose_messages_go_again_one_at_a_time() -> (  # noqa: E501
    None
):
    """The refusal is found when the next batch is about to publish: the refused batch is
    undone in memory and its messages processed again, one at a time, then the next batch's.
    No input is lost, parked or acknowledged twice, and every mouse is stored as a run the
    broker never refused leaves it. The refused batch starts a second session (a whole state
    record) and the next adds trials to it (an open-sessions record, which names the whole
    record it extends): kept in memory, the refused state would have been extended by a
    record whose base never reached the broker."""
    before, after = refused_then_next()
    batches = [*before, after]
    clean = make_rig()
    for batch in batches:
        asyncio.run(clean.processor.handle_batch(batch))  # type: ignore[arg-type]

    async def scenario() -> Pipeline:
        pipe = make_pipeline()
        await pipe.processor.handle_batch(batches[0])  # type: ignore[arg-type]
        pipe.producer.mode = "refuse"
        await pipe.processor.handle_batch(batches[1])  # type: ignore[arg-type]
        for _ in range(5):
            await asyncio.sleep(0)
        assert pipe.acked == batches[0]  # refused: nothing of the batch counts
        pipe.producer.mode = "ack"
        results = await pipe.processor.handle_batch(batches[2])  # type: ignore[arg-type]
        assert [r.outcome for r in results] == ["accepted"] * len(batches[2])
        await settled(lambda: len(pipe.acked) == sum(map(len, batches)))
        return pipe

    pipe = asyncio.run(scenario())
    assert pipe.acked == [event for batch in batches for event in batch]
    for mouse in "AB":
        assert pipe.stored(mouse) == clean.stored(mouse)
    second = pipe.stored("A").open_session
    assert second is not None and (second.session_id, second.last_trial_index) == ("a-2", 19)
    sent = [CODEC.decode(value) for value in pipe.outputs()]
    assert not [e for e in sent if isinstance(e, EventRejected)]  # nothing parked
    assert {e.event_id for e in sent} == {CODEC.decode(value).event_id for _, value in clean.sent}


def test_a_refused_batch_of_partitions_revoked_meanwhile_is_left_to_their_new_owner() -> None:
    """Only the messages of partitions the worker still owns are done again; the others are
    neither processed nor acknowledged here (the new owner reads them from the last commit)."""
    (first, refused), after = refused_then_next()
    kept = [event for event in refused if event.message.partition == 0]
    following = [event for event in after if event.message.partition == 0]

    of_b = 0

    async def scenario() -> Pipeline:
        pipe = make_pipeline()
        await pipe.processor.on_partitions_assigned(None, {TP(EVENTS, 0), TP(EVENTS, 1)})
        await pipe.processor.handle_batch(first)  # type: ignore[arg-type]
        pipe.producer.mode = "refuse"
        await pipe.processor.handle_batch(refused)  # type: ignore[arg-type]
        await pipe.processor.on_partitions_revoked(None, {TP(EVENTS, 1)})
        nonlocal of_b
        of_b = mouse_outputs(pipe, "B")
        pipe.producer.mode = "ack"
        await pipe.processor.handle_batch(following)  # type: ignore[arg-type]
        await settled(lambda: len(pipe.acked) == len(first + kept + following))
        return pipe

    pipe = asyncio.run(scenario())
    assert pipe.acked == first + kept + following  # A's went again, B's were left alone
    assert encode_key("B") not in pipe.processor.live
    assert pipe.stored("A").open_session is not None
    assert of_b > 0 and mouse_outputs(pipe, "B") == of_b  # the first try's, no more
