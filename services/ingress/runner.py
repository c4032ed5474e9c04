"""The ingress gate on Kafka: read every ingress topic, forward or dead-letter each record.

One kafka-python consumer in the gate's group (``<prefix>-ingress``) subscribes by pattern to
``<prefix>.rig.*`` and ``<prefix>.operator.*``; it refreshes its metadata every
``metadata_max_age_ms``, so the topic of a rig or an operator added while the gate runs is
picked up within that time. The producer is the Kafka adapter's (``acks=all``, idempotent).

Each round is at-least-once and in order per partition: judge every record polled
(:class:`~shaping.services.ingress.gate.IngressGate`), send each one (the record itself to
``events`` or ``commands``, or its dead letter), wait for every acknowledgement, then commit
the offsets. When the broker did not acknowledge a send, nothing is committed: the partitions
are read again from the round's first record (a record sent twice reaches the processor twice,
which drops the copy by its event id), after a pause that grows while the trouble lasts. A bad
record never stops the gate: its verdict is a dead letter, written like any other send.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaError, MessageSizeTooLargeError
from kafka.structs import OffsetAndMetadata

from shaping.schemas.commands import Command
from shaping.schemas.headers import headers_for
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.kafka import KafkaConnection
from shaping.services.adapters.kafka import consumer as kafka_consumer
from shaping.services.adapters.kafka import producer as kafka_producer
from shaping.services.ingress.gate import Forward, IngressGate, Reject
from shaping.services.ingress.metrics import IngressMetrics

log = logging.getLogger(__name__)

METADATA_MAX_AGE_MS = 5000
"""How often the consumer asks the brokers which topics exist (kafka-python's default is five
minutes): a new rig's topic is read within this time."""

SEND_TIMEOUT_S = 30.0
"""How long a round waits for the broker's acknowledgements before it counts as failed."""


class RoundFailed(Exception):
    """The broker did not acknowledge a round's sends; nothing was committed."""


@dataclass
class GateStatus:
    """What the gate did so far (for logs and tests)."""

    forwarded: int = 0
    rejected: int = 0
    rounds: int = 0
    failures: int = 0
    last_error: str | None = None
    topics: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Sent:
    source: str
    verdict: Forward | Reject
    future: Any


