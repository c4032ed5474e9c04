"""Curricula are checked completely when loaded: each problem names the file, the line, the
stage and the rule."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from shaping.services.curricula.errors import CurriculumInvalid, Problem
from shaping.services.curricula.loader import check_file, load_curriculum

GOOD = """\
name: tiny
version: 1.0.0
description: Two stages and a graduation.
metrics: [accuracy, session_trials, sessions_at_stage]
defaults:
  iti_s: 2.0
  max_trials: 300
bases:
  hard: {difficulty: 0.8}
adjustable:
  max_trials: {minimum: 100, maximum: 500}
stages:
  - name: easy
    parameters: {difficulty: 0.2}
    rules:
      - name: accurate
        decision: progress
        to: hard
        when: accuracy(window=100) >= 0.7 and session_trials >= 50
        description: Accurate and engaged.
  - name: hard
    extends: [hard]
    rules:
      - name: expert
        decision: graduate
        to: done
        when: accuracy(window=100) >= 0.85 and sessions_at_stage >= 2
        description: Expert for two sessions.
      - name: collapsed
        decision: rollback
        to: easy
        when: accuracy(window=100) < 0.5
        description: Accuracy collapsed.
  - name: done
    extends: [hard]
    terminal: true
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(tmp_path: Path, text: str) -> list[Problem]:
    compiled, problems = check_file(write(tmp_path, text))
    assert compiled is None, "expected the curriculum to be rejected"
    return [p for p in problems if p.severity == "error"]


def line_of(text: str, fragment: str) -> int:
    """The last line holding ``fragment`` (the edited one in these tests)."""
    return [i for i, line in enumerate(text.splitlines(), 1) if fragment in line][-1]


def test_a_good_curriculum_loads_with_resolved_parameters(tmp_path: Path) -> None:
    curriculum = load_curriculum(write(tmp_path, GOOD))
    assert curriculum.stage_names == ["easy", "hard", "done"]
    assert curriculum.parameters("hard") == {"iti_s": 2.0, "max_trials": 300, "difficulty": 0.8}
    assert curriculum.parameters("easy")["difficulty"] == 0.2
    assert (curriculum.first_stage, curriculum.trial_window) == ("easy", 100)
    assert curriculum.content_hash.startswith("sha256:")


@pytest.mark.parametrize(
    ("old", "new", "fragment", "stage", "rule", "words"),
    [
        ("to: hard\n", "to: hardd\n", "to: hardd", "easy", "accurate", "unknown stage 'hardd'"),
        (
            "session_trials >= 50",
            "sesion_trials >= 50",
            "sesion_trials",
            "easy",
            "accurate",
            "did you mean 'session_trials'",
        ),
        (
            "accuracy(window=100) < 0.5",
            "accuracy(window=100) < 0.5)",
            "< 0.5)",
            "hard",
            "collapsed",
            "unbalanced parentheses",
        ),
        (
            "decision: graduate",
            "decision: progress\n        trigger: sometimes",
            "trigger: sometimes",
            "hard",
            "expert",
            "Input should be 'auto' or 'manual'",
        ),
        ("name: collapsed", "name: expert", "name: expert", "hard", "expert", "duplicate rule"),
        ("to: easy", "to: hard", "to: hard", "hard", "collapsed", "goes to its own stage"),
        (
            "decision: progress\n        to: hard",
            "decision:   graduate\n        to: hard",
            "decision:   graduate",
            "easy",
            "accurate",
            "not a terminal stage",
        ),
        (
            "extends: [hard]\n    rules",
            "extends: [harder]\n    rules",
            "[harder]",
            "hard",
            None,
            "unknown base",
        ),
    ],
)
def test_each_problem_names_file_line_stage_and_rule(
    tmp_path: Path,
    old: str,
    new: str,
    fragment: str,
    stage: str,
    rule: str | None,
    words: str,
) -> None:
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    problems = problems_of(tmp_path, text)
    matching = [p for p in problems if words in p.message]
    assert matching, [str(p) for p in problems]
    problem = matching[0]
    assert (problem.stage, problem.rule) == (stage, rule)
    assert problem.line == line_of(text, fragment)
    assert problem.file is not None and problem.file.endswith("c.yaml")
    assert str(problem).startswith(f"{problem.file}:{problem.line}, stage {stage!r}")


