"""The rig's safety limits, for the animal: defence in depth against an assignment that would
harm the mouse, whoever wrote it (``test_safety_kafka.py`` runs the attack against a broker).

The attack: a forged AssignmentIssued with 500 µL of water per trial, 600-minute sessions and
5,000 trials, which a simulated rig ran for every session of a mouse. Here the rig alone gets
the forged record (in its cache, through its follower, in the simulated lab) and must refuse
it before the session starts, log it, count it, show it, and run nothing or the last safe
assignment, as its ``[safety]`` config says; and its task loop must stop a session at the
per-session limits and never give more water per trial than allowed.
"""

from __future__ import annotations

import logging
import math
import re
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from shaping.rig.agent import RunOptions
from shaping.rig.bootstrap import rig_agent
from shaping.rig.config import SafetyLimits, load_config
from shaping.rig.errors import ConfigError
from shaping.rig.link.follow import AssignmentFollower
from shaping.rig.link.store import RigStore
from shaping.rig.metrics import read_metrics, render
from shaping.rig.safety import (
    UnsafeAssignmentRefusedError,
    check_parameters,
    screen_assignment,
)
from shaping.rig.sim.lab import LabPlan, run_lab
from shaping.rig.sim.mouse import SimulatedMouse
from shaping.rig.task.scripted import run_simulated_session
from shaping.schemas.codec import default_codec
from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    SessionEnded,
    SessionStarted,
    TrialCompleted,
)
from shaping.services.cli import app
from tests.support.reach_harness import BASE, Harness, Step
from tests.support.rig import (
    ATTACK,
    CODEC,
    LAST_SAFE,
    SAFE,
    START,
    FakeDisplay,
    assignment,
    forged,
    seed_cache,
    write_config,
)

pytestmark = pytest.mark.filterwarnings("ignore::gpiozero.exc.PinFactoryFallback")

RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def rig(folder: Path, *cached: AssignmentIssued, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = write_config(folder, mice=["M001"], extra=extra)
    seed_cache(load_config(path), *cached)
    return path


def run(path: Path, display: FakeDisplay | None = None) -> Any:
    return rig_agent(load_config(path), display or FakeDisplay()).run(
        RunOptions("M001", simulate=True, seed=3, start=START, offline=True)
    )


def stored_events(path: Path) -> list[Event]:
    store = RigStore(load_config(path).store_path, codec=CODEC)
    return [store.codec.decode(row.value) for row in store.unsent(limit=100_000, max_bytes=1 << 40)]


def assert_nothing_unsafe_ran(events: Sequence[Event], limits: SafetyLimits) -> None:
    for event in events:
        if isinstance(event, SessionStarted):
            assert "forged" not in (event.assignment_id or "")
            assert event.parameters.get("reward_volume_ul") != 500.0
        if isinstance(event, TrialCompleted):
            assert event.reward_volume_ul <= limits.max_reward_ul_per_trial
        if isinstance(event, SessionEnded):
            assert event.n_trials <= limits.max_trials
            assert event.duration_s <= limits.max_session_minutes * 60


# -- the config ---------------------------------------------------------------------------------


def test_the_default_limits_refuse_the_attack_and_are_in_every_config(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    limits = config.safety
    assert limits == SafetyLimits()
    assert limits.on_violation == "refuse"
    assert (limits.max_reward_ul_per_trial, limits.max_session_minutes, limits.max_trials) == (
        20.0,
        120.0,
        2000,
    )
    violations = check_parameters(ATTACK, limits)
    assert [v.parameter for v in violations] == [
        "reward_volume_ul",
        "session_minutes",
        "max_trials",
    ]
    described = "; ".join(v.describe() for v in violations)
    assert "reward_volume_ul = 500 is above safety.max_reward_ul_per_trial = 20" in described
    assert "session_minutes = 600 is above safety.max_session_minutes = 120" in described
    assert "max_trials = 5000 is above safety.max_trials = 2000" in described


def test_a_full_safety_table_loads(tmp_path: Path) -> None:
    table = (
        "[safety]\n"
        "max_reward_ul_per_trial = 6\n"
        "max_reward_ms_per_trial = 150\n"
        "max_reward_ul_per_session = 1200\n"
        "max_session_minutes = 60\n"
        "max_trials = 800\n"
        'on_violation = "last_safe"\n'
        "[safety.parameters]\n"
        "cue_duration_s = [2, 10]\n"
        "timeout_s = [0, 10]\n"
        "RightValue_volume = [0, 5]\n"  # another task's parameter (AIND's): allowed
    )
    limits = load_config(write_config(tmp_path, extra=table)).safety
    assert limits == SafetyLimits(
        max_reward_ul_per_trial=6.0,
        max_reward_ms_per_trial=150.0,
        max_reward_ul_per_session=1200.0,
        max_session_minutes=60.0,
        max_trials=800,
        parameters={"cue_duration_s": (2.0, 10.0), "timeout_s": (0.0, 10.0),
                    "RightValue_volume": (0.0, 5.0)},
        on_violation="last_safe",
    )  # fmt: skip
    assert "on_violation = last_safe" in limits.describe()


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ("max_reward_ul_per_trail = 5",
         "safety.max_reward_ul_per_trail: unknown setting; did you mean max_reward_ul_per_trial?"),
        ("max_session_minutes = -5",
         "safety.max_session_minutes must be a number above 0 and at most 1440"),
        ('max_session_minutes = "120"', "safety.max_session_minutes must be a number"),
        ("max_session_minutes = nan", "safety.max_session_minutes must be a number"),
        ("max_trials = 2.5", "safety.max_trials must be a whole number from 1 to 100000"),
        ("max_trials = true", "safety.max_trials must be a whole number"),
        ("max_reward_ul_per_trial = 500",  # the attack's value, as a limit: no mouse takes that
         "safety.max_reward_ul_per_trial must be a number above 0 and at most 100"),
        ("max_reward_ms_per_trial = 5000", "safety.max_reward_ms_per_trial must be a number"),
        ("max_reward_ul_per_trial = 50\nmax_reward_ul_per_session = 40",
         "safety.max_reward_ul_per_trial = 50 is above safety.max_reward_ul_per_session = 40"),
        ('on_violation = "last-safe"',
         "safety.on_violation: 'last-safe' is no policy; did you mean last_safe?"),
        ("parameters = 5", "[safety.parameters] must be a table"),
        ("[safety.parameters]\ncue_duration_s = [10, 2]",
         "safety.parameters.cue_duration_s must be [low, high], two numbers with low at most "
         "high"),
        ("[safety.parameters]\ncue_duration_s = 5", "safety.parameters.cue_duration_s must be"),
        ("[safety.parameters]\ncue_duration_s = [0, inf]",
         "safety.parameters.cue_duration_s must be [low, high], two finite numbers"),
        ("[safety.parameters]\ncue_duraton_s = [2, 10]",
         "safety.parameters.cue_duraton_s: no parameter of the reach task; did you mean "
         "cue_duration_s?"),
        ("[safety.parameters]\nadapt = [0, 1]",
         "safety.parameters.adapt: a range needs a number; adapt is true or false"),
        ("[safety.parameters]\ntarget_side = [0, 1]",
         "safety.parameters.target_side: a range needs a number; target_side is text"),
    ],
    ids=["typo", "negative", "text", "nan", "fraction", "bool", "too-high", "ms", "per-session",
         "policy", "not-table", "reversed", "single", "infinite", "name-typo", "bool-param",
         "text-param"],
)  # fmt: skip
def test_a_mistake_in_the_safety_table_stops_the_rig_at_startup(
    tmp_path: Path, table: str, words: str
) -> None:
    path = write_config(tmp_path, extra=f"[safety]\n{table}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert words in message, message
    assert str(path) in message


def test_safety_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("[safety] must be a table")):
        load_config(write_config(tmp_path, extra="safety = 5\n"))


