"""The shaping command line: help everywhere, helpful errors, the demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shaping.services.cli import app

COMMANDS = [
    [],
    ["demo"],
    ["processor"],
    ["projector"],
    ["rig"],
    ["rig", "simulate"],
    ["topics"],
    ["topics", "create"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "shaping")
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_a_typo_gets_a_suggestion_not_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shaping.services.cli", "procesor"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "Did you mean 'processor'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_option_value_is_explained() -> None:
    result = CliRunner().invoke(app, ["demo", "--mice", "0"])
    assert result.exit_code == 2
    assert "--mice" in result.output


def test_demo_prints_the_status_and_names_its_folder(tmp_path: Path) -> None:
    out = tmp_path / "lab"
    args = ["demo", "--out", str(out), "--mice", "2", "--rigs", "1", "--days", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "M001" in result.output and "M002" in result.output
    assert str(out / "shaping.sqlite") in result.output
    assert (out / "events.jsonl").exists()
