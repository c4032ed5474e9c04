"""The processor's two state records: a state record and an open-sessions record.

``shaping.services.processor.state_store``: ``split_sessions`` / ``join_sessions`` /
``records_to_store``, as the faust processor (services/processor/app.py) stores a mouse's state
in its ``mouse_state`` and ``mouse_sessions`` tables. Checked here without Kafka: storing and
reading back gives every state exactly, a trial writes only the open-sessions record, and an
open-sessions record that a later state record left behind never applies.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shaping.schemas.events import Event, TrialCompleted
from shaping.services.domain import ImpossibleEvent, MouseState, initial_state
from shaping.services.domain.state import SESSION_FIELDS, only_sessions_changed
from shaping.services.processor.state_store import (
    decode_sessions,
    encode_sessions,
    encode_state,
    join_sessions,
    records_to_store,
    split_sessions,
)
from tests.support.story import core, enrolled, session, trials

OUTCOMES = st.sampled_from(["correct", "incorrect", "miss"])
STAGES = st.sampled_from(["s1_habituation", "s2_training", "s3_full_task"])


@st.composite
def stories(draw: st.DrawFn) -> list[Event]:
    """A mouse's inputs: sessions one after the other, some of them running at the same time
    (so some are parked), and redeliveries."""
    events: list[Event] = [enrolled("M1")]
    for n in range(draw(st.integers(0, 4))):
        first = session("M1", f"s-{n}", draw(st.lists(OUTCOMES, max_size=60)), draw(STAGES), n)
        if draw(st.booleans()):
            # A second session of the same day, interleaved with the first (order kept within
            # each session), as a late rig's outbox drains while the mouse runs elsewhere.
            other = session("M1", f"t-{n}", draw(st.lists(OUTCOMES, max_size=30)), draw(STAGES), n)
            merged: list[Event] = []
            while first or other:
                source = first if (first and (not other or draw(st.booleans()))) else other
                merged.append(source.pop(0))
            first = merged
        events.extend(first)
    for _ in range(draw(st.integers(0, 6))):
        original = draw(st.integers(0, len(events) - 1))
        events.insert(draw(st.integers(original + 1, len(events))), events[original])
    return events


class Store:
    """The two tables, as the processor keeps them (values as bytes)."""

    def __init__(self) -> None:
        self.record: bytes | None = None
        self.sessions: bytes | None = None
        self.writes: list[str] = []

    def load(self) -> MouseState | None:
        return None if self.record is None else join_sessions(self.record, self.sessions)

    def store(self, before: MouseState | None, after: MouseState) -> None:
        record, sessions = records_to_store(self.record, before, after)
        assert (record is None) != (sessions is None)  # exactly one record per step
        if record is not None:
            self.record = record
            self.writes.append("state")
        else:
            self.sessions = sessions
            self.writes.append("sessions")


@settings(max_examples=60, deadline=None)
@given(stories())
def test_storing_as_the_processor_does_gives_back_every_state(inputs: list[Event]) -> None:
    engine = core()
    store = Store()
    trial_writes = 0
    for event in inputs:
        before = store.load()
        try:
            after, outputs = engine.handle(before or initial_state("M1"), event)
        except ImpossibleEvent:
            continue
        if after == (before or initial_state("M1")):
            continue  # the processor writes nothing
        store.store(before, after)
        assert store.load() == after
        if isinstance(event, TrialCompleted):
            # A trial changes only the open sessions, so only that record is written.
            assert outputs == []
            assert before is not None and only_sessions_changed(before, after)
            assert store.writes[-1] == "sessions"
            trial_writes += 1
        else:
            assert store.writes[-1] == "state"
    assert store.writes.count("sessions") == trial_writes


@settings(max_examples=40, deadline=None)
@given(stories(), st.data())
def test_split_then_join_is_the_identity(inputs: list[Event], data: st.DataObject) -> None:
    engine = core()
    state = initial_state("M1")
    for event in inputs:
        try:
            state, _ = engine.handle(state, event)
        except ImpossibleEvent:
            continue
    # On the whole state's record, and on a record of the state with other open sessions
    # (none, or those of the story's first session): the join gives ``state`` back.
    emptied = state.model_copy(update={"open_session": None, "parked_sessions": ()})
    base = data.draw(st.sampled_from([state, emptied]))
    record = encode_state(base)
    part = split_sessions(state, record)
    assert join_sessions(record, encode_sessions(part)) == state
    assert decode_sessions(encode_sessions(part)) == part
    assert join_sessions(record, None) == base


def test_a_trial_changes_only_the_open_sessions() -> None:
    engine = core()
    state = initial_state("M1")
    changed: set[str] = set()
    for event in [enrolled("M1"), *session("M1", "s-1", trials(correct=30, incorrect=10))]:
        after, _ = engine.handle(state, event)
        if isinstance(event, TrialCompleted):
            changed |= {
                name
                for name in MouseState.model_fields
                if getattr(state, name) != getattr(after, name)
            }
        state = after
    assert changed == {"open_session"}
    assert set(SESSION_FIELDS) == {"open_session", "parked_sessions", "input_offsets"}


def test_open_sessions_left_behind_by_a_later_state_record_are_ignored() -> None:
    engine = core()
    events = [enrolled("M1"), *session("M1", "s-1", trials(correct=30, incorrect=10))]
    states = []
    state = initial_state("M1")
    for event in events:
        state, _ = engine.handle(state, event)
        states.append(state)
    started, mid_session, ended = states[1], states[20], states[-1]
    stale = encode_sessions(split_sessions(mid_session, encode_state(started)))
    # Written on the SessionStarted's record, it applies there ...
    assert join_sessions(encode_state(started), stale) == mid_session
    # ... and nowhere else: the SessionEnded's record (or replay's hand-over) stands alone.
    assert join_sessions(encode_state(ended), stale) == ended
    assert ended.open_session is None


def test_a_trial_record_is_a_fraction_of_the_state() -> None:
    engine = core()
    state = initial_state("M1")
    events: list[Event] = [enrolled("M1")]
    for n in range(4):
        events.extend(session("M1", f"s-{n}", trials(correct=300, incorrect=100), day=n))
    events.extend(session("M1", "s-open", trials(correct=300, incorrect=100), day=5)[:-1])
    for event in events:
        state, _ = engine.handle(state, event)
    record = encode_state(state.model_copy(update={"open_session": None}))
    assert len(encode_sessions(split_sessions(state, record))) < len(encode_state(state)) / 4


@pytest.mark.parametrize("data", [b"", b'{"base": "x"}', b"SOS1not zlib"])
def test_bytes_that_are_no_open_sessions_record_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="open-sessions record"):
        decode_sessions(data)


def test_replay_and_processor_agree_on_the_changelog_topics(tmp_path: Path) -> None:
    """Replay writes the processor's changelogs from outside: the topics must be the very ones
    faust derives for the processor's tables (and the names deployments already have)."""
    from shaping.schemas.codec import default_codec
    from shaping.services.adapters.settings import Settings
    from shaping.services.curricula.catalog import default_catalog
    from shaping.services.operator.replay import ProcessorHandover
    from shaping.services.processor.app import build_app
    from shaping.services.processor.state_store import SESSIONS_TABLE, STATE_TABLE

    settings = Settings(processor_id="lab-processor", data_dir=str(tmp_path))
    tables = build_app(settings, default_codec(), default_catalog()).tables
    faust_topics = [
        tables[t].changelog_topic.get_topic_name() for t in (STATE_TABLE, SESSIONS_TABLE)
    ]
    handover = ProcessorHandover("127.0.0.1:9", settings.processor_id)
    assert [handover.changelog, handover.sessions_changelog] == faust_topics
    assert faust_topics == [
        "lab-processor-mouse_state-changelog",
        "lab-processor-mouse_sessions-changelog",
    ]