def test_every_shipped_curriculum_passes_the_default_limits() -> None:
    from shaping.services.curricula.loader import curriculum_files, load_all

    folder = Path(__file__).resolve().parents[2] / "curricula"
    loaded = load_all(curriculum_files(folder))
    assert len(loaded) >= 5
    limits = SafetyLimits()
    for curriculum in loaded:
        for name, stage in curriculum.stages.items():
            where = f"{curriculum.name} {name}"
            assert check_parameters(stage.parameters, limits) == [], where
            # and at the ends of what a trainer may adjust
            for bound in ("minimum", "maximum"):
                adjusted = {
                    key: getattr(adjustment, bound)
                    for key, adjustment in stage.adjustable.items()
                    if getattr(adjustment, bound) is not None
                }
                assert check_parameters({**stage.parameters, **adjusted}, limits) == [], where


def test_values_that_cannot_be_checked_are_violations() -> None:
    limits = SafetyLimits(parameters={"cue_duration_s": (2.0, 10.0)})
    for value in (math.nan, math.inf, "600", True):
        [violation] = check_parameters({"session_minutes": value}, limits)
        assert violation.parameter == "session_minutes"
    [violation] = check_parameters({"cue_duration_s": 12.0}, limits)
    assert violation.describe() == (
        "cue_duration_s = 12 is outside safety.parameters.cue_duration_s = [2, 10]"
    )
    assert check_parameters({"cue_duration_s": 2.0}, limits) == []
    # the value the session runs with counts, the task's default included
    assert check_parameters({}, limits, defaults={"cue_duration_s": 15.0}) != []
    assert check_parameters({"cue_duration_s": None}, limits, defaults={"cue_duration_s": 3}) == []
    assert check_parameters({"reward_ms": 300}, limits)[0].describe() == (
        "reward_ms = 300 is above safety.max_reward_ms_per_trial = 250"
    )
    # a hostile value is shown short
    [long] = check_parameters({"session_minutes": "x" * 10_000}, limits)
    assert len(long.describe()) < 200


# -- the forged record, delivered to a rig alone ------------------------------------------------


def test_the_refuse_policy_runs_nothing_logs_counts_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = rig(tmp_path / "rig", assignment(parameters=SAFE), forged())
    store = RigStore(load_config(path).store_path, codec=CODEC)
    with (
        caplog.at_level(logging.WARNING, logger="shaping.rig.agent"),
        pytest.raises(UnsafeAssignmentRefusedError) as refused,
    ):
        run(path)
    message = str(refused.value)
    assert message.startswith("UNSAFE ASSIGNMENT for M001: assignment forged-M001-2 (session 2")
    assert "is outside this rig's safety limits" in message
    for words in ("reward_volume_ul = 500", "session_minutes = 600", "max_trials = 5000"):
        assert words in message
    assert "Refusing to run it (safety.on_violation = refuse)" in message
    assert any(r.getMessage().startswith("UNSAFE ASSIGNMENT for M001") for r in caplog.records)
    assert store.unsent_count() == 0  # nothing recorded, nothing ran
    assert store.unsafe_assignment_counts() == {"ran_last_safe": 0, "refused": 1}
    last = store.last_unsafe_assignment("M001")
    assert last is not None and last.assignment_id == "forged-M001-2"
    assert last.action == "refused" and last.ran_assignment_id is None
    assert "max_trials = 5000" in last.violations
    text = render("rig-1", read_metrics(store.path))
    assert "# TYPE shaping_rig_unsafe_assignments_total counter\n" in text
    assert 'shaping_rig_unsafe_assignments_total{rig="rig-1",action="refused"} 1\n' in text
    assert 'shaping_rig_unsafe_assignments_total{rig="rig-1",action="ran_last_safe"} 0\n' in text


