"""Where a replay reads the log and publishes what it corrects: Kafka, or the embedded log
file of ``shaping demo``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Iterable, Iterator
from itertools import chain, islice
from pathlib import Path
from typing import Protocol

from shaping.schemas.codec import EventCodec
from shaping.schemas.headers import headers_for
from shaping.schemas.topics import TopicKind, TopicNames
from shaping.services.domain import CurriculumCatalog
from shaping.services.operator.replay.log import (
    KAFKA_TIMEOUT_S,
    Reader,
    SourceRecord,
    iter_jsonl,
    kafka_offsets,
    read_kafka,
    read_partition,
    record_line,
    throwaway_consumer,
)

# Under the package's name, as replay logged before it was split into modules.
log = logging.getLogger(__package__)


class Message(Protocol):
    """A message to publish (an ``Outgoing`` of the step, or one a worker spilled)."""

    @property
    def topic_kind(self) -> TopicKind: ...

    @property
    def key(self) -> bytes: ...

    @property
    def value(self) -> bytes: ...


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
        """The events topic up to the snapshot, partitions merged by broker timestamp (the
        order a live consumer sees, near enough), streamed."""
        ...

    def partitions(self) -> list[tuple[int, int]]:
        """``[(partition, messages)]`` of the events topic at the snapshot."""
        ...

    def read_partition(self, partition: int) -> Iterator[SourceRecord]:
        """One partition of the events topic up to the snapshot, in offset order, streamed."""
        ...

    def live_outputs(self, skip: Collection[str] = ()) -> list[SourceRecord]:
        """The output topics (accepted, decisions, assignments, dead letters) but ``skip``, to
        their ends at the snapshot."""
        ...

    def projector_offsets(self) -> dict[tuple[str, int], int]:
        """The projector's positions that go with the rebuilt tables."""
        ...

    def publish(self, messages: Iterable[Message]) -> None:
        """Publishes corrections and new outputs to the live topics, in order (streamed)."""
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
        reader: the client that reads the partitions in bulk (None: confluent-kafka when it
            is installed, see :func:`~.log.default_reader`).
    """

    def __init__(
        self,
        bootstrap: str,
        topics: TopicNames,
        codec: EventCodec,
        curricula: CatalogFactory,
        reader: Reader | None = None,
    ) -> None:
        self.reader = reader
        self.bootstrap = bootstrap
        self.topics = topics
        self.codec = codec
        self.curricula = curricula
        self.input_bounds: dict[tuple[str, int], tuple[int, int]] = {}
        self.output_bounds: dict[tuple[str, int], tuple[int, int]] = {}

    def output_topics(self) -> list[str]:
        """The topics the projector reads that there are (the accepted topic is missing before
        its release, the alerts topic before issue 15's): the processor's outputs, and the
        alerts, which the fresh tables take as they stand."""
        outputs = [self.topics.decisions, self.topics.assignments, self.topics.dead_letter]
        consumer = throwaway_consumer(self.bootstrap, "shaping-replay-offsets")
        try:
            if consumer.partitions_for_topic(self.topics.accepted):
                outputs.insert(0, self.topics.accepted)
            if consumer.partitions_for_topic(self.topics.alerts):
                outputs.append(self.topics.alerts)
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

    def partitions(self) -> list[tuple[int, int]]:
        return sorted((p, end - begin) for (_, p), (begin, end) in self.input_bounds.items())

    def read_partition(self, partition: int) -> Iterator[SourceRecord]:
        begin, end = self.input_bounds[(self.topics.events, partition)]
        return read_partition(
            self.bootstrap,
            self.topics.events,
            partition,
            begin,
            end,
            f"shaping-replay-{partition}",
            reader=self.reader,
        )

    def live_outputs(self, skip: Collection[str] = ()) -> list[SourceRecord]:
        bounds = {tp: b for tp, b in self.output_bounds.items() if tp[0] not in skip}
        return list(read_kafka(self.bootstrap, bounds, "shaping-replay-outputs"))

    def projector_offsets(self) -> dict[tuple[str, int], int]:
        # The projector reads the output topics (facts come from the accepted topic, not the
        # events topic), and records a partition once it has read a message there.
        return {tp: end for tp, (_, end) in self.output_bounds.items() if end > 0}

    def publish(self, messages: Iterable[Message]) -> None:
        from shaping.services.adapters.kafka import producer as kafka_producer

        pending = iter(messages)
        first = next(pending, None)
        if first is None:
            return
        producer = kafka_producer(self.bootstrap, "shaping-replay")
        try:
            for message in chain([first], pending):
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
    """The embedded log of ``shaping demo`` (``events.jsonl``), read line by line: the input
    messages are streamed from the file (twice: once to count them at the snapshot, once to
    fold them); only the output topics' messages are kept.

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
        self.outputs: list[SourceRecord] = []
        self.counts: dict[int, int] = {}
        self.ends: dict[tuple[str, int], int] = {}

    def snapshot(self) -> int:
        self.outputs, self.counts, self.ends = [], {}, {}
        for record in iter_jsonl(self.path):
            self.ends[(record.topic, record.partition)] = record.offset + 1
            if record.topic == self.topics.events:
                self.counts[record.partition] = self.counts.get(record.partition, 0) + 1
            else:
                self.outputs.append(record)
        return sum(self.counts.values())

    def inputs(self) -> Iterator[SourceRecord]:
        # The log file is in the order the embedded runtime processed it.
        return islice(iter_jsonl(self.path, self.topics.events), sum(self.counts.values()))

    def partitions(self) -> list[tuple[int, int]]:
        return sorted(self.counts.items())

    def read_partition(self, partition: int) -> Iterator[SourceRecord]:
        wanted = (r for r in iter_jsonl(self.path, self.topics.events) if r.partition == partition)
        return islice(wanted, self.counts.get(partition, 0))

    def live_outputs(self, skip: Collection[str] = ()) -> list[SourceRecord]:
        return [r for r in self.outputs if r.topic not in skip]

    def projector_offsets(self) -> dict[tuple[str, int], int]:
        return dict(self.ends)

    def publish(self, messages: Iterable[Message]) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            for message in messages:
                topic = getattr(self.topics, message.topic_kind)
                offset = self.ends.get((topic, 0), 0)
                self.ends[(topic, 0)] = offset + 1
                record = SourceRecord(topic, 0, offset, message.key, message.value)
                self.outputs.append(record)
                out.write(record_line(record, self.codec) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def catalog(self) -> CurriculumCatalog:
        return self.curricula()


__all__ = ["CatalogFactory", "JsonlSource", "KafkaSource", "Message", "Source"]
