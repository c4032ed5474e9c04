"""The training core, given events, when an event, then events."""

from __future__ import annotations

import pytest

from shaping.schemas.events import AssignmentIssued, StageTransitioned, TrialCompleted
from shaping.services.domain import ImpossibleEvent, evolve, fold, initial_state
from tests.support.story import core, enrolled, next_id, run, session, trials


def test_enrolling_assigns_the_first_stage_with_its_parameters() -> None:
    engine = core()
    event = enrolled("M1")
    out = engine.decide(initial_state("M1"), event)
    assert len(out) == 1
    assignment = out[0]
    assert isinstance(assignment, AssignmentIssued)
    assert assignment.stage == "s1_habituation"
    assert assignment.parameters["reward_volume_ul"] == 4.0
    assert assignment.parameters["max_trials"] == 200
    assert (assignment.curriculum_name, assignment.curriculum_version) == ("basic-shaping", "0.1.0")
    assert assignment.session_number == 1
    assert assignment.causation_id == event.event_id


def test_enrolling_at_a_named_stage() -> None:
    state, out = run(core(), [enrolled("M1", start_stage="s3_full_task")])
    assert state.stage == "s3_full_task"
    assert out[0].stage == "s3_full_task"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"curriculum_name": "nope"}, "unknown curriculum 'nope'"),
        ({"curriculum_version": "9.9.9"}, "no version '9.9.9'"),
        ({"start_stage": "s9"}, "no stage 's9'"),
    ],
)
def test_enrolling_on_something_unknown_is_impossible(fields: dict, message: str) -> None:
    with pytest.raises(ImpossibleEvent, match=message):
        core().decide(initial_state("M1"), enrolled("M1", **fields))


def test_a_good_session_progresses_with_evidence() -> None:
    given = [enrolled("M1")]
    when = session("M1", "s-1", trials(correct=90, incorrect=30))
    state, out = run(core(), given + when)
    decision, assignment = out[-2], out[-1]
    assert isinstance(decision, StageTransitioned)
    assert (decision.from_stage, decision.to_stage, decision.decision) == (
        "s1_habituation",
        "s2_training",
        "progress",
    )
    assert decision.rule == "engaged_and_accurate"
    [evaluation] = decision.rule_evaluations
    observed = {o.metric: (o.observed, o.passed) for o in evaluation.observations}
    assert observed == {"accuracy(window=200)": (0.75, True), "session_trials": (120.0, True)}
    assert decision.session_summary.n_trials == 120
    assert decision.session_summary.accuracy == 0.75
    assert isinstance(assignment, AssignmentIssued)
    assert assignment.stage == "s2_training"
    assert assignment.parameters["max_trials"] == 300
    assert assignment.session_number == 2
    assert assignment.causation_id == decision.event_id
    assert state.stage == "s2_training" and state.sessions_at_stage == 0


def test_too_few_trials_stays_even_when_accurate() -> None:
    _, out = run(core(), [enrolled("M1"), *session("M1", "s-1", trials(correct=99))])
    decision = out[-2]
    assert isinstance(decision, StageTransitioned)
    assert decision.decision == "stay" and decision.rule is None
    assert decision.to_stage == "s1_habituation"
    observed = {o.metric: o.passed for o in decision.rule_evaluations[0].observations}
    assert observed == {"accuracy(window=200)": True, "session_trials": False}
    assert out[-1].reason == "stay"  # type: ignore[attr-defined]


def test_misses_do_not_count_in_accuracy_but_count_as_trials() -> None:
    _, out = run(core(), [enrolled("M1"), *session("M1", "s-1", trials(60, 40, miss=50))])
    decision = out[-2]
    assert isinstance(decision, StageTransitioned)
    obs = {o.metric: o.observed for o in decision.rule_evaluations[0].observations}
    assert obs == {"accuracy(window=200)": 0.6, "session_trials": 150.0}
    assert decision.session_summary.n_miss == 50


def test_accuracy_window_spans_sessions() -> None:
    """The last 200 responded trials include the previous session's."""
    events = [
        enrolled("M1"),
        *session("M1", "s-1", trials(correct=50, incorrect=50)),
        *session("M1", "s-2", trials(correct=100), day=1),
    ]
    _, out = run(core(), events)
    decision = out[-2]
    assert isinstance(decision, StageTransitioned)
    assert decision.rule_evaluations[0].observations[0].observed == 150 / 200
    assert decision.decision == "progress"


