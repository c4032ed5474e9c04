"""Every event the models allow survives the wire format unchanged."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from shaping.schemas.codec import default_codec
from shaping.schemas.events import (
    AssignmentIssued,
    Observation,
    RuleEvaluation,
    SessionStarted,
    SessionSummary,
    StageTransitioned,
    TrialCompleted,
)
from shaping.schemas.identifiers import ID_RE, NAME_RE, SESSION_ID_RE

TEXT = st.text(min_size=1, max_size=20)
MAYBE_TEXT = st.none() | TEXT
# Ids and names follow the identifier grammar (schemas/identifiers.py); free text is any text.
ID = st.from_regex(ID_RE, fullmatch=True).filter(lambda v: len(v) <= 64)
SESSION_ID = st.from_regex(SESSION_ID_RE, fullmatch=True).filter(lambda v: len(v) <= 128)
NAME = st.from_regex(NAME_RE, fullmatch=True).filter(lambda v: len(v) <= 64)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
WHEN = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
PARAMS = st.dictionaries(
    TEXT,
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | FLOATS | st.text(max_size=10),
    max_size=6,
)
ENVELOPE = {
    "event_id": st.uuids().map(str),
    "mouse_id": ID,
    "rig_id": st.none() | ID,
    "session_id": st.none() | SESSION_ID,
    "occurred_at": WHEN,
    "causation_id": MAYBE_TEXT,
}
OBSERVATION = st.builds(
    Observation,
    metric=TEXT,
    observed=st.none() | FLOATS,
    comparator=st.sampled_from([">=", ">", "<=", "<", "=="]),
    threshold=FLOATS,
    passed=st.booleans(),
)
EVENTS = st.one_of(
    st.builds(
        TrialCompleted,
        **ENVELOPE,
        trial_index=st.integers(0, 2**31 - 1),
        outcome=st.sampled_from(["correct", "incorrect", "miss"]),
        target_side=MAYBE_TEXT,
        response_side=MAYBE_TEXT,
        reaction_time_s=st.none() | FLOATS,
        reward_volume_ul=FLOATS,
        correction_trial=st.booleans(),
        trial_parameters=PARAMS,
    ),
    st.builds(
        SessionStarted,
        **ENVELOPE,
        stage=NAME,
        curriculum_name=NAME,
        curriculum_version=TEXT,
        parameters=PARAMS,
        assignment_id=MAYBE_TEXT,
    ),
    st.builds(
        AssignmentIssued,
        **ENVELOPE,
        stage=NAME,
        parameters=PARAMS,
        curriculum_name=NAME,
        curriculum_version=TEXT,
        reason=TEXT,
        reason_detail=st.text(max_size=40),
        sessions_at_stage=st.integers(0, 1000),
        session_number=st.integers(1, 1000),
    ),
    st.builds(
        StageTransitioned,
        **ENVELOPE,
        curriculum_name=NAME,
        curriculum_version=TEXT,
        from_stage=NAME,
        to_stage=NAME,
        decision=st.sampled_from(["stay", "progress", "rollback", "skip", "graduate"]),
        rule=MAYBE_TEXT,
        rule_evaluations=st.lists(
            st.builds(
                RuleEvaluation,
                rule=TEXT,
                description=TEXT,
                decision=TEXT,
                to_stage=TEXT,
                verdict=st.booleans(),
                observations=st.lists(OBSERVATION, max_size=3),
            ),
            max_size=3,
        ),
        sessions_at_stage=st.integers(0, 1000),
        session_total=st.integers(0, 1000),
        session_summary=st.builds(
            SessionSummary,
            n_trials=st.integers(0, 5000),
            n_correct=st.integers(0, 5000),
            n_incorrect=st.integers(0, 5000),
            n_miss=st.integers(0, 5000),
            accuracy=st.none() | FLOATS,
            duration_s=FLOATS,
            end_reason=TEXT,
        ),
    ),
)


@settings(max_examples=300, deadline=None)
@given(EVENTS)
def test_every_event_round_trips(event: object) -> None:
    codec = default_codec()
    assert codec.decode(codec.encode(event)) == event  # type: ignore[arg-type]
