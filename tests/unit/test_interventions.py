"""Trainers' interventions (override, eject, per-mouse adjustments) and what a decision carries
to the rig (evidence, metrics, warnings), given/when/then on the training core."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from functools import cache
from pathlib import Path
from random import Random

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from shaping.schemas.codec import default_codec, encode_key
from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    EventRejected,
    MouseEjected,
    MouseMigrated,
    Observation,
    ParametersAdjusted,
    ParamValue,
    RuleEvaluation,
    StageOverridden,
    StageTransitioned,
    TrainingWarning,
)
from shaping.services.adapters.settings import Settings
from shaping.services.cli import app
from shaping.services.curricula.loader import load_all
from shaping.services.curricula.validate import compile_curriculum
from shaping.services.domain import (
    CurriculumCatalog,
    Evaluation,
    ImpossibleEvent,
    MouseState,
    TrainingCore,
    fold,
    initial_state,
)
from shaping.services.domain.curriculum import MetricSource
from shaping.services.domain.interventions import EJECTED
from shaping.services.embedded.runtime import EmbeddedRuntime
from shaping.services.operator.interventions import (
    Delivery,
    DeliveryError,
    InterventionError,
    request_adjustment,
    request_ejection,
)
from shaping.services.processor.state_store import decode_state, encode_state
from shaping.services.processor.step import ProcessorStep
from shaping.services.projector.store import ProjectedMessage, SqlProjectionStore
from tests.support.scripts import REPO
from tests.support.story import T0, enrolled, next_id, run, session, trials
from tests.support.wiring import embedded_runtime, sql_store


@cache
def _catalog() -> CurriculumCatalog:
    """The shipped basic-shaping curriculum, loaded once (no test here publishes to it)."""
    return CurriculumCatalog(load_all([REPO / "curricula" / "basic-shaping.yaml"]))


def core() -> TrainingCore:
    """A training core on basic-shaping."""
    return TrainingCore(_catalog())


GOOD = trials(correct=250)
POOR = trials(correct=50, incorrect=100)


def override(
    to_stage: str, *, mouse: str = "M1", from_stage: str | None = None, day: float = 0.5
) -> StageOverridden:
    return StageOverridden(
        event_id=next_id(),
        mouse_id=mouse,
        occurred_at=T0 + timedelta(days=day),
        to_stage=to_stage,
        from_stage=from_stage,
        reason="lost weight; easier stage for two days",
        overridden_by="ada",
    )


def eject(*, mouse: str = "M1", day: float = 0.5) -> MouseEjected:
    return MouseEjected(
        event_id=next_id(),
        mouse_id=mouse,
        occurred_at=T0 + timedelta(days=day),
        reason="end of experiment",
        ejected_by="ada",
    )


def adjust(*, mouse: str = "M1", day: float = 0.5, **values: ParamValue) -> ParametersAdjusted:
    return ParametersAdjusted(
        event_id=next_id(),
        mouse_id=mouse,
        occurred_at=T0 + timedelta(days=day),
        adjustments=values,
        reason="tires after 300 trials",
        adjusted_by="ada",
    )


def handle_all(engine: TrainingCore, state: MouseState, events: list[Event]) -> list[Event]:
    """Handles events, failing on an impossible one; returns what they emitted."""
    out: list[Event] = []
    for event in events:
        state, emitted = engine.handle(state, event)
        out.extend(emitted)
    return out


def assignments(events: list[Event]) -> list[AssignmentIssued]:
    return [e for e in events if isinstance(e, AssignmentIssued)]


def decisions(events: list[Event]) -> list[StageTransitioned]:
    return [e for e in events if isinstance(e, StageTransitioned)]


# -- override -----------------------------------------------------------------------------------


def test_an_override_assigns_the_stage_at_once_with_the_reason() -> None:
    event = override("s3_full_task", from_stage="s1_habituation")
    state, out = run(core(), [enrolled("M1"), event])
    assignment = out[-1]
    assert isinstance(assignment, AssignmentIssued)
    assert assignment.reason == "override"
    assert "ada" in assignment.reason_detail and event.reason in assignment.reason_detail
    assert "s1_habituation -> s3_full_task" in assignment.reason_detail
    assert assignment.stage == "s3_full_task"
    assert assignment.parameters == core().curriculum_of(state).parameters("s3_full_task")
    assert (assignment.causation_id, assignment.session_number) == (event.event_id, 1)
    assert (state.stage, state.sessions_at_stage) == ("s3_full_task", 0)


def test_the_next_session_runs_the_overridden_stage_and_is_judged_by_its_rules() -> None:
    given = [
        enrolled("M1"),
        *session("M1", "s-1", GOOD),  # progresses to s2_training
        override("s1_habituation", from_stage="s2_training"),
    ]
    # The rig runs what it was told: s1 again. s1's rule judges it (progress to s2), not s2's.
    _, out = run(core(), given + session("M1", "s-2", GOOD, stage="s1_habituation", day=1))
    last = decisions(out)[-1]
    assert (last.from_stage, last.decision, last.to_stage) == (
        "s1_habituation",
        "progress",
        "s2_training",
    )
    assert last.rule == "engaged_and_accurate"
    # Sessions in a row at the stage actually run: the session before also ran s1, so the
    # count continues (AIND's session_at_current_stage).
    assert last.sessions_at_stage == 2


def test_rules_of_the_overridden_stage_roll_back_and_count_sessions_there() -> None:
    given = [enrolled("M1"), override("s3_full_task")]
    _, out = run(
        core(),
        given
        + session("M1", "s-1", GOOD, stage="s3_full_task")
        + session("M1", "s-2", GOOD, stage="s3_full_task", day=1),
    )
    assert [d.decision for d in decisions(out)] == ["stay", "graduate"]
    assert decisions(out)[0].sessions_at_stage == 1
    _, out = run(core(), given + session("M1", "p-1", POOR, stage="s3_full_task"))
    assert (decisions(out)[-1].decision, out[-1].stage) == ("rollback", "s2_training")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("given", "event", "message"),
    [
        ([], override("s2_training"), "not enrolled"),
        (
            [enrolled("M1")],
            override("s3_full_tsk"),
            "no stage 's3_full_tsk'; did you mean s3_full_task",
        ),
        ([enrolled("M1")], override("nowhere"), "stages: s1_habituation, s2_training"),
        (
            [enrolled("M1")],
            override("s3_full_task", from_stage="s2_training"),
            "at 's1_habituation' now, not 's2_training'",
        ),
        (
            [enrolled("M1"), session("M1", "open", ["correct"])[0]],
            override("s3_full_task"),
            "in session 'open'.*override after the session ends",
        ),
        ([enrolled("M1"), eject()], override("s3_full_task"), "ejected \\(end of experiment\\)"),
    ],
)
def test_an_override_that_cannot_be_honoured_is_impossible(
    given: list[Event], event: Event, message: str
) -> None:
    engine = core()
    state, _ = run(engine, given)
    with pytest.raises(ImpossibleEvent, match=message):
        engine.handle(state, event)


# -- eject ----------------------------------------------------------------------------------------


def test_an_ejected_mouse_gets_an_ejected_assignment_and_no_more_sessions() -> None:
    engine = core()
    ejection = eject()
    state, out = run(engine, [enrolled("M1"), *session("M1", "s-1", GOOD), ejection])
    assignment = out[-1]
    assert isinstance(assignment, AssignmentIssued)
    assert (assignment.reason, assignment.parameters, assignment.stage) == (
        EJECTED,
        {},
        "s2_training",
    )
    assert assignment.session_number == 2 and assignment.causation_id == ejection.event_id
    assert "end of experiment" in assignment.reason_detail
    assert state.ejected
    later = session("M1", "s-2", GOOD, stage="s2_training", day=1)
    for event, what in ((later[0], "session 's-2'"), (later[1], "trial of session 's-2'")):
        with pytest.raises(ImpossibleEvent, match=f"{what} for mouse 'M1', which was ejected"):
            engine.handle(state, event)
    with pytest.raises(ImpossibleEvent, match=r"end of session 's-2'.*ejected"):
        engine.handle(state, later[-1])


def test_the_session_in_progress_at_an_ejection_ends_without_a_decision() -> None:
    engine = core()
    running = session("M1", "s-1", GOOD)
    state, _ = run(engine, [enrolled("M1"), running[0], *running[1:10], eject()])
    for event in running[10:-1]:
        state, out = engine.handle(state, event)
        assert out == []
    state, out = engine.handle(state, running[-1])
    assert out == [] and state.open_session is None and state.session_total == 1


@pytest.mark.parametrize(
    "event",
    [
        eject(day=1),
        adjust(max_trials=300, day=1),
        MouseMigrated(
            event_id=next_id(),
            mouse_id="M1",
            occurred_at=T0,
            curriculum_name="basic-shaping",
            from_version="0.1.0",
            to_version="0.1.0",
            from_stage="s1_habituation",
            to_stage="s1_habituation",
        ),
    ],
)
def test_nothing_but_an_enrolment_changes_an_ejected_mouse(event: Event) -> None:
    engine = core()
    state, _ = run(engine, [enrolled("M1"), eject()])
    with pytest.raises(ImpossibleEvent, match="ejected"):
        engine.handle(state, event)


def test_an_ejected_mouse_may_be_enrolled_again_and_starts_over() -> None:
    engine = core()
    given = [enrolled("M1"), adjust(max_trials=250), *session("M1", "s-1", GOOD), eject()]
    again = enrolled("M1", start_stage="s2_training")
    state, out = run(engine, [*given, again])
    assignment = out[-1]
    assert isinstance(assignment, AssignmentIssued)
    assert (assignment.reason, assignment.stage, assignment.session_number) == (
        "enrolled",
        "s2_training",
        2,
    )
    assert assignment.adjustments == {} and assignment.parameters["max_trials"] == 300
    assert "again after an ejection" in assignment.reason_detail
    assert not state.ejected and state.adjustments == {} and state.session_total == 1
    _, out = run(engine, [*given, again, *session("M1", "s-2", GOOD, stage="s2_training", day=1)])
    assert decisions(out)[-1].from_stage == "s2_training"


def test_an_enrolled_mouse_still_cannot_be_enrolled_twice() -> None:
    engine = core()
    state, _ = run(engine, [enrolled("M1")])
    with pytest.raises(ImpossibleEvent, match="already enrolled"):
        engine.handle(state, enrolled("M1"))


# -- adjustments ----------------------------------------------------------------------------------


def test_an_adjustment_issues_the_adjusted_parameters_at_once() -> None:
    state, out = run(core(), [enrolled("M1"), adjust(max_trials=150, session_minutes=30)])
    assignment = out[-1]
    assert isinstance(assignment, AssignmentIssued)
    assert assignment.reason == "adjusted" and assignment.stage == "s1_habituation"
    assert assignment.adjustments == {"max_trials": 150, "session_minutes": 30}
    assert assignment.parameters["max_trials"] == 150
    assert assignment.parameters["session_minutes"] == 30
    assert assignment.parameters["reward_volume_ul"] == 4.0  # the rest is the stage's
    assert "max_trials=150" in assignment.reason_detail
    assert state.adjustments == {"max_trials": 150, "session_minutes": 30}


def test_adjustments_apply_to_every_later_assignment_until_cleared() -> None:
    engine = core()
    given = [enrolled("M1"), adjust(max_trials=150)]
    _, out = run(engine, given + session("M1", "s-1", GOOD))
    after_decision = out[-1]
    assert isinstance(after_decision, AssignmentIssued)
    assert (after_decision.reason, after_decision.stage) == ("progress", "s2_training")
    assert after_decision.parameters["max_trials"] == 150  # s2's own is 300
    assert after_decision.adjustments == {"max_trials": 150}

    cleared = adjust(max_trials=None, day=1.5)
    state, out = run(engine, given + session("M1", "s-1", GOOD) + [cleared])
    assert out[-1].parameters["max_trials"] == 300  # type: ignore[attr-defined]
    assert out[-1].adjustments == {} and state.adjustments == {}  # type: ignore[attr-defined]
    _, out = run(
        engine,
        given
        + session("M1", "s-1", GOOD)
        + [cleared]
        + session("M1", "s-2", trials(10), stage="s2_training", day=2),
    )
    assert out[-1].parameters["max_trials"] == 300  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_trials": 5000}, "max_trials = 5000 is outside the allowed >= 100 and <= 1000"),
        ({"difficulty": 0.1}, "difficulty is not adjustable at s1_habituation"),
        ({"max_trials": None}, "no adjustment of max_trials to clear \\(adjusted: none\\)"),
        ({}, "without any adjustment"),
    ],
)
def test_an_adjustment_the_curriculum_does_not_allow_is_impossible(
    values: dict[str, ParamValue], message: str
) -> None:
    engine = core()
    state, _ = run(engine, [enrolled("M1")])
    with pytest.raises(ImpossibleEvent, match=message):
        engine.handle(state, adjust(**values))  # type: ignore[arg-type]


def test_an_override_keeps_the_adjustments() -> None:
    _, out = run(core(), [enrolled("M1"), adjust(max_trials=150), override("s3_full_task")])
    assert out[-1].parameters["max_trials"] == 150  # type: ignore[attr-defined]
    assert out[-1].adjustments == {"max_trials": 150}  # type: ignore[attr-defined]


# -- evidence and warnings ------------------------------------------------------------------------


def test_the_assignment_after_a_session_carries_the_evidence_and_metrics() -> None:
    _, out = run(core(), [enrolled("M1"), *session("M1", "s-1", GOOD)])
    transition, assignment = decisions(out)[-1], out[-1]
    assert isinstance(assignment, AssignmentIssued)
    assert assignment.causation_id == transition.event_id
    assert assignment.evidence == transition.rule_evaluations
    assert assignment.evidence[0].observations[0].observed == 1.0
    assert assignment.metrics == transition.metrics
    assert assignment.warnings == []


RISK = RuleEvaluation(
    rule="untrainable_risk",
    description="Still in training after 30 sessions: untrainable at 40.",
    decision="warn",
    to_stage="s1_habituation",
    verdict=True,
    observations=[
        Observation(
            metric="sessions_at_stage", observed=31.0, comparator=">=", threshold=30, passed=True
        )
    ],
)


class _WarningCurriculum:
    """The shipped basic-shaping engine whose every evaluation also raised a warning rule and
    reported a metric (as a curriculum with warning rules and ``report`` metrics does)."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def evaluate(self, stage: str, metrics: MetricSource, current: object = None) -> Evaluation:
        evaluation = self._inner.evaluate(stage, metrics, current)  # type: ignore[attr-defined]
        return replace(evaluation, warnings=[RISK], metrics={"accuracy": 0.5, "bias": None})


