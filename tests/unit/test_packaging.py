"""A rig (a Raspberry Pi) installs only light dependencies: the base install plus gpiozero."""

from __future__ import annotations

import pkgutil
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
        "for m in pkgutil.walk_packages(shaping.rig.__path__, 'shaping.rig.'):\n"
        "    importlib.import_module(m.name)\n"
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


def test_the_rig_cli_contract_names_every_other_rig_module() -> None:
    """import-linter cannot exclude one module of a package from a forbidden contract on the
    package, so the contract lists the rig's top-level modules and sub-packages: a new one must
    be added there."""
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    [contract] = [c for c in contracts if c.get("forbidden_modules") == ["shaping.rig.cli"]]
    rig = [
        f"shaping.rig.{m.name}"
        for m in pkgutil.iter_modules([str(PYPROJECT.parent / "rig")])
        if m.name != "cli"
    ]
    assert sorted(contract["source_modules"]) == sorted(rig)


def test_every_direct_dependency_is_pinned_in_the_lock_within_its_range() -> None:
    """infra/bootstrap.sh installs with requirements.lock as constraints: a dependency added to
    pyproject.toml (or a range changed) without `make lock` would install unpinned."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads(PYPROJECT.read_text())["project"]
    extras = project["optional-dependencies"]
    direct = [
        Requirement(text)
        for text in project["dependencies"] + extras["services"] + extras["rig"] + extras["dev"]
    ]
    pins: dict[str, list[str]] = {}
    for line in (PYPROJECT.parent / "requirements.lock").read_text().splitlines():
        pinned = line.split(";")[0].strip()
        if "==" in pinned and not line.startswith((" ", "#")):
            name, version = pinned.split("==")
            pins.setdefault(canonicalize_name(name), []).append(version)
    unpinned = sorted(str(r) for r in direct if canonicalize_name(r.name) not in pins)
    assert unpinned == [], f"not in requirements.lock (run `make lock`): {unpinned}"
    outside = sorted(
        f"{r.name}=={version} (pyproject: {r.specifier})"
        for r in direct
        for version in pins[canonicalize_name(r.name)]
        if not r.specifier.contains(version, prereleases=True)
    )
    assert outside == [], f"pinned outside pyproject's range (run `make lock`): {outside}"
