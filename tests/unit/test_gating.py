"""The welfare gate (issue 15, item 2), given/when/then: a mouse on water restriction is cleared
to train on a lab day by a weight at or above its minimum that day, held below it, released by
a trainer; the day is the log's (the broker's time of the message), never the sender's clock;
a session's earned water is recorded from its SessionEnded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shaping.schemas.codec import encode_key
from shaping.schemas.commands import Command, RecordWeight, ReleaseHold, StartRestriction
from shaping.schemas.events import (
    WATER_EARNED_METRIC,
    AssignmentHeld,
    AssignmentIssued,
    Event,
    EventRejected,
    SessionEnded,
    SessionStarted,
    TrainingWarning,
    WeightRecorded,
)
from shaping.services.domain import MouseState
from shaping.services.domain.gating import RAN_WHILE_HELD
from shaping.services.embedded.runtime import EmbeddedRuntime
from shaping.services.processor.step import ProcessorStep, StepResult
from shaping.services.projector.tables import husbandry_water, interventions, welfare_gate
from tests.support.story import core, enrolled
from tests.support.wiring import CODEC, embedded_runtime, sql_store

DAY1 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)


class Lab:
    """One mouse through the processor's step, each message with its broker time."""

    def __init__(self) -> None:
        self.step = ProcessorStep(core(), CODEC)
        self.state: MouseState | None = None
        self.offset = 0
        self.events: list[Event] = []

    def feed(self, event: Event, broker: datetime) -> StepResult:
        self.offset += 1
        result = self.step.process(
            self.state,
            encode_key(event.mouse_id),
            CODEC.encode(event),
            "shaping.events",
            0,
            self.offset,
            broker,
        )
        if result.state is not None:
            self.state = result.state
        self.events.extend(o.event for o in result.outputs if o.topic_kind != "accepted")
        return result

    def ask(self, command: Command, broker: datetime) -> tuple[Event, StepResult]:
        """Sends a command; its answer (when honoured) is then processed as the log would."""
        self.offset += 1
        answered = self.step.process_command(
            self.state,
            encode_key(command.mouse_id),
            CODEC.encode(command),
            "shaping.commands",
            0,
            self.offset,
            broker,
            broker,
        )
        answer = answered.outputs[0].event
        if isinstance(answer, EventRejected):
            return answer, answered
        return answer, self.feed(answer, broker)

    def outputs(self, result: StepResult) -> list[Event]:
        return [o.event for o in result.outputs if o.topic_kind != "accepted"]


def command(kind: type[Command], at: datetime, **fields: Any) -> Any:
    return kind(mouse_id="M1", requested_by="ada", requested_at=at, **fields)


@pytest.fixture
def lab() -> Lab:
    """M1 enrolled, then on water restriction from DAY1 (reference 25 g, not weighed yet)."""
    lab = Lab()
    lab.feed(enrolled("M1").model_copy(update={"occurred_at": DAY1}), DAY1)
    lab.ask(command(StartRestriction, DAY1, reference_grams=25.0), DAY1)
    return lab


def weigh(lab: Lab, grams: float, at: datetime, broker: datetime | None = None) -> StepResult:
    answer, result = lab.ask(command(RecordWeight, at, grams=grams, confirmed=True), broker or at)
    assert isinstance(answer, WeightRecorded), answer
    return result


def session(lab: Lab, sid: str, at: datetime, broker: datetime, **metrics: float) -> StepResult:
    common = {"mouse_id": "M1", "rig_id": "rig-1", "session_id": sid}
    lab.feed(
        SessionStarted(
            occurred_at=at,
            stage="s1_habituation",
            curriculum_name="basic-shaping",
            curriculum_version="0.1.0",
            parameters={},
            **common,
        ),
        broker,
    )
    return lab.feed(
        SessionEnded(
            occurred_at=at + timedelta(minutes=30),
            n_trials=0,
            end_reason="completed",
            duration_s=1800,
            metrics=metrics,
            **common,
        ),
        broker + timedelta(minutes=30),
    )


