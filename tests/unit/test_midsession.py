"""Decisions during a session: rules marked ``evaluate: trial`` are judged after every trial
(curricula/reach-autopilot.yaml), and a session judged so is not judged again at its end."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    SessionEnded,
    SessionStarted,
    StageTransitioned,
    TrialCompleted,
)
from shaping.services.curricula.catalog import default_catalog
from shaping.services.curricula.errors import CurriculumInvalid
from shaping.services.curricula.loader import load_curriculum
from shaping.services.domain import MouseState, TrainingCore, fold, initial_state
from shaping.services.domain.judge import MID_SESSION
from tests.support.story import T0, enrolled, next_id

CURRICULUM = "reach-autopilot"
REPO = Path(__file__).resolve().parents[2]


def start(session_id: str, stage: str, day: int = 0) -> SessionStarted:
    return SessionStarted(
        event_id=next_id(),
        mouse_id="M1",
        rig_id="rig-1",
        session_id=session_id,
        occurred_at=T0 + timedelta(days=day),
        stage=stage,
        curriculum_name=CURRICULUM,
        curriculum_version="1.0.0",
        parameters={},
    )


def trial(session_id: str, index: int, outcome: str = "correct", day: int = 0) -> TrialCompleted:
    return TrialCompleted(
        event_id=next_id(),
        mouse_id="M1",
        rig_id="rig-1",
        session_id=session_id,
        occurred_at=T0 + timedelta(days=day, seconds=10 * (index + 1)),
        trial_index=index,
        outcome=outcome,  # type: ignore[arg-type]
    )


def end(session_id: str, n_trials: int, day: int = 0) -> SessionEnded:
    return SessionEnded(
        event_id=next_id(),
        mouse_id="M1",
        rig_id="rig-1",
        session_id=session_id,
        occurred_at=T0 + timedelta(days=day, seconds=10 * (n_trials + 1)),
        n_trials=n_trials,
        end_reason="time_limit",
        duration_s=10.0 * (n_trials + 1),
    )


def session(session_id: str, stage: str, outcomes: list[str], day: int = 0) -> list[Event]:
    return [
        start(session_id, stage, day),
        *(trial(session_id, i, o, day) for i, o in enumerate(outcomes)),
        end(session_id, len(outcomes), day),
    ]


def steps(
    core: TrainingCore, events: list[Event], state: MouseState | None = None
) -> tuple[MouseState, list[list[Event]]]:
    """Handles events in order; the outputs of each, one list per input."""
    state = state or initial_state("M1")
    outputs = []
    for event in events:
        state, out = core.handle(state, event)
        outputs.append(out)
    return state, outputs


@pytest.fixture(scope="module")
def core() -> TrainingCore:
    return TrainingCore(default_catalog())


def enrolled_state(core: TrainingCore) -> MouseState:
    state, _ = core.handle(initial_state("M1"), enrolled("M1", curriculum_name=CURRICULUM))
    assert state.stage == "free_reaching"
    return state


def test_the_decision_comes_after_the_threshold_trial_and_not_before(core: TrainingCore) -> None:
    state = enrolled_state(core)
    events = session("s-1", "free_reaching", ["correct", "incorrect"] * 30)  # 60 reaches
    state, outputs = steps(core, events, state)
    trial_outputs = outputs[1:-1]
    # finished_trials >= 30: the 30th reach is trial index 29
    assert all(out == [] for out in trial_outputs[:29])
    decision, assignment = trial_outputs[29]
    assert all(out == [] for out in trial_outputs[30:])
    assert isinstance(decision, StageTransitioned) and isinstance(assignment, AssignmentIssued)
    cause = events[30]
    assert isinstance(cause, TrialCompleted) and cause.trial_index == 29
    assert decision.causation_id == cause.event_id
    assert (decision.from_stage, decision.to_stage, decision.decision, decision.rule) == (
        "free_reaching",
        "cued_reaching",
        "progress",
        "enough_reaches",
    )
    assert decision.session_id == "s-1"
    assert decision.session_summary.n_trials == 30
    assert decision.session_summary.end_reason == MID_SESSION
    [evidence] = decision.rule_evaluations
    assert evidence.verdict and evidence.observations[0].observed == 30.0
    # The assignment names the session in progress (a rig applies it now) and is the next
    # session's too.
    assert assignment.stage == "cued_reaching"
    assert assignment.parameters["spout_position_left"] == 2
    assert assignment.session_id == "s-1"
    assert assignment.session_number == 2
    assert assignment.causation_id == decision.event_id
    assert assignment.reason == "progress"
    assert assignment.reason_detail.startswith("mid-session, after trial 30: progress")
    assert assignment.evidence == decision.rule_evaluations


def test_no_second_decision_in_the_session_nor_at_its_end(core: TrainingCore) -> None:
    state = enrolled_state(core)
    # All correct: cued_reaching's own per-trial rule would hold a few trials after the move;
    # the session is judged once.
    state, outputs = steps(core, session("s-1", "free_reaching", ["correct"] * 120), state)
    emitted = [e for out in outputs for e in out]
    assert [type(e).__name__ for e in emitted] == ["StageTransitioned", "AssignmentIssued"]
    assert outputs[-1] == []  # the end: nothing more
    assert state.stage == "cued_reaching"
    assert state.sessions_at_stage == 0
    assert state.session_total == 1
    assert state.open_session is None and state.last_closed_session_id == "s-1"
    # recorded at the stage it started at, with every trial, judged by the mid-session decision
    record = state.history[-1]
    assert record.stage == "free_reaching"
    assert record.metrics["session_trials"] == 120.0
    judged = state.judged[-1]
    assert (judged.stage, judged.to_stage, judged.decision) == (
        "free_reaching",
        "cued_reaching",
        "progress",
    )
    assert judged.decision_id == emitted[0].event_id
    assert judged.operator_stage is None
    # The next session runs the new stage; its per-trial rule may move the mouse in it.
    state, outputs = steps(core, session("s-2", "cued_reaching", ["correct"] * 30, day=1), state)
    emitted = [e for out in outputs for e in out]
    decision = emitted[0]
    assert isinstance(decision, StageTransitioned)
    assert (decision.from_stage, decision.to_stage) == ("cued_reaching", "full_task")
    # finished_trials >= 20 in this session: the 20th trial
    assert decision.session_summary.n_trials == 20
    assert decision.sessions_at_stage == 1 and decision.session_total == 2
    assert state.stage == "full_task" and state.session_total == 2


def test_a_session_no_per_trial_rule_held_is_judged_at_its_end(core: TrainingCore) -> None:
    state = enrolled_state(core)
    state, outputs = steps(core, session("s-1", "free_reaching", ["correct"] * 29), state)
    assert all(out == [] for out in outputs[:-1])
    decision, assignment = outputs[-1]
    assert isinstance(decision, StageTransitioned) and isinstance(assignment, AssignmentIssued)
    assert decision.decision == "stay" and decision.session_summary.end_reason == "time_limit"
    assert decision.rule_evaluations[0].rule == "enough_reaches"
    assert not decision.rule_evaluations[0].verdict
    assert assignment.session_id is None and assignment.session_number == 2
    assert state.stage == "free_reaching" and state.sessions_at_stage == 1


def test_trial_windows_read_earlier_sessions_and_the_trials_so_far(core: TrainingCore) -> None:
    state = enrolled_state(core)
    state, _ = steps(core, session("s-1", "free_reaching", ["correct"] * 45), state)
    assert state.stage == "cued_reaching"
    # The window of the last 50 reaches spans the first session (45 correct) and this one
    # (15 incorrect, then correct): 35 of 50 correct until this session alone fills the window,
    # then 0.8 at its 55th trial (40 of the last 50), not before.
    outcomes = ["incorrect"] * 15 + ["correct"] * 45
    state, outputs = steps(core, session("s-2", "cued_reaching", outcomes, day=1), state)
    decided = [i for i, out in enumerate(outputs[1:-1]) if out]
    assert decided == [54]
    decision = outputs[1 + 54][0]
    assert isinstance(decision, StageTransitioned)
    observed = {o.metric: o.observed for o in decision.rule_evaluations[0].observations}
    assert observed["accuracy(window=50)"] == 0.8
    assert observed["finished_trials"] == 55.0
    assert state.stage == "full_task"


def test_a_redelivered_threshold_trial_or_end_sends_the_same_decision(core: TrainingCore) -> None:
    state = enrolled_state(core)
    events = session("s-1", "free_reaching", ["correct"] * 50)
    after_threshold, outputs = steps(core, events[:31], state)
    first = outputs[-1]
    assert [type(e).__name__ for e in first] == ["StageTransitioned", "AssignmentIssued"]
    again, resent = core.handle(after_threshold, events[30])
    assert again == after_threshold
    assert [e.event_id for e in resent] == [e.event_id for e in first]
    # and a later trial redelivered sends nothing
    assert core.handle(after_threshold, events[29])[1] == []
    ended, _ = steps(core, events[31:], after_threshold)
    assert core.handle(ended, events[-1])[1] == [ended.last_decision, ended.last_assignment]
    assert ended.last_decision is not None
    assert ended.last_decision.event_id == first[0].event_id


def test_replay_gives_the_same_decisions_and_state(core: TrainingCore) -> None:
    inputs: list[Event] = [enrolled("M1", curriculum_name=CURRICULUM)]
    inputs += session("s-1", "free_reaching", ["correct", "correct", "incorrect"] * 20)
    inputs += session("s-2", "cued_reaching", ["correct"] * 60, day=1)
    inputs += session("s-3", "full_task", ["correct"] * 80, day=2)
    first, out_1 = steps(core, inputs)
    second, out_2 = steps(TrainingCore(default_catalog()), inputs)
    assert first == second
    assert [[e.model_dump() for e in o] for o in out_1] == [
        [e.model_dump() for e in o] for o in out_2
    ]
    # the log (inputs and outputs in order) folds to the same state
    log = [e for event, out in zip(inputs, out_1, strict=True) for e in (event, *out)]
    assert fold(initial_state("M1"), log) == first
    stages = [e.to_stage for o in out_1 for e in o if isinstance(e, StageTransitioned)]
    assert stages == ["cued_reaching", "full_task", "expert"]
    assert first.stage == "expert"


def test_a_mouse_ejected_during_the_session_is_not_moved_by_its_trials(
    core: TrainingCore,
) -> None:
    from shaping.schemas.events import MouseEjected

    state = enrolled_state(core)
    events = session("s-1", "free_reaching", ["correct"] * 50)
    state, _ = steps(core, events[:11], state)
    ejected = MouseEjected(
        event_id=next_id(),
        mouse_id="M1",
        occurred_at=T0 + timedelta(seconds=115),
        reason="health check",
        ejected_by="trainer",
    )
    state, _ = core.handle(state, ejected)
    state, outputs = steps(core, events[11:], state)
    assert not any(isinstance(e, StageTransitioned) for out in outputs for e in out)
    assert state.stage == "free_reaching"


def test_curricula_without_per_trial_rules_decide_nothing_on_trials(core: TrainingCore) -> None:
    from tests.support.story import session as basic_session
    from tests.support.story import trials

    state, _ = core.handle(initial_state("M1"), enrolled("M1"))
    events = basic_session("M1", "b-1", trials(correct=150))
    _, outputs = steps(core, events, state)
    assert all(out == [] for out in outputs[:-1])
    assert isinstance(outputs[-1][0], StageTransitioned)
    for curriculum in default_catalog():
        if curriculum.name == CURRICULUM:
            continue
        content = curriculum.content()  # type: ignore[attr-defined]
        for stage in content["stages"]:
            assert all("evaluate" not in rule for rule in stage.get("rules", []))
        assert not any(
            curriculum.evaluates_after_trials(s)  # type: ignore[attr-defined]
            for s in curriculum.stage_names  # type: ignore[attr-defined]
        )


BASE = """
name: t
version: 1.0.0
metrics:
  - accuracy
  - finished_trials
  - session_duration_s
  - {name: foraging_efficiency, kind: session, description: reported by the rig}
