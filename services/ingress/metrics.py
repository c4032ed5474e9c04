"""The ingress gate's Prometheus metrics (served by ``shaping ingress run --metrics-port``).

- ``shaping_ingress_forwarded_total`` (counter; labels ``source``, ``message_type``): records
  forwarded to ``events`` or ``commands`` and acknowledged, by source kind (``rig``,
  ``operator``) and message type;
- ``shaping_ingress_rejected_total`` (counter; labels ``source``, ``reason``): records sent to
  the dead-letter topic, by the gate's reason (:data:`~shaping.services.ingress.gate.RejectKind`);
- ``shaping_ingress_retries_total`` (counter): rounds whose sends the broker did not
  acknowledge, read again.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from shaping.services.adapters.metrics import Counters

FORWARDED = "shaping_ingress_forwarded_total"
REJECTED = "shaping_ingress_rejected_total"
RETRIES = "shaping_ingress_retries_total"


class IngressMetrics(Counters):
    """The gate's counters, in a registry of their own (one per process or test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        self.forwarded = self.counter(
            FORWARDED,
            "Records of ingress topics forwarded to events or commands and acknowledged, by "
            "source kind (rig, operator) and message type.",
            ("source", "message_type"),
        )
        self.rejected = self.counter(
            REJECTED,
            "Records of ingress topics sent to the dead-letter topic, by source kind and the "
            "gate's reason (undecodable, invalid, wrong_type, impersonation, key, stale, topic, "
            "failed).",
            ("source", "reason"),
        )
        self.retries = self.counter(
            RETRIES,
            "Rounds whose sends the broker did not acknowledge; their records are read again.",
        )

    def count_forwarded(self, source: str, message_type: str) -> None:
        self.forwarded.labels(source, message_type).inc()

    def count_rejected(self, source: str, reason: str) -> None:
        self.rejected.labels(source, reason).inc()

    def count_retry(self) -> None:
        self.retries.inc()


__all__ = ["FORWARDED", "REJECTED", "RETRIES", "IngressMetrics"]