def newest_assignment(lab: Lab) -> AssignmentIssued:
    return [e for e in lab.events if isinstance(e, AssignmentIssued)][-1]


def test_a_restriction_reissues_the_assignment_not_cleared_until_weighed(lab: Lab) -> None:
    assignment = newest_assignment(lab)
    assert assignment.reason == "restricted"
    assert assignment.session_number == 1
    assert assignment.welfare is not None
    assert assignment.welfare.restricted
    assert assignment.welfare.cleared_on is None
    assert assignment.welfare.status == "not_weighed_today"


def test_weighed_today_above_the_minimum_clears_the_mouse_for_the_day(lab: Lab) -> None:
    before = newest_assignment(lab)
    result = weigh(lab, 24.0, DAY1 + timedelta(hours=1))
    (cleared,) = lab.outputs(result)
    assert isinstance(cleared, AssignmentIssued)
    assert cleared.reason == "cleared"
    assert cleared.welfare is not None
    assert cleared.welfare.cleared_on == "2026-03-02"
    assert cleared.welfare.held_reason is None
    assert cleared.welfare.percent_of_expected == 96.0
    assert (cleared.stage, cleared.session_number) == (before.stage, before.session_number)
    assert cleared.event_id != before.event_id


def test_a_weight_at_or_below_the_minimum_holds_the_mouse_with_the_figures(lab: Lab) -> None:
    result = weigh(lab, 19.0, DAY1 + timedelta(hours=1))
    held, reissued = lab.outputs(result)
    assert isinstance(held, AssignmentHeld)
    assert (
        held.reason == "19 g is 76.0 % of expected 25.0 g (minimum 80 %), at or below the minimum"
    )
    assert held.session_number == 1
    assert held.held_at == DAY1 + timedelta(hours=1)
    assert held.welfare.status == "warning"
    assert isinstance(reissued, AssignmentIssued)
    assert reissued.reason == "held"
    assert reissued.welfare is not None
    assert reissued.welfare.cleared_on is None
    assert reissued.welfare.held_reason == held.reason
    assert lab.state is not None and lab.state.husbandry.hold is not None
    # The routing table puts both on the assignments topic, the held one first.
    assert [o.topic_kind for o in result.outputs] == ["accepted", "assignments", "assignments"]


def test_a_held_mouse_weighed_again_above_the_minimum_is_cleared(lab: Lab) -> None:
    weigh(lab, 19.0, DAY1 + timedelta(hours=1))
    result = weigh(lab, 21.0, DAY1 + timedelta(hours=2))
    (cleared,) = lab.outputs(result)
    assert isinstance(cleared, AssignmentIssued) and cleared.welfare is not None
    assert cleared.welfare.cleared_on == "2026-03-02"
    assert lab.state is not None and lab.state.husbandry.hold is None


def test_a_release_clears_a_held_mouse_for_the_day_and_is_audited(tmp_path: Path) -> None:
    store = sql_store(f"sqlite:///{tmp_path / 'p.db'}")
    runtime = embedded_runtime(store)
    runtime.publish([enrolled("M1").model_copy(update={"occurred_at": DAY1})])
    runtime.send_commands(
        [
            command(StartRestriction, DAY1, reference_grams=25.0),
            command(RecordWeight, DAY1 + timedelta(hours=1), grams=19.0, confirmed=True),
        ]
    )
    assert runtime.states["M1"].husbandry.hold is not None
    release = command(ReleaseHold, DAY1 + timedelta(hours=2), reason="vet: fine to train")
    runtime.send_commands([release])
    assignment = runtime.assignments["M1"]
    assert assignment.reason == "released"
    assert assignment.causation_id == release.answer_id
    assert assignment.welfare is not None and assignment.welfare.cleared_on == "2026-03-02"
    assert runtime.states["M1"].husbandry.hold is None
    with store.engine.connect() as conn:
        row = conn.execute(select(interventions)).mappings().one()
        gate = conn.execute(select(welfare_gate)).mappings().one()
    assert (row["kind"], row["requested_by"], row["reason"]) == (
        "release",
        "ada",
        "vet: fine to train",
    )
    assert row["assignment_id"] == assignment.event_id
    assert row["honoured_at"] is not None
    assert (gate["held"], gate["cleared_on"]) == (False, "2026-03-02")


