"""Every AIND curriculum file imports, validates and renders; the lambdas are translated into
the rule language (parsed, never run); broken files are refused with stage, rule and reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from shaping.services.curricula.aind import convert_file, stage_alias, translate_condition
from shaping.services.curricula.errors import ImportFailed, RuleSyntaxError
from shaping.services.curricula.render import to_dot, to_svg
from shaping.services.curricula.validate import check_curriculum
from tests.support.aind import AIND_CURRICULA

FILES = sorted(AIND_CURRICULA.glob("*.json"))
SCHEMAS = {"DummyTaskCurriculum_v1.0.json", "DynamicForagingCurriculum_v1.0.json"}
BROKEN = {"Dummy task_curriculum_v0.1_schema_v1.0.json"}
CURRICULA = [p for p in FILES if p.name not in SCHEMAS | BROKEN]


def test_the_anchor_folder_is_what_these_tests_expect() -> None:
    assert len(FILES) == 25
    assert len(CURRICULA) == 22


@pytest.mark.parametrize("path", CURRICULA, ids=lambda p: p.name)
def test_every_aind_curriculum_imports_validates_and_renders(path: Path, dot: str) -> None:
    document, _ = convert_file(path)
    compiled, problems = check_curriculum(document, file=path.name)
    assert compiled is not None, [str(p) for p in problems]
    assert [p for p in problems if p.severity == "error"] == []
    svg = to_svg(compiled)
    assert svg.startswith(b"<?xml") and b"</svg>" in svg
    # every rule is drawn with its description
    for stage in compiled.stages.values():
        for rule in stage.rules:
            assert rule.rule.to in to_dot(compiled)
    # AIND's stage enum names are aliases, and each stage keeps AIND's full parameter set
    for name, stage in compiled.stages.items():
        assert stage_alias(name) in stage.stage.aliases
    import json

    raw = json.loads(path.read_text())
    for name, values in raw["parameters"].items():
        expected = {k: v for k, v in values.items() if k not in ("training_stage", "description")}
        assert compiled.parameters(name) == expected


def test_the_rule_semantics_survive_the_translation() -> None:
    assert (
        translate_condition(
            "lambda metrics:\n  metrics.session_total >= 10 \n and\n"
            "  metrics.session_at_current_stage >= 5\n and\n"
            "  np.mean(metrics.finished_trials[-5:]) >= 500"
        )
        == "session_total >= 10 and sessions_at_stage >= 5 and mean(finished_trials[-5:]) >= 500"
    )
    assert (
        translate_condition(
            "lambda m: (m.finished_trials[-1] < 250 or m.foraging_efficiency[-1] < 0.50) "
            "and m.session_at_current_stage >= 3"
        )
        == "(finished_trials[-1] < 250 or foraging_efficiency[-1] < 0.5) and sessions_at_stage >= 3"
    )


@pytest.mark.parametrize(
    ("condition", "words"),
    [
        ("lambda metrics: __import__('os').system('rm -rf /')", "not understood"),
        ("lambda metrics: os.system('x') or metrics.session_total > 1", "not understood"),
        ("lambda metrics: np.std(metrics.finished_trials[-5:]) > 1", "'std' is not supported"),
        ("lambda metrics: metrics > 1", "must be followed by a metric name"),
        ("metrics.session_total > 1", "must be 'lambda metrics"),
        ("lambda a, b: a.x > 1", "must be 'lambda metrics"),
        ("lambda metrics: np.mean(metrics.x[-5:] > 10", "unbalanced parentheses"),
    ],
)
def test_conditions_are_never_run_and_anything_else_is_refused(condition: str, words: str) -> None:
    with pytest.raises(RuleSyntaxError, match=words):
        translate_condition(condition)


def test_the_upstream_syntax_error_is_caught_at_import_with_stage_and_rule() -> None:
    """Dummy task v0.1 has an unbalanced parenthesis that AIND's engine would only hit when a
    mouse reaches 'Stage final' and its rule is eval'd."""
    with pytest.raises(ImportFailed) as caught:
        convert_file(AIND_CURRICULA / "Dummy task_curriculum_v0.1_schema_v1.0.json")
    errors = [p for p in caught.value.problems if p.severity == "error"]
    [problem] = errors
    assert (problem.stage, problem.rule) == ("Stage final", "progress_to_graduated (#1)")
    assert "unbalanced parentheses (2 opened, 1 closed)" in problem.message
    warnings = [p.message for p in caught.value.problems if p.severity == "warning"]
    assert any("from_stage says 'Stage 2'" in w for w in warnings)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_json_schemas_are_recognised_as_schemas(name: str) -> None:
    with pytest.raises(ImportFailed, match=r"is a JSON Schema .* not a curriculum"):
        convert_file(AIND_CURRICULA / name)


def test_versions_with_suffixes_become_names() -> None:
    document, _ = convert_file(
        AIND_CURRICULA / "Uncoupled Without Baiting_curriculum_v2.2.1rwdDelay159_schema_v1.0.json"
    )
    assert (document["name"], document["version"]) == (
        "Uncoupled Without Baiting rwdDelay159",
        "2.2.1",
    )
    assert document["origin"]["version"] == "2.2.1rwdDelay159"


def test_an_old_export_without_graduated_parameters_gets_a_terminal_graduated_stage() -> None:
    document, _ = convert_file(AIND_CURRICULA / "Coupled Baiting_curriculum_v0.1_schema_v0.3.json")
    compiled, _ = check_curriculum(document)
    assert compiled is not None
    assert compiled.stages["Graduated"].stage.terminal
    assert compiled.parameters("Graduated") == compiled.parameters("Stage final")
