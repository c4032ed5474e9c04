"""Hostile identifiers typed at the CLI are refused with the grammar's rule before anything is
sent or read: no traceback, nothing published (the broker given here does not exist, so a
command that went on would fail differently), and the refusal itself shows no raw control
character."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from shaping.services.cli import app

HOSTILE = [
    "M\x1b[2J\x1b[H",  # clears an operator's screen
    "M1\x00",
    "../../etc/passwd",
    "M1'; DROP TABLE mouse_status;--",
    "M" * 100_000,
    "",
]
NOWHERE = ["--bootstrap", "127.0.0.1:9", "--wait", "0"]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200", "NO_COLOR": "1"})
    return result.exit_code, result.output + (str(result.exception or ""))


@pytest.mark.parametrize("bad", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize(
    "command",
    [
        ["enroll", "{m}", "--curriculum", "basic-shaping", "--bootstrap", "127.0.0.1:9"],
        ["override", "{m}", "--stage", "s2_training", "--reason", "r", *NOWHERE],
        ["eject", "{m}", "--reason", "r", *NOWHERE],
        ["adjust", "{m}", "--set", "max_trials=300", "--reason", "r", *NOWHERE],
        ["history", "{m}", "--db-url", "sqlite:///:memory:"],
    ],
    ids=lambda c: c[0],
)
def test_hostile_mouse_ids_are_refused_with_the_rule(command: list[str], bad: str) -> None:
    code, out = run(*[bad if part == "{m}" else part for part in command])
    assert code == 2, out
    assert "mouse id" in out and "Traceback" not in out
    assert "\x1b" not in out and "\x00" not in out
    assert len(out) < 5_000  # a 100,000-character id is not echoed back


@pytest.mark.parametrize("bad", ["s2\x1b[2J", "s2'; --", "../s2", "s" * 65])
def test_hostile_stage_names_are_refused(bad: str) -> None:
    code, out = run("override", "M1", "--stage", bad, "--reason", "r", *NOWHERE)
    assert code == 2 and "stage" in out, out
    code, out = run("enroll", "M1", "--curriculum", "basic-shaping", "--start-stage", bad)
    assert code == 2 and "stage" in out, out
    code, out = run("status", "--stage", bad, "--db-url", "sqlite:///:memory:")
    assert code == 2 and "stage" in out, out
