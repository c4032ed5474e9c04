"""Conformance with AIND's auto-train engine, through Shaping's engine: the 31 hand-written
cases under Coupled Baiting v2.3, the 3522-session Janelia open-loop replay under v0.1, and the
411-session closed-loop replay (rules applied to the stage actually run; v0.1 and v0.2 mixed).
The counts are printed (see them with -s or -rP)."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from shaping.services.cli import app
from shaping.services.curricula.evaluate import Evaluator, TableOptions, read_table
from tests.support.aind import (
    AIND_DATA,
    OPEN_LOOP,
    aind_decision,
    alias,
    v01,
    v01_document,
    v02,
    v23,
)

CLOSED_LOOP = AIND_DATA / "extracted_447_closedloop_from_plot_cell28.csv"
METRIC_COLUMNS = {"foraging_efficiency": "foraging_efficiency_3dp"}


class CaseMetrics:
    """A hand-written case's metric vectors, as the engine reads metrics."""

    def __init__(self, case: Mapping[str, object]) -> None:
        self.case = case

    def value(self, metric: str, window: int | None = None) -> float | None:
        if metric == "session_total":
            return float(self.case["session_total"])  # type: ignore[arg-type]
        if metric == "sessions_at_stage":
            return float(self.case["session_at_current_stage"])  # type: ignore[arg-type]
        values = self.series(metric)
        return values[-1] if values else None

    def series(self, metric: str) -> Sequence[float | None]:
        return [float(v) for v in self.case.get(metric, [])]  # type: ignore[attr-defined]


def compare(
    rows: Sequence[Mapping[str, str]], decisions: Sequence[Mapping[str, object]], curricula: list
) -> tuple[int, list[str]]:
    expected = {(r["subject_id"], float(r["session"])): r for r in rows}
    agree, disagreements = 0, []
    for out in decisions:
        row = expected[(str(out["subject_id"]), float(str(out["session"])))]
        curriculum = next(c for c in curricula if c.version == out["curriculum_version"])
        ours = (
            alias(curriculum, str(out["current_stage_suggested"])),
            aind_decision(str(out["decision"])),
            alias(curriculum, str(out["next_stage_suggested"])),
        )
        theirs = (row["current_stage_suggested"], row["decision"], row["next_stage_suggested"])
        if ours == theirs:
            agree += 1
        else:
            disagreements.append(
                f"{out['subject_id']} session {out['session']}: {ours} != {theirs}"
            )
    return agree, disagreements


def test_the_31_hand_written_cases_under_coupled_baiting_2_3() -> None:
    cases = json.loads((AIND_DATA / "handwritten_cases_coupled_baiting_2p3.json").read_text())
    curriculum = v23()
    agree = 0
    for case in cases:
        stage = curriculum.resolve(case["current_stage"])
        evaluation = curriculum.evaluate(stage, CaseMetrics(case))
        agree += alias(curriculum, evaluation.to_stage) == case["expected_next_stage"]
    print(f"\nAIND conformance, hand-written cases (Coupled Baiting v2.3): {agree}/{len(cases)}")
    assert len(cases) == 31
    assert agree == len(cases)


def test_the_janelia_open_loop_replay_under_coupled_baiting_0_1() -> None:
    rows = read_table(OPEN_LOOP)
    decisions = Evaluator([v01()], TableOptions(metric_columns=METRIC_COLUMNS)).run(rows)
    agree, disagreements = compare(rows, decisions, [v01()])
    subjects = len({r["subject_id"] for r in rows})
    print(
        f"\nAIND conformance, open-loop replay (Coupled Baiting v0.1): {agree}/{len(rows)} "
        f"sessions of {subjects} mice agree"
    )
    assert (len(rows), subjects) == (3522, 150)
    assert disagreements == []
    assert agree == len(rows)


