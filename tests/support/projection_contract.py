"""The ProjectionStore contract: the one test suite of the port, with its scenario.

:class:`ProjectionStoreContract` is not collected by itself (its name does not start with
``Test``): every adapter's test class derives from it and supplies a ``store`` fixture, an empty
store (tests/unit/test_projector_sqlite.py: SQLite in a temporary file;
tests/integration/test_projector_postgres.py: a real PostgreSQL).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from shaping.schemas.events import StageTransitioned
from shaping.schemas.topics import TopicNames
from shaping.services.projector import tables
from shaping.services.projector.errors import ProjectorError
from shaping.services.projector.store import ProjectedMessage, ProjectionStore, SqlProjectionStore
from tests.support.builders import (
    CURRICULUM,
    CURRICULUM_VERSION,
    Published,
    SessionPlan,
    assignment_issued,
    at,
    event_id,
    event_rejected,
    mouse_story,
    stage_parameters,
    stage_transitioned,
)

TOPICS = TopicNames.with_prefix("proj")
TOPIC_OF = {
    "events": TOPICS.events,
    "accepted": TOPICS.accepted,
    "decisions": TOPICS.decisions,
    "assignments": TOPICS.assignments,
    "dead_letter": TOPICS.dead_letter,
}
CONSUMER = "projector"
# Two partitions per topic; M1 and M3 share one, so their events interleave within it.
PARTITION_OF = {"M1": 0, "M2": 1, "M3": 0}

LOW = ["correct", "incorrect", "incorrect", "miss"]
HIGH = ["correct", "correct", "correct", "correct", "incorrect"]


def to_messages(
    published: Sequence[Published], partition_of: Mapping[str, int] = PARTITION_OF
) -> list[ProjectedMessage]:
    """Numbers the messages per topic-partition in the order given, as a broker would."""
    next_offset: dict[tuple[str, int], int] = defaultdict(int)
    messages = []
    for item in published:
        # What a rig sent reaches the projector as the processor republished it, on the
        # accepted topic; garbage stays on the events topic, which is not projected.
        kind = "accepted" if item.kind == "events" and item.event is not None else item.kind
        topic, partition = TOPIC_OF[kind], partition_of[item.mouse_id]
        offset = next_offset[(topic, partition)]
        next_offset[(topic, partition)] += 1
        messages.append(ProjectedMessage(topic, partition, offset, item.event, kind))  # type: ignore[arg-type]
    return messages


def scenario() -> list[Published]:
    """Three mice trained at once, with an undecodable message, its dead letter and a duplicate.

    M1 stays, progresses, rolls back and skips; M2 progresses and graduates; M3 is enrolled
    half an hour later and stays once.
    """
    stories = [
        mouse_story(
            "M1",
            [
                SessionPlan(LOW, "stay"),
                SessionPlan(HIGH, "progress", "stage_2"),
                SessionPlan(LOW, "rollback", "stage_1"),
                SessionPlan(HIGH, "skip", "stage_3"),
            ],
        ),
        mouse_story(
            "M2",
            [SessionPlan(HIGH, "progress", "stage_2"), SessionPlan(HIGH, "graduate", "graduated")],
            rig_id="rig-2",
        ),
        mouse_story("M3", [SessionPlan(LOW, "stay")], start_minute=30),
    ]
    merged = sorted(
        (item for story in stories for item in story),
        key=lambda item: item.event.occurred_at if item.event else at(0),
    )
    garbage = b"\x00not an event"
    # The processor read the garbage at M2's partition of the events topic and dead-lettered it.
    merged.insert(5, Published("events", "M2", None, raw=garbage))
    rejection = event_rejected(
        "M2",
        source_topic=TOPICS.events,
        source_partition=1,
        source_offset=2,
        original_value=garbage,
        minute=3,
    )
    merged.insert(9, Published("dead_letter", "M2", rejection))
    # A rig re-sent the end of M1's second session (an outbox retry): same event, same id.
    resent = next(
        item
        for item in merged
        if item.event is not None and item.event.event_id == event_id("M1-s2/ended")
    )
    merged.append(resent)
    return merged


def projected_ids(messages: Sequence[ProjectedMessage]) -> set[str]:
    """The ids of the distinct events among ``messages`` that the projector keeps (no trials)."""
    return {
        m.event.event_id
        for m in messages
        if m.event is not None and m.event.event_type != "TrialCompleted"
    }


def split(messages: Sequence[ProjectedMessage], cuts: set[int]) -> list[list[ProjectedMessage]]:
    """Cuts ``messages`` into consecutive batches at the given indices."""
    bounds = [0, *sorted(cuts), len(messages)]
    return [list(messages[a:b]) for a, b in pairwise(bounds) if a < b]


def poisoned_decision() -> StageTransitioned:
    """A decision whose projection fails halfway (it lacks its session summary)."""
    return StageTransitioned.model_construct(
        event_id=event_id("poison"),
        mouse_id="M1",
        session_id="M1-s9",
        occurred_at=at(99_999),
        curriculum_name=CURRICULUM,
        curriculum_version=CURRICULUM_VERSION,
        from_stage="stage_1",
        to_stage="stage_2",
        decision="progress",
        rule=None,
        rule_evaluations=[],
        sessions_at_stage=1,
        session_total=9,
    )


def by_key(rows: list[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {tuple(row[k] for k in keys): row for row in rows}


class ProjectionStoreContract:
    """What every ProjectionStore must do. Subclasses provide the ``store`` fixture (empty)."""

    interleaving_examples = 100

    @pytest.fixture
    def store(self) -> Iterator[ProjectionStore]:
        raise NotImplementedError

    def test_full_mouse_story_gives_expected_rows(self, store: ProjectionStore) -> None:
        story = mouse_story(
            "M1", [SessionPlan(LOW, "stay"), SessionPlan(HIGH, "progress", "stage_2")]
        )
        assert store.apply_batch(CONSUMER, to_messages(story)) == 10

        events = {item.event.event_id: item.event for item in story if item.event}
        last_assignment = story[-1].event
        last_decision = story[-2].event
        snap = store.snapshot()

        assert snap["mouse_status"] == [
            {
                "mouse_id": "M1",
                "curriculum_name": CURRICULUM,
                "curriculum_version": CURRICULUM_VERSION,
                "stage": "stage_2",
                "parameters_json": json.dumps(stage_parameters("stage_2"), sort_keys=True),
                "sessions_at_stage": 0,
                "next_session_number": 3,
                "last_reason": "progress",
                "assignment_id": last_assignment.event_id,
                "assigned_at": last_assignment.occurred_at.isoformat(),
                "enrolled_at": "2025-03-03T09:00:00+00:00",
                "enrolled_by": "operator",
                "last_decision": "progress",
                "last_decision_at": last_decision.occurred_at.isoformat(),
                "last_session_id": "M1-s2",
                "sessions_completed": 2,
            }
        ]

        history = snap["stage_history"]
        assert [
            (r["entered_at_session"], r["stage"], r["from_stage"], r["decision"], r["rule"])
            for r in history
        ] == [
            (0, "stage_1", None, "enrolled", None),
            (2, "stage_2", "stage_1", "progress", "accuracy_at_least_0_8"),
        ]
        assert history[1]["event_id"] == last_decision.event_id
        assert history[0]["occurred_at"] == "2025-03-03T09:01:00+00:00"

        sessions = by_key(snap["session_summaries"], "session_id")
        assert sorted(sessions) == [("M1-s1",), ("M1-s2",)]
        first = sessions[("M1-s1",)]
        started = events[event_id("M1-s1/started")]
        assert first == {
            "session_id": "M1-s1",
            "mouse_id": "M1",
            "rig_id": "rig-1",
            "stage": "stage_1",
            "curriculum_name": CURRICULUM,
            "curriculum_version": CURRICULUM_VERSION,
            "assignment_id": story[1].event.event_id,
            "parameters_json": json.dumps(stage_parameters("stage_1"), sort_keys=True),
            "started_at": started.occurred_at.isoformat(),
            "ended_at": events[event_id("M1-s1/ended")].occurred_at.isoformat(),
            "end_reason": "completed",
            "duration_s": 1800.0,
            "n_trials_reported": 4,
            "n_trials": 4,
            "n_correct": 1,
            "n_incorrect": 2,
            "n_miss": 1,
            "accuracy": pytest.approx(1 / 3),
            "decision": "stay",
            "next_stage": "stage_1",
            "decided_at": events[event_id("M1-s1/decision")].occurred_at.isoformat(),
        }
        second = sessions[("M1-s2",)]
        assert (second["n_correct"], second["accuracy"]) == (4, 0.8)
        assert (second["decision"], second["next_stage"]) == ("progress", "stage_2")

        decisions = by_key(snap["decision_log"], "session_id")
        assert len(decisions) == 2
        logged = decisions[("M1-s2",)]
        assert logged["event_id"] == last_decision.event_id
        assert (logged["from_stage"], logged["to_stage"], logged["decision"]) == (
            "stage_1",
            "stage_2",
            "progress",
        )
        assert (logged["sessions_at_stage"], logged["session_total"]) == (2, 2)
        evidence = json.loads(logged["evidence_json"])
        assert evidence == [e.model_dump(mode="json") for e in last_decision.rule_evaluations]
        assert evidence[0]["observations"][0] == {
            "metric": "accuracy",
            "observed": 0.8,
            "comparator": ">=",
            "threshold": 0.8,
            "passed": True,
        }
        assert snap["rejected_events"] == []

    def test_timestamps_read_back_as_utc(self, store: ProjectionStore) -> None:
        store.apply_batch(CONSUMER, to_messages(mouse_story("M1", [SessionPlan(HIGH)])))
        for rows in store.snapshot().values():
            for row in rows:
                for column, value in row.items():
                    if column.endswith("_at"):
                        assert value is None or value.endswith("+00:00"), (column, value)
        if isinstance(store, SqlProjectionStore):
            with store.engine.connect() as conn:
                enrolled_at = conn.execute(select(tables.mouse_status.c.enrolled_at)).scalar_one()
            assert enrolled_at.tzinfo is not None
            assert enrolled_at.utcoffset().total_seconds() == 0
            assert enrolled_at == at(0).astimezone(UTC)

    def test_dead_letters_and_undecodable_messages(self, store: ProjectionStore) -> None:
        messages = to_messages(scenario())
        store.apply_batch(CONSUMER, messages)
        [rejected] = store.snapshot()["rejected_events"]
        assert rejected["original_value_hex"] == b"\x00not an event".hex()
        assert (rejected["source_topic"], rejected["source_partition"]) == (TOPICS.events, 1)
        assert (rejected["error_kind"], rejected["rejected_by"]) == ("undecodable", "processor")
        assert rejected["mouse_id"] == "M2"

    def test_duplicate_event_ids_are_applied_once(self, store: ProjectionStore) -> None:
        story = mouse_story("M1", [SessionPlan(LOW), SessionPlan(HIGH, "progress", "stage_2")])
        store.apply_batch(CONSUMER, to_messages(story))
        reference = store.snapshot()
        store.reset()

        # Every event published twice: the copy right after the original (same batch) and the
        # whole story again later (later batches), as a producer retry or a re-publish would.
        doubled = [copy for item in story for copy in (item, item)] + story
        messages = to_messages(doubled)
        applied = sum(store.apply_batch(CONSUMER, batch) for batch in split(messages, {7, 30}))
        assert applied == len(projected_ids(messages))
        assert store.snapshot() == reference

    def test_offsets_commit_per_topic_partition(self, store: ProjectionStore) -> None:
        messages = to_messages(scenario())
        assert store.committed_offsets(CONSUMER) == {}
        for batch in split(messages, {10, 25, 60}):
            store.apply_batch(CONSUMER, batch)
        expected: dict[tuple[str, int], int] = {}
        for m in messages:
            expected[(m.topic, m.partition)] = m.offset + 1
        # Partitions that carried only trials or undecodable bytes are tracked as well.
        assert store.committed_offsets(CONSUMER) == expected
        assert store.committed_offsets("another-projector") == {}

    def test_failed_batch_keeps_neither_rows_nor_offsets(self, store: ProjectionStore) -> None:
        messages = to_messages(scenario())
        head, tail = messages[:30], messages[30:]
        store.apply_batch(CONSUMER, head)
        before, offsets_before = store.snapshot(), store.committed_offsets(CONSUMER)

        # The poison sits on a partition of its own, after rows of the batch have been written.
        poison = ProjectedMessage(TOPICS.decisions, 7, 0, poisoned_decision(), "decisions")
        with pytest.raises(ProjectorError, match=r"proj\.decisions/7@0"):
            store.apply_batch(CONSUMER, [*tail[:20], poison, *tail[20:]])

        assert store.snapshot() == before
        assert store.committed_offsets(CONSUMER) == offsets_before
        # The claims on event ids were rolled back too: the retry projects every event again.
        assert store.apply_batch(CONSUMER, tail) == len(projected_ids(tail) - projected_ids(head))

        reference = _fresh_snapshot(store, messages)
        assert store.snapshot() == reference

    def test_reapplying_committed_offsets_changes_nothing(self, store: ProjectionStore) -> None:
        messages = to_messages(scenario())
        store.apply_batch(CONSUMER, messages)
        snap, offsets = store.snapshot(), store.committed_offsets(CONSUMER)

        assert store.apply_batch(CONSUMER, messages) == 0
        assert store.apply_batch(CONSUMER, messages[10:40]) == 0
        # Even different content at a committed offset is skipped: the offsets, not only the
        # event ids, say what has been applied.
        tampered = [
            ProjectedMessage(
                m.topic,
                m.partition,
                m.offset,
                m.event.model_copy(update={"event_id": event_id(f"tampered/{m.offset}")})
                if m.event is not None
                else None,
                m.topic_kind,
            )
            for m in messages
        ]
        assert store.apply_batch(CONSUMER, tampered) == 0
        assert store.snapshot() == snap
        assert store.committed_offsets(CONSUMER) == offsets

    def test_reset_then_replay_gives_identical_snapshot(self, store: ProjectionStore) -> None:
        messages = to_messages(scenario())
        for batch in split(messages, {3, 17, 44}):
            store.apply_batch(CONSUMER, batch)
        snap = store.snapshot()
        assert all(snap[name] for name in ("mouse_status", "stage_history", "decision_log"))

        store.reset()
        assert store.snapshot() == {name: [] for name in snap}
        assert store.committed_offsets(CONSUMER) == {}

        assert store.apply_batch(CONSUMER, messages) == len(projected_ids(messages))
        assert store.snapshot() == snap

    def test_topics_in_reverse_order_give_identical_snapshot(self, store: ProjectionStore) -> None:
        messages = to_messages(scenario())
        reference = _fresh_snapshot(store, messages)
        # The worst case for a naive projector: assignments and decisions before the events
        # that caused them, dead letters first of all.
        rank = {"dead_letter": 0, "assignments": 1, "decisions": 2, "accepted": 3, "events": 4}
        reordered = sorted(messages, key=lambda m: rank[m.topic_kind])
        store.reset()
        store.apply_batch(CONSUMER, reordered)
        assert store.snapshot() == reference

    def test_any_cross_topic_interleaving_gives_identical_snapshot(
        self, store: ProjectionStore
    ) -> None:
        messages = to_messages(scenario())
        reference = _fresh_snapshot(store, messages)
        queues: dict[tuple[str, int], list[ProjectedMessage]] = defaultdict(list)
        for m in messages:
            queues[(m.topic, m.partition)].append(m)
        labels = [key for key, queue in queues.items() for _ in queue]

        # Hypothesis draws an interleaving: the order in which the topic-partitions deliver
        # (each partition stays in offset order, as Kafka guarantees) and the batch cuts.
        @settings(max_examples=self.interleaving_examples, deadline=None)
        @given(
            order=st.permutations(labels),
            cuts=st.sets(st.integers(1, len(labels) - 1), max_size=6),
        )
        def check(order: list[tuple[str, int]], cuts: set[int]) -> None:
            store.reset()
            cursors = {key: iter(queue) for key, queue in queues.items()}
            interleaved = [next(cursors[key]) for key in order]
            for batch in split(interleaved, cuts):
                store.apply_batch(CONSUMER, batch)
            assert store.snapshot() == reference

        check()

    def test_current_assignment_is_the_last_in_the_log_whatever_its_clock(
        self, store: ProjectionStore
    ) -> None:
        # A rig whose clock runs ahead stamped the session's assignment an hour late; the
        # trainer's migration after it carries the true (earlier) time. The log says which
        # came last: the migration.
        ahead = assignment_issued("M1", "stage_2", session_number=3, reason="progress", minute=90)
        migrated = assignment_issued(
            "M1", "stage_2", session_number=3, reason="migrated", minute=50, sessions_at_stage=1
        )
        decided = stage_transitioned(
            "M1", "M1-s2", from_stage="stage_1", to_stage="stage_2", decision="progress",
            session_total=2, sessions_at_stage=2, outcomes=HIGH, minute=49,
        )  # fmt: skip
        stale = stage_transitioned(
            "M1", "M1-s1", from_stage="stage_1", to_stage="stage_1", decision="stay",
            session_total=1, sessions_at_stage=1, outcomes=LOW, minute=30,
        )  # fmt: skip
        published = [
            Published("assignments", "M1", ahead),
            Published("decisions", "M1", decided),
            Published("assignments", "M1", migrated),
            Published("decisions", "M1", stale),
        ]
        store.apply_batch(CONSUMER, to_messages(published))
        [status] = store.snapshot()["mouse_status"]
        assert (status["assignment_id"], status["last_reason"]) == (migrated.event_id, "migrated")
        # Decisions go by the session they judge: a late older one does not roll back.
        assert (status["last_session_id"], status["sessions_completed"]) == ("M1-s2", 2)
        assert status["enrolled_at"] is None  # no MouseEnrolled seen (yet)

    def test_events_on_the_raw_topic_are_not_projected(self, store: ProjectionStore) -> None:
        # A rig's event that the processor has not accepted (it may refuse it) changes no row.
        enrolled = mouse_story("M1", [])[0].event
        message = ProjectedMessage(TOPICS.events, 0, 0, enrolled, "events")
        assert store.apply_batch(CONSUMER, [message]) == 0
        assert store.snapshot()["mouse_status"] == []
        assert store.committed_offsets(CONSUMER) == {(TOPICS.events, 0): 1}

    def test_events_on_the_wrong_topic_are_not_projected(self, store: ProjectionStore) -> None:
        forged = stage_transitioned(
            "M1", "M1-s1", from_stage="stage_1", to_stage="stage_9", decision="skip",
            session_total=1, sessions_at_stage=1, outcomes=HIGH, minute=5,
        )  # fmt: skip
        message = ProjectedMessage(TOPICS.events, 0, 0, forged, "events")
        assert store.apply_batch(CONSUMER, [message]) == 0
        assert store.snapshot()["decision_log"] == []
        assert store.committed_offsets(CONSUMER) == {(TOPICS.events, 0): 1}


def _fresh_snapshot(store: ProjectionStore, messages: Sequence[ProjectedMessage]) -> dict[str, Any]:
    """The snapshot after applying ``messages`` in one batch to an emptied store."""
    store.reset()
    store.apply_batch(CONSUMER, messages)
    return store.snapshot()