def warning_core() -> TrainingCore:
    inner = _catalog().get("basic-shaping")
    return TrainingCore(CurriculumCatalog([_WarningCurriculum(inner)]))  # type: ignore[list-item]


def test_each_warning_becomes_an_event_and_travels_with_the_assignment() -> None:
    ending = session("M1", "s-1", trials(10))
    _, out = run(warning_core(), [enrolled("M1"), *ending])
    transition, assignment = decisions(out)[-1], out[-1]
    [warning] = [e for e in out if isinstance(e, TrainingWarning)]
    assert (warning.kind, warning.message, warning.stage) == (
        "untrainable_risk",
        RISK.description,
        "s1_habituation",
    )
    assert warning.evidence == [RISK] and warning.causation_id == transition.event_id
    assert warning.session_id == "s-1" and warning.rig_id == "rig-1"
    assert isinstance(assignment, AssignmentIssued)
    assert assignment.warnings == [RISK.description]
    assert assignment.metrics == {"accuracy": 0.5, "bias": None} == transition.metrics


def test_warnings_go_to_the_decisions_topic_with_the_same_ids_when_reprocessed() -> None:
    step = ProcessorStep(warning_core(), default_codec())
    codec = default_codec()
    inputs = [enrolled("M9"), *session("M9", "s-1", trials(10))]
    routed: list[list[tuple[str, str, str]]] = []
    for _ in range(2):  # processing the same log again (a replay) gives the same outputs
        state = None
        outs: list[tuple[str, str, str]] = []
        for offset, event in enumerate(inputs):
            result = step.process(
                state, encode_key("M9"), codec.encode(event), "shaping.events", 0, offset
            )
            state = result.state or state
            outs.extend(
                (o.topic_kind, o.event.event_type, o.event.event_id) for o in result.outputs
            )
        routed.append(outs)
    assert routed[0] == routed[1]
    kinds = {event_type: kind for kind, event_type, _ in routed[0]}
    assert kinds == {
        "AssignmentIssued": "assignments",
        "StageTransitioned": "decisions",
        "TrainingWarning": "decisions",
        # The accepted inputs, republished for the projector (trials are not).
        "MouseEnrolled": "accepted",
        "SessionStarted": "accepted",
        "SessionEnded": "accepted",
    }


