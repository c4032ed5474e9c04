"""The events ``shaping evaluate --trials`` builds from a trial table are the events their
models would build: ids equal to ``uuid.uuid5``'s, and every TrialCompleted built without
field-by-field validation equal to its validated twin, on IBL's test subject and on random
sessions (NaN cells, no-go trials, contrasts on either side, start times off the millisecond)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from shaping.schemas.events import Event, TrialCompleted
from shaping.services.operator.ibl_trials import (
    _NAMESPACE,
    IblSession,
    IblTrial,
    event_id,
    numbered_event_ids,
    read_trials,
    session_events,
)
from tests.support.scripts import REPO

TRIALS = REPO / "tests" / "data" / "anchors" / "ibl" / "trials_test_flat.csv"

part = st.one_of(st.text(max_size=20), st.integers(-(10**6), 10**6), st.booleans())


@settings(max_examples=300)
@given(st.lists(part, min_size=1, max_size=4))
def test_an_event_id_is_uuid5_of_the_parts(parts: list[object]) -> None:
    assert event_id(*parts) == str(uuid.uuid5(_NAMESPACE, "/".join(str(p) for p in parts)))


def assert_each_is_its_validated_twin(events: list[Event]) -> None:
    for event in events:
        twin = type(event).model_validate(event.model_dump())
        assert event == twin
        assert event.model_dump_json() == twin.model_dump_json()


def events_of(session: IblSession, start: datetime) -> list[Event]:
    return session_events(
        session,
        mouse_id="SWC_054",
        session_id=event_id("SWC_054", session.session_date),
        stage="training_0",
        curriculum_name="ibl",
        curriculum_version="1",
        start=start,
    )


def test_the_events_of_ibls_test_subject_are_their_validated_twins() -> None:
    sessions = read_trials(TRIALS)
    trials = 0
    for session in sessions:
        events = events_of(session, datetime(2020, 1, 1, 8, 0, 0, 123456, tzinfo=UTC))
        assert_each_is_its_validated_twin(events)
        trials += sum(isinstance(e, TrialCompleted) for e in events)
    assert trials == sum(len(s.trials) for s in sessions) > 1000


finite = st.floats(-1e4, 1e4, allow_nan=False)
maybe = st.one_of(st.none(), finite)
contrast = st.one_of(st.none(), st.sampled_from([0.0, 0.0625, 0.125, 0.25, 0.5, 1.0]))
ibl_trial = st.builds(
    IblTrial,
    contrast_left=contrast,
    contrast_right=contrast,
    choice=st.sampled_from([-1, 0, 1]),
    feedback_type=st.sampled_from([-1, 1]),
    probability_left=st.one_of(st.none(), st.sampled_from([0.2, 0.5, 0.8])),
    response_time=maybe,
    stim_on_time=maybe,
)


@settings(max_examples=150)
@given(
    st.lists(ibl_trial, min_size=1, max_size=25),
    st.integers(0, 10**6 - 1),
    st.sampled_from([UTC, datetime.now().astimezone().tzinfo]),
)
def test_random_sessions_give_events_equal_to_their_validated_twins(
    trials: list[IblTrial], microsecond: int, zone: object
) -> None:
    session = IblSession(
        subject="m1",
        session_date="2021-03-04",
        label="",
        task_protocol="training",
        ephys_rig=False,
        start_delay_s=0.0,
        first_row=2,
        trials=trials,
    )
    start = datetime(2021, 3, 4, 8, microsecond=microsecond, tzinfo=UTC).astimezone(zone)  # type: ignore[arg-type]
    events = events_of(session, start)
    assert [e.trial_index for e in events if isinstance(e, TrialCompleted)] == list(
        range(len(trials))
    )
    assert_each_is_its_validated_twin(events)
    assert events[-1].occurred_at >= events[0].occurred_at - timedelta(milliseconds=1)


@given(st.integers(0, 1200), st.lists(part, max_size=3))
def test_numbered_event_ids_are_the_event_ids_of_each_number(
    count: int, parts: list[object]
) -> None:
    ids = numbered_event_ids(count, *parts)
    assert len(ids) == count
    for number in {0, count // 2, count - 1} if count else set():
        assert ids[number] == event_id(*parts, number)
