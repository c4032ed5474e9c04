"""The fits ``shaping evaluate --trials`` batches ahead are exactly those its decisions read.

``evaluate_sessions`` fits every window's psychometric fits in one lockstep run before it
sends any event (``prefetch_fits``, from the trial table); a replay of stored events can do
the same from the events (``prefetch_history_fits``). The fit cache is keyed by the exact data
and position, so a prefetch that missed a window would cost time, never change a value: these
tests check that it misses none (the decisions then fit nothing themselves), on IBL's test
subject, on a table with two sessions on one date and a habituation date, and on the events.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

from shaping.schemas.events import Event, MouseEnrolled, StageTransitioned
from shaping.services.curricula.catalog import default_catalog
from shaping.services.domain import TrainingCore, initial_state, psychometric
from shaping.services.operator.ibl_trials import (
    IblSession,
    evaluate_sessions,
    fit_requests,
    history_fit_requests,
    psychometric_windows,
    read_trials,
    session_events,
)
from tests.support.scripts import REPO

TRIALS = REPO / "tests" / "data" / "anchors" / "ibl" / "trials_test_flat.csv"


def reshaped(tmp_path: Path) -> Path:
    """SWC_054's trials with the second date split into two sessions and the fourth date
    labelled habituation (it then carries no data but takes its place in the window)."""
    with TRIALS.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    dates = sorted({r["session_date"] for r in rows})
    for row in rows:
        row["session"] = "1"
        if row["session_date"] == dates[1] and int(row["trial_index"]) % 2:
            row["session"] = "2"
        if row["session_date"] == dates[3]:
            row["task_protocol"] = "habituation"
    path = tmp_path / "reshaped.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*rows[0].keys()])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_the_ibl_ladder_reads_the_pooled_and_both_block_fits_of_its_3_date_window() -> None:
    catalog = default_catalog()
    assert set(psychometric_windows(catalog.get("ibl"))) == {
        ("dates", 3, None),
        ("dates", 3, 0.2),
        ("dates", 3, 0.8),
    }
    assert psychometric_windows(catalog.get("basic-shaping")) == []


def decisions_fit_nothing_after_the_prefetch(path: Path) -> int:
    catalog = default_catalog()
    sessions = read_trials(path)
    psychometric._fit.cache_clear()
    requests = fit_requests(sessions, psychometric_windows(catalog.get("ibl")))
    psychometric.fit_many(requests)
    fitted = psychometric._fit.cache_info().misses
    assert fitted > 0
    statuses = evaluate_sessions(sessions, catalog.get("ibl"), catalog)
    assert statuses
    assert psychometric._fit.cache_info().misses == fitted  # every fit was found
    return fitted


def test_the_prefetch_covers_every_fit_of_ibls_test_subject() -> None:
    assert decisions_fit_nothing_after_the_prefetch(TRIALS) >= 11


def test_the_prefetch_covers_sessions_of_one_date_and_habituation_dates(tmp_path: Path) -> None:
    assert decisions_fit_nothing_after_the_prefetch(reshaped(tmp_path)) >= 11


def events_of(sessions: list[IblSession]) -> tuple[list[Event], list[StageTransitioned]]:
    """The sessions' events as the core assigns their stages, and its decisions."""
    catalog = default_catalog()
    engine = catalog.get("ibl")
    core = TrainingCore(catalog)
    name = sessions[0].subject
    enrol = MouseEnrolled(
        event_id=f"{name}-enrolled",
        mouse_id=name,
        occurred_at=datetime.fromisoformat(sessions[0].session_date).replace(tzinfo=UTC),
        curriculum_name=engine.name,
        curriculum_version=engine.version,
    )
    state, _ = core.handle(initial_state(name), enrol)
    events: list[Event] = [enrol]
    decisions: list[StageTransitioned] = []
    for number, session in enumerate(sessions):
        assignment = state.last_assignment
        assert assignment is not None
        start = datetime.fromisoformat(session.session_date).replace(hour=8 + number % 3)
        for event in session_events(
            session,
            mouse_id=name,
            session_id=f"{name}-{number}",
            stage=assignment.stage,
            curriculum_name=assignment.curriculum_name,
            curriculum_version=assignment.curriculum_version,
            start=start.replace(tzinfo=UTC),
        ):
            events.append(event)
            state, outputs = core.handle(state, event)
            decisions += [o for o in outputs if isinstance(o, StageTransitioned)]
    return events, decisions


def test_the_fits_of_stored_events_are_those_of_the_table(tmp_path: Path) -> None:
    sessions = read_trials(reshaped(tmp_path))
    windows = psychometric_windows(default_catalog().get("ibl"))
    events, _ = events_of(sessions)
    assert history_fit_requests(events, windows) == fit_requests(sessions, windows)


def test_a_replay_with_the_fits_batched_ahead_decides_the_same(tmp_path: Path) -> None:
    from shaping.services.operator.ibl_trials import prefetch_history_fits

    sessions = read_trials(TRIALS)
    psychometric._fit.cache_clear()
    events, before = events_of(sessions)
    psychometric._fit.cache_clear()
    prefetch_history_fits(events, default_catalog().get("ibl"))
    fitted = psychometric._fit.cache_info().misses
    _, after = events_of(sessions)
    assert psychometric._fit.cache_info().misses == fitted
    assert [d.metrics for d in after] == [d.metrics for d in before]
    assert [d.to_stage for d in after] == [d.to_stage for d in before]
