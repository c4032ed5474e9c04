"""AIND curricula and tables for the conformance tests (tests/data/anchors/aind): Coupled
Baiting converted from AIND's exports, AIND's names for our stages and decisions, the sessions
of AIND's tables as rig events, and the mice of the Janelia open-loop replay."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from shaping.services.curricula.aind import convert_file
from shaping.services.curricula.engine import CompiledCurriculum
from shaping.services.curricula.evaluate import read_table
from shaping.services.curricula.validate import compile_curriculum
from tests.support.anchors import AIND as ANCHORS

AIND_CURRICULA = ANCHORS / "curricula"
AIND_DATA = ANCHORS / "data"
OPEN_LOOP = AIND_DATA / "extracted_janelia_openloop_sim_from_plot_cell16.csv"
V01_FILE = AIND_CURRICULA / "Coupled Baiting_curriculum_v0.1_schema_v0.3.json"
V23_FILE = AIND_CURRICULA / "Coupled Baiting_curriculum_v2.3_schema_v1.0.json"
V02_GRADUATION = (
    "session_total >= 14 and sessions_at_stage >= 7 and mean(finished_trials[-5:]) >= 500 "
    "and mean(foraging_efficiency[-5:]) >= 0.75"
)


@cache
def v01_document() -> dict[str, Any]:
    """Coupled Baiting v0.1, converted from its AIND export."""
    return convert_file(V01_FILE)[0]


def v02_document() -> dict[str, Any]:
    """Coupled Baiting v0.2: no JSON upstream; v0.1 with the Stage final -> Graduated rule
    replaced (anchors README)."""
    document = copy.deepcopy(v01_document())
    document["version"] = "0.2.0"
    document["origin"]["version"] = "0.2"
    final = next(s for s in document["stages"] if s["name"] == "Stage final")
    graduation = next(r for r in final["rules"] if r["to"] == "Graduated")
    graduation["when"] = V02_GRADUATION
    graduation["description"] = (
        "For recent 5 sessions, mean finished trials >= 500 and mean efficiency >= 0.75 and "
        "total sessions >= 14 and sessions at final >= 7"
    )
    return document


@cache
def v01() -> CompiledCurriculum:
    return compile_curriculum(v01_document(), file=V01_FILE.name)


@cache
def v02() -> CompiledCurriculum:
    return compile_curriculum(v02_document(), file="Coupled Baiting v0.2")


@cache
def v23() -> CompiledCurriculum:
    return compile_curriculum(convert_file(V23_FILE)[0], file=V23_FILE.name)


def alias(curriculum: CompiledCurriculum, stage: str) -> str:
    """AIND's enum name of one of our stages (STAGE_1_WARMUP, ...)."""
    return curriculum.stages[stage].stage.aliases[0]


def aind_decision(decision: str) -> str:
    """Our decision in AIND's words (AIND calls a graduation a progress)."""
    return {"stay": "STAY", "rollback": "ROLLBACK"}.get(decision, "PROGRESS")


def sessions_as_events(
    mouse: str,
    sessions: list[dict[str, Any]],
    stage_of: Any,
) -> Any:
    """Yields, for each AIND session, the events a rig would send: SessionStarted at the stage
    ``stage_of(index)`` returns (called just before, so it can read the latest assignment), one
    correct TrialCompleted per finished trial plus some ignored ones, and SessionEnded with the
    foraging efficiency reported in its metrics."""
    from datetime import UTC, datetime, timedelta

    from shaping.schemas.events import SessionEnded, SessionStarted, TrialCompleted

    start = datetime(2024, 1, 1, 9, tzinfo=UTC)
    for index, row in enumerate(sessions):
        at = start + timedelta(days=index)
        session_id = f"{mouse}-s{index + 1}"
        common = {"mouse_id": mouse, "rig_id": "rig-aind", "session_id": session_id}
        stage = stage_of(index)
        events: list[Any] = [
            SessionStarted(
                event_id=f"{session_id}-start",
                occurred_at=at,
                stage=stage,
                curriculum_name="Coupled Baiting",
                curriculum_version=row.get("version", "0.1.0"),
                parameters={},
                **common,
            )
        ]
        finished = int(row["finished_trials"])
        ignored = 3
        for trial in range(finished + ignored):
            events.append(
                TrialCompleted(
                    event_id=f"{session_id}-t{trial}",
                    occurred_at=at + timedelta(seconds=trial + 1),
                    trial_index=trial,
                    outcome="correct" if trial < finished else "miss",
                    **common,
                )
            )
        efficiency = row["foraging_efficiency"]
        events.append(
            SessionEnded(
                event_id=f"{session_id}-end",
                occurred_at=at + timedelta(hours=1),
                n_trials=finished + ignored,
                end_reason="completed",
                duration_s=3600.0,
                metrics={"foraging_efficiency": efficiency},
                **common,
            )
        )
        yield events


def open_loop_mice(count: int) -> dict[str, list[dict[str, Any]]]:
    """The mice of the Janelia replay with the most varied histories (graduations and
    rollbacks), smallest first."""
    by_mouse: dict[str, list[dict[str, str]]] = {}
    for row in read_table(OPEN_LOOP):
        by_mouse.setdefault(row["subject_id"], []).append(row)
    varied = [
        m
        for m, rows in by_mouse.items()
        if {"ROLLBACK", "PROGRESS"} <= {r["decision"] for r in rows}
        and any(r["next_stage_suggested"] == "GRADUATED" for r in rows)
    ]
    varied.sort(key=lambda m: sum(int(r["finished_trials"]) for r in by_mouse[m]))
    return {m: by_mouse[m] for m in varied[:count]}
