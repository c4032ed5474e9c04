"""``shaping rig simulate`` continues the lab where it stands instead of starting again on
2026-01-05: the mice it knows are not enrolled again, their sessions are numbered from their
newest assignment, the days follow the last day the lab knows, and no session id or event id
repeats. Driven on the embedded runtime (the processor step in process)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime

import pytest
from typer.testing import CliRunner

from shaping.rig.errors import RigError
from shaping.rig.sim.lab import DEFAULT_START, LabPlan, continue_lab, lab_position, run_lab
from shaping.schemas.events import MouseEjected, MouseEnrolled, SessionStarted
from shaping.services.cli import app
from shaping.services.embedded.runtime import EmbeddedRuntime
from tests.support.wiring import embedded_runtime

PLAN = LabPlan(n_mice=3, n_rigs=2, n_days=3, seed=4)
NOW = datetime(2026, 12, 6, 12, tzinfo=UTC)


def events(runtime: EmbeddedRuntime, topic: str) -> list[object]:
    return [runtime.codec.decode(r.value) for r in runtime.log.read(topic)]


def started(runtime: EmbeddedRuntime) -> list[SessionStarted]:
    return [e for e in events(runtime, runtime.topics.events) if isinstance(e, SessionStarted)]


def test_a_new_lab_starts_as_before() -> None:
    fresh, reference = embedded_runtime(), embedded_runtime()
    run = continue_lab(PLAN, fresh, now=NOW)
    expected = run_lab(PLAN, reference)
    assert run.plan.start == DEFAULT_START and not run.continued
    assert [r.started.session_id for r in run.sessions] == [
        r.started.session_id for r in expected.sessions
    ]
    assert [r.value for r in fresh.log.records()] == [r.value for r in reference.log.records()]
    assert not run.pending  # every last session was judged


def test_a_second_run_continues_numbers_dates_and_ids() -> None:
    runtime = embedded_runtime()
    first = continue_lab(PLAN, runtime, now=NOW)
    enrolled_before = sum(
        isinstance(e, MouseEnrolled) for e in events(runtime, runtime.topics.events)
    )
    second = continue_lab(PLAN, runtime, now=NOW)
    assert second.continued == {mouse: PLAN.n_days + 1 for mouse, _ in PLAN.mice()}
    assert second.plan.start == datetime(2026, 1, 8, tzinfo=UTC)  # the day after day 3
    enrolled = sum(isinstance(e, MouseEnrolled) for e in events(runtime, runtime.topics.events))
    assert enrolled == enrolled_before == PLAN.n_mice  # nobody enrolled (restarted) again
    numbers = Counter(r.assignment.session_number for r in second.sessions)
    assert numbers == {n: PLAN.n_mice for n in range(PLAN.n_days + 1, 2 * PLAN.n_days + 1)}
    assert not any(r.stale_assignment for r in first.sessions + second.sessions)
    sessions = [s.session_id for s in started(runtime)]
    assert len(sessions) == len(set(sessions)) == 2 * PLAN.n_days * PLAN.n_mice
    ids = [e.event_id for e in events(runtime, runtime.topics.events)]  # type: ignore[attr-defined]
    assert len(ids) == len(set(ids))
    assert runtime.log.read(runtime.topics.dead_letter) == []  # nothing refused
    for mouse, _ in PLAN.mice():
        assert runtime.states[mouse].session_total == 2 * PLAN.n_days
    third = continue_lab(PLAN, runtime, now=NOW)
    assert third.plan.start == datetime(2026, 1, 11, tzinfo=UTC)


def test_start_must_follow_the_last_day_the_lab_knows() -> None:
    runtime = embedded_runtime()
    continue_lab(PLAN, runtime, now=NOW)  # 2026-01-05 .. 01-07
    assert lab_position(PLAN, runtime).last_date == date(2026, 1, 7)
    with pytest.raises(RigError, match="not after 2026-01-07"):
        continue_lab(PLAN, runtime, start=date(2026, 1, 7), now=NOW)
    run = continue_lab(PLAN, runtime, start=date(2026, 2, 2), now=NOW)
    assert [r.started.occurred_at.date() for r in run.sessions][:1] == [date(2026, 2, 2)]
    assert run.sessions[0].assignment.session_number == PLAN.n_days + 1


def test_days_may_not_reach_today() -> None:
    runtime = embedded_runtime()
    with pytest.raises(RigError, match="must lie before today"):
        continue_lab(PLAN, runtime, now=datetime(2026, 1, 7, 8, tzinfo=UTC))
    assert len(runtime.log) == 0  # nothing published


def test_an_ejected_mouse_is_skipped() -> None:
    runtime = embedded_runtime()
    continue_lab(PLAN, runtime, now=NOW)
    runtime.publish(
        [
            MouseEjected(
                mouse_id="M002",
                occurred_at=datetime(2026, 1, 7, 20, tzinfo=UTC),
                reason="end of experiment",
            )
        ]
    )
    run = continue_lab(PLAN, runtime, now=NOW)
    assert set(run.skipped) == {"M002"} and "ejected" in run.skipped["M002"]
    assert {r.mouse_id for r in run.sessions} == {"M001", "M003"}
    assert runtime.log.read(runtime.topics.dead_letter) == []


def test_simulate_has_a_start_option_and_checks_it() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["rig", "simulate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--start" in result.output
    assert "continuing the lab" in " ".join(result.output.split())
    result = runner.invoke(app, ["rig", "simulate", "--start", "5 January", "--bootstrap", "x:1"])
    assert result.exit_code == 2 and "is not a date (YYYY-MM-DD)" in result.output