stages:
  - name: a
    rules:
      - name: r
        decision: progress
        to: b
        evaluate: EVALUATE
        trigger: TRIGGER
        when: WHEN
        description: d
  - name: b
    terminal: true
"""


def write(tmp_path: Path, evaluate: str, when: str, trigger: str = "auto") -> Path:
    path = tmp_path / "c.yaml"
    text = BASE.replace("EVALUATE", evaluate).replace("TRIGGER", trigger).replace("WHEN", when)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("evaluate", "when", "trigger", "message"),
    [
        ("trial", "foraging_efficiency >= 0.7", "auto", "reads 'foraging_efficiency'"),
        ("trial", "session_duration_s >= 600", "auto", "reads 'session_duration_s'"),
        ("trial", "finished_trials >= 10", "manual", "needs 'trigger: auto'"),
        ("sometimes", "finished_trials >= 10", "auto", "evaluate"),
    ],
)
def test_per_trial_rules_are_checked_at_load(
    tmp_path: Path, evaluate: str, when: str, trigger: str, message: str
) -> None:
    path = write(tmp_path, evaluate, when, trigger)
    with pytest.raises(CurriculumInvalid) as caught:
        load_curriculum(path)
    text = str(caught.value)
    assert message in text, text
    assert "c.yaml" in text


def test_a_per_trial_rule_on_trial_metrics_loads(tmp_path: Path) -> None:
    path = write(tmp_path, "trial", "finished_trials >= 10 and accuracy(window=20) >= 0.8")
    text = (
        path.read_text()
        .replace("  - session_duration_s\n", "")
        .replace(
            "  - {name: foraging_efficiency, kind: session, description: reported by the rig}\n", ""
        )
    )
    path.write_text(text)
    curriculum = load_curriculum(path)
    assert curriculum.evaluates_after_trials("a")
    assert not curriculum.evaluates_after_trials("b")
    # a change of evaluation time is a major change
    from shaping.services.curricula.diff import diff

    session_path = tmp_path / "s.yaml"
    session_path.write_text(text.replace("evaluate: trial", "evaluate: session"))
    found = diff(load_curriculum(session_path), curriculum)
    assert any("evaluate session -> trial" in str(c) for c in found.changes), found.changes


def test_the_processing_step_publishes_the_decision_after_the_trial(core: TrainingCore) -> None:
    """Bytes in, bytes out: the trial that decides is accepted, and its decision and assignment
    go to the decisions and assignments topics; the session's end then publishes only itself."""
    from shaping.schemas.codec import default_codec, encode_key
    from shaping.services.processor.step import ProcessorStep

    codec = default_codec()
    step = ProcessorStep(core, codec)
    inputs: list[Event] = [enrolled("M1", curriculum_name=CURRICULUM)]
    inputs += session("s-1", "free_reaching", ["correct"] * 35)
    state: MouseState | None = None
    kinds: list[list[str]] = []
    for offset, event in enumerate(inputs):
        result = step.process(state, encode_key("M1"), codec.encode(event), "t.events", 0, offset)
        assert result.outcome == "accepted", result
        state = result.state
        kinds.append([o.topic_kind for o in result.outputs])
    trial_kinds = kinds[2:-1]
    assert trial_kinds[29] == ["decisions", "assignments"]
    assert all(k == [] for i, k in enumerate(trial_kinds) if i != 29)
    assert kinds[-1] == ["accepted"]  # the SessionEnded, republished; no decision
    assert state is not None and state.stage == "cued_reaching"
