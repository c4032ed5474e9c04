"""The alerts service's Prometheus metrics (served by ``shaping alerts run --metrics-port``).

- ``shaping_alerts_events_total`` (counter; labels ``event``, ``rule``, ``severity``): alert
  events written and acknowledged by the broker (``event``: raised, updated, resolved);
- ``shaping_alerts_records_total`` (counter; label ``topic_kind``): input records read;
- ``shaping_alerts_retries_total`` (counter): rounds that failed and were read again.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from shaping.services.adapters.metrics import Counters

EVENTS = "shaping_alerts_events_total"
RECORDS = "shaping_alerts_records_total"
RETRIES = "shaping_alerts_retries_total"


class AlertsMetrics(Counters):
    """The alerts service's counters, in a registry of their own (one per process or test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.events = self.counter(
            EVENTS,
            "Alert events written (raised, updated, resolved), by rule and severity.",
            ("event", "rule", "severity"),
        )
        self.records = self.counter(
            RECORDS,
            "Input records read, by the kind of their topic.",
            ("topic_kind",),
        )
        self.retries = self.counter(
            RETRIES,
            "Rounds that failed (the broker did not take the alerts); read again.",
        )

    def count_event(self, event: str, rule: str, severity: str) -> None:
        self.events.labels(event, rule, severity).inc()

    def count_record(self, kind: str) -> None:
        self.records.labels(kind).inc()

    def count_retry(self) -> None:
        self.retries.inc()


__all__ = ["EVENTS", "RECORDS", "RETRIES", "AlertsMetrics"]
