"""The notifier on Kafka: read the alerts topic, tell people, retry what fails.

One kafka-python consumer in the group ``<prefix>-notifier`` reads ``<prefix>.alerts`` from
its start (partitions assigned by hand). Records before the group's committed offsets were
handled by an earlier run: they rebuild who was told what (:class:`Notices`) and send nothing.
Each later record becomes notices (:meth:`Notices.on_alert`), and the log's time
(:class:`~shaping.services.alerts.log.LogClock`) drives escalation (:meth:`Notices.tick`). Each
notice is one delivery per channel the person has (:class:`Dispatcher`); a failed delivery is
tried again after 1, 2, 4 ... seconds (at most :data:`MAX_BACKOFF_S`), up to
:data:`MAX_ATTEMPTS` times, then logged and counted as given up. Nothing stops the service: a
record it cannot read, a person it cannot reach, a broker away.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from shaping.schemas.alerts import AlertEvent
from shaping.schemas.codec import EventCodec
from shaping.schemas.errors import SerializationError
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.kafka import KafkaConnection
from shaping.services.adapters.kafka import consumer as kafka_consumer
from shaping.services.alerts.log import LogClock, record_time
from shaping.services.notifier.channels import (
    DeliveryFailed,
    EmailChannel,
    WebhookChannel,
    render,
)
from shaping.services.notifier.metrics import NotifierMetrics
from shaping.services.notifier.routing import Notice, Notices, Routing

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
MAX_BACKOFF_S = 300.0


@dataclass
class Delivery:
    """One notice on one channel, with its tries."""

    notice: Notice
    channel: str
    attempts: int = 0
    due: float = 0.0
    last_error: str = ""


@dataclass
class NotifierStatus:
    """What the notifier did so far (for logs and tests)."""

    sent: int = 0
    failed: int = 0
    given_up: int = 0
    unrouted: int = 0
    records: int = 0
    deliveries: list[tuple[str, str, str, str]] = field(default_factory=list)
    """(channel, person, notice kind, alert id) of each delivered message."""


class Dispatcher:
    """Delivers notices through the channels, retrying with backoff (see the module)."""

    def __init__(
        self,
        routing: Routing,
        metrics: NotifierMetrics | None = None,
        status: NotifierStatus | None = None,
        *,
        email: Any = None,
        webhook: Any = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_attempts: int = MAX_ATTEMPTS,
        first_backoff_s: float = 1.0,
    ) -> None:
        self.routing = routing
        self.metrics = metrics
        self.status = status or NotifierStatus()
        self.email = email or (EmailChannel(routing.smtp) if routing.smtp else None)
        self.webhook = webhook or WebhookChannel()
        self.monotonic = monotonic
        self.wall = wall
        self.max_attempts = max_attempts
        self.first_backoff_s = first_backoff_s
        self.queue: list[Delivery] = []

    def add(self, notice: Notice) -> None:
        person = self.routing.people.get(notice.person)
        if person is None:
            log.warning("no person %s in the routing file: notice dropped", notice.person)
            return
        now = self.monotonic()
        if person.email and self.email is not None:
            self.queue.append(Delivery(notice, "email", due=now))
        if person.webhook is not None:
            self.queue.append(Delivery(notice, "webhook", due=now))

    def deliver_due(self) -> int:
        """Tries every delivery that is due; returns how many succeeded."""
        now = self.monotonic()
        done = 0
        waiting: list[Delivery] = []
        for item in self.queue:
            if item.due > now:
                waiting.append(item)
                continue
            try:
                self._send(item)
            except DeliveryFailed as exc:
                item.attempts += 1
                item.last_error = str(exc)
                final = item.attempts >= self.max_attempts
                self.status.failed += 1
                if self.metrics is not None:
                    self.metrics.failed.labels(item.channel, "yes" if final else "no").inc()
                if final:
                    self.status.given_up += 1
                    log.error(
                        "gave up on %s to %s about %s after %d tries: %s",
                        item.channel,
                        item.notice.person,
                        item.notice.alert.alert_id,
                        item.attempts,
                        exc,
                    )
                    continue
                delay = min(self.first_backoff_s * 2 ** (item.attempts - 1), MAX_BACKOFF_S)
                item.due = now + delay
                log.warning("%s; trying again in %.0f s", exc, delay)
                waiting.append(item)
                continue
            done += 1
            self.status.sent += 1
            self.status.deliveries.append(
                (item.channel, item.notice.person, item.notice.kind, item.notice.alert.alert_id)
            )
            if self.metrics is not None:
                self.metrics.sent.labels(item.channel, item.notice.kind).inc()
        self.queue = waiting
        return done

    def _send(self, item: Delivery) -> None:
        person = self.routing.people[item.notice.person]
        written = self.wall()
        rendered = render(item.notice, written)
        if item.channel == "email":
            assert person.email is not None and self.email is not None
            self.email.send(person.email, rendered, item.notice, written)
        else:
            assert person.webhook is not None
            self.webhook.send(person.webhook, rendered)


class NotifierRunner:
    """One life of the notifier's Kafka loop (see the module)."""

    def __init__(
        self,
        connection: KafkaConnection,
        topics: TopicNames,
        routing: Routing,
        codec: EventCodec,
        dispatcher: Dispatcher,
        *,
        group: str | None = None,
        client_id: str = "shaping-notifier",
        poll_timeout_ms: int = 500,
    ) -> None:
        self.topics = topics
        self.codec = codec
        self.notices = Notices(routing)
        self.dispatcher = dispatcher
        self.poll_timeout_ms = poll_timeout_ms
        self.clock = LogClock()
        self._unrouted_seen = 0
        self.consumer = kafka_consumer(
            connection,
            f"{client_id}-reader",
            group_id=group or f"{topics.prefix}-notifier",
            enable_auto_commit=False,
        )
        try:
            partitions = self.consumer.partitions_for_topic(topics.alerts)
            if not partitions:
                raise KafkaError(f"topic {topics.alerts} does not exist (`shaping topics create`)")
            tps = [TopicPartition(topics.alerts, p) for p in sorted(partitions)]
            self.consumer.assign(tps)
            self.consumer.seek_to_beginning(*tps)
            self.handled = {tp: self.consumer.committed(tp) or 0 for tp in tps}
        except Exception:
            self.consumer.close()
            raise

    @property
    def caught_up(self) -> bool:
        return all(self.consumer.position(tp) >= end for tp, end in self.handled.items() if end)

    def step(self) -> int:
        """One round: read, turn into notices, escalate, deliver what is due, commit."""
        batches = self.consumer.poll(timeout_ms=self.poll_timeout_ms)
        last: dict[TopicPartition, int] = {}
        count = 0
        for tp, records in batches.items():
            for record in records:
                count += 1
                last[tp] = record.offset
                at = record_time(record)
                self.clock.saw(at)
                try:
                    event = self.codec.decode(record.value)
                except SerializationError as exc:
                    log.warning("skipped a record of %s that does not decode: %s", tp, exc)
                    continue
                if not isinstance(event, AlertEvent) or at is None:
                    continue
                notices = self.notices.on_alert(event, at)
                if record.offset >= self.handled.get(tp, 0):
                    for notice in notices:
                        self.dispatcher.add(notice)
        now = self.clock.now()
        if now is not None and self.caught_up:
            for notice in self.notices.tick(now):
                self.dispatcher.add(notice)
        if self.notices.unrouted > self._unrouted_seen:
            new = self.notices.unrouted - self._unrouted_seen
            self._unrouted_seen = self.notices.unrouted
            self.dispatcher.status.unrouted += new
            if self.dispatcher.metrics is not None:
                self.dispatcher.metrics.unrouted.inc(new)
            log.warning("%d alert(s) matched no subscription of the routing file", new)
        self.dispatcher.deliver_due()
        live = {tp: o for tp, o in last.items() if o >= self.handled.get(tp, 0)}
        if live:
            self.consumer.commit({tp: OffsetAndMetadata(o + 1, "", -1) for tp, o in live.items()})
        self.dispatcher.status.records += count
        return count

    def close(self) -> None:
        self.consumer.close()


