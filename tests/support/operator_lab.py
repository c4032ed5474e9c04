"""A small lab driven event by event through the embedded runtime (processor step and
projector on SQLite), for the tests of the operator's views: each mouse's sessions have the
trial outcomes a test chooses, so the decisions, warnings and rejections are known."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from shaping.schemas.codec import encode_key
from shaping.schemas.events import (
    Event,
    MouseEnrolled,
    SessionEnded,
    SessionStarted,
    SessionSummary,
    StageTransitioned,
    TrialCompleted,
)
from shaping.services.curricula.catalog import default_catalog
from shaping.services.domain import CurriculumCatalog
from tests.support.wiring import embedded_runtime, sql_store

CURRICULUM = "attention-test"
CURRICULUM_YAML = """\
name: attention-test
version: 1.0.0
description: Three stages for the tests of the operator's views.
metrics: [accuracy, session_trials, sessions_at_stage]
stages:
  - name: a
    description: First.
    parameters: {max_trials: 20}
    rules:
      - name: good
        decision: progress
        to: b
        when: accuracy(window=20) >= 0.8 and session_trials >= 10
        description: Good enough.
    warnings:
      - name: slow_learner
        when: sessions_at_stage >= 3
        description: "[bold]Three[/bold] or more sessions at a."
  - name: b
    description: Second.
    parameters: {max_trials: 20}
    rules:
      - name: great
        decision: graduate
        to: done
        when: accuracy(window=20) >= 0.9 and sessions_at_stage >= 2
        description: Great.
      - name: collapsed
        decision: rollback
        to: a
        when: accuracy(window=20) < 0.3
        description: Collapsed.
  - name: done
    description: Trained.
    parameters: {max_trials: 20}
    terminal: true
"""

GOOD = ["correct"] * 20
"""A session good enough for any rule of the test curriculum."""
POOR = ["correct"] * 10 + ["incorrect"] * 10
"""Accuracy 0.5: the mouse stays."""
BAD = ["correct"] * 2 + ["incorrect"] * 18
"""Accuracy 0.1: a rollback at stage b."""


def lab_catalog(folder: Path) -> CurriculumCatalog:
    """The shipped curricula plus the test curriculum (written into ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "attention.yaml").write_text(CURRICULUM_YAML)
    return default_catalog([folder])


def _id() -> str:
    return str(uuid.uuid4())


class Lab:
    """Mice trained session by session through the embedded runtime into a SQLite file."""

    def __init__(self, db_path: Path, catalog: CurriculumCatalog) -> None:
        self.url = f"sqlite:///{db_path}"
        self.store = sql_store(self.url)
        self.runtime = embedded_runtime(self.store, catalog=catalog)
        self.sessions: dict[str, int] = {}

    def close(self) -> None:
        self.store.close()

    def publish(self, events: Sequence[Event]) -> None:
        self.runtime.publish(events)

    def enroll(self, mouse: str, at: datetime, curriculum: str = CURRICULUM) -> None:
        self.publish(
            [
                MouseEnrolled(
                    event_id=_id(),
                    mouse_id=mouse,
                    occurred_at=at,
                    curriculum_name=curriculum,
                    enrolled_by="tests",
                )
            ]
        )

    def session(self, mouse: str, outcomes: Sequence[str], at: datetime, rig: str = "rig-1") -> str:
        """Runs one session of ``mouse`` on its current assignment; returns the session id."""
        assignment = self.runtime.assignments[mouse]
        number = self.sessions.get(mouse, 0) + 1
        self.sessions[mouse] = number
        session_id = f"{mouse}-s{number}"
        events: list[Event] = [
            SessionStarted(
                event_id=_id(),
                occurred_at=at,
                stage=assignment.stage,
                curriculum_name=assignment.curriculum_name,
                curriculum_version=assignment.curriculum_version,
                parameters=dict(assignment.parameters),
                assignment_id=assignment.event_id,
                mouse_id=mouse,
                rig_id=rig,
                session_id=session_id,
            )
        ]
        for index, outcome in enumerate(outcomes):
            events.append(
                TrialCompleted(
                    event_id=_id(),
                    occurred_at=at + timedelta(seconds=10 * (index + 1)),
                    trial_index=index,
                    outcome=outcome,  # type: ignore[arg-type]
                    target_side="left",
                    response_side=None
                    if outcome == "miss"
                    else ("left" if outcome == "correct" else "right"),
                    reaction_time_s=None if outcome == "miss" else 0.5,
                    reward_volume_ul=3.0 if outcome == "correct" else 0.0,
                    mouse_id=mouse,
                    rig_id=rig,
                    session_id=session_id,
                )
            )
        end = at + timedelta(seconds=10 * (len(outcomes) + 1))
        events.append(
            SessionEnded(
                event_id=_id(),
                occurred_at=end,
                n_trials=len(outcomes),
                end_reason="max_trials",
                duration_s=(end - at).total_seconds(),
                mouse_id=mouse,
                rig_id=rig,
                session_id=session_id,
            )
        )
        self.publish(events)
        return session_id

    def refused_event(self, mouse: str, at: datetime) -> None:
        """An event the processor rejects: the end of a session that never started."""
        self.publish(
            [
                SessionEnded(
                    event_id=_id(),
                    mouse_id=mouse,
                    rig_id="rig-9",
                    session_id=f"{mouse}-nowhere-{at:%H%M%S}",
                    occurred_at=at,
                    n_trials=3,
                    end_reason="max_trials",
                    duration_s=60.0,
                )
            ]
        )

    def enrolment_without_assignment(self, mouse: str, at: datetime) -> None:
        """The processor accepted an enrolment and the tables have it, but not yet the
        assignment it issued (they travel on different topics)."""
        enrolled = MouseEnrolled(
            event_id=_id(),
            mouse_id=mouse,
            occurred_at=at,
            curriculum_name=CURRICULUM,
            enrolled_by="tests",
        )
        runtime = self.runtime
        runtime.log.append(
            runtime.topics.accepted, encode_key(mouse), runtime.codec.encode(enrolled)
        )
        runtime.project_pending()

    def decision_without_assignment(self, mouse: str, at: datetime) -> None:
        """A decision on the mouse's next session reaches the tables, its assignment not yet
        (the two travel on different topics): the mouse's assignment is then stale."""
        assignment = self.runtime.assignments[mouse]
        number = self.sessions.get(mouse, 0) + 1
        self.sessions[mouse] = number
        decision = StageTransitioned(
            event_id=_id(),
            mouse_id=mouse,
            session_id=f"{mouse}-s{number}",
            occurred_at=at,
            curriculum_name=assignment.curriculum_name,
            curriculum_version=assignment.curriculum_version,
            from_stage=assignment.stage,
            to_stage=assignment.stage,
            decision="stay",
            rule_evaluations=[],
            sessions_at_stage=assignment.sessions_at_stage + 1,
            session_total=number,
            session_summary=SessionSummary(
                n_trials=0,
                n_correct=0,
                n_incorrect=0,
                n_miss=0,
                accuracy=None,
                duration_s=0.0,
                end_reason="max_trials",
            ),
        )
        runtime = self.runtime
        runtime.log.append(
            runtime.topics.decisions, encode_key(mouse), runtime.codec.encode(decision)
        )
        runtime.project_pending()


def days_ago(days: float, now: datetime | None = None) -> datetime:
    """``days`` before ``now`` (the wall clock by default), UTC."""
    return (now or datetime.now(UTC)) - timedelta(days=days)
