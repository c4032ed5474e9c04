"""An assignment issued during a session is applied at the next trial boundary: the reach task
on gpiozero mock pins starts over with the new stage's parameters, within the rig's limits.

The processor here is the training core in process: every event the rig stores in its outbox
is handled by the core (curricula/reach-autopilot.yaml), and the decisions and assignments it
emits land in the rig's cache as the follower would put them there, so the rig reads them at its
next trial boundary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shaping.rig.agent import RunOptions
from shaping.rig.bootstrap import rig_agent
from shaping.rig.config import SafetyLimits, ValveCalibration
from shaping.rig.link.store import RigStore
from shaping.rig.task.adaptation import TaskState
from shaping.rig.task.midsession import (
    FIRST_TRIAL_METRIC,
    RESTARTS_METRIC,
    Restart,
    issued_during,
    prepare,
)
from shaping.rig.task.parameters import ReachParameters
from shaping.rig.task.reach import ReachTask
from shaping.rig.task.recording import SessionRecorder
from shaping.rig.task.rewards import RewardPlan
from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    MouseEnrolled,
    SessionEnded,
    StageTransitioned,
    TrialCompleted,
)
from shaping.services.curricula.catalog import default_catalog
from shaping.services.domain import MouseState, TrainingCore, initial_state
from tests.support.reach_harness import Harness
from tests.support.rig import CODEC, START, FakeDisplay, config_in

pytestmark = pytest.mark.filterwarnings("ignore::gpiozero.exc.PinFactoryFallback")

CALIBRATED: dict[str, ValveCalibration] = {
    side: ValveCalibration(side, 1e-4) for side in ("left", "right")
}


class CoreInTheLoop(RigStore):
    """A rig store whose stored events are handled at once by the training core; what the core
    emits is cached as the rig's follower would cache it."""

    def __init__(self, path: Path, core: TrainingCore, state: MouseState) -> None:
        super().__init__(path, CODEC)
        self.core = core
        self.state = state
        self.emitted: list[tuple[int, Event]] = []  # (trials stored before it, event)
        self.trials_stored = 0

    def append(self, event: Event, topic: str) -> bool:
        added = super().append(event, topic)
        if isinstance(event, TrialCompleted):
            self.trials_stored += 1
        self.state, outputs = self.core.handle(self.state, event)
        for output in outputs:
            self.emitted.append((self.trials_stored, output))
            if isinstance(output, AssignmentIssued):
                self.save_assignment(output)
            elif isinstance(output, StageTransitioned):
                self.save_decision(output)
        return added


def enrolled(core: TrainingCore) -> tuple[MouseState, AssignmentIssued]:
    enrolment = MouseEnrolled(
        event_id="enrol-M001",
        mouse_id="M001",
        occurred_at=START,
        curriculum_name="reach-autopilot",
    )
    state, [first] = core.handle(initial_state("M001"), enrolment)
    assert isinstance(first, AssignmentIssued) and first.stage == "free_reaching"
    return state, first


def run_session(tmp_path: Path, safety: str = "") -> dict[str, Any]:
    core = TrainingCore(default_catalog())
    state, first = enrolled(core)
    config = config_in(tmp_path, mice=["M001"], extra=safety)
    store = CoreInTheLoop(config.store_path, core, state)
    store.save_assignment(first)
    display = FakeDisplay()
    agent = rig_agent(config, display, store=store)
    report = agent.run(RunOptions("M001", simulate=True, seed=7, start=START, offline=True))
    events = [CODEC.decode(row.value) for row in store.unsent(limit=100_000, max_bytes=1 << 40)]
    return {
        "report": report,
        "events": events,
        "trials": [e for e in events if isinstance(e, TrialCompleted)],
        "emitted": store.emitted,
        "store": store,
        "display": display,
    }


def test_the_reach_task_starts_over_with_the_new_stage_at_the_next_boundary(
    tmp_path: Path,
) -> None:
    ran = run_session(tmp_path)
    emitted = ran["emitted"]
    decisions = [(n, e) for n, e in emitted if isinstance(e, StageTransitioned)]
    assert decisions, "the simulated mouse never reached 40 reaches in its session"
    decided_after, decision = decisions[0]
    assert (decision.from_stage, decision.to_stage) == ("free_reaching", "cued_reaching")
    assert decision.session_summary.end_reason == "mid_session"
    trials: list[TrialCompleted] = ran["trials"]
    # Before the decision every trial ran free_reaching's parameters; the trial the core was
    # handling when it decided had already been published, the next ones run cued_reaching's.
    before, after = trials[:decided_after], trials[decided_after:]
    assert before and after
    assert all(t.trial_parameters["spout_position_left"] == 1 for t in before)
    assert all(t.trial_parameters["cue_duration_s"] == 10.0 for t in before)
    first_after = after[0]
    assert first_after.trial_parameters["spout_position_left"] == 2
    assert first_after.trial_parameters["spout_position_right"] == 2
    assert first_after.trial_parameters["cue_duration_s"] == 6.0
    # one session: trial numbers run on, the end says what happened
    assert [t.trial_index for t in trials] == list(range(len(trials)))
    report = ran["report"]
    ended: SessionEnded = report.ended
    assert ended.n_trials == len(trials)
    assert ended.metrics[RESTARTS_METRIC] == 1.0
    assert ended.metrics[FIRST_TRIAL_METRIC] == float(first_after.trial_index)
    # the session is not judged again at its end; the mouse is at the new stage
    assert len(decisions) == 1
    store: CoreInTheLoop = ran["store"]
    assert store.state.stage == "cued_reaching"
    assert store.state.history[-1].stage == "free_reaching"
    assert any("starts over at trial" in m for m in ran["display"].messages)


