"""Fixtures for tests against the real infrastructure.

Session-scoped: one real Kafka broker (``kafka_bootstrap``) and one real
PostgreSQL (``postgres_url``), each started by our own infra scripts on test
ports with fresh data directories, and stopped at the end of the session.
They start lazily, only when a selected test asks for them, and a start failure
FAILS the requesting tests (it never skips them).

Function-scoped: ``kafka_topics`` (fresh, created topics for every test) and
``unique_group`` (a fresh consumer group id).

Tests using ``kafka_bootstrap``/``kafka_topics`` or ``postgres_url`` get the
``kafka`` / ``postgres`` marker added automatically (they should still carry
it explicitly), so ``-m "not kafka and not postgres"`` deselects them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import TypeVar
from uuid import uuid4

import pytest
from kafka import KafkaAdminClient

from shaping.schemas.topics import TopicNames
from shaping.services.adapters.topics import ensure_topics
from tests.support.kafka import TEST_PARTITIONS, start_kafka
from tests.support.postgres import start_postgres

# Real local SMTP and HTTP receivers, as fixtures for every test (tests/support/receivers.py).
from tests.support.receivers import http_receiver, smtp_server  # noqa: F401
from tests.support.scripts import InfraStartError

log = logging.getLogger(__name__)

# Test stories are dated on fixed days (reproducible), which fall ever further behind the
# broker's clock; services started by the tests (they inherit this environment) accept dates
# up to a century back. The clock window itself is tested with its own settings.
os.environ.setdefault("SHAPING_CLOCK_MAX_BEHIND_DAYS", "36500")

T = TypeVar("T")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & {"kafka_bootstrap", "kafka_topics"} and not item.get_closest_marker("kafka"):
            item.add_marker(pytest.mark.kafka)
        if "postgres_url" in names and not item.get_closest_marker("postgres"):
            item.add_marker(pytest.mark.postgres)


def _start_or_fail(what: str, start: Callable[[], T]) -> T:
    """Start a service; on failure FAIL (never skip) the tests that need it."""
    try:
        return start()
    except InfraStartError as exc:
        message = str(exc)
    pytest.fail(f"could not start {what}:\n{message}", pytrace=False)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address ("127.0.0.1:39092") of a real broker started for this session."""
    broker = _start_or_fail("the test Kafka broker", start_kafka)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL (postgresql+psycopg://...) of a real PostgreSQL started for this session."""
    server = _start_or_fail("the test PostgreSQL", start_postgres)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def kafka_topics(kafka_bootstrap: str) -> Iterator[TopicNames]:
    """Fresh topics (4 partitions each, assignments compacted) for one test.

    They are deleted afterwards to keep the session's broker small.
    """
    names = TopicNames.with_prefix(f"t{uuid4().hex[:8]}")
    ensure_topics(kafka_bootstrap, names, partitions=TEST_PARTITIONS)
    yield names
    try:
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="shaping-tests")
        try:
            admin.delete_topics(names.all(), raise_errors=False)
        finally:
            admin.close()
    except Exception as exc:  # cleanup only; the test result stands
        log.warning("could not delete test topics %s: %s", names.all(), exc)


@pytest.fixture
def unique_group() -> str:
    """A consumer group id no other test uses."""
    return f"g-{uuid4().hex[:12]}"