def run_notifier(
    connection: KafkaConnection,
    topics: TopicNames,
    routing: Routing,
    codec: EventCodec,
    stop: threading.Event,
    metrics: NotifierMetrics | None = None,
    dispatcher: Dispatcher | None = None,
    **options: Any,
) -> NotifierStatus:
    """Runs the notifier until ``stop`` is set; never raises for a record, a delivery or a
    broker's absence (a new life starts from the log after a growing pause). Deliveries still
    waiting for a retry survive a new life."""
    dispatcher = dispatcher or Dispatcher(routing, metrics)
    backoff = 0.5
    while not stop.is_set():
        runner: NotifierRunner | None = None
        try:
            runner = NotifierRunner(connection, topics, routing, codec, dispatcher, **options)
            log.info("notifier: reading %s", topics.alerts)
            while not stop.is_set():
                runner.step()
                backoff = 0.5
        except Exception as exc:  # a broker away, or a bug: never stop
            log.warning(
                "notifier round failed (%s); starting again in %.1f s", exc, backoff, exc_info=True
            )
            stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)
        finally:
            if runner is not None:
                runner.close()
    return dispatcher.status


__all__ = [
    "MAX_ATTEMPTS",
    "Delivery",
    "Dispatcher",
    "NotifierRunner",
    "NotifierStatus",
    "run_notifier",
]