class IngressRunner:
    """The gate's Kafka loop (see the module's doc).

    Args:
        connection: the brokers and the ``ingress`` principal's credentials.
        topics: the deployment's topic names.
        gate: the judgement.
        metrics: where to count (None: not counted).
        client_id: the gate's name in the brokers' logs.
        metadata_max_age_ms: how often new ingress topics are looked for.
        poll_timeout_ms: how long one poll waits for records.
    """

    def __init__(
        self,
        connection: KafkaConnection,
        topics: TopicNames,
        gate: IngressGate,
        metrics: IngressMetrics | None = None,
        *,
        client_id: str = "shaping-ingress",
        metadata_max_age_ms: int = METADATA_MAX_AGE_MS,
        poll_timeout_ms: int = 500,
    ) -> None:
        self.topics = topics
        self.gate = gate
        self.metrics = metrics
        self.poll_timeout_ms = poll_timeout_ms
        self.status = GateStatus()
        self.consumer = kafka_consumer(
            connection,
            f"{client_id}-reader",
            group_id=topics.ingress_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=metadata_max_age_ms,
            max_poll_records=500,
        )
        try:
            self.producer = kafka_producer(
                connection, client_id, linger_ms=5, max_block_ms=int(SEND_TIMEOUT_S * 1000)
            )
        except Exception:
            self.consumer.close()
            raise
        self.consumer.subscribe(pattern=f"^(?:{topics.ingress_pattern.pattern})$")

    # -- the loop -------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> GateStatus:
        """Forwards until ``stop`` is set; never raises for a record or a broker's absence."""
        backoff = 0.5
        while not stop.is_set():
            try:
                self.step()
                backoff = 0.5
            except (RoundFailed, KafkaError, OSError) as exc:
                self.status.failures += 1
                self.status.last_error = f"{type(exc).__name__}: {exc}"
                if self.metrics is not None:
                    self.metrics.count_retry()
                log.warning("ingress round failed (%s); retrying in %.1f s", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        return self.status

    def step(self) -> int:
        """One round: poll, judge, send, wait for the acknowledgements, commit.

        Returns:
            How many records the round handled (0: none arrived).

        Raises:
            RoundFailed: a send was not acknowledged; the round's partitions are read again.
        """
        batches = self.consumer.poll(timeout_ms=self.poll_timeout_ms)
        self.status.topics = set(self.consumer.subscription() or ())
        if not batches:
            return 0
        now = datetime.now(UTC)
        first = {tp: records[0].offset for tp, records in batches.items() if records}
        last = {tp: records[-1].offset for tp, records in batches.items() if records}
        sent: list[_Sent] = []
        try:
            for records in batches.values():
                for record in records:
                    sent.append(self._send(record, now))
            self.producer.flush(timeout=SEND_TIMEOUT_S)
        except (KafkaError, OSError) as exc:
            self._rewind(first)
            raise RoundFailed(f"the broker did not take the round's records: {exc}") from exc
        failed = [s for s in sent if not s.future.is_done or s.future.failed()]
        if failed:
            self._rewind(first)
            error = failed[0].future.exception or TimeoutError("no acknowledgement in time")
            raise RoundFailed(f"{type(error).__name__}: {error}")
        try:
            self.consumer.commit(
                {tp: OffsetAndMetadata(offset + 1, "", -1) for tp, offset in last.items()}
            )
        except KafkaError as exc:
            # A rebalance took the partitions away: their new owner reads them again from the
            # last commit (at least once; the processor drops the copies by event id).
            log.warning("could not commit the ingress offsets: %s", exc)
        for item in sent:
            self._count(item)
        self.status.rounds += 1
        return len(sent)

    def _send(self, record: Any, now: datetime) -> _Sent:
        source = (self.topics.parse_ingress(record.topic) or ("unknown", ""))[0]
        timestamp = None
        if isinstance(record.timestamp, int) and record.timestamp >= 0:
            timestamp = datetime.fromtimestamp(record.timestamp / 1000, UTC)
        verdict = self.gate.judge(record.topic, record.key, record.value, timestamp, now)
        if isinstance(verdict, Forward):
            try:
                future = self.producer.send(
                    self.gate.target_topic(verdict),
                    key=record.key,
                    value=record.value,
                    headers=list(record.headers or []),
                )
                return _Sent(source, verdict, future)
            except MessageSizeTooLargeError as exc:
                verdict = Reject(
                    "invalid",
                    f"the record is too large to forward ({exc})",
                    verdict.message,
                )
        try:
            topic, key, value = self.gate.dead_letter_record(
                verdict,
                record.key,
                record.value,
                record.topic,
                record.partition,
                record.offset,
                timestamp,
            )
        except Exception as exc:  # a bug: keep the record with what is surely valid
            log.exception("building the dead letter of %s failed", record.topic)
            verdict = Reject("failed", f"building its dead letter failed: {exc}")
            topic, key, value = self.gate.dead_letter_record(
                verdict, None, record.value, record.topic, record.partition, record.offset
            )
        future = self.producer.send(topic, key=key, value=value, headers=headers_for(value))
        return _Sent(source, verdict, future)

    def _rewind(self, first: dict[TopicPartition, int]) -> None:
        assigned = self.consumer.assignment()
        for tp, offset in first.items():
            if tp in assigned:
                self.consumer.seek(tp, offset)

    def _count(self, item: _Sent) -> None:
        verdict = item.verdict
        if isinstance(verdict, Forward):
            self.status.forwarded += 1
            message = verdict.message
            name = message.command_type if isinstance(message, Command) else message.event_type
            if self.metrics is not None:
                self.metrics.count_forwarded(item.source, name)
        else:
            self.status.rejected += 1
            log.info(
                "dead-lettered a record of a %s ingress topic: %s", item.source, verdict.reason
            )
            if self.metrics is not None:
                self.metrics.count_rejected(item.source, verdict.kind)

    def close(self) -> None:
        """Flushes the producer and leaves the group."""
        try:
            self.producer.close(timeout=10)
        finally:
            self.consumer.close()


def run_gate(
    connection: KafkaConnection,
    topics: TopicNames,
    gate: IngressGate,
    stop: threading.Event,
    metrics: IngressMetrics | None = None,
    metadata_max_age_ms: int = METADATA_MAX_AGE_MS,
) -> GateStatus:
    """Runs the gate until ``stop`` is set (the entry points set it on SIGTERM).

    Raises:
        KafkaError: no broker answered at the start (the entry points print it).
    """
    runner = IngressRunner(
        connection, topics, gate, metrics, metadata_max_age_ms=metadata_max_age_ms
    )
    log.info(
        "ingress gate: %s* and %s* -> %s, %s, %s (group %s)",
        topics.ingress_prefix("rig"),
        topics.ingress_prefix("operator"),
        topics.events,
        topics.commands,
        topics.dead_letter,
        topics.ingress_group,
    )
    started = time.monotonic()
    try:
        return runner.run(stop)
    finally:
        runner.close()
        log.info("ingress gate stopped after %.0f s", time.monotonic() - started)


__all__ = ["METADATA_MAX_AGE_MS", "GateStatus", "IngressRunner", "RoundFailed", "run_gate"]
