"""Inputs of the alert rules for tests: a decision of a mouse and a dead letter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shaping.schemas.events import EventRejected, SessionSummary, StageTransitioned

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def decision(
    n: int, decision: str = "stay", to_stage: str = "s2", mouse: str = "M1", **kw: object
) -> StageTransitioned:
    return StageTransitioned(
        event_id=f"d-{mouse}-{n}",
        mouse_id=mouse,
        rig_id="rig-1",
        session_id=f"{mouse}-s{n}",
        occurred_at=T0 + timedelta(hours=n),
        curriculum_name="basic",
        curriculum_version="1.0.0",
        from_stage="s2",
        to_stage=to_stage,
        decision=decision,  # type: ignore[arg-type]
        rule_evaluations=[],
        sessions_at_stage=n,
        session_total=n,
        session_summary=SessionSummary(
            n_trials=10,
            n_correct=5,
            n_incorrect=5,
            n_miss=0,
            accuracy=0.5,
            duration_s=60,
            end_reason="done",
        ),
        **kw,  # type: ignore[arg-type]
    )


def dead_letter(n: int) -> EventRejected:
    return EventRejected(
        mouse_id="unknown",
        occurred_at=T0,
        reason=f"not a Shaping message {n}",
        error_kind="undecodable",
        source_topic="t.events",
        source_partition=0,
        source_offset=n,
        original_value=b"junk",
        rejected_by="processor",
    )
