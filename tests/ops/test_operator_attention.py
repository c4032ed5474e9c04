"""``shaping status --attention``: the mice that need a person, most urgent first, with the
reasons, read from real status tables the embedded runtime wrote (processor step and projector
on SQLite) after sessions whose outcomes the tests chose."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from typer.testing import CliRunner

from shaping.services.cli import app
from shaping.services.domain import CurriculumCatalog
from shaping.services.operator.queries import (
    ATTENTION_ORDER,
    MouseAttention,
    attention,
    terminal_stage_check,
)
from tests.support.operator_lab import BAD, GOOD, POOR, Lab, days_ago, lab_catalog

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Mice in every situation the attention list knows, and two that are fine.

    * STALL: 4 sessions at stage a (accuracy 0.5), a slow_learner warning from the 3rd, and an
      event the processor rejected an hour ago.
    * ROLL: progressed to b, then rolled back to a; an event rejected 3 days ago (too old).
    * LATE: one good session, then a decision on a 2nd session whose assignment has not
      reached the tables (stale assignment).
    * NOCUR: enrolled on a curriculum the processor does not know (rejected; the status
      table does not know the mouse).
    * NEW: enrolled, and its assignment has not reached the tables.
    * GRAD: graduated to the terminal stage ``done`` and ran 3 sessions there (no stall).
    * FINE: one good session (now at b, nothing wrong).
    """
    folder = tmp_path_factory.mktemp("attention")
    catalog = lab_catalog(folder / "curricula")
    lab = Lab(folder / "lab.sqlite", catalog)
    try:
        start = days_ago(20, NOW)
        for mouse in ("STALL", "ROLL", "LATE", "GRAD", "FINE"):
            lab.enroll(mouse, start)
        for day, outcomes in enumerate([POOR] * 4, start=1):
            lab.session("STALL", outcomes, days_ago(20 - day, NOW))
        lab.refused_event("STALL", days_ago(1 / 24, NOW))
        lab.session("ROLL", GOOD, days_ago(19, NOW))
        lab.session("ROLL", BAD, days_ago(18, NOW))
        lab.refused_event("ROLL", days_ago(3, NOW))
        lab.session("LATE", GOOD, days_ago(19, NOW))
        lab.decision_without_assignment("LATE", days_ago(18, NOW))
        lab.enroll("NOCUR", days_ago(2 / 24, NOW), curriculum="no-such-curriculum")
        lab.enrolment_without_assignment("NEW", days_ago(1, NOW))
        for day in range(1, 7):  # a -> b, b, b -> done, then 3 at done (GOOD each time)
            lab.session("GRAD", GOOD, days_ago(20 - day, NOW))
        lab.session("FINE", GOOD, days_ago(19, NOW))
    finally:
        lab.close()
    return lab.url


def lab_catalog_for(url: str) -> CurriculumCatalog:
    return lab_catalog(Path(url.removeprefix("sqlite:///")).parent / "curricula")


def items_of(url: str, **options: Any) -> list[MouseAttention]:
    options = {"now": NOW, "stalled_after": 3, **options}
    if options.pop("terminal", True):
        options["is_terminal"] = terminal_stage_check(lab_catalog_for(url))
    engine = create_engine(url)
    try:
        return attention(engine, **options)
    finally:
        engine.dispose()


def found(url: str, **options: Any) -> dict[str, list[tuple[str, str]]]:
    return {
        item.mouse_id: [(r.kind, r.text) for r in item.reasons] for item in items_of(url, **options)
    }


def test_each_mouse_that_needs_a_person_is_listed_with_its_reasons(lab: str) -> None:
    result = found(lab)
    assert set(result) == {"STALL", "ROLL", "LATE", "NOCUR", "NEW"}  # not GRAD and FINE
    stall = dict(result["STALL"])
    assert stall["stalled"] == "stalled: 4 sessions at a"
    assert stall["warning"].startswith("warning slow_learner at a: [bold]Three[/bold]")
    assert stall["rejected"].startswith("1 rejected event in the last 24 h; latest ")
    roll = dict(result["ROLL"])
    assert roll == {"regressed": "regressed: rollback b -> a after session 2 (collapsed)"}
    assert result["LATE"] == [
        ("assignment", "stale assignment: for session 2, but 2 sessions are done (the next is 3)")
    ]
    [(kind, text)] = result["NOCUR"]
    assert kind == "rejected" and "(a mouse the status table does not know)" in text
    assert "no-such-curriculum" in text
    [(kind, text)] = result["NEW"]
    assert kind == "assignment" and text.startswith("enrolled ") and "no assignment" in text


def test_the_most_urgent_come_first(lab: str) -> None:
    items = items_of(lab)
    # rejected events first (STALL has more reasons than NOCUR), then a missing assignment,
    # a stale one, then the regression; within a mouse, its reasons in the same order
    assert [item.mouse_id for item in items] == ["STALL", "NOCUR", "NEW", "LATE", "ROLL"]
    for item in items:
        ranks = [ATTENTION_ORDER.index(r.kind) for r in item.reasons]
        assert ranks == sorted(ranks)


def test_the_thresholds_are_options(lab: str) -> None:
    narrow = found(lab, rejected_hours=0.5, stalled_after=5)
    assert "NOCUR" not in narrow  # rejected 2 h ago
    assert [kind for kind, _ in narrow["STALL"]] == ["warning"]  # 4 sessions: no stall at 5
    wide = found(lab, rejected_hours=24 * 4)
    assert dict(wide["ROLL"])["rejected"].startswith("1 rejected event in the last 96 h")
    # ROLL's rollback was on its 2nd (last) session: in the window even of 1 session; STALL's
    # warning was raised on its 3rd and 4th sessions, so it stays too
    recent = found(lab, recent_sessions=1)
    assert "regressed" in dict(recent["ROLL"]) and "warning" in dict(recent["STALL"])
    # without knowing that ``done`` is the curriculum's last stage, GRAD counts as stalled
    assert dict(found(lab, terminal=False)["GRAD"])["stalled"] == "stalled: 3 sessions at done"


def test_status_attention_prints_the_list_and_how_it_is_ranked(lab: str) -> None:
    result = CliRunner().invoke(
        app,
        ["status", "--attention", "--stalled-after", "3", "--db-url", lab],
        env={"COLUMNS": "80", "SHAPING_CURRICULA_DIR": str(Path(lab[10:]).parent / "curricula")},
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "5 mice need a person, most urgent first" in out
    order = [out.index(f" {mouse} ") for mouse in ("STALL", "NOCUR", "NEW", "LATE", "ROLL")]
    assert order == sorted(order)
    assert "GRAD" not in out and "FINE" not in out
    flat = " ".join(re.sub(r"[│┃]", " ", out).split())
    assert "warning slow_learner at a: [bold]Three[/bold] or more sessions at a." in flat
    assert "stalled: 4 sessions at a" in flat
    assert all(len(line) <= 80 for line in out.splitlines())
    help_text = CliRunner().invoke(app, ["status", "--help"], env={"COLUMNS": "200"}).output
    assert "--attention" in help_text and "Ranking" in help_text


def test_attention_refuses_filters_it_does_not_use(lab: str) -> None:
    result = CliRunner().invoke(app, ["status", "--attention", "--stage", "a", "--db-url", lab])
    assert result.exit_code == 2 and "drop --stage and --rig" in result.output
