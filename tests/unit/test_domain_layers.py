"""The domain's modules import one way, so none needs a callback to dodge a circular import:
core -> recompute -> judge -> interventions -> outputs, over the foundations."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.scripts import REPO

DOMAIN = REPO / "services" / "domain"
ORDER = ["outputs", "gating", "interventions", "judge", "recompute", "core"]
"""Each module may import those before it, never those after it."""


def domain_imports(path: Path) -> set[str]:
    """The domain modules a file imports (at any depth, including inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            prefix = "shaping.services.domain."
            if name.startswith(prefix):
                found.add(name.removeprefix(prefix).split(".")[0])
    return found


@pytest.mark.parametrize("module", ORDER)
def test_a_domain_module_imports_none_of_the_modules_above_it(module: str) -> None:
    above = set(ORDER[ORDER.index(module) + 1 :])
    assert domain_imports(DOMAIN / f"{module}.py") & above == set()


def test_the_foundations_import_none_of_the_engine() -> None:
    for path in DOMAIN.glob("*.py"):
        if path.stem in ORDER or path.stem == "__init__":
            continue
        assert domain_imports(path) & set(ORDER) == set(), path.name


def test_every_assignment_is_built_by_the_one_constructor() -> None:
    builders = [
        path.name for path in sorted(DOMAIN.glob("*.py")) if "AssignmentIssued(" in path.read_text()
    ]
    assert builders == ["outputs.py"]


def test_no_domain_module_touches_global_random_state() -> None:
    for path in DOMAIN.glob("*.py"):
        code = "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")
        )
        tree = ast.parse(code)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
                chain = f"{getattr(node.value.value, 'id', '')}.{node.value.attr}.{node.attr}"
                assert not chain.startswith(("np.random.seed", "numpy.random.seed")), path.name
                if chain.startswith(("np.random.", "numpy.random.")):
                    assert node.attr in {"RandomState", "default_rng", "Generator"}, (
                        f"{path.name}: {chain}"
                    )
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert "random" not in names, f"{path.name} imports the random module"