def test_the_processor_accepts_interventions_and_dead_letters_refusals() -> None:
    step = ProcessorStep(core(), default_codec())
    codec = default_codec()
    state = step.process(
        None, encode_key("M1"), codec.encode(enrolled("M1")), "shaping.events", 0, 0
    ).state
    bad = override("s9")
    rejected = step.process(state, encode_key("M1"), codec.encode(bad), "shaping.events", 0, 1)
    [letter] = rejected.outputs
    assert isinstance(letter.event, EventRejected) and letter.topic_kind == "dead_letter"
    assert letter.event.error_kind == "impossible" and "no stage 's9'" in letter.event.reason
    assert letter.event.causation_id == bad.event_id
    good = step.process(
        state, encode_key("M1"), codec.encode(override("s2_training")), "shaping.events", 0, 2
    )
    assert [o.topic_kind for o in good.outputs] == ["accepted", "assignments"]


# -- redelivery and replay ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event", [override("s3_full_task"), eject(), adjust(max_trials=150)], ids=str
)
def test_a_redelivered_intervention_changes_nothing(event: Event) -> None:
    engine = core()
    state, _ = run(engine, [enrolled("M1"), event])
    again, out = engine.handle(state, event)
    assert out == [] and again == state


INTERVENE = st.one_of(
    st.builds(lambda s: override(s, day=0), st.sampled_from(["s1_habituation", "s3_full_task"])),
    st.builds(lambda: eject(day=0)),
    st.builds(lambda v: adjust(max_trials=v, day=0), st.sampled_from([None, 120, 700, 5000])),
    st.builds(lambda: enrolled("M1")),
)


