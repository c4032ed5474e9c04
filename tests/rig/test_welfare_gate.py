"""The rig's side of the welfare gate (issue 15, item 2): a mouse on water restriction that is
held, or not cleared for the rig's day, does not start (the screen says why, nothing is
published); a cleared one runs and reports the water its rewards delivered; after the session
the screen shows the water still due today and the suggested supplement."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from shaping.rig.agent import RigAgent, RunOptions
from shaping.rig.config import RigConfig
from shaping.rig.safety import MouseHeldError, water_line, welfare_refusal
from shaping.rig.sim.mouse import SimulatedMouse
from shaping.rig.task.scripted import ScriptedTask
from shaping.schemas.commands import RecordWeight, StartRestriction
from shaping.schemas.events import (
    WATER_EARNED_METRIC,
    AssignmentIssued,
    AssignmentWelfare,
    Event,
    MouseEnrolled,
    TrialCompleted,
)
from tests.support.rig import assignment
from tests.support.wiring import embedded_runtime

WHEN = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
TODAY = "2026-03-02"
SAFE = {"max_trials": 40, "session_minutes": 30, "reward_volume_ul": 3}


def restricted(cleared_on: str | None, held_reason: str | None = None) -> AssignmentIssued:
    welfare = AssignmentWelfare(
        restricted=True,
        cleared_on=cleared_on,
        status="warning" if held_reason else "ok",
        percent_of_expected=78.1 if held_reason else 95.0,
        held_reason=held_reason,
    )
    return assignment(parameters=SAFE).model_copy(update={"welfare": welfare})


class RecordingTransport:
    def __init__(self, given: AssignmentIssued) -> None:
        self.given = given
        self.calls: list[list[Event]] = []

    def publish(self, events: Sequence[Event]) -> None:
        self.calls.append(list(events))

    def latest_assignment(
        self, mouse_id: str, min_session_number: int = 1, timeout_s: float = 0.0
    ) -> AssignmentIssued | None:
        return self.given


class Screen:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)

    def session_started(self, *args: object) -> None: ...

    def trial(self, *args: object) -> None: ...

    def session_ended(self, *args: object) -> None: ...

    def decision(self, *args: object) -> None: ...


def agent(transport: object, screen: Screen) -> RigAgent:
    task = ScriptedTask({"M001": SimulatedMouse("M001", 3)})
    return RigAgent(RigConfig.simulated("rig-1", ["M001"]), screen, transport, task)  # type: ignore[arg-type]


def options() -> RunOptions:
    return RunOptions("M001", start=WHEN, assignment_timeout_s=0.0, session_number=1)


def test_a_held_mouse_is_refused_with_the_reason_and_nothing_is_published() -> None:
    reason = "17.1 g is 78.1 % of expected 21.9 g (minimum 80 %), at or below the minimum"
    transport = RecordingTransport(restricted(None, reason))
    screen = Screen()
    with pytest.raises(MouseHeldError) as refused:
        agent(transport, screen).run(options())
    expected = (
        f"M001 is held: {reason}; weigh it again or ask a trainer to release it: "
        "shaping release M001 --reason ..."
    )
    assert str(refused.value) == expected
    assert screen.lines == [f"NOT STARTED: {expected}"]
    assert transport.calls == []


def test_a_restricted_mouse_not_weighed_today_is_refused() -> None:
    transport = RecordingTransport(restricted("2026-03-01"))
    screen = Screen()
    with pytest.raises(MouseHeldError, match="not weighed today"):
        agent(transport, screen).run(options())
    assert "shaping weigh M001 GRAMS" in screen.lines[0]
    assert "last cleared on 2026-03-01" in screen.lines[0]
    assert transport.calls == []


def test_a_cleared_mouse_runs_and_reports_the_water_it_earned() -> None:
    transport = RecordingTransport(restricted(TODAY))
    report = agent(transport, Screen()).run(options())
    (batch,) = transport.calls
    rewarded = [e for e in batch if isinstance(e, TrialCompleted) and e.reward_volume_ul > 0]
    earned = report.ended.metrics[WATER_EARNED_METRIC]
    assert rewarded and earned == pytest.approx(sum(t.reward_volume_ul for t in rewarded) / 1000)


def test_an_unrestricted_mouse_is_never_gated() -> None:
    assert welfare_refusal(assignment(parameters=SAFE), WHEN.date()) is None
    assert water_line(assignment(parameters=SAFE)) is None


def test_after_a_session_the_screen_shows_the_water_still_due_and_the_supplement() -> None:
    runtime = embedded_runtime()
    runtime.publish(
        [
            MouseEnrolled(
                mouse_id="M001",
                occurred_at=WHEN - timedelta(hours=3),
                curriculum_name="basic-shaping",
            )
        ]
    )
    ask = {"mouse_id": "M001", "requested_by": "ada"}
    runtime.send_commands(
        [
            StartRestriction(requested_at=WHEN - timedelta(hours=2), reference_grams=25.0, **ask),
            RecordWeight(requested_at=WHEN - timedelta(hours=1), grams=24.0, confirmed=True, **ask),
        ]
    )
    assert runtime.assignments["M001"].welfare is not None
    screen = Screen()
    report = agent(runtime, screen).run(options())
    after = runtime.assignments["M001"]
    assert after.session_number == 2 and after.welfare is not None
    earned = report.ended.metrics[WATER_EARNED_METRIC]
    assert after.welfare.water_given_ml_today == pytest.approx(earned, abs=1e-3)
    (line,) = [text for text in screen.lines if "water today" in text]
    assert line == water_line(after)
    assert f"still due {after.welfare.water_still_due_ml:.2f} mL" in line
    assert "suggested supplement" in line or "no supplement needed" in line
