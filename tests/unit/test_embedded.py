"""The embedded runtime: the demo lab, dead letters and rebuilding from the log."""

from __future__ import annotations

from pathlib import Path

import pytest

from shaping.rig.sim.lab import LabPlan, run_lab
from shaping.schemas.codec import default_codec
from shaping.schemas.events import EventRejected, SessionStarted
from shaping.services.embedded.demo import render_report, run_demo
from shaping.services.embedded.log import InProcessLog
from tests.support.story import enrolled, session, trials
from tests.support.wiring import embedded_runtime, sql_store

SMALL = LabPlan(n_mice=4, n_rigs=2, n_days=4, seed=11)


def report_without_paths(text: str, folder: Path) -> str:
    return text.replace(str(folder), "<out>")


def test_same_seed_same_output_and_files(tmp_path: Path) -> None:
    first = run_demo(tmp_path / "a", SMALL)
    second = run_demo(tmp_path / "b", SMALL)
    assert report_without_paths(render_report(first), first.out_dir) == report_without_paths(
        render_report(second), second.out_dir
    )
    assert first.tables == second.tables
    assert first.log_path.read_bytes() == second.log_path.read_bytes()
    assert first.db_path.exists() and first.db_path.stat().st_size > 0


def test_another_seed_gives_another_lab(tmp_path: Path) -> None:
    first = run_demo(tmp_path / "a", SMALL)
    other = run_demo(tmp_path / "b", LabPlan(n_mice=4, n_rigs=2, n_days=4, seed=12))
    assert first.tables["session_summaries"] != other.tables["session_summaries"]


def test_demo_report_shows_status_and_stage_paths(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "out", SMALL)
    text = render_report(result)
    assert "Status" in text and "Stage paths" in text
    for mouse, _ in SMALL.mice():
        assert f"{mouse}: s1_habituation" in text
    assert str(result.db_path) in text and str(result.log_path) in text
    assert len(result.tables["mouse_status"]) == 4
    assert len(result.tables["session_summaries"]) == 4 * 4
    assert len(result.tables["decision_log"]) == 4 * 4


def test_every_session_runs_exactly_the_assignment_issued_after_the_previous_one() -> None:
    runtime = embedded_runtime()
    run = run_lab(SMALL, runtime)
    assert len(run.sessions) == 16
    for record in run.sessions:
        assert record.started.parameters == record.assignment.parameters
        assert record.started.stage == record.assignment.stage
        assert record.started.assignment_id == record.assignment.event_id
        assert not record.stale_assignment
    numbers = {}
    for record in run.sessions:
        numbers.setdefault(record.mouse_id, []).append(record.assignment.session_number)
    assert all(n == [1, 2, 3, 4] for n in numbers.values())


def test_garbage_and_impossible_events_go_to_the_dead_letter_topic(tmp_path: Path) -> None:
    store = sql_store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    runtime = embedded_runtime(store)
    runtime.publish([enrolled("M1")])
    runtime.publish_raw(b"M1", b"\x00not an event")
    stray = session("M1", "ghost", ["correct"])[1]  # a trial of a session that never started
    runtime.publish([stray])
    runtime.publish(session("M1", "s-1", trials(correct=120)))  # the stream goes on

    dead = [default_codec().decode(r.value) for r in runtime.log.read("shaping.dead-letter")]
    assert [d.error_kind for d in dead if isinstance(d, EventRejected)] == [
        "undecodable",
        "impossible",
    ]
    assert dead[0].original_value == b"\x00not an event"  # type: ignore[attr-defined]
    assert dead[1].original_value == default_codec().encode(stray)  # type: ignore[attr-defined]
    assert "never started" in dead[1].reason  # type: ignore[attr-defined]
    tables = store.snapshot()
    assert len(tables["rejected_events"]) == 2
    assert [row["decision"] for row in tables["decision_log"]] == ["progress"]
    store.close()


def test_rebuilding_the_tables_from_the_saved_log_gives_identical_rows(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "out", SMALL)
    log = InProcessLog.load_jsonl(result.log_path)
    assert len(log) == result.n_messages
    store = sql_store(f"sqlite:///{tmp_path / 'rebuilt.sqlite'}")
    runtime = embedded_runtime(store, log=log)
    runtime.project_pending()
    assert store.snapshot() == result.tables
    store.reset()
    runtime = embedded_runtime(store, log=log)
    runtime.project_pending()
    assert store.snapshot() == result.tables
    store.close()


def test_reprocessing_the_inputs_reproduces_the_outputs(tmp_path: Path) -> None:
    """Replay: feed only the input topic of a saved log to a fresh processor."""
    result = run_demo(tmp_path / "out", SMALL)
    log = InProcessLog.load_jsonl(result.log_path)
    fresh = InProcessLog()
    for record in log.read("shaping.events"):
        fresh.append(record.topic, record.key, record.value)
    runtime = embedded_runtime(log=fresh)
    runtime.process_pending()
    for topic in ("shaping.decisions", "shaping.assignments"):
        assert [r.value for r in fresh.read(topic)] == [r.value for r in log.read(topic)]


@pytest.mark.parametrize("mice", [1, 3])
def test_sessions_carry_their_rig_and_parameters(mice: int) -> None:
    runtime = embedded_runtime()
    run_lab(LabPlan(n_mice=mice, n_rigs=2, n_days=2), runtime)
    started = [
        default_codec().decode(r.value)
        for r in runtime.log.read("shaping.events")
        if default_codec().decode(r.value).event_type == "SessionStarted"
    ]
    assert len(started) == mice * 2
    assert all(isinstance(s, SessionStarted) and s.parameters and s.rig_id for s in started)