def test_the_closed_loop_replay_judges_the_stage_actually_run() -> None:
    rows = read_table(CLOSED_LOOP)
    options = TableOptions(
        metric_columns=METRIC_COLUMNS,
        stage_column="current_stage_actual_display",
        no_stage_values=frozenset({"", "unknown (open loop)"}),
        version_column="curriculum_version",
    )
    decisions = Evaluator([v01(), v02()], options).run(rows)
    agree, disagreements = compare(rows, decisions, [v01(), v02()])
    overridden = sum(
        1
        for d in decisions
        if d["if_closed_loop"] and d["current_stage_actual"] != d["current_stage_suggested"]
    )
    print(
        f"\nAIND conformance, closed-loop replay (Coupled Baiting v0.1 + v0.2): "
        f"{agree}/{len(rows)} sessions agree ({overridden} run at another stage than suggested)"
    )
    assert len(rows) == 411
    assert disagreements == []
    assert agree == len(rows)
    assert overridden > 100  # the trainers' overrides really are exercised


def test_session_at_current_stage_matches_aind_df_manager() -> None:
    """AIND's own output table: its session_at_current_stage restarts at 1 only when the stage
    run changes (a trainer who runs the previous stage again continues the count)."""
    path = AIND_DATA / "extracted_df_manager_689798_cell26.csv"
    rows = read_table(path)
    options = TableOptions(stage_column="current_stage_actual")
    decisions = Evaluator([v02()], options).run(rows)
    ours = [int(d["session_at_current_stage"]) for d in decisions]
    theirs = [int(r["session_at_current_stage"]) for r in rows]
    assert ours == theirs
    assert [aind_decision(str(d["decision"])) for d in decisions] == [r["decision"] for r in rows]


def test_shaping_evaluate_writes_the_decision_table(tmp_path: Path) -> None:
    """The same conformance run through the command a lab would use."""
    curriculum = tmp_path / "coupled-baiting-0.1.yaml"
    import yaml

    curriculum.write_text(yaml.safe_dump(v01_document(), sort_keys=False))
    out = tmp_path / "decisions.csv"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--curriculum",
            str(curriculum),
            "--sessions",
            str(OPEN_LOOP),
            "--out",
            str(out),
            "--metric",
            "foraging_efficiency=foraging_efficiency_3dp",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "3522 sessions of 150 subjects judged" in result.output
    with out.open() as handle:
        written = list(csv.DictReader(handle))
    agree, disagreements = compare(read_table(OPEN_LOOP), written, [v01()])
    assert disagreements == [] and agree == 3522
    first = written[0]
    assert first["current_stage_actual"] == "Stage 1" and first["if_closed_loop"] == "False"
    evidence = json.loads(first["evidence"])
    assert evidence[0]["rule"] == "progress_to_stage_2"
    assert [o["metric"] for o in evidence[0]["observations"]] == [
        "finished_trials[-1]",
        "foraging_efficiency[-1]",
    ]


def gap_table() -> list[dict[str, str]]:
    """One mouse run at Stage final for sessions 1-7 and then 10 (8 rows), every session good
    enough to graduate under Coupled Baiting v0.1 once ``session_total >= 10``."""
    return [
        {
            "subject_id": "gap",
            "session": str(number),
            "finished_trials": "600",
            "foraging_efficiency": "0.8",
            "stage_run": "STAGE_FINAL",
        }
        for number in (*range(1, 8), 10)
    ]


