"""Folding a run of trials at once (``SessionStats.add_all``, ``TrainingCore.handle_trials``)
gives exactly what folding them one by one gives: the same statistics, byte for byte, and the
same state and outputs, on random trials (contrasts, blocks, misses, correction trials,
reaction times at and beyond the packed range), starting from random statistics, and for the
runs the bulk path must leave to the one-by-one path (a trial counted already, another
session, a rig not allowed, rules read after every trial)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shaping.schemas.events import (
    MouseEnrolled,
    RigsAllowed,
    SessionStarted,
    TrialCompleted,
)
from shaping.services.curricula.catalog import default_catalog
from shaping.services.domain import TrainingCore, initial_state
from shaping.services.domain.core import _trials_fold_quietly
from shaping.services.domain.errors import ImpossibleEvent
from shaping.services.domain.session_stats import SessionStats
from shaping.services.domain.state import MouseState

T0 = datetime(2025, 5, 1, 8, tzinfo=UTC)
MOUSE = "bulk-1"


@st.composite
def trial_fields(draw: st.DrawFn) -> dict[str, object]:
    outcome = draw(st.sampled_from(["correct", "incorrect", "miss"]))
    parameters: dict[str, float] = {}
    for name in ("contrast_left", "contrast_right"):
        value = draw(st.one_of(st.none(), st.sampled_from([0.0, 0.0625, 0.25, 0.5, 1.0])))
        if value is not None:
            parameters[name] = value
    block = draw(st.one_of(st.none(), st.sampled_from([0.2, 0.5, 0.8])))
    if block is not None:
        parameters["probability_left"] = block
    rt = draw(
        st.one_of(
            st.none(),
            st.floats(0.0, 5.0, allow_nan=False),
            st.sampled_from([-0.0, 0.5, 0.5, 3e6, -3e6]),  # ties, a negative zero, beyond int32
        )
    )
    return {
        "outcome": outcome,
        "response_side": None if outcome == "miss" else draw(st.sampled_from(["left", "right"])),
        "target_side": draw(st.sampled_from(["left", "right", None])),
        "reaction_time_s": rt,
        "correction_trial": draw(st.booleans()),
        "trial_parameters": parameters,
    }


def _trials(
    fields: list[dict[str, object]], *, session: str = "s1", first: int = 0, rig: str = "rig-1"
) -> list[TrialCompleted]:
    return [
        TrialCompleted(
            event_id=f"{session}-t{first + i}",
            mouse_id=MOUSE,
            rig_id=rig,
            session_id=session,
            occurred_at=T0 + timedelta(seconds=first + i),
            trial_index=first + i,
            **f,  # type: ignore[arg-type]
        )
        for i, f in enumerate(fields)
    ]


def _one_by_one(stats: SessionStats, trials: list[TrialCompleted]) -> SessionStats:
    for trial in trials:
        stats = stats.add(trial)
    return stats


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(trial_fields(), max_size=8), st.lists(trial_fields(), max_size=40))
def test_add_all_equals_add_one_by_one(
    before: list[dict[str, object]], run: list[dict[str, object]]
) -> None:
    start = _one_by_one(SessionStats(), _trials(before))
    trials = _trials(run, first=len(before))
    one = _one_by_one(start, trials)
    bulk = start.add_all(trials)
    assert bulk == one
    # Byte for byte, the packed sequences included (== on the tables ignores cell order).
    assert bulk.model_dump_json() == one.model_dump_json()
    assert bulk.psych._data == one.psych._data
    assert bulk.rt_zero._data == one.rt_zero._data


def test_add_all_of_none_or_one_is_add() -> None:
    (trial,) = _trials(
        [
            {
                "outcome": "correct",
                "response_side": "left",
                "trial_parameters": {"contrast_left": 1.0},
            }
        ]
    )
    assert SessionStats().add_all([]) == SessionStats()
    assert SessionStats().add_all([trial]) == SessionStats().add(trial)


@cache
def _started(curriculum: str) -> tuple[TrainingCore, MouseState]:
    """A mouse enrolled on the curriculum with session s1 open on rig-1 (built once: states are
    frozen)."""
    catalog = default_catalog()
    engine = catalog.get(curriculum)
    core = TrainingCore(catalog)
    state, outputs = core.handle(
        initial_state(MOUSE),
        MouseEnrolled(
            event_id="enrol",
            mouse_id=MOUSE,
            occurred_at=T0 - timedelta(hours=1),
            curriculum_name=engine.name,
            curriculum_version=engine.version,
        ),
    )
    assignment = outputs[-1]
    state, _ = core.handle(
        state,
        SessionStarted(
            event_id="start-s1",
            mouse_id=MOUSE,
            rig_id="rig-1",
            session_id="s1",
            occurred_at=T0,
            stage=assignment.stage,  # type: ignore[attr-defined]
            parameters=assignment.parameters,  # type: ignore[attr-defined]
            curriculum_name=engine.name,
            curriculum_version=engine.version,
        ),
    )
    return core, state


def _handled_one_by_one(
    core: TrainingCore, state: MouseState, trials: list[TrialCompleted]
) -> tuple[MouseState, list[object]]:
    outputs: list[object] = []
    for trial in trials:
        state, emitted = core.handle(state, trial)
        outputs.extend(emitted)
    return state, outputs


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["ibl", "basic-shaping", "reach-autopilot"]),
    st.lists(trial_fields(), min_size=2, max_size=30),
    st.sampled_from(["fresh", "redelivered", "other session", "mixed rigs"]),
)
def test_handle_trials_equals_handle_one_by_one(
    curriculum: str, run: list[dict[str, object]], shape: str
) -> None:
    core, state = _started(curriculum)
    trials = _trials(run)
    if shape == "redelivered":
        state, _ = core.handle(state, trials[0])
    elif shape == "other session":
        trials = _trials(run[:1]) + _trials(run[1:], session="s0", first=1)
    elif shape == "mixed rigs":
        trials = _trials(run[:1]) + _trials(run[1:], first=1, rig="rig-2")
    try:
        one = _handled_one_by_one(core, state, trials)
    except ImpossibleEvent as refused:
        # A trial of a session not open is refused with its reason, and none is folded.
        with pytest.raises(ImpossibleEvent) as bulk_refused:
            core.handle_trials(state, trials)
        assert str(bulk_refused.value) == str(refused)
        return
    bulk = core.handle_trials(state, trials)
    assert bulk[0] == one[0]
    assert bulk[0].model_dump_json() == one[0].model_dump_json()
    assert bulk[1] == one[1]


def test_handle_trials_refuses_a_rig_the_mouse_may_not_use_as_handle_does() -> None:
    core, state = _started("basic-shaping")
    state, _ = core.handle(
        state,
        RigsAllowed(
            event_id="allow", mouse_id=MOUSE, occurred_at=T0, rig_ids=["rig-9"], allowed_by="t"
        ),
    )
    trials = _trials([{"outcome": "correct", "response_side": "left"}] * 3)
    with pytest.raises(ImpossibleEvent, match="not allowed on rig rig-1"):
        core.handle_trials(state, trials)


def test_a_fresh_run_of_ibl_trials_takes_the_one_pass_path() -> None:
    core, state = _started("ibl")
    trials = _trials([{"outcome": "correct", "response_side": "left"}] * 3)
    assert _trials_fold_quietly(core.catalog, state, trials)
    other_rig = _trials([{"outcome": "correct", "response_side": "left"}] * 2, rig="rig-2")
    assert not _trials_fold_quietly(core.catalog, state, trials[:1] + other_rig)
