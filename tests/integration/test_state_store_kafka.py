"""The processor's stored format on a real broker: a state record of another format stops the
processor (once, with the replay hint, nothing parked) until replay's hand-over rewrites it.

The processor runs as ``python -m shaping.services.processor`` (tests/support/processor.py).
"""

from __future__ import annotations

import subprocess

import pytest
from kafka import KafkaProducer

from shaping.schemas.events import AssignmentIssued, EventRejected, StageTransitioned
from shaping.services.operator.replay import ProcessorHandover
from shaping.services.processor.state_store import Changelogs, decode_state
from tests.support.kafka import TEST_PARTITIONS
from tests.support.kafka_io import Publisher, ReadRecord, TopicReader
from tests.support.processor import ProcessorRunner, new_processor_id, of_mouse
from tests.support.story import enrolled, session, trials

pytestmark = pytest.mark.kafka

CRASH_TIMEOUT_S = 120.0


def write_record(bootstrap: str, topic: str, key: bytes, value: bytes, partition: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        producer.send(topic, key=key, value=value, partition=partition)
        producer.flush(timeout=30)
    finally:
        producer.close()


def test_a_state_of_another_format_stops_the_processor_until_replay_hands_over(
    processors: ProcessorRunner,
    publisher: Publisher,
    outputs: TopicReader,
    kafka_bootstrap: str,
) -> None:
    mouse = "M-format"
    key = mouse.encode()
    processor_id = new_processor_id()
    changelogs = Changelogs.of(processor_id)

    first = processors.start(processor_id)
    publisher.events([enrolled(mouse)])
    outputs.wait_for(
        lambda _: of_mouse(outputs, mouse, AssignmentIssued),
        what="the first assignment",
        on_timeout=processors.log_tail,
    )
    with TopicReader(kafka_bootstrap, [changelogs.state]) as states:
        found = states.wait_for(
            lambda records: [r for r in records if r.key == key],
            what="the mouse's state record",
            on_timeout=processors.log_tail,
        )
    stored: ReadRecord = found[-1]
    assert stored.value.startswith(b"SMS2")
    assert processors.stop(first) == 0, processors.log_tail()

    # The store as another version left it: the same state under format 2.
    write_record(
        kafka_bootstrap, changelogs.state, key, b"SMS3" + stored.value[4:], stored.partition
    )
    second = processors.start(processor_id)
    events = session(mouse, "M-format-s1", trials(correct=5, incorrect=1))
    publisher.events(events[:1])
    try:
        code = second.wait(timeout=CRASH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"the processor did not stop on a state of another format\n{processors.log_tail()}"
        ) from None
    assert code != 0
    log = processors.logs[-1].read_text(errors="replace")
    assert log.count("cannot read the stored state of mouse 'M-format'") == 1, log
    assert "format 2" in log and "`shaping replay`" in log
    # Nothing was parked: the message waits, uncommitted, for a processor that can read.
    outputs.poll(1.0)
    assert of_mouse(outputs, mouse, EventRejected) == []

    # Replay's hand-over: the live record cannot be read, so it is rewritten.
    handover = ProcessorHandover(kafka_bootstrap, processor_id)
    written = handover.write_states(
        {mouse: decode_state(stored.value)}, {mouse: stored.partition}, TEST_PARTITIONS
    )
    assert written == 1

    processors.start(processor_id)
    publisher.events(events[1:])
    [decision] = outputs.wait_for(
        lambda _: of_mouse(outputs, mouse, StageTransitioned),
        what="the decision of the session after the hand-over",
        on_timeout=processors.log_tail,
    )
    assert isinstance(decision, StageTransitioned)
    # The session start that stopped the processor was processed after all.
    assert decision.session_summary.n_trials == 6
    assert of_mouse(outputs, mouse, EventRejected) == []
