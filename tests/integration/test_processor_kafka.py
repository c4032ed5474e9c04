"""The faust processor against the real Kafka broker, run as a separate process.

Each test gets fresh topics; the processor runs as ``python -m shaping.services.processor`` with its
settings in ``SHAPING_*`` variables, as it would in a deployment. Events go in with
kafka-python (acks=all, idempotent, keyed by mouse id) and the outputs are read back from the
beginning of the decisions, assignments and dead-letter topics.
"""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from shaping.schemas.events import (
    AssignmentIssued,
    EventRejected,
    StageTransitioned,
    TrialCompleted,
)
from shaping.schemas.topics import TopicNames
from shaping.services.processor.state_store import join_sessions
from tests.support.kafka import TEST_PARTITIONS
from tests.support.kafka_io import Publisher, ReadRecord, TopicReader
from tests.support.processor import ProcessorRunner, new_processor_id, of_mouse
from tests.support.story import T0, enrolled, next_id, session, trials

pytestmark = pytest.mark.kafka


def test_enrolment_and_a_good_session_lead_to_a_progression(
    processors: ProcessorRunner,
    publisher: Publisher,
    outputs: TopicReader,
    kafka_topics: TopicNames,
) -> None:
    mouse = "M-progress"
    processors.start(new_processor_id())

    publisher.events([enrolled(mouse)])
    [first] = outputs.wait_for(
        lambda _: of_mouse(outputs, mouse, AssignmentIssued),
        what="first assignment",
        on_timeout=processors.log_tail,
    )
    assert isinstance(first, AssignmentIssued)
    assert (first.stage, first.session_number, first.reason) == ("s1_habituation", 1, "enrolled")

    publisher.events(session(mouse, "M-progress-s1", trials(correct=100, incorrect=20)))
    outputs.wait_for(
        lambda _: len(of_mouse(outputs, mouse, AssignmentIssued)) >= 2,
        what="second assignment",
        on_timeout=processors.log_tail,
    )
    [decision] = of_mouse(outputs, mouse, StageTransitioned)
    assert isinstance(decision, StageTransitioned)
    assert (decision.from_stage, decision.to_stage, decision.decision) == (
        "s1_habituation",
        "s2_training",
        "progress",
    )
    assert decision.rule == "engaged_and_accurate"
    [evaluation] = decision.rule_evaluations
    observed = {o.metric: (o.observed, o.passed) for o in evaluation.observations}
    assert observed == {
        "accuracy(window=200)": (pytest.approx(100 / 120), True),
        "session_trials": (120, True),
    }
    summary = decision.session_summary
    assert (summary.n_trials, summary.n_correct, summary.n_incorrect, summary.n_miss) == (
        120,
        100,
        20,
        0,
    )
    second = of_mouse(outputs, mouse, AssignmentIssued)[1]
    assert isinstance(second, AssignmentIssued)
    assert (second.stage, second.session_number) == ("s2_training", 2)
    assert second.causation_id == decision.event_id
    # Outputs are keyed by the mouse, on the topics the step chose.
    by_topic = {(r.topic, r.key) for r in outputs.records}
    assert by_topic == {
        (kafka_topics.assignments, mouse.encode()),
        (kafka_topics.decisions, mouse.encode()),
    }


def test_bad_messages_become_dead_letters_and_the_stream_goes_on(
    processors: ProcessorRunner,
    publisher: Publisher,
    outputs: TopicReader,
    kafka_topics: TopicNames,
) -> None:
    mouse = "M-dead-letters"
    processors.start(new_processor_id())

    garbage = b"\x00garbage"
    publisher.raw(mouse.encode(), garbage)
    impossible = TrialCompleted(
        event_id=next_id(),
        mouse_id=mouse,
        rig_id="rig-1",
        session_id="never-started",
        occurred_at=T0,
        trial_index=0,
        outcome="correct",
    )
    [impossible_bytes] = publisher.events([impossible])
    publisher.events([enrolled(mouse)])  # same key, same partition: after the bad ones

    outputs.wait_for(
        lambda _: of_mouse(outputs, mouse, AssignmentIssued),
        what="assignment after the bad messages",
        on_timeout=processors.log_tail,
    )
    rejected = sorted(
        (r for r in outputs.records if r.topic == kafka_topics.dead_letter),
        key=lambda r: r.offset,
    )
    assert len(rejected) == 2, rejected
    undecodable, impossible_letter = (r.event for r in rejected)
    assert isinstance(undecodable, EventRejected)
    assert undecodable.error_kind == "undecodable"
    assert "not an Avro single-object message" in undecodable.reason
    assert undecodable.original_value == garbage
    assert undecodable.original_key == mouse.encode()
    assert undecodable.source_topic == kafka_topics.events
    assert isinstance(impossible_letter, EventRejected)
    assert impossible_letter.error_kind == "impossible"
    assert "never started" in impossible_letter.reason
    assert impossible_letter.original_value == impossible_bytes
    assert impossible_letter.causation_id == impossible.event_id
    assert impossible_letter.source_offset == undecodable.source_offset + 1
    assert all(r.key == mouse.encode() for r in rejected)


