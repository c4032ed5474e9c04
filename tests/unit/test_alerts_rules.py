"""The alert rules (services/alerts): the lab's rules file is checked with the line at fault,
and the pure engine raises, updates and resolves alerts from the log's records and time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shaping.schemas.alerts import (
    AlertAcknowledged,
    AlertRaised,
    AlertResolved,
    AlertUpdated,
    alert_id,
)
from shaping.schemas.codec import default_codec
from shaping.schemas.events import (
    MouseEjected,
    RestrictionStarted,
    RuleEvaluation,
    TrainingWarning,
    TrialCompleted,
    WaterGiven,
    WeightRecorded,
)
from shaping.services.alerts.checks import FileInvalid
from shaping.services.alerts.config import default_rules, parse_rules
from shaping.services.alerts.rules import AlertEngine, replay
from tests.support.alert_inputs import dead_letter, decision

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

RULES = """\
lab: lab-a
rules:
  stuck_at_stage: {sessions: 3, warning_after: 5}
  training_warnings: {untrainable_risk: warning, regression_prevented: attention}
  stage_labels: {untrainable: critical}
  rig_silent: {minutes: 30, hours: [8, 20]}
  processor_silent: {minutes: 5}
  dead_letters: {count: 3, minutes: 10}
  weight: {attention: attention, warning: critical}
  not_weighed: {severity: attention}
  water_due: {hours: 23}
"""


def engine() -> AlertEngine:
    return AlertEngine(parse_rules(RULES))


def warning(kind: str, cause: str, mouse: str = "M1") -> TrainingWarning:
    return TrainingWarning(
        mouse_id=mouse,
        occurred_at=T0,
        causation_id=cause,
        kind=kind,
        message="Still in training after 30 sessions.",
        stage="in training",
        curriculum_name="ibl",
        curriculum_version="1.0.0",
        evidence=[
            RuleEvaluation(
                rule=kind,
                description="d",
                decision="warn",
                to_stage="x",
                verdict=True,
                observations=[],
            )
        ],
    )


# -- the rules file ---------------------------------------------------------------------------


def test_a_rules_file_is_read_with_every_rule() -> None:
    rules = parse_rules(RULES)
    assert rules.lab == "lab-a"
    assert rules.stuck_at_stage is not None and rules.stuck_at_stage.limit("s2") == 3
    assert rules.training_warnings["untrainable_risk"] == "warning"
    assert rules.rig_silent is not None and rules.rig_silent.hours == (8, 20)
    assert rules.dead_letters is not None and rules.dead_letters.count == 3


def test_a_bad_rules_file_is_refused_with_each_line_at_fault() -> None:
    text = """\
lab: lab-a
rules:
  stuck_at_stage: {sessions: 0}
  dead_letters: {count: 3, minutes: 10, severity: loud}
  rig_quiet: {minutes: 3}
