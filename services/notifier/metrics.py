"""The notifier's Prometheus metrics (served by ``shaping notifier run --metrics-port``).

- ``shaping_notifier_sent_total`` (counter; labels ``channel``, ``notice``): messages delivered;
- ``shaping_notifier_failed_total`` (counter; labels ``channel``, ``final``): failed deliveries
  (``final``: ``no`` will be retried, ``yes`` gave up after the last try);
- ``shaping_notifier_unrouted_total`` (counter): alerts no subscription takes (logged).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from shaping.services.adapters.metrics import MetricsServer

SENT = "shaping_notifier_sent_total"
FAILED = "shaping_notifier_failed_total"
UNROUTED = "shaping_notifier_unrouted_total"


class NotifierMetrics:
    """The notifier's counters, in a registry of their own (one per process or test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.sent = Counter(
            SENT.removesuffix("_total"),
            "Messages delivered, by channel (email, webhook) and notice (raised, updated, "
            "resolved, escalated).",
            ("channel", "notice"),
            registry=self.registry,
        )
        self.failed = Counter(
            FAILED.removesuffix("_total"),
            "Failed deliveries, by channel; final=yes: given up after the last try.",
            ("channel", "final"),
            registry=self.registry,
        )
        self.unrouted = Counter(
            UNROUTED.removesuffix("_total"),
            "Alerts that no subscription of the routing file takes.",
            registry=self.registry,
        )

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when never counted): for tests and displays."""
        return float(self.registry.get_sample_value(name, labels) or 0.0)

    def serve(self, port: int, host: str = "0.0.0.0") -> MetricsServer:
        return MetricsServer(self.registry, port, host)


__all__ = ["FAILED", "SENT", "UNROUTED", "NotifierMetrics"]
