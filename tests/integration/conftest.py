"""Fixtures of the integration tests on a real broker: processor processes, a reader of the
output topics and a publisher to the events topic."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shaping.services.common.topics import TopicNames
from tests.integration.test_processor_kafka import ProcessorRunner
from tests.support.kafka_io import Publisher, TopicReader


@pytest.fixture
def processors(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
) -> Iterator[ProcessorRunner]:
    runner = ProcessorRunner(kafka_bootstrap, kafka_topics, tmp_path)
    try:
        yield runner
    finally:
        runner.kill_all()


@pytest.fixture
def outputs(kafka_bootstrap: str, kafka_topics: TopicNames) -> Iterator[TopicReader]:
    with TopicReader(
        kafka_bootstrap,
        [kafka_topics.decisions, kafka_topics.assignments, kafka_topics.dead_letter],
    ) as reader:
        yield reader


@pytest.fixture
def publisher(kafka_bootstrap: str, kafka_topics: TopicNames) -> Iterator[Publisher]:
    with Publisher(kafka_bootstrap, kafka_topics.events) as pub:
        yield pub