def test_a_hold_is_projected_and_shown_until_cleared(tmp_path: Path) -> None:
    store = sql_store(f"sqlite:///{tmp_path / 'p.db'}")
    runtime = embedded_runtime(store)
    runtime.publish([enrolled("M1").model_copy(update={"occurred_at": DAY1})])
    runtime.send_commands(
        [
            command(StartRestriction, DAY1, reference_grams=25.0),
            command(RecordWeight, DAY1 + timedelta(hours=1), grams=19.0, confirmed=True),
        ]
    )
    with store.engine.connect() as conn:
        gate = conn.execute(select(welfare_gate)).mappings().one()
    assert gate["held"] is True
    assert "76.0 %" in gate["hold_reason"]
    assert gate["cleared_on"] is None


def test_a_release_of_a_mouse_not_on_restriction_is_refused(tmp_path: Path) -> None:
    runtime = embedded_runtime()
    runtime.publish([enrolled("M1").model_copy(update={"occurred_at": DAY1})])
    runtime.send_commands([command(ReleaseHold, DAY1, reason="why not")])
    rejected = [m.event for m in runtime.messages() if isinstance(m.event, EventRejected)]
    assert len(rejected) == 1
    assert "not on water restriction" in rejected[0].reason


def test_the_next_day_the_mouse_must_be_weighed_again(lab: Lab) -> None:
    weigh(lab, 24.0, DAY1 + timedelta(hours=1))
    same_day = session(lab, "M1-day1", DAY1 + timedelta(hours=2), DAY1 + timedelta(hours=2))
    after_day1 = [e for e in lab.outputs(same_day) if isinstance(e, AssignmentIssued)][-1]
    assert after_day1.welfare is not None and after_day1.welfare.cleared_on == "2026-03-02"
    next_day = session(lab, "M1-day2", DAY2 + timedelta(hours=2), DAY2 + timedelta(hours=2))
    after_day2 = [e for e in lab.outputs(next_day) if isinstance(e, AssignmentIssued)][-1]
    assert after_day2.welfare is not None and after_day2.welfare.cleared_on is None
    assert after_day2.welfare.status == "not_weighed_today"


def test_a_session_started_while_held_is_kept_and_flagged(lab: Lab) -> None:
    weigh(lab, 19.0, DAY1 + timedelta(hours=1))
    result = session(lab, "M1-held", DAY1 + timedelta(hours=2), DAY1 + timedelta(hours=2))
    assert result.outcome == "accepted"
    (warning,) = [e for e in lab.events if isinstance(e, TrainingWarning)]
    assert warning.kind == RAN_WHILE_HELD
    assert "while held" in warning.message
    assert warning.session_id == "M1-held"


def test_the_broker_time_decides_the_day_not_the_senders_clock(lab: Lab) -> None:
    # The weighing PC's clock says 23:59 of DAY1; the broker took it at 00:00:30 of DAY2.
    late = datetime(2026, 3, 2, 23, 59, 50, tzinfo=UTC)
    result = weigh(lab, 24.0, late, broker=datetime(2026, 3, 3, 0, 0, 30, tzinfo=UTC))
    (cleared,) = lab.outputs(result)
    assert isinstance(cleared, AssignmentIssued) and cleared.welfare is not None
    assert cleared.welfare.cleared_on == "2026-03-03"
    # A rig whose clock still says DAY1 starts a session the broker takes on DAY2: cleared.
    session(lab, "M1-ok", late, datetime(2026, 3, 3, 0, 1, tzinfo=UTC))
    assert not [e for e in lab.events if isinstance(e, TrainingWarning)]
    # The same rig clock, but the broker takes the session a day later: not cleared that day.
    session(lab, "M1-late", late, datetime(2026, 3, 4, 0, 1, tzinfo=UTC))
    (warning,) = [e for e in lab.events if isinstance(e, TrainingWarning)]
    assert warning.session_id == "M1-late"
    assert "2026-03-04" in warning.message