@st.composite
def stories(draw: st.DrawFn) -> list[Event]:
    """Sessions with interventions between and inside them, some of them redelivered."""
    events: list[Event] = [enrolled("M1")]
    for n in range(draw(st.integers(1, 5))):
        if draw(st.booleans()):
            events.append(draw(INTERVENE))
        stage = draw(st.sampled_from(["s1_habituation", "s2_training", "s3_full_task"]))
        outcomes = draw(st.lists(st.sampled_from(["correct", "incorrect"]), max_size=220))
        block = session("M1", f"s-{n}", outcomes, stage=stage, day=n)
        if draw(st.booleans()):
            block.insert(draw(st.integers(1, len(block) - 1)), draw(INTERVENE))
        events.extend(block)
    for _ in range(draw(st.integers(0, 4))):
        original = draw(st.integers(0, len(events) - 1))
        events.insert(draw(st.integers(original + 1, len(events))), events[original])
    return events


@settings(max_examples=60, deadline=None)
@given(stories())
def test_interventions_keep_the_core_a_fold_and_its_promises(inputs: list[Event]) -> None:
    engine = core()
    state = initial_state("M1")
    log: list[Event] = []
    emitted: list[Event] = []
    adjustments: dict[str, ParamValue] = {}
    for event in inputs:
        state = decode_state(encode_state(state))
        was_ejected = state.ejected
        try:
            state, outputs = engine.handle(state, event)
        except ImpossibleEvent:
            continue
        log.append(event)
        log.extend(outputs)
        emitted.extend(outputs)
        if isinstance(event, ParametersAdjusted) and outputs:
            for key, value in event.adjustments.items():
                if value is None:
                    adjustments.pop(key, None)
                else:
                    adjustments[key] = value
        if event.event_type == "MouseEnrolled" and outputs:
            adjustments = {}
        for assignment in assignments(outputs):
            if was_ejected and assignment.reason != "enrolled":
                raise AssertionError(f"an ejected mouse got {assignment.reason}")
            if assignment.reason == EJECTED:
                continue
            # Every assignment applies (and lists) the adjustments in force.
            assert assignment.adjustments == adjustments
            for key, value in adjustments.items():
                assert assignment.parameters[key] == value
        assert state.adjustments == adjustments
    # The state is a fold of the log, and replaying the inputs reproduces every output id.
    assert fold(initial_state("M1"), log) == state
    replayed_state, replayed = initial_state("M1"), []
    for event in inputs:
        try:
            replayed_state, out = core().handle(replayed_state, event)
        except ImpossibleEvent:
            continue
        replayed.extend(out)
    assert [e.event_id for e in replayed] == [e.event_id for e in emitted]


