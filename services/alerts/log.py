"""The alerts topic on Kafka: reading it whole, the log's clock, and acknowledging an alert.

Used by the alerts service (to restore the alerts it wrote), by the notifier (to restore what
is open and acknowledged), and by ``shaping alerts ack`` and ``shaping alerts list``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kafka import TopicPartition

from shaping.schemas.alerts import AlertAcknowledged, AlertEvent, AlertResolved
from shaping.schemas.codec import EventCodec
from shaping.schemas.errors import SerializationError
from shaping.schemas.headers import headers_for
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.kafka import KafkaConnection
from shaping.services.adapters.kafka import consumer as kafka_consumer
from shaping.services.adapters.kafka import producer as kafka_producer


class AlertNotFound(LookupError):
    """No alert with that id is on the alerts topic (or it is not open)."""


def record_time(record: Any) -> datetime | None:
    """A Kafka record's timestamp (the broker's, on a LogAppendTime topic) as UTC."""
    stamp = getattr(record, "timestamp", None)
    if isinstance(stamp, int) and stamp >= 0:
        return datetime.fromtimestamp(stamp / 1000, UTC)
    return None


class LogClock:
    """The log's time: the newest record time seen, moved on by a monotonic clock while no
    record arrives (never a rig's clock, never a jump back)."""

    def __init__(self, monotonic: Any = time.monotonic) -> None:
        self._monotonic = monotonic
        self._seen: datetime | None = None
        self._at = 0.0

    def saw(self, at: datetime | None) -> None:
        if at is None:
            return
        now = self.now()
        if now is None or at > now:
            self._seen, self._at = at, self._monotonic()

    def now(self) -> datetime | None:
        """The log's time now; None before any record was seen."""
        if self._seen is None:
            return None
        from datetime import timedelta

        return self._seen + timedelta(seconds=self._monotonic() - self._at)


def read_all(
    connection: KafkaConnection, topic: str, client_id: str, timeout_s: float = 30.0
) -> Iterator[Any]:
    """Every record of ``topic``, from its start to its end offsets at the time of the call."""
    consumer = kafka_consumer(connection, client_id)
    try:
        partitions = consumer.partitions_for_topic(topic)
        deadline = time.monotonic() + timeout_s
        while partitions is None and time.monotonic() < deadline:
            time.sleep(0.2)
            partitions = consumer.partitions_for_topic(topic)
        if partitions is None:
            raise AlertNotFound(f"topic {topic} does not exist (run `shaping topics create`)")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        while pending and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield record
                if consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
            for tp in list(pending):
                if consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
    finally:
        consumer.close()


def read_alerts(
    connection: KafkaConnection, topics: TopicNames, codec: EventCodec, client_id: str
) -> list[AlertEvent]:
    """Every alert event on the alerts topic, in the order of each alert's partition (a record
    that does not decode as an alert event is skipped)."""
    found = []
    for record in read_all(connection, topics.alerts, client_id):
        try:
            event = codec.decode(record.value)
        except SerializationError:
            continue
        if isinstance(event, AlertEvent):
            found.append(event)
    return found


@dataclass(frozen=True)
class AlertView:
    """The newest state of one alert (for ``shaping alerts list`` and ``ack``)."""

    latest: AlertEvent
    open: bool
    acknowledged_by: str | None


def alert_views(events: list[AlertEvent]) -> dict[str, AlertView]:
    """Each alert's newest state, by alert id."""
    views: dict[str, AlertView] = {}
    for event in events:
        view = views.get(event.alert_id)
        if view is not None and event.episode < view.latest.episode:
            continue
        if isinstance(event, AlertAcknowledged):
            if view is not None and event.episode == view.latest.episode:
                views[event.alert_id] = AlertView(view.latest, view.open, event.acknowledged_by)
            continue
        same = view is not None and view.latest.episode == event.episode
        acked = view.acknowledged_by if same and view is not None else None
        views[event.alert_id] = AlertView(event, not isinstance(event, AlertResolved), acked)
    return views


def acknowledge(
    connection: KafkaConnection,
    topics: TopicNames,
    codec: EventCodec,
    alert: str,
    by: str,
    note: str = "",
    client_id: str = "shaping-alerts-ack",
) -> AlertAcknowledged:
    """Appends an AlertAcknowledged for the open episode of ``alert`` (its time is set by the
    broker; ``occurred_at`` is this machine's time of asking).

    Raises:
        AlertNotFound: no such alert, or it is resolved.
    """
    views = alert_views(read_alerts(connection, topics, codec, f"{client_id}-reader"))
    view = views.get(alert)
    if view is None:
        known = ", ".join(sorted(k for k, v in views.items() if v.open)[:5]) or "none open"
        raise AlertNotFound(f"no alert {alert} on {topics.alerts} (open: {known})")
    if not view.open:
        raise AlertNotFound(
            f"alert {alert} ({view.latest.rule} about {view.latest.scope_key}) is resolved"
        )
    latest = view.latest
    fields = latest.model_dump(
        exclude={"event_id", "event_type", "schema_version", "occurred_at", "causation_id"}
    )
    fields.pop("resolved_by", None)
    fields.pop("acknowledged_by", None)
    fields.pop("note", None)
    ack = AlertAcknowledged(
        **fields,
        occurred_at=datetime.now(UTC),
        causation_id=latest.event_id,
        acknowledged_by=by,
        note=note,
    )
    value = codec.encode(ack)
    producer = kafka_producer(connection, client_id)
    try:
        future = producer.send(
            topics.alerts, key=alert.encode("utf-8"), value=value, headers=headers_for(value)
        )
        producer.flush(timeout=30)
        future.get(timeout=30)
    finally:
        producer.close(timeout=10)
    return ack


__all__ = [
    "AlertNotFound",
    "AlertView",
    "LogClock",
    "acknowledge",
    "alert_views",
    "read_alerts",
    "read_all",
    "record_time",
]
