"""The rig's commands print data escaped: a mouse id from the config file or a reason from an
assignment cannot send control characters or escape sequences to the rig's terminal."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shaping.rig.cli import ConsoleDisplay
from shaping.rig.config import load_config
from shaping.services.cli import app
from tests.support.rig import assignment, seed_cache, write_config

pytestmark = pytest.mark.filterwarnings("ignore::gpiozero.exc.PinFactoryFallback")
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def test_rig_status_escapes_mouse_ids_and_reasons(tmp_path: Path) -> None:
    path = write_config(tmp_path, mice=["M001", "HOSTILE"])
    # TOML's escapes put the control characters into the id (the file itself stays text)
    path.write_text(path.read_text().replace('"HOSTILE"', '"M\\u001b[2J\\u001b]0;x\\u0007"'))
    config = load_config(path)
    assert config.mice[1] == "M\x1b[2J\x1b]0;x\x07"
    ejected = assignment().model_copy(
        update={"reason": "ejected", "reason_detail": "gone\x1b[31m [bold]now[/bold]"}
    )
    seed_cache(config, ejected)
    result = CliRunner().invoke(app, ["rig", "status", "--config", str(path), "--timeout", "1"])
    out = result.output
    assert result.exit_code == 0, out
    assert not RAW.findall(out), repr(out)
    assert "  M\\x1b[2J\\x1b]0;x\\x07:" in out
    assert "EJECTED: gone\\x1b[31m [bold]now[/bold]" in out


def test_the_live_display_escapes_what_it_prints() -> None:
    lines: list[str] = []
    display = ConsoleDisplay(lines.append, live=False)
    display.message("stage s1\x1b[2J\nnext line")
    assert lines == ["stage s1\\x1b[2J\nnext line"]
