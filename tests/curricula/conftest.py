"""Fixtures of the curriculum tests: the AIND anchors and graphviz's dot."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.anchors import AIND as ANCHORS
from tests.support.scripts import REPO

AIND_CURRICULA = ANCHORS / "curricula"
AIND_DATA = ANCHORS / "data"
DATA = Path(__file__).parent / "data"
REGIMEN = DATA / "VisualBehavior_Task1A_v1.0.0.yml"


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
