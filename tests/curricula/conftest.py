"""Fixtures of the curriculum tests: graphviz's dot. (Paths to the AIND anchors and the mtrain
regimen are in tests/support/aind.py and tests/support/curricula.py.)"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support.scripts import REPO


@pytest.fixture(scope="session")
def dot() -> str:
    """graphviz's dot, installed with apt-get when missing (as PostgreSQL is)."""
    if shutil.which("dot") is None:
        subprocess.run([str(REPO / "infra" / "graphviz" / "graphviz.sh"), "ensure"], check=False)
    path = shutil.which("dot")
    if path is None:
        pytest.fail(
            "graphviz's dot is missing and could not be installed: apt-get install graphviz"
        )
    return path