def test_the_last_safe_policy_runs_the_previous_safe_assignment_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = rig(tmp_path / "rig", assignment(parameters=SAFE), forged(), extra=LAST_SAFE)
    display = FakeDisplay()
    with caplog.at_level(logging.WARNING, logger="shaping.rig.agent"):
        report = run(path, display)
    started = report.started
    assert started.assignment_id == "assignment-M001-1"
    assert started.parameters["reward_volume_ul"] == 3.0
    assert started.parameters["session_minutes"] == 5
    assert started.assignment_stale is True
    assert "forged-M001-2 for session 2 is outside the rig's safety limits" in (
        started.assignment_stale_reason or ""
    )
    [shown] = [m for m in display.messages if m.startswith("UNSAFE ASSIGNMENT for M001")]
    assert "Running the last safe assignment instead (assignment-M001-1: session 1" in shown
    assert any(r.getMessage().startswith("UNSAFE ASSIGNMENT for M001") for r in caplog.records)
    events = stored_events(path)
    assert report.ended.n_trials > 0
    assert_nothing_unsafe_ran(events, SafetyLimits())
    store = RigStore(load_config(path).store_path, codec=CODEC)
    assert store.unsafe_assignment_counts() == {"ran_last_safe": 1, "refused": 0}
    last = store.last_unsafe_assignment("M001")
    assert last is not None and last.ran_assignment_id == "assignment-M001-1"
    assert read_metrics(store.path).unsafe == {"ran_last_safe": 1, "refused": 0}


def test_last_safe_without_a_safe_assignment_runs_nothing(tmp_path: Path) -> None:
    path = rig(tmp_path / "rig", forged(session_number=1), extra=LAST_SAFE)
    with pytest.raises(UnsafeAssignmentRefusedError) as refused:
        run(path)
    assert "no earlier assignment of M001 passes them: nothing runs" in str(refused.value)
    store = RigStore(load_config(path).store_path, codec=CODEC)
    assert store.unsent_count() == 0
    assert store.unsafe_assignment_counts() == {"ran_last_safe": 0, "refused": 1}


def test_the_forged_record_through_the_follower_is_refused(tmp_path: Path) -> None:
    """The record arrives as bytes on the assignments topic, as the attack sent it."""
    path = rig(tmp_path / "rig", extra=LAST_SAFE)
    config = load_config(path)
    store = RigStore(config.store_path, codec=CODEC)
    follower = AssignmentFollower(
        store, "127.0.0.1:1", "shaping.assignments", "shaping.decisions", ("M001",), codec=CODEC
    )
    codec = default_codec()
    for offset, record in enumerate([assignment(parameters=SAFE), forged()]):
        follower._keep("shaping.assignments", 0, offset, b"M001", codec.encode(record))
    cached = store.cached_assignment("M001")
    assert cached is not None and cached.assignment.event_id == "forged-M001-2"
    assert [c.assignment.event_id for c in store.assignment_history("M001")] == [
        "forged-M001-2",
        "assignment-M001-1",
    ]
    report = run(path)
    assert report.started.assignment_id == "assignment-M001-1"
    assert_nothing_unsafe_ran(stored_events(path), config.safety)


def test_tighter_limits_and_ranges_apply_to_the_last_safe_choice_too(tmp_path: Path) -> None:
    older = assignment(parameters={**SAFE, "cue_duration_s": 20.0}, session_number=1)
    middle = assignment(parameters=SAFE, session_number=2).model_copy(update={"event_id": "mid"})
    extra = LAST_SAFE + "[safety.parameters]\ncue_duration_s = [2, 12]\n"
    path = rig(tmp_path / "rig", older, middle, forged(session_number=3), extra=extra)
    report = run(path)
    assert report.started.assignment_id == "mid"  # the newest that passes, not the oldest
    # the task's default cue (10 s) lies in the range; a cached one with 20 s does not
    screening = screen_assignment(older, load_config(path).safety)
    assert [v.parameter for v in screening.violations] == ["cue_duration_s"]


