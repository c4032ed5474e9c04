"""A rig's session through the processing step and the projector (embedded, on SQLite):
MovementDetected is accepted and left out of the training state and the tables."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from shaping.rig.agent import RunOptions
from shaping.rig.bootstrap import rig_agent
from shaping.rig.link.store import RigStore
from shaping.schemas.codec import default_codec
from shaping.schemas.events import (
    Event,
    EventRejected,
    MouseEnrolled,
    MovementDetected,
    SessionEnded,
    StageTransitioned,
)
from shaping.services.processor.step import ProcessorStep
from tests.support.rig import CODEC, START, FakeDisplay, config_in, seed_cache
from tests.support.wiring import embedded_runtime, sql_store

pytestmark = pytest.mark.filterwarnings("ignore::gpiozero.exc.PinFactoryFallback")

ENROLLED = MouseEnrolled(
    event_id="00000000-0000-4000-8000-00000000e002",
    mouse_id="M001",
    occurred_at=START,
    curriculum_name="basic-shaping",
)


def recorded_session(tmp_path: Path) -> list[Event]:
    runtime = embedded_runtime()
    runtime.publish([ENROLLED])
    config = config_in(tmp_path)
    seed_cache(config, runtime.assignments["M001"])
    rig_agent(config, FakeDisplay()).run(
        RunOptions("M001", simulate=True, seed=3, start=START, offline=True)
    )
    store = RigStore(config.store_path, codec=CODEC)
    return [store.codec.decode(r.value) for r in store.unsent(limit=100_000, max_bytes=1 << 40)]


def test_a_rig_session_is_judged_and_projected_and_its_movements_are_not_folded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = recorded_session(tmp_path)
    movements = [e for e in events if isinstance(e, MovementDetected)]
    assert movements  # the simulated mouse fidgets
    store = sql_store(f"sqlite:///{tmp_path / 'tables.sqlite'}")
    runtime = embedded_runtime(store)
    with caplog.at_level(logging.WARNING):
        runtime.publish([ENROLLED, *events])
    codec = default_codec()
    outputs = [codec.decode(r.value) for r in runtime.log.records()]
    assert not [e for e in outputs if isinstance(e, EventRejected)]
    [decision] = [e for e in outputs if isinstance(e, StageTransitioned)]
    ended = events[-1]
    assert isinstance(ended, SessionEnded)
    assert decision.session_summary.n_trials == ended.n_trials
    assert not [r for r in caplog.records if "not projecting" in r.getMessage()]
    [summary] = store.snapshot()["session_summaries"]
    assert summary["session_id"] == ended.session_id

    # A movement changes no training state, whatever came before it.
    step = ProcessorStep(runtime.step.core, codec)
    state = runtime.states["M001"]
    result = step.process(state, b"M001", codec.encode(movements[0]), "shaping.events", 0, 10_000)
    assert result.state is None and result.outputs == [] and result.event == movements[0]
    wrong_key = step.process(state, b"M999", codec.encode(movements[0]), "shaping.events", 0, 1)
    assert wrong_key.rejected  # still checked like any input
