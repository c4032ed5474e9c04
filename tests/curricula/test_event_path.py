"""The event path (the training core the processor and the embedded runner use) and the batch
path (``shaping evaluate``) give the same decisions, counts and evidence: on real AIND mice,
and on any generated history."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shaping.schemas.events import AssignmentIssued, Event, MouseEnrolled, StageTransitioned
from shaping.services.curricula.engine import CompiledCurriculum
from shaping.services.curricula.evaluate import Evaluator, TableOptions
from shaping.services.domain import CurriculumCatalog, TrainingCore, initial_state
from tests.support.aind import aind_decision, alias, open_loop_mice, sessions_as_events, v01

T0_ID = "enrol"


def run_events(
    curriculum: CompiledCurriculum,
    mouse: str,
    sessions: list[dict[str, Any]],
    actual: Callable[[int], str | None] = lambda _: None,
) -> list[StageTransitioned]:
    """Runs a mouse's sessions through the training core; ``actual(i)`` overrides the stage
    of session i (a trainer's choice), None runs the assigned stage."""
    core = TrainingCore(CurriculumCatalog([curriculum]))
    state = initial_state(mouse)
    from datetime import UTC, datetime

    enrol = MouseEnrolled(
        event_id=f"{mouse}-{T0_ID}",
        mouse_id=mouse,
        occurred_at=datetime(2024, 1, 1, tzinfo=UTC),
        curriculum_name=curriculum.name,
        curriculum_version=curriculum.version,
    )
    assigned: list[str] = []
    decisions: list[StageTransitioned] = []

    def handle(events: Sequence[Event]) -> None:
        nonlocal state
        for event in events:
            state, out = core.handle(state, event)
            for output in out:
                if isinstance(output, AssignmentIssued):
                    assigned.append(output.stage)
                elif isinstance(output, StageTransitioned):
                    decisions.append(output)

    handle([enrol])
    for events in sessions_as_events(mouse, sessions, lambda i: actual(i) or assigned[-1]):
        handle(events)
    return decisions


def test_aind_mice_through_the_training_core_decide_as_aind_did() -> None:
    curriculum = v01()
    agree = total = 0
    for mouse, rows in open_loop_mice(6).items():
        sessions = [
            {
                "finished_trials": int(r["finished_trials"]),
                "foraging_efficiency": float(r["foraging_efficiency_3dp"])
                if r["foraging_efficiency_3dp"]
                else None,
            }
            for r in rows
        ]
        decisions = run_events(curriculum, mouse, sessions)
        for row, decision in zip(rows, decisions, strict=True):
            total += 1
            agree += (
                alias(curriculum, decision.from_stage),
                aind_decision(decision.decision),
                alias(curriculum, decision.to_stage),
            ) == (row["current_stage_suggested"], row["decision"], row["next_stage_suggested"])
    print(f"\nAIND open-loop mice through the training core (events): {agree}/{total} agree")
    assert total > 100 and agree == total


SESSIONS = st.lists(
    st.fixed_dictionaries(
        {
            "finished_trials": st.integers(0, 700),
            "foraging_efficiency": st.one_of(st.none(), st.floats(0, 1).map(lambda v: round(v, 3))),
            "override": st.one_of(
                st.none(),
                st.none(),
                st.sampled_from(["Stage 1", "Stage 2", "Stage 3", "Stage final"]),
            ),
        }
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(SESSIONS)
def test_the_batch_path_and_the_event_path_agree_on_any_history(
    sessions: list[dict[str, Any]],
) -> None:
    curriculum = v01()
    decisions = run_events(curriculum, "M", sessions, lambda i: sessions[i]["override"])
    table = [
        {
            "subject_id": "M",
            "session": str(i + 1),
            "finished_trials": str(s["finished_trials"]),
            "foraging_efficiency": ""
            if s["foraging_efficiency"] is None
            else str(s["foraging_efficiency"]),
            "stage_run": s["override"] or "",
        }
        for i, s in enumerate(sessions)
    ]
    rows = Evaluator([curriculum], TableOptions(stage_column="stage_run")).run(table)
    assert len(rows) == len(decisions)
    for row, decision in zip(rows, decisions, strict=True):
        assert row["current_stage_actual"] == decision.from_stage
        assert row["session_at_current_stage"] == decision.sessions_at_stage
        assert row["session_total"] == decision.session_total
        assert (row["decision"], row["next_stage_suggested"], row["rule"] or None) == (
            decision.decision,
            decision.to_stage,
            decision.rule,
        )
        import json

        assert json.loads(row["evidence"]) == [
            e.model_dump(mode="json") for e in decision.rule_evaluations
        ]