# -- projection ---------------------------------------------------------------------------------


def lab_story() -> list[Event]:
    """One mouse through every intervention, a refused one and a warning, then a refused
    session after its ejection."""
    return [
        enrolled("M1"),
        adjust(max_trials=150, day=0.1),
        *session("M1", "s-1", trials(10)),
        override("s3_full_task", from_stage="s1_habituation", day=0.6),
        override("s9", day=0.7),
        eject(day=0.8),
        *session("M1", "s-2", GOOD, stage="s3_full_task", day=1)[:2],
    ]


def run_lab(store: SqlProjectionStore) -> EmbeddedRuntime:
    runtime = embedded_runtime(store, catalog=warning_core().catalog)
    runtime.publish(lab_story())
    return runtime


def test_the_projection_audits_interventions_and_keeps_warnings(tmp_path: Path) -> None:
    store = sql_store(f"sqlite:///{tmp_path / 'p.db'}")
    run_lab(store)
    snap = store.snapshot()
    rows = sorted(snap["interventions"], key=lambda r: str(r["requested_at"]))
    assert [(r["kind"], r["requested_by"], r["to_stage"], r["assigned_stage"]) for r in rows] == [
        ("adjust", "ada", None, "s1_habituation"),
        ("override", "ada", "s3_full_task", "s3_full_task"),
        ("override", "ada", "s9", None),
        ("eject", "ada", None, "s3_full_task"),
    ]
    assert rows[0]["adjustments_json"] == '{"max_trials": 150}'
    assert rows[1]["from_stage"] == "s1_habituation" and rows[1]["refused_reason"] is None
    assert "no stage 's9'" in str(rows[2]["refused_reason"]) and rows[2]["assignment_id"] is None
    assert all(r["reason"] and (r["honoured_at"] or r["refused_at"]) for r in rows)

    [warning] = snap["training_warnings"]
    assert (warning["kind"], warning["stage"], warning["session_id"]) == (
        "untrainable_risk",
        "s1_habituation",
        "s-1",
    )
    decision = next(r for r in snap["decision_log"] if r["session_id"] == "s-1")
    assert warning["decision_id"] == decision["event_id"]

    [status] = snap["mouse_status"]
    assert (status["last_reason"], status["stage"]) == ("ejected", "s3_full_task")
    [adjustments] = snap["mouse_adjustments"]
    assert adjustments["adjustments_json"] == "{}"  # an ejected mouse runs nothing
    refused = [r["reason"] for r in snap["rejected_events"]]
    assert any("which was ejected" in reason for reason in refused)


