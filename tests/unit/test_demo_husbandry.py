"""The embedded demo with weights and water (issue 15, item 7): every mouse restricted and weighed
each morning, supplements after sessions, the lean mouse held, refused by its rig and released
with a reason; the printout ends with the digest of the last day; same seed, same bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from shaping.rig.errors import RigError
from shaping.rig.sim.husbandry import TRAINER
from shaping.rig.sim.lab import LabPlan, run_lab
from shaping.services.cli import app
from shaping.services.embedded.demo import render_report, run_demo
from tests.support.wiring import embedded_runtime

PLAN = LabPlan(n_mice=2, n_rigs=2, n_days=5, seed=7, husbandry=True)
"""M002 is the lean mouse: held on the fourth day (2026-01-08) with this seed."""


def without(folder: Path, text: str) -> str:
    return text.replace(str(folder), "<out>")


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    first = run_demo(tmp_path / "a", PLAN)
    second = run_demo(tmp_path / "b", PLAN)
    assert without(first.out_dir, render_report(first)) == without(
        second.out_dir, render_report(second)
    )
    assert first.log_path.read_bytes() == second.log_path.read_bytes()
    assert first.tables == second.tables


def test_the_lean_mouse_is_held_refused_and_released(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "out", PLAN)
    run, tables = result.run, result.tables
    [held] = run.held
    assert (held.mouse_id, held.rig_id, held.day) == ("M002", "rig-2", 3)
    assert held.message.startswith("M002 is held: ") and "at or below the minimum" in held.message
    [release] = run.releases
    assert (release.mouse_id, release.day) == ("M002", 3)
    # released, it trains after its rig's last slot: no session is lost
    assert len(run.sessions) == PLAN.n_mice * PLAN.n_days
    late = [s for s in run.sessions if s.mouse_id == "M002" and s.day == 3]
    assert [s.started.occurred_at.strftime("%H:%M") for s in late] == ["09:50"]
    # every mouse restricted once and weighed every morning; the lean one lost weight until
    # held, then gained
    assert len(tables["husbandry_restrictions"]) == PLAN.n_mice
    assert len(tables["husbandry_weights"]) == PLAN.n_mice * PLAN.n_days
    lean = [
        r["grams"]
        for r in sorted(tables["husbandry_weights"], key=lambda r: r["weighed_at"])
        if r["mouse_id"] == "M002"
    ]
    assert lean[:4] == sorted(lean[:4], reverse=True) and lean[4] > lean[3]
    [hold] = tables["welfare_holds"]
    assert hold["mouse_id"] == "M002" and hold["reason"] in held.message
    [audit] = [r for r in tables["interventions"] if r["kind"] == "release"]
    assert (audit["requested_by"], audit["reason"]) == (TRAINER, release.reason)
    supplements = [r for r in tables["husbandry_water"] if r["kind"] == "supplement"]
    earned = [r for r in tables["husbandry_water"] if r["kind"] == "earned"]
    assert len(earned) == len(run.sessions) and supplements
    # the printout: the hold, the release, then the digest of the last day
    text = render_report(result)
    assert "2026-01-08 rig-2 refused M002: M002 is held: " in text
    assert "2026-01-08 M002 released: checked after the hold" in text
    assert "Shaping digest of 2026-01-09, lab (welfare policy default)" in text
    assert text.index("Shaping digest") < text.index("Output folder")
    assert result.digest is not None and [m.mouse_id for m in result.digest.mice] == [
        "M001",
        "M002",
    ]


def test_husbandry_needs_somewhere_to_send_the_trainers_commands() -> None:
    with pytest.raises(RigError, match="needs a trainer"):
        run_lab(PLAN, embedded_runtime())


def test_shaping_demo_with_and_without_husbandry(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["demo", "--mice", "2", "--rigs", "2", "--days", "5"]
    shown = runner.invoke(app, [*args, "--out", str(tmp_path / "h")])
    assert shown.exit_code == 0, shown.output
    assert "refused M002" in shown.output and "Shaping digest of 2026-01-09" in shown.output
    plain = runner.invoke(app, [*args, "--out", str(tmp_path / "p"), "--no-husbandry"])
    assert plain.exit_code == 0, plain.output
    assert "Husbandry" not in plain.output and "Shaping digest" not in plain.output
    # the digest of the demo's tables, by the command, is the one the demo printed
    db = f"sqlite:///{tmp_path / 'h' / 'shaping.sqlite'}"
    digest = runner.invoke(app, ["digest", "--day", "2026-01-09", "--db-url", db])
    assert digest.exit_code == 0, digest.output
    assert digest.output.rstrip("\n") in shown.output
