"""The alerts service's Prometheus metrics (served by ``shaping alerts run --metrics-port``).

- ``shaping_alerts_events_total`` (counter; labels ``event``, ``rule``, ``severity``): alert
  events written and acknowledged by the broker (``event``: raised, updated, resolved);
- ``shaping_alerts_records_total`` (counter; label ``topic_kind``): input records read;
- ``shaping_alerts_retries_total`` (counter): rounds that failed and were read again.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from shaping.services.adapters.metrics import MetricsServer

EVENTS = "shaping_alerts_events_total"
RECORDS = "shaping_alerts_records_total"
RETRIES = "shaping_alerts_retries_total"


class AlertsMetrics:
    """The alerts service's counters, in a registry of their own (one per process or test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.events = Counter(
            EVENTS.removesuffix("_total"),
            "Alert events written (raised, updated, resolved), by rule and severity.",
            ("event", "rule", "severity"),
            registry=self.registry,
        )
        self.records = Counter(
            RECORDS.removesuffix("_total"),
            "Input records read, by the kind of their topic.",
            ("topic_kind",),
            registry=self.registry,
        )
        self.retries = Counter(
            RETRIES.removesuffix("_total"),
            "Rounds that failed (the broker did not take the alerts); read again.",
            registry=self.registry,
        )

    def count_event(self, event: str, rule: str, severity: str) -> None:
        self.events.labels(event, rule, severity).inc()

    def count_record(self, kind: str) -> None:
        self.records.labels(kind).inc()

    def count_retry(self) -> None:
        self.retries.inc()

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when never counted): for tests and displays."""
        return float(self.registry.get_sample_value(name, labels) or 0.0)

    def serve(self, port: int, host: str = "0.0.0.0") -> MetricsServer:
        """Serves the registry over HTTP on ``host:port`` (port 0: any free port)."""
        return MetricsServer(self.registry, port, host)


__all__ = ["EVENTS", "RECORDS", "RETRIES", "AlertsMetrics"]