def test_current_adjustments_follow_the_newest_assignment(tmp_path: Path) -> None:
    store = sql_store(f"sqlite:///{tmp_path / 'p.db'}")
    runtime = embedded_runtime(store, catalog=_catalog())
    runtime.publish([enrolled("M1"), adjust(max_trials=150), *session("M1", "s-1", GOOD)])
    [row] = store.snapshot()["mouse_adjustments"]
    assert (row["adjustments_json"], row["stage"], row["session_number"]) == (
        '{"max_trials": 150}',
        "s2_training",
        2,
    )
    runtime.publish([adjust(max_trials=None, day=2)])
    [row] = store.snapshot()["mouse_adjustments"]
    assert row["adjustments_json"] == "{}"


@settings(max_examples=40, deadline=None)
@given(order=st.randoms(use_true_random=False))
def test_the_new_tables_do_not_depend_on_how_topics_interleave(order: Random) -> None:
    reference = sql_store("sqlite://")
    runtime = run_lab(reference)
    messages = _messages(runtime)
    # Deliver the topics in a random interleaving, each topic in its own order (as Kafka does).
    queues: dict[str, list[ProjectedMessage]] = {}
    for message in messages:
        queues.setdefault(message.topic, []).append(message)
    labels = [topic for topic, queue in queues.items() for _ in queue]
    order.shuffle(labels)
    cursors = {topic: iter(queue) for topic, queue in queues.items()}
    shuffled = [next(cursors[topic]) for topic in labels]
    other = sql_store("sqlite://")
    cut = order.randint(1, len(shuffled) - 1)
    other.apply_batch("projector", shuffled[:cut])
    other.apply_batch("projector", shuffled[cut:])
    other.apply_batch("projector", shuffled)  # a redelivered batch changes nothing
    assert other.snapshot() == reference.snapshot()


def test_a_refused_copy_of_an_accepted_request_leaves_its_audit_row_alone(
    tmp_path: Path,
) -> None:
    # Found by the lab model: a corrupted copy of an accepted ejection (same event id, other
    # bytes) was dead-lettered, and its refusal overwrote the accepted request's row.
    store = sql_store(f"sqlite:///{tmp_path / 'p.db'}")
    runtime = embedded_runtime(store, catalog=_catalog())
    accepted = eject(day=0.5)
    runtime.publish([enrolled("M1"), enrolled("M2"), accepted])
    [before] = store.snapshot()["interventions"]
    assert before["refused_reason"] is None
    codec = default_codec()
    reused = accepted.model_copy(update={"reason": "someone else's request"})
    elsewhere = accepted.model_copy(update={"mouse_id": "M2"})  # its key still says M1
    too_late = accepted.model_copy(update={"occurred_at": T0 - timedelta(days=400)})
    for copy in (reused, elsewhere, too_late):
        runtime.publish_raw(encode_key("M1"), codec.encode(copy))
    snap = store.snapshot()
    assert len(snap["rejected_events"]) == 3, snap["rejected_events"]
    assert snap["interventions"] == [before]
    # Whatever order the projector sees the topics in, the accepted request's row wins.
    messages = runtime.messages()
    for order in (messages, messages[::-1]):
        other = sql_store("sqlite://")
        for message in order:
            other.apply_batch("projector", [message])
        assert other.snapshot()["interventions"] == [before]


