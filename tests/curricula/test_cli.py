"""`shaping curriculum validate|show|render|diff|import` as an operator runs them."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from shaping.services.cli import app
from tests.support.aind import AIND_CURRICULA
from tests.support.curricula import REGIMEN
from tests.support.scripts import REPO

BASIC = REPO / "curricula" / "basic-shaping.yaml"


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_validate_reports_every_file_and_fails_on_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASIC.read_text().replace("to: s2_training\n", "to: s2_trainig\n", 1))
    code, output = invoke("curriculum", "validate", str(BASIC), str(bad))
    assert code == 1
    assert "ok: " in output and "basic-shaping 0.1.0, 4 stages, 4 rules" in output
    assert (
        f"{bad}:46, stage 's1_habituation', rule 'engaged_and_accurate': goes to unknown "
        "stage 's2_trainig'" in output
    )
    assert f"invalid: {bad}" in output
    assert invoke("curriculum", "validate", str(BASIC))[0] == 0


def test_validate_takes_aind_files_and_says_what_is_wrong_with_them() -> None:
    code, output = invoke(
        "curriculum",
        "validate",
        str(AIND_CURRICULA / "Coupled Baiting_curriculum_v2.3_schema_v1.0.json"),
        str(AIND_CURRICULA / "Dummy task_curriculum_v0.1_schema_v1.0.json"),
    )
    assert code == 1
    assert "Coupled Baiting 2.3.0, 6 stages, 9 rules" in output
    assert "unbalanced parentheses" in output


def test_show_prints_resolved_parameters_as_json() -> None:
    code, output = invoke("curriculum", "show", str(BASIC), "--stage", "graduated")
    assert code == 0
    shown = json.loads(output)
    assert shown["stage"] == "graduated"
    assert shown["parameters"]["reward_volume_ul"] == 2.5  # from the full_task base
    assert shown["parameters"]["session_minutes"] == 45  # from the defaults
    code, output = invoke("curriculum", "show", str(BASIC))
    assert set(json.loads(output)["stages"]) == {
        "s1_habituation",
        "s2_training",
        "s3_full_task",
        "graduated",
    }
    code, output = invoke("curriculum", "show", str(BASIC), "--stage", "s9")
    assert code == 2 and "has no stage 's9'" in output


def test_render_writes_svg_or_dot(tmp_path: Path, dot: str) -> None:
    out = tmp_path / "basic.svg"
    code, _ = invoke("curriculum", "render", str(BASIC), "--out", str(out))
    assert code == 0
    svg = out.read_text()
    assert "<svg" in svg and "s3_full_task" in svg and "Accuracy over the last 200" in svg
    code, output = invoke("curriculum", "render", str(BASIC), "--format", "dot")
    assert code == 0 and output.startswith('digraph "basic-shaping 0.1.0"')


def test_render_says_how_to_get_dot_when_it_is_missing(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PATH", "/nonexistent")
    code, output = invoke("curriculum", "render", str(BASIC))
    assert code == 2 and "apt-get install graphviz" in output


def test_diff_shows_changes_and_refuses_a_too_small_bump(tmp_path: Path) -> None:
    tweaked = tmp_path / "tweaked.yaml"
    tweaked.write_text(
        BASIC.read_text()
        .replace("version: 0.1.0", "version: 0.1.1")
        .replace("accuracy(window=200) >= 0.65", "accuracy(window=200) >= 0.7")
    )
    code, output = invoke("curriculum", "diff", str(BASIC), str(tweaked))
    assert code == 1
    assert "needs a minor bump, the version says patch" in output
    assert (
        "[minor] stage s1_habituation, rule engaged_and_accurate: condition "
        "accuracy(window=200) >= 0.65 and session_trials >= 100 -> "
        "accuracy(window=200) >= 0.7 and session_trials >= 100" in output
    )
    tweaked.write_text(tweaked.read_text().replace("version: 0.1.1", "version: 0.2.0"))
    assert invoke("curriculum", "diff", str(BASIC), str(tweaked))[0] == 0


def test_import_writes_a_valid_curriculum(tmp_path: Path) -> None:
    out = tmp_path / "vb.yaml"
    code, _ = invoke("curriculum", "import", "mtrain", str(REGIMEN), "--out", str(out))
    assert code == 0
    assert out.read_text().startswith("# Imported by `shaping curriculum import mtrain`")
    code, output = invoke("curriculum", "validate", str(out))
    assert code == 0 and "VisualBehavior_Task1A 1.0.0, 9 stages, 10 rules" in output
    code, output = invoke(
        "curriculum", "import", "aind", str(AIND_CURRICULA / "DynamicForagingCurriculum_v1.0.json")
    )
    assert code == 2 and "is a JSON Schema" in output