def test_rig_run_prints_the_refusal_escaped_with_exit_code_1(tmp_path: Path) -> None:
    hostile = forged(reason="progress\x1b[2J\x1b]0;owned\x07")  # free text on the wire
    path = rig(tmp_path / "rig", hostile)
    result = CliRunner().invoke(
        app,
        ["rig", "run", "--mouse", "M001", "--offline", "--simulate", "--config", str(path),
         "--start", START.isoformat()],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "error: UNSAFE ASSIGNMENT for M001" in result.output
    assert "; progress\\x1b[2J\\x1b]0;owned\\x07)" in result.output
    assert not RAW.findall(result.output), repr(result.output)
    assert "Traceback" not in result.output
    status = CliRunner().invoke(app, ["rig", "status", "--config", str(path), "--timeout", "0.5"])
    assert status.exit_code == 0, status.output
    assert "safety limits: " in status.output and "on_violation = refuse" in status.output
    assert "    UNSAFE: the cached assignment is outside the safety limits" in status.output
    assert "    last unsafe assignment: " in status.output
    assert not RAW.findall(status.output), repr(status.output)


def test_a_store_of_an_older_release_stays_readable(tmp_path: Path) -> None:
    path = tmp_path / "rig.sqlite"
    RigStore(path, codec=CODEC).save_assignment(assignment(parameters=SAFE))
    with closing(sqlite3.connect(path)) as conn:  # as an older release left it
        conn.execute("DROP TABLE assignment_history")
        conn.execute("DROP TABLE unsafe_assignments")
        conn.execute("PRAGMA user_version = 0")  # releases before the store had a version
        conn.commit()
    assert read_metrics(path).unsafe == {"ran_last_safe": 0, "refused": 0}
    assert "shaping_rig_unsafe_assignments_total" in render("rig-1", read_metrics(path))
    store = RigStore(path, codec=CODEC)
    [kept] = store.assignment_history("M001")
    assert kept.assignment.event_id == "assignment-M001-1"
    assert store.unsafe_assignment_counts() == {"ran_last_safe": 0, "refused": 0}


def test_every_rig_metric_with_unsafe_assignments_passes_promtool(tmp_path: Path) -> None:
    import shutil
    import subprocess

    store = RigStore(tmp_path / "rig.sqlite", codec=CODEC)
    store.record_unsafe_assignment("M001", "forged", "refused", "max_trials = 5000", None)
    text = render('rig "1"', read_metrics(store.path))
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is needed: make test installs it"
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr + text


# -- the simulated lab ----------------------------------------------------------------------


class ScriptedTransport:
    """A rig transport that answers each request for an assignment with the next in a list."""

    def __init__(self, answers: list[AssignmentIssued]) -> None:
        self.answers = list(answers)
        self.published: list[Event] = []

    def publish(self, events: Sequence[Event]) -> None:
        self.published.extend(events)

    def latest_assignment(
        self, mouse_id: str, min_session_number: int = 1, timeout_s: float = 0.0
    ) -> AssignmentIssued | None:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


PLAN = LabPlan(n_mice=1, n_rigs=1, n_days=3, seed=3)


def test_the_simulated_lab_refuses_the_forged_assignment_for_every_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = ScriptedTransport([forged(session_number=1)])
    with caplog.at_level(logging.WARNING, logger="shaping.rig.sim.lab"):
        lab = run_lab(PLAN, transport)  # type: ignore[arg-type]
    assert lab.sessions == []
    assert [e for e in transport.published if isinstance(e, SessionStarted)] == []
    assert [(u.day, u.action, u.ran) for u in lab.unsafe] == [
        (day, "refused", None) for day in range(3)
    ]
    assert "max_trials = 5000" in lab.unsafe[0].message
    assert sum("UNSAFE ASSIGNMENT for M001" in r.getMessage() for r in caplog.records) == 3


def test_the_simulated_lab_runs_the_last_safe_assignment_under_last_safe() -> None:
    safe = assignment(parameters=SAFE)
    transport = ScriptedTransport([safe, forged(), forged()])
    lab = run_lab(PLAN, transport, safety=SafetyLimits(on_violation="last_safe"))  # type: ignore[arg-type]
    started = [e for e in transport.published if isinstance(e, SessionStarted)]
    assert [s.assignment_id for s in started] == ["assignment-M001-1"] * 3
    assert [s.assignment_stale for s in started] == [False, True, True]
    assert [(u.day, u.action) for u in lab.unsafe] == [(1, "ran_last_safe"), (2, "ran_last_safe")]
    assert_nothing_unsafe_ran(transport.published, SafetyLimits())

    refusing = ScriptedTransport([safe, forged(), forged()])
    lab = run_lab(PLAN, refusing)  # type: ignore[arg-type]
    assert len([e for e in refusing.published if isinstance(e, SessionStarted)]) == 1
    assert [u.action for u in lab.unsafe] == ["refused", "refused"]


def test_rig_simulate_prints_the_refusal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``shaping rig simulate`` takes its limits from --config and prints every refusal."""
    from shaping.rig.sim.lab import LabRun

    captured: dict[str, Any] = {}

    class Transport(ScriptedTransport):
        consumer = SimpleNamespace(assignment=lambda: [], end_offsets=lambda parts: {})

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__([forged(session_number=1, stage="s\x1b[31m")])

        def poll(self, timeout_s: float) -> None:
            return None

        def close(self) -> None:
            return None

    def fake_continue_lab(plan: LabPlan, transport: Any, wait: float, **kw: Any) -> LabRun:
        captured.update(kw)
        return run_lab(plan, transport, safety=kw["safety"])

    monkeypatch.setattr("shaping.rig.link.kafka.KafkaRigTransport", Transport)
    monkeypatch.setattr("shaping.rig.sim.lab.continue_lab", fake_continue_lab)
    path = write_config(tmp_path, extra=LAST_SAFE)
    result = CliRunner().invoke(
        app, ["rig", "simulate", "--mice", "1", "--rigs", "1", "--days", "2", "--config", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert captured["safety"].on_violation == "last_safe"
    lines = [line for line in result.output.splitlines() if "UNSAFE" in line]
    assert len(lines) == 2 and lines[0].startswith("day 1 rig-1 M001: UNSAFE ASSIGNMENT for M001")
    assert "\\x1b[31m" in result.output and not RAW.findall(result.output)


# -- the task loop's hard stops -----------------------------------------------------------------


def test_the_task_stops_at_the_rigs_trial_limit() -> None:
    rig_ = Harness({**BASE, "max_trials": 5}, [Step("target")] * 5)
    rig_.limits = SafetyLimits(max_trials=2)
    ended = rig_.run()
    assert (ended.n_trials, ended.end_reason) == (2, "safety_max_trials")
    unlimited = Harness({k: v for k, v in BASE.items() if k != "max_trials"}, [Step(None)] * 4)
    unlimited.params["session_minutes"] = 1
    unlimited.limits = SafetyLimits(max_trials=3)
    assert unlimited.run().end_reason == "safety_max_trials"  # the assignment set no limit


def test_the_task_stops_at_the_rigs_time_limit() -> None:
    rig_ = Harness({"session_minutes": 30})
    rig_.limits = SafetyLimits(max_session_minutes=0.5)
    ended = rig_.run()
    assert ended.end_reason == "safety_time_limit"
    # checked between trials and during the interval: a trial under way finishes
    assert 30.0 <= ended.duration_s < 30.0 + 20.0
    own = Harness({"session_minutes": 0.5})
    own.limits = SafetyLimits(max_session_minutes=0.5)
    assert own.run().end_reason == "time_limit"  # the assignment's own limit, not the rig's


def test_the_task_stops_before_a_reward_would_pass_the_session_limit() -> None:
    rig_ = Harness({**BASE, "max_trials": 10, "reward_volume_ul": 4.0}, [Step("target")] * 10)
    rig_.limits = SafetyLimits(max_reward_ul_per_trial=5.0, max_reward_ul_per_session=10.0)
    ended = rig_.run()
    assert (ended.n_trials, ended.end_reason) == (2, "safety_reward_limit")
    assert sum(t.reward_volume_ul for t in rig_.trials()) == pytest.approx(8.0)


def test_no_reward_is_larger_than_the_per_trial_limit() -> None:
    rig_ = Harness({**BASE, "max_trials": 2, "reward_volume_ul": 4.0}, [Step("target")] * 2)
    rig_.limits = SafetyLimits(max_reward_ul_per_trial=3.0)
    rig_.run()
    for trial in rig_.trials():
        assert trial.reward_volume_ul == pytest.approx(3.0)
        assert trial.trial_parameters["reward_ms"] == pytest.approx(30.0)  # 3 µL at 1e-4 ml/ms
    for on, off in rig_.spans("valve_left") + rig_.spans("valve_right"):
        assert off - on == pytest.approx(0.030)
    by_time = Harness({**BASE, "max_trials": 1, "reward_ms": 200}, [Step("target")])
    by_time.limits = SafetyLimits(max_reward_ms_per_trial=100.0, max_reward_ul_per_trial=100.0)
    by_time.run()
    [trial] = by_time.trials()
    assert trial.trial_parameters["reward_ms"] == pytest.approx(100.0)


def test_the_simulated_session_has_the_same_hard_stops() -> None:
    when = datetime(2026, 1, 5, 9, tzinfo=UTC)
    unsafe = forged(session_number=1)
    limits = SafetyLimits()
    events = run_simulated_session(SimulatedMouse("M001", 3), unsafe, "rig-1", when, None, limits)
    ended = events[-1]
    assert isinstance(ended, SessionEnded)
    assert ended.end_reason in ("safety_time_limit", "safety_max_trials", "safety_reward_limit")
    assert_nothing_unsafe_ran([e for e in events if not isinstance(e, SessionStarted)], limits)
    assert sum(e.reward_volume_ul for e in events if isinstance(e, TrialCompleted)) <= (
        limits.max_reward_ul_per_session
    )
    tight = SafetyLimits(max_trials=7)
    few = run_simulated_session(
        SimulatedMouse("M001", 3), assignment(parameters=SAFE), "rig-1", when, None, tight
    )
    assert isinstance(few[-1], SessionEnded) and few[-1].n_trials <= 7


# -- the welfare gate's refusals are counted ----------------------------------------------------


def test_a_session_refused_at_the_welfare_gate_is_counted_in_the_rigs_metrics(
    tmp_path: Path,
) -> None:
    from shaping.rig.safety import MouseHeldError
    from shaping.schemas.events import AssignmentWelfare

    # given a rig whose newest assignment for M001 holds the mouse (below its minimum weight)
    held_reason = "19 g is 76.0 % of expected 25.0 g (minimum 80 %), at or below the minimum"
    welfare = AssignmentWelfare(
        restricted=True, status="warning", percent_of_expected=76.0, held_reason=held_reason
    )
    held = assignment(parameters=SAFE).model_copy(update={"welfare": welfare})
    path = rig(tmp_path / "rig", held)
    store = RigStore(load_config(path).store_path, codec=CODEC)

    # when a session is asked for, twice
    for _ in range(2):
        with pytest.raises(MouseHeldError):
            run(path)

    # then nothing ran, and both refusals are kept and scraped
    assert store.unsent_count() == 0
    assert store.held_refusal_count() == 2
    text = render("rig-1", read_metrics(store.path))
    assert "# TYPE shaping_rig_held_refusals_total counter\n" in text
    assert 'shaping_rig_held_refusals_total{rig="rig-1"} 2\n' in text
