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
        "import importlib, pkgutil, shaping.rig, shaping.services.cli\n"
        "for m in pkgutil.iter_modules(shaping.rig.__path__):\n"
        "    importlib.import_module('shaping.rig.' + m.name)\n"
        "from typer.testing import CliRunner\n"
        "result = CliRunner().invoke(shaping.services.cli.app, ['rig', 'simulate', '--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_every_package_folder_is_installed_under_the_shaping_namespace() -> None:
    """A package folder missing from pyproject's list would be missing from the wheel."""
    listed = set(tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["packages"])
    repo = PYPROJECT.parent
    found = {
        "shaping." + ".".join(init.parent.relative_to(repo).parts)
        for top in ("services", "schemas", "rig", "curricula")
        for init in (repo / top).glob("**/__init__.py")
    }
    assert found == listed


def test_nothing_generic_is_importable_from_site_packages(tmp_path: Path) -> None:
    """Outside the repository only `shaping` is importable: no top-level `services` or `rig`."""
    code = (
        "import importlib.util\n"
        "print([n for n in ('services', 'schemas', 'rig', 'curricula')"
        " if importlib.util.find_spec(n)], bool(importlib.util.find_spec('shaping.rig')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.strip() == "[] True", out.stdout
