"""Fixtures of the operations tests."""

from __future__ import annotations

import os

import pytest

from tests.support.ops import PROMETHEUS_SH, run


@pytest.fixture(scope="session")
def prometheus_installed() -> None:
    """Debian's prometheus and promtool, installed by the project's own script if missing."""
    run(["bash", str(PROMETHEUS_SH), "install"], dict(os.environ))
