"""The SQLite adapter checked against the ProjectionStore contract.

:class:`ProjectionStoreContract` (tests/support/projection_contract.py) is the one test suite of
the port: every adapter's test class derives from it and supplies a ``store`` fixture (here
SQLite in a temporary file; ``tests/integration/test_projector_postgres.py`` runs it against a
real PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shaping.services.projector.store import ProjectionStore
from tests.support.builders import mouse_story
from tests.support.projection_contract import (
    CONSUMER,
    TOPICS,
    ProjectionStoreContract,
    to_messages,
)
from tests.support.wiring import sql_store


class TestSqliteProjectionStore(ProjectionStoreContract):
    """The contract against SQLite in a temporary file."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[ProjectionStore]:
        store = sql_store(f"sqlite:///{tmp_path / 'projection.db'}")
        store.reset()
        yield store
        store.close()

    def test_tables_are_created_once_and_kept(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'kept.db'}"
        first = sql_store(url)
        first.apply_batch(CONSUMER, to_messages(mouse_story("M1", [])))
        snap = first.snapshot()
        first.close()
        # Reopening must not recreate (and so empty) existing tables.
        second = sql_store(url)
        assert second.snapshot() == snap
        assert second.committed_offsets(CONSUMER) == {
            (TOPICS.accepted, 0): 1,
            (TOPICS.assignments, 0): 1,
        }
        second.close()
