"""The alerts service on Kafka: read the processor's outputs and the events topic, write alerts.

At start it folds the alerts topic (:meth:`AlertEngine.restore`: which alerts are open, in
which episode), then reads ``events``, ``accepted``, ``decisions`` and ``dead-letter`` from
their start with one kafka-python consumer in the group ``<prefix>-alerts`` (partitions
assigned by hand, offsets committed by hand). Records before the group's committed offsets were
answered by an earlier run: they rebuild the rules' state and write nothing
(:attr:`AlertEngine.quiet`). After them, each round polls, feeds the records to the rules at
their broker time, ticks the rules at the log's time (:class:`LogClock`), writes the alert
events to ``<prefix>.alerts`` keyed by alert id, waits for the broker's acknowledgements and
only then commits. A failed round rebuilds everything from the log after a growing pause: the
service never stops for a record or a broker's absence.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from shaping.schemas.alerts import AlertEvent, AlertRaised, AlertResolved
from shaping.schemas.codec import EventCodec
from shaping.schemas.errors import SerializationError
from shaping.schemas.headers import headers_for
from shaping.schemas.topics import TopicKind, TopicNames
from shaping.services.adapters.kafka import KafkaConnection
from shaping.services.adapters.kafka import consumer as kafka_consumer
from shaping.services.adapters.kafka import producer as kafka_producer
from shaping.services.alerts.log import LogClock, read_alerts, record_time
from shaping.services.alerts.metrics import AlertsMetrics
from shaping.services.alerts.rules import AlertEngine

log = logging.getLogger(__name__)

INPUT_KINDS: tuple[TopicKind, ...] = ("events", "accepted", "decisions", "dead_letter")
SEND_TIMEOUT_S = 30.0


@dataclass
class AlertsStatus:
    """What the service did so far (for logs and tests)."""

    records: int = 0
    raised: int = 0
    updated: int = 0
    resolved: int = 0
    rounds: int = 0
    failures: int = 0
    last_error: str | None = None


class AlertsRunner:
    """One life of the service's Kafka loop (see the module); :func:`run_alerts` starts a new
    one after a failure.

    Args:
        engine: fresh rules (their state is rebuilt from the log here).
        group: the consumer group keeping the service's offsets.
    """

    def __init__(
        self,
        connection: KafkaConnection,
        topics: TopicNames,
        engine: AlertEngine,
        codec: EventCodec,
        metrics: AlertsMetrics | None = None,
        status: AlertsStatus | None = None,
        *,
        group: str | None = None,
        client_id: str = "shaping-alerts",
        poll_timeout_ms: int = 500,
    ) -> None:
        self.topics = topics
        self.engine = engine
        self.codec = codec
        self.metrics = metrics
        self.status = status or AlertsStatus()
        self.poll_timeout_ms = poll_timeout_ms
        self.clock = LogClock()
        for event in read_alerts(connection, topics, codec, f"{client_id}-restore"):
            engine.restore(event)
        self.kinds = {topics.of_kind(kind): kind for kind in INPUT_KINDS}
        self.consumer = kafka_consumer(
            connection,
            f"{client_id}-reader",
            group_id=group or f"{topics.prefix}-alerts",
            enable_auto_commit=False,
        )
        try:
            tps: list[TopicPartition] = []
            for topic in self.kinds:
                partitions = self.consumer.partitions_for_topic(topic)
                if not partitions:
                    raise KafkaError(f"topic {topic} does not exist (run `shaping topics create`)")
                tps += [TopicPartition(topic, p) for p in sorted(partitions)]
            self.consumer.assign(tps)
            self.consumer.seek_to_beginning(*tps)
            self.answered = {tp: self.consumer.committed(tp) or 0 for tp in tps}
            self.producer = kafka_producer(
                connection, client_id, linger_ms=5, max_block_ms=int(SEND_TIMEOUT_S * 1000)
            )
        except Exception:
            self.consumer.close()
            raise

    @property
    def caught_up(self) -> bool:
        """Whether every partition is read past what an earlier run answered."""
        return all(self.consumer.position(tp) >= end for tp, end in self.answered.items() if end)

    def step(self) -> int:
        """One round (see the module). Returns how many input records it read."""
        batches = self.consumer.poll(timeout_ms=self.poll_timeout_ms)
        out: list[AlertEvent] = []
        last: dict[TopicPartition, int] = {}
        count = 0
        for tp, records in batches.items():
            kind = self.kinds[tp.topic]
            for record in records:
                count += 1
                at = record_time(record)
                self.clock.saw(at)
                if at is None:
                    continue
                try:
                    event = self.codec.decode(record.value)
                except SerializationError:
                    event = None
                self.engine.quiet = record.offset < self.answered.get(tp, 0)
                try:
                    out += self.engine.observe(kind, event, at)
                finally:
                    self.engine.quiet = False
                if self.metrics is not None:
                    self.metrics.count_record(kind)
                last[tp] = record.offset
        now = self.clock.now()
        if now is not None and self.caught_up:
            out += self.engine.tick(now)
        if out:
            futures = []
            for alert in out:
                value = self.codec.encode(alert)
                futures.append(
                    self.producer.send(
                        self.topics.alerts,
                        key=alert.alert_id.encode("utf-8"),
                        value=value,
                        headers=headers_for(value),
                    )
                )
            self.producer.flush(timeout=SEND_TIMEOUT_S)
            for future in futures:
                future.get(timeout=SEND_TIMEOUT_S)  # raises when the broker refused it
            for alert in out:
                self._count(alert)
        live = {tp: o for tp, o in last.items() if o >= self.answered.get(tp, 0)}
        if live:
            self.consumer.commit({tp: OffsetAndMetadata(o + 1, "", -1) for tp, o in live.items()})
        self.status.records += count
        self.status.rounds += 1
        return count

    def _count(self, alert: AlertEvent) -> None:
        if isinstance(alert, AlertRaised):
            name = "raised"
            self.status.raised += 1
        elif isinstance(alert, AlertResolved):
            name = "resolved"
            self.status.resolved += 1
        else:
            name = "updated"
            self.status.updated += 1
        log.info(
            "alert %s %s: %s %s (%s) %s",
            alert.alert_id,
            name,
            alert.rule,
            alert.scope_key,
            alert.severity,
            alert.message,
        )
        if self.metrics is not None:
            self.metrics.count_event(name, alert.rule, alert.severity)

    def close(self) -> None:
        try:
            self.producer.close(timeout=10)
        finally:
            self.consumer.close()


def run_alerts(
    connection: KafkaConnection,
    topics: TopicNames,
    engine_factory: Callable[[], AlertEngine],
    codec: EventCodec,
    stop: threading.Event,
    metrics: AlertsMetrics | None = None,
    **options: Any,
) -> AlertsStatus:
    """Runs the service until ``stop`` is set; a failed round (or a broker away) starts a new
    life from the log after a pause that grows while the trouble lasts (never raises for
    them)."""
    status = AlertsStatus()
    backoff = 0.5
    started = time.monotonic()
    while not stop.is_set():
        runner: AlertsRunner | None = None
        try:
            runner = AlertsRunner(
                connection, topics, engine_factory(), codec, metrics, status, **options
            )
            log.info("alerts: reading %s; writing %s", ", ".join(runner.kinds), topics.alerts)
            while not stop.is_set():
                runner.step()
                backoff = 0.5
        except Exception as exc:  # a broker away, a refused send, or a bug: never stop
            status.failures += 1
            status.last_error = f"{type(exc).__name__}: {exc}"
            if metrics is not None:
                metrics.count_retry()
            log.warning(
                "alerts round failed (%s); starting again in %.1f s", exc, backoff, exc_info=True
            )
            stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)
        finally:
            if runner is not None:
                runner.close()
    log.info("alerts service stopped after %.0f s", time.monotonic() - started)
    return status


__all__ = ["INPUT_KINDS", "AlertsRunner", "AlertsStatus", "run_alerts"]
