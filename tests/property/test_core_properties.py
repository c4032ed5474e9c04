"""Properties of the core: replaying the log equals incremental processing."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shaping.schemas.events import Event
from shaping.services.domain import ImpossibleEvent, fold, initial_state
from shaping.services.processor.state_store import decode_state, encode_state
from tests.support.story import core, enrolled, session

OUTCOMES = st.sampled_from(["correct", "incorrect", "miss"])
STAGES = st.sampled_from(["s1_habituation", "s2_training", "s3_full_task", "graduated"])


@st.composite
def stories(draw: st.DrawFn) -> list[Event]:
    """A mouse's inputs with redeliveries, stray events and sessions at random stages."""
    events: list[Event] = [enrolled("M1")]
    for n in range(draw(st.integers(0, 6))):
        outcomes = draw(st.lists(OUTCOMES, min_size=0, max_size=260))
        stage = draw(STAGES)
        events.extend(session("M1", f"s-{n}", outcomes, stage=stage, day=n))
    # Redeliver some events (at-least-once delivery: a copy comes after its original, as on
    # one Kafka partition) and insert some impossible ones.
    for _ in range(draw(st.integers(0, 8))):
        original = draw(st.integers(0, len(events) - 1))
        events.insert(draw(st.integers(original + 1, len(events))), events[original])
    for _ in range(draw(st.integers(0, 3))):
        stray = session("M1", "never-started", ["correct"])[1]
        events.insert(draw(st.integers(0, len(events))), stray)
    return events


@settings(max_examples=60, deadline=None)
@given(stories())
def test_folding_the_log_equals_incremental_processing(inputs: list[Event]) -> None:
    engine = core()
    state = initial_state("M1")
    log: list[Event] = []
    for event in inputs:
        # The processor stores the state as bytes between events (faust's table).
        state = decode_state(encode_state(state))
        try:
            state, outputs = engine.handle(state, event)
        except ImpossibleEvent:
            continue  # goes to the dead-letter topic; not part of the mouse's log
        log.append(event)
        log.extend(outputs)
    assert fold(initial_state("M1"), log) == state


@settings(max_examples=40, deadline=None)
@given(stories())
def test_reprocessing_the_inputs_reproduces_every_output(inputs: list[Event]) -> None:
    """Replay from offset 0 gives the same decisions, with the same ids."""

    def outputs_of(events: list[Event]) -> list[Event]:
        engine = core()
        state = initial_state("M1")
        emitted: list[Event] = []
        for event in events:
            try:
                state, out = engine.handle(state, event)
            except ImpossibleEvent:
                continue
            emitted.extend(out)
        return emitted

    assert outputs_of(inputs) == outputs_of(list(inputs))


@settings(max_examples=40, deadline=None)
@given(stories())
def test_every_session_gets_exactly_one_decision_id(inputs: list[Event]) -> None:
    engine = core()
    state = initial_state("M1")
    decisions: dict[str, set[str]] = {}
    for event in inputs:
        try:
            state, out = engine.handle(state, event)
        except ImpossibleEvent:
            continue
        for e in out:
            if e.event_type == "StageTransitioned":
                decisions.setdefault(e.session_id or "", set()).add(e.event_id)
    ended = {e.session_id for e in inputs if e.event_type == "SessionEnded"} - {"never-started"}
    assert set(decisions) == ended
    assert all(len(ids) == 1 for ids in decisions.values())