def test_a_resent_session_end_is_dropped_as_a_duplicate(
    processors: ProcessorRunner,
    publisher: Publisher,
    outputs: TopicReader,
    kafka_topics: TopicNames,
) -> None:
    """A rig's outbox may send an event twice. The very same SessionEnded again is a duplicate:
    dropped silently (its decision was published before the state that records it), neither
    judged again nor refused, and the stream goes on."""
    mouse = "M-duplicate"
    processors.start(new_processor_id())

    sent = publisher.events(
        [enrolled(mouse), *session(mouse, "M-duplicate-s1", trials(correct=100, incorrect=20))]
    )
    outputs.wait_for(
        lambda _: len(of_mouse(outputs, mouse, AssignmentIssued)) >= 2,
        what="the decision's assignment",
        on_timeout=processors.log_tail,
    )
    publisher.raw(mouse.encode(), sent[-1])  # the very same SessionEnded bytes again
    publisher.events(session(mouse, "M-duplicate-s2", trials(correct=100, incorrect=20), day=1))
    outputs.wait_for(
        lambda _: len(of_mouse(outputs, mouse, AssignmentIssued)) >= 3,
        what="the next session's assignment",
        on_timeout=processors.log_tail,
    )
    decisions = of_mouse(outputs, mouse, StageTransitioned)
    assert [d.session_id for d in decisions] == ["M-duplicate-s1", "M-duplicate-s2"]
    assignments = of_mouse(outputs, mouse, AssignmentIssued)
    assert len({e.event_id for e in assignments}) == len(assignments) == 3
    assert [r for r in outputs.records if r.topic == kafka_topics.dead_letter] == []


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    """The offsets a consumer group has committed on a topic, per partition."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(TEST_PARTITIONS)}
    finally:
        consumer.close()


def topic_layout(bootstrap: str, topic: str) -> tuple[int, str]:
    """Partition count and cleanup.policy of a topic."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="shaping-tests")
    try:
        [info] = admin.describe_topics([topic])
        configs = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, ["cleanup.policy"])]
        )
        policy = configs["topic"][topic]["cleanup.policy"]["value"]
        return len(info["partitions"]), policy
    finally:
        admin.close()


def test_a_restarted_processor_recovers_state_from_the_changelog(
    processors: ProcessorRunner,
    publisher: Publisher,
    outputs: TopicReader,
    kafka_bootstrap: str,
    kafka_topics: TopicNames,
) -> None:
    mouse = "M-recovery"
    processor_id = new_processor_id()
    changelog = f"{processor_id}-mouse_state-changelog"
    # A trial's state change (the open sessions) goes to a second changelog.
    sessions_changelog = f"{processor_id}-mouse_sessions-changelog"
    story = [enrolled(mouse), *session(mouse, "M-recovery-s1", trials(correct=100, incorrect=20))]
    before, after = story[:72], story[72:]  # enrolment, start, 70 trials | 50 trials, end

    first = processors.start(processor_id)
    publisher.events(before)
    with TopicReader(kafka_bootstrap, [changelog, sessions_changelog]) as states:

        def trials_in_state(records: list[ReadRecord]) -> int:
            latest = {r.topic: r.value for r in records}
            if changelog not in latest:
                return 0
            state = join_sessions(latest[changelog], latest.get(sessions_changelog))
            return state.open_session.n_trials if state.open_session else 0

        states.wait_for(
            lambda records: trials_in_state(records) == 70,
            what="a stored state with 70 trials",
            on_timeout=processors.log_tail,
        )
    assert processors.stop(first) == 0, processors.log_tail()
    # Faust created its changelog like our topics: same partitions, compacted.
    assert topic_layout(kafka_bootstrap, changelog) == (TEST_PARTITIONS, "compact")
    assert topic_layout(kafka_bootstrap, sessions_changelog) == (TEST_PARTITIONS, "compact")
    # Everything consumed was committed at shutdown, so the next process does not re-read the
    # first 72 events: the 70 trials can only come back through the changelog.
    committed = committed_offsets(kafka_bootstrap, processor_id, kafka_topics.events)
    assert sorted(o for o in committed.values() if o is not None) == [72], committed

    processors.start(processor_id)
    publisher.events(after)
    [decision] = outputs.wait_for(
        lambda _: of_mouse(outputs, mouse, StageTransitioned),
        what="the decision after the restart",
        on_timeout=processors.log_tail,
    )
    assert isinstance(decision, StageTransitioned)
    summary = decision.session_summary
    assert (summary.n_trials, summary.n_correct, summary.n_incorrect) == (120, 100, 20)
    assert decision.decision == "progress"