def test_a_refused_request_whose_id_is_later_used_by_an_accepted_one_is_not_marked_refused(
    tmp_path: Path,
) -> None:
    store = sql_store(f"sqlite:///{tmp_path / 'p.db'}")
    runtime = embedded_runtime(store, catalog=_catalog())
    refused = eject(mouse="M9", day=0.5)  # no such mouse yet
    runtime.publish([enrolled("M1"), refused])
    [row] = store.snapshot()["interventions"]
    assert row["refused_reason"] is not None
    runtime.publish([enrolled("M9"), refused])
    [row] = store.snapshot()["interventions"]
    assert (row["refused_reason"], row["refused_at"]) == (None, None)
    assert row["honoured_at"] is not None


def _messages(runtime: EmbeddedRuntime) -> list[ProjectedMessage]:
    return runtime.messages()


# -- the operator's commands (checks made before anything is sent) -------------------------------


@pytest.fixture(scope="module")
def status_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Status tables with M1 at s2_training and M2 ejected."""
    url = f"sqlite:///{tmp_path_factory.mktemp('interventions') / 'status.sqlite'}"
    store = sql_store(url)
    runtime = embedded_runtime(store, catalog=_catalog())
    runtime.publish(
        [enrolled("M1"), *session("M1", "s-1", GOOD), enrolled("M2"), eject(mouse="M2")]
    )
    store.close()
    return url


def shaping(*args: str) -> tuple[int, str]:
    """Runs ``shaping ARGS`` in-process; a broker that does not exist is never reached."""
    env = {"COLUMNS": "200", "SHAPING_BOOTSTRAP": "127.0.0.1:9", "SHAPING_OPERATOR": "ada"}
    result = CliRunner().invoke(app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["override", "M1", "--stage", "s3_full_tsk"], "did you mean s3_full_task"),
        (
            ["override", "M3", "--stage", "s3_full_task"],
            "no mouse 'M3'.*did you mean M[12] or M[12]",
        ),
        (["override", "M2", "--stage", "s3_full_task"], "M2 is ejected"),
        (["eject", "M2"], "M2 is ejected"),
        (
            ["adjust", "M1", "--set", "max_trails=300"],
            "max_trails is not adjustable at s2_training.*did you mean max_trials",
        ),
        (["adjust", "M1", "--set", "max_trials=5000"], "outside the allowed >= 100 and <= 1000"),
        (["adjust", "M1", "--set", "max_trials"], "write NAME=VALUE"),
        (["adjust", "M1"], "nothing to adjust"),
        (["adjust", "M1", "--set", "max_trials=300", "--clear", "max_trials"], "both set and"),
    ],
)
def test_the_commands_refuse_what_cannot_work_with_a_suggestion(
    status_db: str, args: list[str], message: str
) -> None:
    code, out = shaping(*args, "--reason", "a test", "--db-url", status_db)
    assert code == 2, out
    assert re.search(message, " ".join(out.split())), out
    assert "Traceback" not in out


def test_an_intervention_needs_a_reason(status_db: str) -> None:
    code, out = shaping("eject", "M1", "--reason", "  ", "--db-url", status_db)
    assert code == 2 and "give a --reason" in out
    code, out = shaping("eject", "M1", "--db-url", status_db)
    assert code == 2 and "--reason" in out


def test_an_unreachable_broker_is_a_clear_error(status_db: str) -> None:
    code, out = shaping(
        "adjust",
        "M1",
        "--set",
        "max_trials=300",
        "--reason",
        "r",
        "--db-url",
        status_db,
        "--wait",
        "0",
    )
    assert code == 1 and "no Kafka broker answered at 127.0.0.1:9" in out, out


def test_the_use_cases_raise_what_the_commands_turn_into_exit_statuses(status_db: str) -> None:
    """A request that cannot work is an InterventionError (the command exits with 2); a
    command that does not reach Kafka a DeliveryError (1); warnings go to the caller."""
    settings = Settings(bootstrap="127.0.0.1:9", db_url=status_db)
    codec = default_codec()
    with pytest.raises(InterventionError, match="M2 is ejected") as refused:
        request_ejection(settings, "M2", "a test", by="ada", wait_s=0, codec=codec)
    assert not isinstance(refused.value, DeliveryError)
    with pytest.raises(DeliveryError, match=r"no Kafka broker answered at 127\.0\.0\.1:9"):
        request_adjustment(
            settings, "M1", ["max_trials=300"], [], "a test", by="ada", wait_s=0, codec=codec
        )
    warnings: list[str] = []
    unreadable = settings.updated(db_url=f"sqlite:///{REPO / 'no-such-dir' / 'status.sqlite'}")
    with pytest.raises(InterventionError, match="give a --reason"):
        request_ejection(unreadable, "M1", " ", by="ada", warn=warnings.append, codec=codec)
    assert warnings == [
        f"warning: cannot read the status tables at {unreadable.db_url}; sending unchecked "
        "(the processor judges it)"
    ]
    sent = Delivery(eject(mouse="M1"), "ejection", "shaping.events[1]@7", None, wait_s=0)
    assert sent.report() == [
        f"sent the ejection of M1 (event {sent.event.event_id}, shaping.events[1]@7); no answer "
        "from the processor yet: `shaping history M1` shows it"
    ]


def test_history_shows_interventions_and_status_the_ejection(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'status.sqlite'}"
    store = sql_store(url)
    runtime = embedded_runtime(store, catalog=warning_core().catalog)
    runtime.publish(lab_story())
    store.close()
    code, out = shaping("history", "M1", "--db-url", url)
    assert code == 0, out
    text = " ".join(out.split())
    lines = [
        "warning untrainable_risk (at s1_habituation)",  # its session ended before the adjust
        "adjust max_trials=150",
        "override s1_habituation -> s3_full_task",
        "override -> s9",
        "eject",
    ]
    positions = [text.find(line) for line in lines]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), text
    assert "refused: basic-shaping 0.1.0 has no stage 's9'" in text
    assert "honoured: next stage s3_full_task" in text
    assert "honoured: no more sessions" in text
    code, out = shaping("status", "--db-url", url)
    assert code == 0 and re.search(r"M1 .*s3_full_task.*ejected", out), out


def stage_only_curriculum() -> TrainingCore:
    """basic-shaping where only s1_habituation lets a trainer adjust max_trials."""
    data = yaml.safe_load((REPO / "curricula" / "basic-shaping.yaml").read_text())
    limits = data.pop("adjustable")["max_trials"]
    data["stages"][0]["adjustable"] = {"max_trials": limits}
    return TrainingCore(CurriculumCatalog([compile_curriculum(data)]))


def test_an_adjustment_applies_only_where_the_stage_allows_it_and_is_kept() -> None:
    engine = stage_only_curriculum()
    given = [enrolled("M1"), adjust(max_trials=150), *session("M1", "s-1", GOOD)]
    state, out = run(engine, given)
    at_s2 = out[-1]
    assert isinstance(at_s2, AssignmentIssued) and at_s2.stage == "s2_training"
    assert at_s2.adjustments == {} and at_s2.parameters["max_trials"] == 300
    assert "Not allowed at s2_training, so not applied: max_trials." in at_s2.reason_detail
    assert state.adjustments == {"max_trials": 150}  # kept for stages that allow it
    with pytest.raises(ImpossibleEvent, match="max_trials is not adjustable at s2_training"):
        engine.handle(state, adjust(max_trials=200, day=1))
    _, out = run(engine, [*given, override("s1_habituation", day=1)])
    assert out[-1].adjustments == {"max_trials": 150}  # type: ignore[attr-defined]
    assert out[-1].parameters["max_trials"] == 150  # type: ignore[attr-defined]


def test_a_migration_keeps_the_adjustments() -> None:
    migrated = MouseMigrated(
        event_id=next_id(),
        mouse_id="M1",
        occurred_at=T0 + timedelta(days=1),
        curriculum_name="basic-shaping",
        from_version="0.1.0",
        to_version="0.1.0",
        from_stage="s1_habituation",
        to_stage="s1_habituation",
    )
    _, out = run(core(), [enrolled("M1"), adjust(max_trials=150), migrated])
    assert out[-1].reason == "migrated"  # type: ignore[attr-defined]
    assert out[-1].parameters["max_trials"] == 150  # type: ignore[attr-defined]
    assert out[-1].adjustments == {"max_trials": 150}  # type: ignore[attr-defined]