def test_an_assignment_outside_the_safety_limits_is_not_applied(tmp_path: Path) -> None:
    # A rig whose left spout may not leave position 1: free_reaching runs, cued_reaching
    # (spouts at 2) is refused when it arrives during the session, which goes on as it ran.
    ran = run_session(tmp_path, "[safety.parameters]\nspout_position_left = [1, 1]\n")
    decisions = [e for _, e in ran["emitted"] if isinstance(e, StageTransitioned)]
    assert decisions and decisions[0].to_stage == "cued_reaching"
    trials: list[TrialCompleted] = ran["trials"]
    assert all(t.trial_parameters["spout_position_left"] == 1 for t in trials)
    assert RESTARTS_METRIC not in ran["report"].ended.metrics
    assert any("NOT APPLIED" in m and "safety" in m for m in ran["display"].messages)
    store: CoreInTheLoop = ran["store"]
    assert store.unsafe_assignment_counts()["refused"] == 1  # counted in the rig's metrics


def mid_session(stage: str, parameters: dict[str, Any], session_id: str = "S1") -> AssignmentIssued:
    return AssignmentIssued(
        event_id=f"mid-{stage}",
        mouse_id="M001",
        session_id=session_id,
        occurred_at=START,
        stage=stage,
        parameters=parameters,
        curriculum_name="reach-autopilot",
        curriculum_version="1.0.0",
        reason="progress",
        sessions_at_stage=0,
        session_number=2,
    )


def test_the_task_applies_a_restart_at_a_boundary_and_keeps_the_session_limits() -> None:
    """On gpiozero mock pins with a scripted mouse: a restart after the second trial moves the
    spouts and sets the cue; trial numbers and the session's trial limit run on."""
    harness = Harness({"max_trials": 5, "iti_min_s": 1.0, "iti_max_s": 1.0, "adapt": False})
    new = ReachParameters.from_assignment(
        {
            "max_trials": 5,
            "iti_min_s": 1.0,
            "iti_max_s": 1.0,
            "adapt": False,
            "cue_duration_s": 3.0,
            "spout_position_left": 4,
            "spout_position_right": 4,
        }
    )
    pending: list[Restart] = []
    asked: list[int] = []

    def restart() -> Restart | None:
        done = len(harness.trials())
        asked.append(done)
        if done == 2 and not pending:
            pending.append(Restart(mid_session("b", {}), new, RewardPlan.plan(new, CALIBRATED)))
            return pending[0]
        return None

    params = ReachParameters.from_assignment(harness.params)
    task = ReachTask(
        hardware=harness.hardware,
        clock=harness.clock,
        bus=harness.bus,
        params=params,
        rewards=RewardPlan.plan(params, CALIBRATED),
        recorder=SessionRecorder(harness.events.append, harness.clock, "M001", "rig-1", "S1"),
        session_start=harness.clock.now(),
        task_seed=42,
        restart=restart,
    )
    try:
        ended = task.run(TaskState.start(params))
    finally:
        harness.hardware.close()
    trials = harness.trials()
    assert [t.trial_index for t in trials] == [0, 1, 2, 3, 4]  # max_trials over the session
    assert [t.trial_parameters["spout_position_left"] for t in trials] == [1, 1, 4, 4, 4]
    assert [t.trial_parameters["cue_duration_s"] for t in trials] == [10.0, 10.0, 3.0, 3.0, 3.0]
    assert ended.metrics[RESTARTS_METRIC] == 1.0
    assert ended.metrics[FIRST_TRIAL_METRIC] == 2.0
    assert 2 in asked
    # the actuators moved: the cue of the third trial lit with the spouts at the new position
    duties = [duty for _, _, duty in harness.onsets]
    assert duties[2] != duties[1] and duties[2] == duties[3]


def test_which_assignments_apply_during_a_session() -> None:
    ok = mid_session("cued_reaching", {"cue_duration_s": 6.0})
    assert issued_during(ok, "S1")
    assert not issued_during(ok, "S2")
    assert not issued_during(ok.model_copy(update={"session_id": None}), "S1")
    assert not issued_during(ok.model_copy(update={"reason": "ejected"}), "S1")
    assert not issued_during(None, "S1")
    prepared = prepare(ok, SafetyLimits(), CALIBRATED)
    assert isinstance(prepared, Restart) and prepared.params.cue_duration_s == 6.0
    refused = prepare(mid_session("x", {"reward_volume_ul": 500.0}), SafetyLimits(), CALIBRATED)
    assert isinstance(refused, str) and "safety limits" in refused
    broken = prepare(mid_session("x", {"max_trials": "many"}), SafetyLimits(), CALIBRATED)
    assert isinstance(broken, str)


def test_restarting_resets_adaptation_but_not_the_counts() -> None:
    params = ReachParameters()
    state = TaskState.start(params)
    state.trial_index, state.n_correct, state.reward_ul = 12, 9, 40.0
    state.positions["left"] = 5
    state.recent["left"].extend("ccc")
    state.last_response_incorrect = True
    state.restart(ReachParameters(spout_position_left=2, cue_duration_s=4.0))
    assert state.positions == {"left": 2, "right": 1}
    assert state.cue_duration_s == 4.0 and list(state.recent["left"]) == []
    assert (state.trial_index, state.n_correct, state.reward_ul) == (12, 9, 40.0)
    assert not state.last_response_incorrect