"""
    with pytest.raises(FileInvalid) as caught:
        parse_rules(text, "lab.yaml")
    shown = str(caught.value)
    assert "lab.yaml:3: rules.stuck_at_stage.sessions must be between 1 and 1000" in shown
    assert "lab.yaml:4:" in shown and "unknown value 'loud'" in shown
    assert "lab.yaml:5: unknown key 'rig_quiet'" in shown


def test_a_rules_file_that_is_not_yaml_names_its_line() -> None:
    with pytest.raises(FileInvalid, match=r"x.yaml:2: key 'lab' is given twice"):
        parse_rules("lab: a\nlab: b\nrules: {}\n", "x.yaml")


# -- training ---------------------------------------------------------------------------------


def test_a_mouse_stuck_at_its_stage_raises_once_then_escalates_then_resolves() -> None:
    e = engine()
    assert e.observe("decisions", decision(2), T0) == []
    raised = e.observe("decisions", decision(3), T0 + timedelta(hours=1))
    assert [type(a) for a in raised] == [AlertRaised]
    alert = raised[0]
    assert alert.alert_id == alert_id("stuck_at_stage", "mouse", "M1")
    assert (alert.severity, alert.episode, alert.revision, alert.lab) == (
        "attention",
        1,
        0,
        "lab-a",
    )
    assert alert.evidence["sessions_at_stage"] == "3"
    assert alert.raised_at == T0 + timedelta(hours=1)  # the log's time
    assert e.observe("decisions", decision(4), T0 + timedelta(hours=2)) == []  # no change
    updated = e.observe("decisions", decision(5), T0 + timedelta(hours=3))
    assert [(type(a), a.severity, a.revision) for a in updated] == [(AlertUpdated, "warning", 1)]
    resolved = e.observe("decisions", decision(6, "progress", "s3"), T0 + timedelta(hours=4))
    assert [type(a) for a in resolved] == [AlertResolved]
    again = e.observe("decisions", decision(3, mouse="M1"), T0 + timedelta(hours=9))
    assert [(type(a), a.episode) for a in again] == [(AlertRaised, 2)]


def test_the_same_inputs_give_the_same_alert_events() -> None:
    first = engine().observe("decisions", decision(3), T0)
    second = engine().observe("decisions", decision(3), T0)
    assert first == second  # ids derive from the alert, its episode and its revision


def test_an_ejected_mouse_has_its_alerts_resolved() -> None:
    e = engine()
    e.observe("decisions", decision(3), T0)
    ejected = MouseEjected(mouse_id="M1", occurred_at=T0, reason="ill")
    out = e.observe("accepted", ejected, T0 + timedelta(minutes=1))
    assert [(type(a), a.rule) for a in out] == [(AlertResolved, "stuck_at_stage")]


def test_a_training_warning_raises_and_clears_one_decision_later_without_it() -> None:
    e = engine()
    e.observe("decisions", decision(1), T0)
    out = e.observe("decisions", warning("untrainable_risk", "d-M1-1"), T0)
    assert [(a.rule, a.severity) for a in out] == [("untrainable_risk", "warning")]
    assert e.observe("decisions", warning("biased_before_trained", "d-M1-1"), T0) == []  # off
    e.observe("decisions", decision(2, "progress", "s3"), T0 + timedelta(hours=1))
    out = e.observe("decisions", decision(3, "progress", "s4"), T0 + timedelta(hours=2))
    assert [(type(a), a.rule) for a in out] == [(AlertResolved, "untrainable_risk")]


def test_an_ibl_label_raises_a_stage_label_alert() -> None:
    out = engine().observe("decisions", decision(1, "rollback", "untrainable"), T0)
    assert [(a.rule, a.severity) for a in out] == [("stage_label", "critical")]


# -- heartbeats and dead letters ----------------------------------------------------------------


def trial(rig: str, at: datetime) -> TrialCompleted:
    return TrialCompleted(
        mouse_id="M1",
        rig_id=rig,
        session_id="M1-s1",
        occurred_at=at,
        trial_index=0,
        outcome="correct",
    )


def test_a_rig_silent_in_working_hours_raises_and_its_next_message_resolves() -> None:
    e = engine()
    at = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
    e.observe("events", trial("rig-1", at), at)
    assert e.tick(at + timedelta(minutes=29)) == []
    out = e.tick(at + timedelta(minutes=31))
    assert [(a.rule, a.scope, a.scope_key, a.mouse_id) for a in out] == [
        ("rig_silent", "rig", "rig-1", "rig:rig-1")
    ]
    assert e.tick(at + timedelta(minutes=40)) == []  # still open: nothing new
    back = e.observe(
        "events", trial("rig-1", at + timedelta(minutes=45)), at + timedelta(minutes=45)
    )
    assert [type(a) for a in back] == [AlertResolved]
    night = datetime(2026, 3, 2, 21, 0, tzinfo=UTC)
    assert [a for a in e.tick(night) if a.rule == "rig_silent"] == []  # outside its hours


def test_the_processor_silent_while_input_arrives_raises() -> None:
    e = engine()
    e.observe("events", trial("rig-1", T0), T0)  # a trial asks no answer
    assert e.tick(T0 + timedelta(minutes=10)) == []
    e.observe("events", None, T0 + timedelta(minutes=11))  # undecodable: a dead letter is due
    out = e.tick(T0 + timedelta(minutes=17))
    assert [(a.rule, a.severity, a.scope_key) for a in out] == [
        ("processor_silent", "critical", "processor")
    ]
    back = e.observe("dead_letter", dead_letter(1), T0 + timedelta(minutes=18))
    assert [type(a).__name__ for a in back] == ["AlertResolved"]


def test_the_built_in_rules_of_a_service_watch_the_heartbeats_and_the_demos_do_not() -> None:
    """`shaping alerts run` without --rules (the local stack) runs the built-in rules with the
    heartbeats on; the embedded runtime (the demo) keeps them off."""
    service = AlertEngine(default_rules(heartbeats=True))
    service.observe("events", trial("rig-1", T0), T0)
    service.observe("events", None, T0 + timedelta(minutes=1))
    raised = service.tick(T0 + timedelta(minutes=7))
    assert [(a.rule, a.severity) for a in raised] == [("processor_silent", "critical")]
    demo = AlertEngine(default_rules())
    demo.observe("events", trial("rig-1", T0), T0)
    demo.observe("events", None, T0 + timedelta(minutes=1))
    assert demo.tick(T0 + timedelta(hours=3)) == []


def test_a_dead_letter_storm_raises_and_the_window_passing_resolves() -> None:
    e = engine()
    outs = [e.observe("dead_letter", dead_letter(n), T0 + timedelta(seconds=n)) for n in range(5)]
    raised = [a for out in outs for a in out if a.rule == "dead_letters"]
    assert [type(a) for a in raised] == [AlertRaised]  # the 4th: more than 3; the 5th: no news
    assert raised[0].evidence["count"] == "4"
    out = e.tick(T0 + timedelta(minutes=11))
    assert [type(a) for a in out if a.rule == "dead_letters"] == [AlertResolved]


# -- husbandry ----------------------------------------------------------------------------------


def test_a_weight_below_the_minimum_raises_and_a_good_weight_resolves() -> None:
    e = engine()
    start = RestrictionStarted(mouse_id="M1", occurred_at=T0, reference_grams=25.0)
    e.observe("accepted", start, T0)
    low = WeightRecorded(mouse_id="M1", occurred_at=T0 + timedelta(hours=1), grams=19.5)
    out = e.observe("accepted", low, T0 + timedelta(hours=1))
    assert [(a.rule, a.severity) for a in out] == [("weight", "critical")]  # 78 % <= 80 %
    assert out[0].evidence["percent"] == "78.0"
    near = WeightRecorded(mouse_id="M1", occurred_at=T0 + timedelta(hours=2), grams=20.4)
    out = e.observe("accepted", near, T0 + timedelta(hours=2))
    assert [(type(a), a.severity) for a in out] == [(AlertUpdated, "attention")]  # 81.6 %
    fine = WeightRecorded(mouse_id="M1", occurred_at=T0 + timedelta(hours=3), grams=23.0)
    out = e.observe("accepted", fine, T0 + timedelta(hours=3))
    assert [type(a) for a in out] == [AlertResolved]


def test_a_restricted_mouse_not_weighed_by_the_hour_and_water_due_after_23_hours() -> None:
    e = engine()
    day0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    e.observe(
        "accepted", RestrictionStarted(mouse_id="M1", occurred_at=day0, reference_grams=25.0), day0
    )
    e.observe("accepted", WeightRecorded(mouse_id="M1", occurred_at=day0, grams=24.0), day0)
    water = WaterGiven(mouse_id="M1", occurred_at=day0, ml=1.0)
    e.observe("accepted", water, day0)
    next_day = day0 + timedelta(days=1, hours=5)  # 13:00: past the policy's noon; 29 h dry
    out = e.tick(next_day)
    assert sorted(a.rule for a in out) == ["not_weighed", "water_due"]
    given = WaterGiven(mouse_id="M1", occurred_at=next_day, ml=1.5)
    out = e.observe("accepted", given, next_day)
    assert [(type(a), a.rule) for a in out] == [(AlertResolved, "water_due")]


def test_the_husbandry_hook_takes_more_rules() -> None:
    from shaping.services.alerts.rules import Finding

    e = engine()
    e.husbandry_rules.append(
        lambda mouse_id, mouse, at: [Finding("note_rule", "mouse", mouse_id, "info", "look")]
    )
    start = RestrictionStarted(mouse_id="M1", occurred_at=T0, reference_grams=25.0)
    out = e.observe("accepted", start, T0)
    assert "note_rule" in [a.rule for a in out]


# -- restoring from the log ---------------------------------------------------------------------


def test_restored_alerts_are_not_raised_again_and_replay_writes_nothing() -> None:
    first = engine()
    raised = first.observe("decisions", decision(3), T0)
    second = engine()
    for event in raised:
        second.restore(event)
    replay(second, [("decisions", decision(3), T0)])
    assert second.observe("decisions", decision(4), T0 + timedelta(hours=1)) == []
    out = second.observe("decisions", decision(5), T0 + timedelta(hours=2))
    assert [(type(a), a.revision) for a in out] == [(AlertUpdated, 1)]


def test_alert_events_round_trip_the_codec_and_check_their_subject() -> None:
    codec = default_codec()
    out = engine().observe("decisions", decision(3), T0)
    assert codec.decode(codec.encode(out[0])) == out[0]
    fields = out[0].model_dump(exclude={"event_id", "event_type", "schema_version"})
    with pytest.raises(ValueError, match="mouse_id"):
        AlertRaised(**{**fields, "mouse_id": "M2"})
    with pytest.raises(ValueError, match="alert_id"):
        AlertRaised(**{**fields, "alert_id": alert_id("other", "mouse", "M1")})
    with pytest.raises(ValueError, match="acknowledged_by"):
        AlertAcknowledged(**{**fields, "acknowledged_by": ""})


def test_the_check_commands_name_the_line_at_fault(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shaping.services.cli.main import app

    bad = tmp_path / "rules.yaml"
    bad.write_text("lab: lab-a\nrules:\n  dead_letters: {count: -1}\n")
    result = CliRunner().invoke(app, ["alerts", "check", str(bad)])
    assert result.exit_code == 2
    assert "rules.yaml:3: rules.dead_letters.count must be between 0 and 100000" in result.output
    good = tmp_path / "good.yaml"
    good.write_text(RULES)
    result = CliRunner().invoke(app, ["alerts", "check", str(good)])
    assert result.exit_code == 0 and "lab lab-a" in result.output
    routing = tmp_path / "routing.yaml"
    routing.write_text("people:\n  ada: {webhook: {url: ftp://x}}\nsubscriptions: []\n")
    result = CliRunner().invoke(app, ["notifier", "check", str(routing)])
    assert result.exit_code == 2
    assert "routing.yaml:2: webhook url must be http(s)" in result.output
