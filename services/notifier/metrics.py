"""The notifier's Prometheus metrics (served by ``shaping notifier run --metrics-port``).

- ``shaping_notifier_sent_total`` (counter; labels ``channel``, ``notice``): messages delivered;
- ``shaping_notifier_failed_total`` (counter; labels ``channel``, ``final``): failed deliveries
  (``final``: ``no`` will be retried, ``yes`` gave up after the last try);
- ``shaping_notifier_unrouted_total`` (counter): alerts no subscription takes (logged).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from shaping.services.adapters.metrics import Counters

SENT = "shaping_notifier_sent_total"
FAILED = "shaping_notifier_failed_total"
UNROUTED = "shaping_notifier_unrouted_total"


class NotifierMetrics(Counters):
    """The notifier's counters, in a registry of their own (one per process or test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.sent = self.counter(
            SENT,
            "Messages delivered, by channel (email, webhook) and notice (raised, updated, "
            "resolved, escalated).",
            ("channel", "notice"),
        )
        self.failed = self.counter(
            FAILED,
            "Failed deliveries, by channel; final=yes: given up after the last try.",
            ("channel", "final"),
        )
        self.unrouted = self.counter(
            UNROUTED,
            "Alerts that no subscription of the routing file takes.",
        )


__all__ = ["FAILED", "SENT", "UNROUTED", "NotifierMetrics"]
