"""The rig agent without a broker: cached assignments, the outbox journal, resuming a session.

A run is simulated (gpiozero mock pins, a simulated mouse, a virtual clock), so a 20-minute
session takes a fraction of a second and the same seed gives the same events.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from shaping.rig.agent import RunOptions
from shaping.rig.bootstrap import rig_agent
from shaping.rig.config import RigConfig
from shaping.rig.errors import NoAssignmentError, RigBusyError, RigError
from shaping.rig.link.store import RigStore
from shaping.rig.locks import FileLock
from shaping.rig.reach import reach_session_metrics
from shaping.schemas.events import (
    Event,
    MovementDetected,
    SessionEnded,
    SessionStarted,
    TrialCompleted,
)
from tests.support.rig import CODEC, PINS, START, FakeDisplay, assignment, config_in, seed_cache

pytestmark = pytest.mark.filterwarnings("ignore::gpiozero.exc.PinFactoryFallback")

PARAMS = {"session_minutes": 20, "iti_min_s": 2.0, "iti_max_s": 4.0, "reward_volume_ul": 4.0}


class Crash(BaseException):
    """Stands for the process dying (nothing after it runs in the task)."""


class FakeCrashingStore(RigStore):
    """A store whose process 'dies' right after it stored the N-th event."""

    def __init__(self, path: Path, after: int) -> None:
        super().__init__(path, CODEC)
        self.after = after
        self.stored = 0

    def append(self, event: Event, topic: str) -> bool:
        added = super().append(event, topic)
        self.stored += 1
        if self.stored >= self.after:
            raise Crash(f"killed after event {self.stored}")
        return added


def options(**kwargs: Any) -> RunOptions:
    return RunOptions(
        **{"mouse_id": "M001", "simulate": True, "seed": 5, "start": START, "offline": True}
        | kwargs
    )


def rig(tmp_path: Path, name: str) -> RigConfig:
    folder = tmp_path / name
    folder.mkdir()
    config = config_in(folder)
    seed_cache(config, assignment(parameters=PARAMS))
    return config


def all_events(config: RigConfig) -> list[Event]:
    store = RigStore(config.store_path, codec=CODEC)
    return [store.codec.decode(row.value) for row in store.unsent(limit=100_000, max_bytes=1 << 40)]


def test_an_offline_run_uses_the_cached_assignment_says_so_and_keeps_every_event(
    tmp_path: Path,
) -> None:
    config = rig(tmp_path, "rig")
    display = FakeDisplay()
    report = rig_agent(config, display).run(options(offline=False))  # the broker is a dead port
    assert any("unreachable" in m and "offline" in m for m in display.messages)
    assert any(
        m.startswith("offline: using the cached assignment for M001") for m in display.messages
    )
    events = all_events(config)
    started, ended = events[0], events[-1]
    assert isinstance(started, SessionStarted) and isinstance(ended, SessionEnded)
    assert started.assignment_id == "assignment-M001-1"
    assert all(started.parameters[k] == v for k, v in PARAMS.items())  # exactly as assigned
    assert isinstance(started.parameters["task_seed"], int)
    assert started.parameters["cue_duration_s"] == 10.0  # the task's default, recorded
    trials = [e for e in events if isinstance(e, TrialCompleted)]
    assert [t.trial_index for t in trials] == list(range(len(trials))) and trials
    assert ended.n_trials == len(trials) == display.trials
    assert ended.end_reason == "time_limit" and ended.duration_s >= 20 * 60
    # reach's results, and the water the rewards delivered through the calibration (issue 15)
    delivered_ml = sum(t.reward_volume_ul for t in trials) / 1000
    assert ended.metrics == {
        **reach_session_metrics(events),
        "water_earned_ml": pytest.approx(delivered_ml),
    }
    assert ended.metrics["resets"] == sum(
        1 for e in events if isinstance(e, MovementDetected) and e.movement == "paw_lift"
        and e.phase != "trial"
    )  # fmt: skip
    assert report.offline and report.unsent == len(events)
    assert any("events wait in the outbox" in m for m in display.messages)


def test_without_an_assignment_or_for_a_stranger_nothing_runs(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    with pytest.raises(NoAssignmentError, match=r"no assignment known for M001.*Enroll"):
        rig_agent(config, FakeDisplay()).run(options())
    with pytest.raises(RigError, match=r"M003 is not on rig rig-1's list.*did you mean"):
        rig_agent(config, FakeDisplay()).run(options(mouse_id="M003"))
    assert RigStore(config.store_path, codec=CODEC).unsent_count() == 0


def test_one_session_at_a_time_per_rig(tmp_path: Path) -> None:
    config = rig(tmp_path, "rig")
    lock = FileLock(config.state_dir / "session.lock", "test")
    assert lock.try_acquire()
    try:
        with pytest.raises(RigBusyError, match="busy"):
            rig_agent(config, FakeDisplay()).run(options())
    finally:
        lock.release()


@pytest.mark.parametrize("crashes", [[40], [137], [3, 100]], ids=["boundary", "mid", "twice"])
def test_a_session_killed_mid_way_resumes_to_the_events_of_an_uninterrupted_one(
    tmp_path: Path, crashes: list[int]
) -> None:
    reference = rig(tmp_path, "reference")
    rig_agent(reference, FakeDisplay()).run(options())
    expected = all_events(reference)

    config = rig(tmp_path, "crashing")
    for after in crashes:
        with pytest.raises(Crash):
            store = FakeCrashingStore(config.store_path, after)
            rig_agent(config, FakeDisplay(), store).run(options())
    display = FakeDisplay()
    rig_agent(config, display).run(options())
    got = all_events(config)
    assert display.resumed_at is not None and display.resumed_at > 0
    assert any(m.startswith("resuming session") for m in display.messages)
    assert [e.event_id for e in got] == [e.event_id for e in expected]
    assert got == expected


def test_abandon_closes_the_interrupted_session_and_starts_a_new_one(tmp_path: Path) -> None:
    config = rig(tmp_path, "rig")
    with pytest.raises(Crash):
        rig_agent(config, FakeDisplay(), FakeCrashingStore(config.store_path, 60)).run(options())
    display = FakeDisplay()
    with pytest.raises(RigError, match=r"already exists.*later --start"):
        rig_agent(config, display).run(options(abandon_open=True))  # same start, same session
    rig_agent(config, display).run(options(abandon_open=True, start=START + timedelta(hours=2)))
    ends = [e for e in all_events(config) if isinstance(e, SessionEnded)]
    starts = [e for e in all_events(config) if isinstance(e, SessionStarted)]
    assert len(starts) == 2 and len(ends) == 2
    assert ends[0].session_id == starts[0].session_id and ends[0].end_reason == "interrupted"
    first_trials = [
        e
        for e in all_events(config)
        if isinstance(e, TrialCompleted) and e.session_id == starts[0].session_id
    ]
    assert ends[0].n_trials == len(first_trials)
    assert display.resumed_at is None


def test_a_real_time_session_resumes_on_the_wall_clock_after_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The path a Pi takes (no --simulate: the system clock, gpiozero's default pin factory,
    here gpiozero's mock pins). Nobody touches the spouts, so every trial is a miss."""
    from gpiozero import Device

    from shaping.rig.sim.reach_box import mock_factory

    monkeypatch.setattr(Device, "pin_factory", mock_factory())
    folder = tmp_path / "pi"
    folder.mkdir()
    pins = {k: v for k, v in PINS.items() if not k.startswith("paw_")}  # no paw rests
    config = config_in(folder, pins=pins)
    quick = {
        "session_minutes": 0.05,  # 3 s
        "iti_min_s": 0.1,
        "iti_max_s": 0.2,
        "cue_duration_s": 0.2,
        "cue_duration_min_s": 0.1,
        "reward_ms": 10,
    }
    seed_cache(config, assignment(parameters=quick))
    real = RunOptions("M001", offline=True)
    with pytest.raises(Crash):
        rig_agent(config, FakeDisplay(), FakeCrashingStore(config.store_path, 4)).run(real)
    display = FakeDisplay()
    report = rig_agent(config, display).run(real)
    events = all_events(config)
    trials = [e for e in events if isinstance(e, TrialCompleted)]
    assert display.resumed_at == 3  # SessionStarted and 3 trials were stored before the crash
    assert [t.trial_index for t in trials] == list(range(len(trials)))
    assert all(t.outcome == "miss" for t in trials)
    assert len({e.event_id for e in events}) == len(events)
    [ended] = [e for e in events if isinstance(e, SessionEnded)]
    assert ended == events[-1]
    assert ended.n_trials == len(trials) and ended.end_reason == "time_limit"
    assert report.resumed and ended.duration_s >= 3.0