def test_session_total_is_the_session_number_so_aind_graduates_at_session_10() -> None:
    """AIND's engine reads ``session_total`` as the session's number (``session_total=session``),
    not the count of rows: with sessions 1-7 then 10, v0.1's graduation (session_total >= 10,
    5 sessions at Stage final, mean finished trials >= 500, mean efficiency >= 0.7) holds on the
    8th row, session 10."""
    options = TableOptions(stage_column="stage_run")
    decisions = Evaluator([v01()], options).run(gap_table())
    curriculum = v01()
    ours = [
        (
            d["session"],
            d["session_total"],
            aind_decision(str(d["decision"])),
            alias(curriculum, str(d["next_stage_suggested"])),
        )
        for d in decisions
    ]
    assert ours == [
        *((str(n), n, "STAY", "STAGE_FINAL") for n in range(1, 8)),
        ("10", 10, "PROGRESS", "GRADUATED"),
    ]
    assert (decisions[-1]["decision"], decisions[-1]["next_stage_suggested"]) == (
        "progress",
        "Graduated",
    )
    assert decisions[-1]["session_at_current_stage"] == 8
    # The same sessions numbered 1-8 are 8 sessions: not yet 10, so the mouse stays.
    renumbered = [{**row, "session": str(i + 1)} for i, row in enumerate(gap_table())]
    last = Evaluator([v01()], options).run(renumbered)[-1]
    assert (last["session_total"], last["decision"]) == (8, "stay")


def test_shaping_evaluate_reads_the_session_number_from_the_table(tmp_path: Path) -> None:
    """The gap case through the command: the decision table says session_total 10 and the
    move to Graduated."""
    import yaml

    curriculum = tmp_path / "coupled-baiting-0.1.yaml"
    curriculum.write_text(yaml.safe_dump(v01_document(), sort_keys=False))
    table = tmp_path / "sessions.csv"
    rows = gap_table()
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "decisions.csv"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--curriculum",
            str(curriculum),
            "--sessions",
            str(table),
            "--out",
            str(out),
            "--stage-column",
            "stage_run",
        ],
    )
    assert result.exit_code == 0, result.output
    with out.open() as handle:
        written = list(csv.DictReader(handle))
    assert [(r["session"], r["session_total"], r["decision"]) for r in written][-2:] == [
        ("7", "7", "stay"),
        ("10", "10", "progress"),
    ]
    assert written[-1]["next_stage_suggested"] == "Graduated"


def test_on_the_event_path_the_session_number_is_the_number_of_the_assignment_run() -> None:
    """The event path numbers sessions as the rig runs them: the assignment for the next
    session carries its number (sessions finished + 1), and the decision on it reads that number
    as ``session_total``. A rig cannot skip a number, so ten good sessions at Stage final
    graduate on the tenth, as the table's session 10 does."""
    from shaping.schemas.events import AssignmentIssued, MouseEnrolled, StageTransitioned
    from shaping.services.domain import TrainingCore, initial_state
    from shaping.services.domain.curriculum import CurriculumCatalog
    from tests.support.aind import sessions_as_events

    curriculum = v01()
    core = TrainingCore(CurriculumCatalog([curriculum]))
    state, outputs = core.handle(
        initial_state("numbered"),
        MouseEnrolled(
            event_id="numbered-enrolled",
            mouse_id="numbered",
            occurred_at=datetime(2024, 1, 1, tzinfo=UTC),
            curriculum_name=curriculum.name,
            curriculum_version=curriculum.version,
        ),
    )
    numbers = [o.session_number for o in outputs if isinstance(o, AssignmentIssued)]
    seen: list[tuple[int, int, str, str]] = []
    good = [{"finished_trials": 600, "foraging_efficiency": 0.8}] * 10
    for events in sessions_as_events("numbered", good, lambda _: "Stage final"):
        for event in events:
            state, outputs = core.handle(state, event)
            for output in outputs:
                if isinstance(output, StageTransitioned):
                    seen.append(
                        (numbers[-1], output.session_total, output.decision, output.to_stage)
                    )
                elif isinstance(output, AssignmentIssued):
                    numbers.append(output.session_number)
    assert [(ran, total) for ran, total, _, _ in seen] == [(n, n) for n in range(1, 11)]
    assert [(d, to) for _, _, d, to in seen][-2:] == [
        ("stay", "Stage final"),
        ("progress", "Graduated"),
    ]
