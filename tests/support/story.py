"""Builders for a mouse's story in events, for given/when/then tests of the core."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import count

from shaping.schemas.events import (
    Event,
    MouseEnrolled,
    SessionEnded,
    SessionStarted,
    TrialCompleted,
)
from shaping.services.curricula.catalog import default_catalog
from shaping.services.domain import MouseState, TrainingCore, initial_state

T0 = datetime(2026, 2, 2, 9, 0, tzinfo=UTC)
_ids = count(1)


def next_id() -> str:
    """A readable unique event id."""
    return f"ev-{next(_ids):06d}"


def enrolled(mouse: str = "M1", **fields: object) -> MouseEnrolled:
    return MouseEnrolled(
        event_id=next_id(),
        mouse_id=mouse,
        occurred_at=T0,
        curriculum_name=str(fields.pop("curriculum_name", "basic-shaping")),
        **fields,  # type: ignore[arg-type]
    )


def session(
    mouse: str,
    session_id: str,
    outcomes: Sequence[str],
    stage: str = "s1_habituation",
    day: int = 0,
) -> list[Event]:
    """SessionStarted, a TrialCompleted per outcome, SessionEnded."""
    start = T0 + timedelta(days=day)
    common = {"mouse_id": mouse, "rig_id": "rig-1", "session_id": session_id}
    events: list[Event] = [
        SessionStarted(
            event_id=next_id(),
            occurred_at=start,
            stage=stage,
            curriculum_name="basic-shaping",
            curriculum_version="0.1.0",
            parameters={},
            **common,  # type: ignore[arg-type]
        )
    ]
    for i, outcome in enumerate(outcomes):
        events.append(
            TrialCompleted(
                event_id=next_id(),
                occurred_at=start + timedelta(seconds=10 * (i + 1)),
                trial_index=i,
                outcome=outcome,  # type: ignore[arg-type]
                **common,  # type: ignore[arg-type]
            )
        )
    events.append(
        SessionEnded(
            event_id=next_id(),
            occurred_at=start + timedelta(seconds=10 * (len(outcomes) + 1)),
            n_trials=len(outcomes),
            end_reason="completed",
            duration_s=10.0 * (len(outcomes) + 1),
            **common,  # type: ignore[arg-type]
        )
    )
    return events


def trials(correct: int, incorrect: int = 0, miss: int = 0) -> list[str]:
    """Outcomes, interleaved so every window has the same mix."""
    out = ["correct"] * correct + ["incorrect"] * incorrect + ["miss"] * miss
    return sorted(out, key=lambda o: hash(o) % 7)  # deterministic mixing within a run


def run(
    core: TrainingCore, events: Iterable[Event], mouse: str = "M1"
) -> tuple[MouseState, list[Event]]:
    """Handles events in order; returns the final state and every emitted event."""
    state = initial_state(mouse)
    emitted: list[Event] = []
    for event in events:
        state, out = core.handle(state, event)
        emitted.extend(out)
    return state, emitted


def core() -> TrainingCore:
    return TrainingCore(default_catalog())
