"""The events ``shaping evaluate --trials`` builds from a trial table are the events their
models would build: ids equal to ``uuid.uuid5``'s, and every TrialCompleted built without
field-by-field validation equal to its validated twin, on IBL's test subject and on random
sessions (NaN cells, no-go trials, contrasts on either side, start times off the millisecond).

A session whose trials only add to its statistics is folded from lighter records than the
events (``_quiet_trials``, ``TrainingCore.fold_quietly``); that gives the state the events
give, on random sessions, and the same statuses on IBL's test subject (and on a table with
two sessions on one date and a habituation date)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shaping.schemas.events import Event, MouseEnrolled, TrialCompleted
from shaping.services.curricula.catalog import default_catalog
from shaping.services.domain import TrainingCore, initial_state
from shaping.services.operator.ibl_trials import (
    _NAMESPACE,
    BATCH_RIG,
    IblSession,
    IblTrial,
    _quiet_trials,
    evaluate_sessions,
    event_id,
    first_trial,
    numbered_event_ids,
    read_trials,
    session_events,
)
from tests.curricula.test_ibl_prefetch import reshaped
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


@settings(max_examples=150, deadline=None)
@given(st.lists(ibl_trial, min_size=2, max_size=40), st.booleans())
def test_quiet_records_fold_to_the_state_the_events_fold_to(
    trials: list[IblTrial], second_session: bool
) -> None:
    catalog = default_catalog()
    core = TrainingCore(catalog)
    enrolment = MouseEnrolled(
        event_id="e1",
        mouse_id="SWC_054",
        occurred_at=datetime(2021, 3, 1, tzinfo=UTC),
        curriculum_name="ibl",
    )
    state, _ = core.handle(initial_state("SWC_054"), enrolment)
    session = IblSession("SWC_054", "2021-03-04", "", "training", False, 0.0, 2, trials)
    start = datetime(2021, 3, 4, 8, tzinfo=UTC)

    def events(start: datetime) -> list[Event]:
        assert state.stage is not None and state.curriculum_version is not None
        return session_events(
            session,
            mouse_id="SWC_054",
            session_id=event_id("SWC_054", start.isoformat()),
            stage=state.stage,
            curriculum_name="ibl",
            curriculum_version=state.curriculum_version,
            start=start,
        )

    if second_session:  # statistics that do not start empty: the same trials once more
        first = events(start - timedelta(hours=2))
        trials_before = [e for e in first if isinstance(e, TrialCompleted)]
        state, _ = core.handle_trials(core.handle(state, first[0])[0], trials_before)
        state, _ = core.handle(state, first[-1])
    built = events(start)
    state, _ = core.handle(state, built[0])
    session_id = built[0].session_id
    assert session_id is not None

    quiet = core.fold_quietly(state, _quiet_trials(session, session_id, BATCH_RIG))
    assert quiet is not None
    assert [t.rig_id for t in built[1:-1]] == [BATCH_RIG] * len(trials)
    one_by_one = state
    for trial in built[1:-1]:
        one_by_one, outputs = core.handle(one_by_one, trial)
        assert outputs == []
    assert quiet == one_by_one
    assert quiet.model_dump_json() == one_by_one.model_dump_json()
    common = {"mouse_id": "SWC_054", "rig_id": BATCH_RIG, "session_id": session_id}
    assert first_trial(session, common, start) == built[1]


@pytest.mark.parametrize("table", ["test subject", "reshaped"])
def test_evaluate_gives_the_same_statuses_with_quiet_records_as_with_every_event(
    table: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = read_trials(TRIALS if table == "test subject" else reshaped(tmp_path))
    catalog = default_catalog()
    quiet = evaluate_sessions(sessions, catalog.get("ibl"), catalog)
    folded = []
    real = TrainingCore.fold_quietly

    def every_event(self: TrainingCore, state: object, trials: list[object]) -> None:
        folded.append(real(self, state, trials))  # type: ignore[arg-type]
        return None  # so every session's trial events are built and folded

    monkeypatch.setattr(TrainingCore, "fold_quietly", every_event)
    events = evaluate_sessions(sessions, catalog.get("ibl"), catalog)
    assert quiet == events
    assert len(quiet) >= 10
    assert sum(state is not None for state in folded) >= len(quiet)  # the quiet path was taken
