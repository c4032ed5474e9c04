"""Where a replay reads the log and publishes what it corrects: Kafka, or the embedded log
file of ``shaping demo``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from shaping.schemas.codec import EventCodec
from shaping.schemas.headers import headers_for
from shaping.schemas.topics import TopicNames
from shaping.services.domain import CurriculumCatalog
from shaping.services.operator.replay.log import (
    KAFKA_TIMEOUT_S,
    SourceRecord,
    kafka_offsets,
    read_jsonl,
    read_kafka,
    record_line,
    throwaway_consumer,
)
from shaping.services.processor.step import Outgoing

# Under the package's name, as replay logged before it was split into modules.
log = logging.getLogger(__package__)

CatalogFactory = Callable[[], CurriculumCatalog]
"""Builds the curricula the lab keeps (what :meth:`Source.catalog` starts from); called when
the fold needs them, so a replay that stops earlier never reads them."""


class Source(Protocol):
    """Where a replay reads the log and publishes its corrections."""

    topics: TopicNames

    def snapshot(self) -> int:
        """Takes the snapshot; returns how many input messages it covers."""
        ...

    def inputs(self) -> Iterator[SourceRecord]:
        """The events topic up to the snapshot, in processing order."""
        ...

    def live_outputs(self, skip: Collection[str] = ()) -> list[SourceRecord]:
        """The output topics (accepted, decisions, assignments, dead letters) but ``skip``, to
        their ends at the snapshot."""
        ...

    def projector_offsets(self) -> dict[tuple[str, int], int]:
        """The projector's positions that go with the rebuilt tables."""
        ...

    def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publishes corrections and new outputs to the live topics."""
        ...

    def catalog(self) -> CurriculumCatalog:
        """The curricula the live processor knows."""
        ...


class KafkaSource:
    """The event log on Kafka (read by throwaway consumers: no group, nothing committed).

    Args:
        bootstrap: Kafka bootstrap servers.
        topics: the deployment's topic names.
        codec: decodes the curricula topic.
        curricula: the lab's curricula; :meth:`catalog` adds those published on the curricula
            topic.
    """

    def __init__(
        self, bootstrap: str, topics: TopicNames, codec: EventCodec, curricula: CatalogFactory
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.codec = codec
        self.curricula = curricula
        self.input_bounds: dict[tuple[str, int], tuple[int, int]] = {}
        self.output_bounds: dict[tuple[str, int], tuple[int, int]] = {}

    def output_topics(self) -> list[str]:
        """The output topics there are (the accepted topic is missing before its release)."""
        outputs = [self.topics.decisions, self.topics.assignments, self.topics.dead_letter]
        consumer = throwaway_consumer(self.bootstrap, "shaping-replay-offsets")
        try:
            if consumer.partitions_for_topic(self.topics.accepted):
                outputs.insert(0, self.topics.accepted)
        finally:
            consumer.close(autocommit=False)
        return outputs

    def snapshot(self) -> int:
        bounds = kafka_offsets(self.bootstrap, [self.topics.events, *self.output_topics()])
        self.input_bounds = {k: v for k, v in bounds.items() if k[0] == self.topics.events}
        self.output_bounds = {k: v for k, v in bounds.items() if k[0] != self.topics.events}
        return sum(end - begin for begin, end in self.input_bounds.values())

    def inputs(self) -> Iterator[SourceRecord]:
        return read_kafka(self.bootstrap, self.input_bounds, "shaping-replay")

    def live_outputs(self, skip: Collection[str] = ()) -> list[SourceRecord]:
        bounds = {tp: b for tp, b in self.output_bounds.items() if tp[0] not in skip}
        return list(read_kafka(self.bootstrap, bounds, "shaping-replay-outputs"))

    def projector_offsets(self) -> dict[tuple[str, int], int]:
        # The projector reads the output topics (facts come from the accepted topic, not the
        # events topic), and records a partition once it has read a message there.
        return {tp: end for tp, (_, end) in self.output_bounds.items() if end > 0}

    def publish(self, messages: Sequence[Outgoing]) -> None:
        from shaping.services.adapters.kafka import producer as kafka_producer

        if not messages:
            return
        producer = kafka_producer(self.bootstrap, "shaping-replay")
        try:
            for message in messages:
                topic = getattr(self.topics, message.topic_kind)
                producer.send(
                    topic, key=message.key, value=message.value, headers=headers_for(message.value)
                )
            producer.flush(timeout=KAFKA_TIMEOUT_S)
        finally:
            producer.close()

    def catalog(self) -> CurriculumCatalog:
        catalog = self.curricula()
        curricula = getattr(self.topics, "curricula", None)
        if curricula:
            try:
                from shaping.services.adapters.curricula_topic import add_published, read_published

                published = read_published(self.bootstrap, curricula, codec=self.codec)
                for problem in add_published(catalog, published):
                    log.warning("published curriculum left out: %s", problem)
            except Exception as exc:  # the topic may not exist in older deployments
                log.warning("cannot read the published curricula from %s: %s", curricula, exc)
        return catalog


class JsonlSource:
    """The embedded log of ``shaping demo`` (``events.jsonl``).

    Args:
        path: the log file.
        topics: the topic names the log uses.
        codec: writes the decoded copy of what :meth:`publish` appends.
        curricula: the lab's curricula (the embedded mode publishes none).
    """

    def __init__(
        self, path: Path, topics: TopicNames, codec: EventCodec, curricula: CatalogFactory
    ) -> None:
        self.path = path
        self.topics = topics
        self.codec = codec
        self.curricula = curricula
        self.records: list[SourceRecord] = []

    def snapshot(self) -> int:
        self.records = read_jsonl(self.path)
        return sum(1 for r in self.records if r.topic == self.topics.events)

    def inputs(self) -> Iterator[SourceRecord]:
        return (r for r in self.records if r.topic == self.topics.events)

    def live_outputs(self, skip: Collection[str] = ()) -> list[SourceRecord]:
        return [r for r in self.records if r.topic != self.topics.events and r.topic not in skip]

    def projector_offsets(self) -> dict[tuple[str, int], int]:
        ends: dict[tuple[str, int], int] = {}
        for record in self.records:
            ends[(record.topic, record.partition)] = record.offset + 1
        return ends

    def publish(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        ends = self.projector_offsets()
        lines = []
        for message in messages:
            topic = getattr(self.topics, message.topic_kind)
            offset = ends.get((topic, 0), 0)
            ends[(topic, 0)] = offset + 1
            record = SourceRecord(topic, 0, offset, message.key, message.value)
            self.records.append(record)
            lines.append(record_line(record, self.codec))
        with self.path.open("a", encoding="utf-8") as out:
            out.write("".join(line + "\n" for line in lines))
            out.flush()
            os.fsync(out.fileno())

    def catalog(self) -> CurriculumCatalog:
        return self.curricula()


__all__ = ["CatalogFactory", "JsonlSource", "KafkaSource", "Source"]