def test_earned_water_is_recorded_from_the_session_end(tmp_path: Path) -> None:
    store = sql_store(f"sqlite:///{tmp_path / 'p.db'}")
    runtime = embedded_runtime(store)
    runtime.publish([enrolled("M1").model_copy(update={"occurred_at": DAY1})])
    runtime.send_commands(
        [
            command(StartRestriction, DAY1, reference_grams=25.0),
            command(RecordWeight, DAY1 + timedelta(hours=1), grams=24.0, confirmed=True),
        ]
    )
    common = {"mouse_id": "M1", "rig_id": "rig-1", "session_id": "M1-s1"}
    start = DAY1 + timedelta(hours=2)
    runtime.publish(
        [
            SessionStarted(
                occurred_at=start,
                stage="s1_habituation",
                curriculum_name="basic-shaping",
                curriculum_version="0.1.0",
                parameters={},
                **common,
            ),
            SessionEnded(
                occurred_at=start + timedelta(minutes=30),
                n_trials=0,
                end_reason="completed",
                duration_s=1800,
                metrics={WATER_EARNED_METRIC: 0.42},
                **common,
            ),
        ]
    )
    water = runtime.states["M1"].husbandry.water
    assert [(w.kind, w.ml) for w in water] == [("earned", 0.42)]
    welfare = runtime.assignments["M1"].welfare
    assert welfare is not None
    assert welfare.water_given_ml_today == 0.42
    # 24 g x 0.04 mL/g = 0.96 mL, under the policy's least requirement of 1 mL: 0.58 mL still
    # due; the smallest supplement is 1 mL.
    assert (welfare.water_required_ml_today, welfare.water_still_due_ml) == (1.0, 0.58)
    assert (welfare.supplement_ml, welfare.supplement_exceeds_cap) == (1.0, False)
    assert welfare.cleared_on == "2026-03-02"
    with store.engine.connect() as conn:
        rows = conn.execute(select(husbandry_water)).mappings().all()
    assert [(r["kind"], r["ml"], r["session_id"]) for r in rows] == [("earned", 0.42, "M1-s1")]


def test_a_mouse_not_on_restriction_is_not_gated(tmp_path: Path) -> None:
    runtime: EmbeddedRuntime = embedded_runtime()
    runtime.publish([enrolled("M1").model_copy(update={"occurred_at": DAY1})])
    before = runtime.assignments["M1"]
    runtime.send_commands([command(RecordWeight, DAY1, grams=12.0)])
    assert runtime.assignments["M1"] == before
    assert before.welfare is None


def test_release_and_welfare_on_an_embedded_install(tmp_path: Path) -> None:
    """``shaping release`` and the gate column of ``shaping welfare`` on the folder of
    ``shaping demo``."""
    from typer.testing import CliRunner

    from shaping.services.cli import app

    runner = CliRunner()
    demo = runner.invoke(
        app,
        [
            "demo",
            "--out",
            str(tmp_path),
            "--mice",
            "1",
            "--rigs",
            "1",
            "--days",
            "1",
            "--no-husbandry",
        ],
    )
    assert demo.exit_code == 0, demo.output
    where = ["--embedded", str(tmp_path), "--by", "ada"]

    def run(*args: str) -> Any:
        return runner.invoke(app, [*args, *where])

    refused = run("release", "M001", "--reason", "not restricted yet")
    assert refused.exit_code == 1 and "not on water restriction" in refused.output
    assert run("restrict", "start", "M001", "--reference", "25").exit_code == 0
    assert run("weigh", "M001", "19", "--confirm").exit_code == 0

    def gate() -> str:
        shown = runner.invoke(app, ["welfare", "M001", "--embedded", str(tmp_path)])
        assert shown.exit_code == 0, shown.output
        return shown.output

    assert "HELD: 19 g is 76.0 %" in gate()
    released = run("release", "M001", "--reason", "vet checked")
    assert released.exit_code == 0, released.output
    assert "M001 released for today: vet checked" in released.output
    assert "cleared" in gate() and "HELD" not in gate()
