"""A rig (a Raspberry Pi) installs only light dependencies: the base install plus gpiozero."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

HEAVY = ("faust", "sqlalchemy", "pandas", "psycopg", "aiokafka", "prometheus_client")
PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def test_base_and_rig_dependencies_are_light() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    light = project["dependencies"] + project["optional-dependencies"]["rig"]
    for requirement in light:
        assert not requirement.lower().startswith(
            ("faust", "sqlalchemy", "pandas", "psycopg", "prometheus")
        ), requirement


def test_rig_code_and_the_cli_import_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "import rig.lab, rig.kafka_transport, rig.session, rig.sim, services.cli\n"
        "import rig.agent, rig.calibration, rig.cli, rig.clock, rig.config, rig.devices\n"
        "import rig.drain, rig.follow, rig.gpio, rig.locks, rig.reach, rig.simulation\n"
        "import rig.store, rig.task\n"
        "from typer.testing import CliRunner\n"
        "result = CliRunner().invoke(services.cli.app, ['rig', 'simulate', '--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