def test_rollback_and_graduation_at_the_last_stage() -> None:
    engine = core()
    given = [enrolled("M1", start_stage="s3_full_task")]
    bad = session("M1", "s-1", trials(correct=50, incorrect=100), stage="s3_full_task")
    _, out = run(engine, given + bad)
    assert out[-2].decision == "rollback"  # type: ignore[attr-defined]
    assert out[-1].stage == "s2_training"  # type: ignore[attr-defined]

    good = [
        *session("M1", "g-1", trials(correct=250), stage="s3_full_task"),
        *session("M1", "g-2", trials(correct=250), stage="s3_full_task", day=1),
    ]
    state, out = run(engine, given + good)
    decisions = [e for e in out if isinstance(e, StageTransitioned)]
    assert [d.decision for d in decisions] == ["stay", "graduate"]
    assert decisions[0].rule_evaluations[0].observations[2].observed == 1.0  # sessions at stage
    assert state.stage == "graduated"
    # Graduated is terminal: another session stays there with no rule evaluated.
    state, out = run(engine, [*given, *good, *session("M1", "g-3", trials(10), "graduated", 2)])
    assert out[-2].decision == "stay" and out[-2].rule_evaluations == []  # type: ignore[attr-defined]


def test_a_session_at_another_stage_than_assigned_is_judged_at_the_stage_run() -> None:
    """A trainer ran stage 2 by hand: rules of stage 2 apply, its count starts at 1."""
    events = [enrolled("M1"), *session("M1", "s-1", trials(80), stage="s2_training")]
    _state, out = run(core(), events)
    decision = out[-2]
    assert isinstance(decision, StageTransitioned)
    assert decision.from_stage == "s2_training" and decision.sessions_at_stage == 1


@pytest.mark.parametrize(
    ("story", "message"),
    [
        (lambda: session("M1", "s-1", trials(3))[:1], "not enrolled"),
        (lambda: [enrolled("M1"), session("M1", "s-1", trials(3))[1]], "never started"),
        (lambda: [enrolled("M1"), session("M1", "s-1", trials(3))[-1]], "never started"),
        (
            lambda: [
                enrolled("M1"),
                *session("M1", "s-1", trials(3)),
                session("M1", "s-1", ["correct"])[1],
            ],
            "already ended",
        ),
        (lambda: [enrolled("M1"), enrolled("M1")], "already enrolled"),
        (lambda: [enrolled("M1"), session("M1", "s-1", [], stage="s7")[0]], "does not have"),
    ],
)
def test_impossible_events_are_refused_and_change_nothing(story, message: str) -> None:  # type: ignore[no-untyped-def]
    events = story()
    engine = core()
    state, _ = run(engine, events[:-1])
    with pytest.raises(ImpossibleEvent, match=message):
        engine.handle(state, events[-1])


def test_redelivered_events_change_nothing() -> None:
    engine = core()
    events = [enrolled("M1"), *session("M1", "s-1", trials(correct=120))]
    once, out_once = run(engine, events)
    doubled = [e for event in events for e in (event, event)]
    twice, out_twice = run(engine, doubled)
    assert twice == once
    # The redelivered SessionEnded re-sends the very same decision (same ids) so a decision
    # lost between the state write and the publish reaches consumers, who drop the copy.
    ids_once = [e.event_id for e in out_once]
    assert [e.event_id for e in out_twice] == [
        ids_once[0],
        ids_once[1],
        ids_once[2],
        ids_once[1],
        ids_once[2],
    ]


def test_a_trial_redelivered_out_of_order_is_dropped() -> None:
    engine = core()
    events = [enrolled("M1"), *session("M1", "s-1", trials(correct=5))]
    state, _ = run(engine, events[:-1])
    old = events[3]
    assert isinstance(old, TrialCompleted)
    again = old.model_copy(update={"event_id": next_id()})
    after, out = engine.handle(state, again)
    assert after == state and out == []


def test_outputs_are_deterministic() -> None:
    events = [enrolled("M1"), *session("M1", "s-1", trials(correct=120))]
    _, first = run(core(), events)
    _, second = run(core(), events)
    assert first == second


def test_folding_the_whole_log_gives_the_processors_state() -> None:
    engine = core()
    events = [
        enrolled("M1"),
        *session("M1", "s-1", trials(90, 30)),
        *session("M1", "s-2", trials(10), "s2_training", 1),
    ]
    state, emitted = run(engine, events)
    log = []
    for event in events:
        log.append(event)
        log.extend(e for e in emitted if e.causation_id == event.event_id)
        log.extend(
            e
            for e in emitted
            if isinstance(e, AssignmentIssued)
            and any(
                d.event_id == e.causation_id and d.causation_id == event.event_id for d in emitted
            )
        )
    assert fold(initial_state("M1"), log) == state
    assert evolve(state, events[0]) == state  # an old event again is a no-op