def test_unreachable_stages_and_stages_with_no_way_out_are_rejected(tmp_path: Path) -> None:
    text = GOOD.replace(
        "  - name: done\n",
        "  - name: island\n    parameters: {difficulty: 0.5}\n  - name: done\n",
    )
    messages = {(p.stage, p.message.split(":")[0]) for p in problems_of(tmp_path, text)}
    assert ("island", "unreachable") in messages
    assert ("island", "no way out") in messages


def test_a_terminal_stage_with_automatic_rules_is_rejected(tmp_path: Path) -> None:
    text = GOOD + textwrap.indent(
        "rules:\n  - {name: back, decision: rollback, to: easy, when: session_total > 1, "
        "description: back}\n",
        "    ",
    )
    [problem] = problems_of(tmp_path, text)
    assert problem.stage == "done" and "terminal stage has no automatic rules" in problem.message


def test_duplicate_stage_names_and_yaml_keys_are_rejected(tmp_path: Path) -> None:
    text = GOOD.replace("  - name: done\n", "  - name: easy\n")
    assert any("used twice" in p.message for p in problems_of(tmp_path, text))
    doubled = GOOD.replace("  iti_s: 2.0\n", "  iti_s: 2.0\n  iti_s: 3.0\n")
    [problem] = problems_of(tmp_path, doubled)
    assert "'iti_s' is given twice (first on line 6)" in problem.message
    assert problem.line == 7


def test_metrics_read_but_not_listed_are_rejected(tmp_path: Path) -> None:
    text = GOOD.replace(
        "metrics: [accuracy, session_trials, sessions_at_stage]", "metrics: [accuracy]"
    )
    problems = problems_of(tmp_path, text)
    assert {(p.stage, p.rule) for p in problems} == {("easy", "accurate"), ("hard", "expert")}
    assert all("metrics list lacks" in p.message for p in problems)


def test_an_unknown_metric_must_be_declared_and_then_is_usable(tmp_path: Path) -> None:
    text = GOOD.replace(
        "metrics: [accuracy, session_trials, sessions_at_stage]",
        "metrics: [accuracy, session_trials, sessions_at_stage, licks_per_minute]",
    ).replace("session_trials >= 50", "session_trials >= 50 and licks_per_minute > 3")
    declaration, use = problems_of(tmp_path, text)
    assert "unknown metric 'licks_per_minute': declare" in declaration.message
    assert declaration.line == 4
    assert (use.stage, use.rule) == ("easy", "accurate")
    declared = text.replace(
        "licks_per_minute]",
        "{name: licks_per_minute, description: 'Licks per minute, from the rig.'}]",
    )
    curriculum = load_curriculum(write(tmp_path, declared, "d.yaml"))
    assert "licks_per_minute" in curriculum.metrics_used


def test_policies_and_adjustments_are_checked(tmp_path: Path) -> None:
    text = GOOD.replace(
        "    parameters: {difficulty: 0.2}\n",
        "    parameters: {difficulty: 0.2}\n"
        "    adjustable: {max_trials: {maximum: 200}}\n"
        "    policies:\n"
        "      - name: harder\n"
        "        when: session_accuracy > 0.9\n"
        "        set: {dificulty: 'difficulty + 0.1', iti_s: 'iti_s * 2'}\n"
        "        description: Harder.\n",
    )
    messages = [p.message for p in problems_of(tmp_path, text)]
    assert any("sets unknown parameter 'dificulty'" in m for m in messages)
    assert any("max_trials = 300 is outside" in m for m in messages)


def test_yaml_syntax_errors_have_a_line(tmp_path: Path) -> None:
    text = GOOD.replace("  iti_s: 2.0\n", "  iti_s: [2.0\n")
    [problem] = problems_of(tmp_path, text)
    assert problem.message.startswith("not valid YAML")
    assert problem.line is not None


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    text = GOOD.replace("to: hard\n", "to: nowhere\n").replace("< 0.5", "< 0.5 and")
    with pytest.raises(CurriculumInvalid) as caught:
        load_curriculum(write(tmp_path, text))
    assert "2 problem(s)" in str(caught.value)


def test_versions_must_be_semantic(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, GOOD.replace("version: 1.0.0", "version: '2.3'"))
    assert "not a semantic version" in problem.message and problem.line == 2
