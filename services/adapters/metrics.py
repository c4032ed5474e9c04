"""Prometheus metrics of Shaping's services: one catalogue of stable, documented names.

Each service process owns one :class:`ServiceMetrics` (its own registry, so two services or two
tests in one process never collide) and serves it on an HTTP port with prometheus-client:
``shaping processor --metrics-port`` / ``shaping projector --metrics-port`` (or
``SHAPING_PROCESSOR_METRICS_PORT`` / ``SHAPING_PROJECTOR_METRICS_PORT``).

The names below are an interface: the Grafana dashboards in ``infra/grafana`` query them and a
test checks every panel against what the services really export, so rename nothing without
changing both. :data:`CATALOGUE` lists them (the README's table is generated from the same
facts).

=================================  =========  ================================  ================
name                               type       labels                            exported by
=================================  =========  ================================  ================
shaping_events_consumed_total      counter    service, topic, event_type        processor,
                                                                                projector
shaping_events_produced_total      counter    service, topic, event_type        processor
shaping_events_rejected_total      counter    service, error_kind               processor
shaping_processing_seconds         histogram  service, unit                     processor,
                                                                                projector
shaping_event_age_seconds          histogram  service                           processor,
                                                                                projector
shaping_consumer_lag               gauge      service, topic, partition         processor,
                                                                                projector
shaping_decisions_total            counter    curriculum, stage, decision       processor
shaping_events_duplicate_total     counter    service                           processor
shaping_processing_retries_total   counter    service, outcome                  processor,
                                                                                projector
shaping_event_time_offset_seconds  gauge      rig                               processor
shaping_mice_per_stage             gauge      curriculum, stage                 projector
shaping_rig_outbox_depth           gauge      rig                               rig agents
shaping_rig_stale_assignments_     counter    rig, action                       rig agents
total
shaping_rig_unsafe_assignments_    counter    rig, action                       rig agents
total
shaping_rig_undecodable_           counter    rig                               rig agents
assignments_total
shaping_rig_undecodable_           counter    rig                               rig agents
decisions_total
shaping_rig_clock_skew_seconds     gauge      rig                               rig agents
faust_*                            various    (faust's own sensors)             processor
=================================  =========  ================================  ================

``shaping_rig_outbox_depth`` is exported by the rig agent (``rig/``), which stays free of
prometheus-client; it is documented here so that the dashboards and their test know it.

Faust's own sensors (:class:`faust.sensors.prometheus.PrometheusMonitor`) are attached with
:func:`attach_faust_sensors`. Faust observes its latency histograms in milliseconds under names
such as ``faust_events_runtime_ms``, which ``promtool check metrics`` rejects (abbreviated,
non-base units); they are exported here in seconds as ``faust_<name>_seconds`` instead. The
other faust metrics keep faust's names with the ``faust`` prefix.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

SERVICES = ("processor", "projector")
"""The values of the ``service`` label."""

RIG_OUTBOX_DEPTH = "shaping_rig_outbox_depth"
"""Gauge exported by each rig agent: events in its durable outbox not yet acknowledged by Kafka
(label ``rig``). Defined by ``rig/``; named here for the dashboards."""

FAUST_PREFIX = "faust"
"""Prefix of faust's own sensor metrics."""

# Seconds; from 1 ms (a trial through the core) to 30 s (a large projector batch on a slow disk).
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Seconds between a message reaching the broker and a service handling it: up to an hour of lag.
_AGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


@dataclass(frozen=True)
class MetricDoc:
    """One metric of the catalogue.

    Attributes:
        name: the name as scraped (counters with their ``_total`` suffix, histograms without
            their ``_bucket``/``_sum``/``_count`` series).
        kind: ``counter``, ``gauge`` or ``histogram``.
        labels: label names.
        exported_by: which processes export it.
        help: what it measures.
    """

    name: str
    kind: str
    labels: tuple[str, ...]
    exported_by: tuple[str, ...]
    help: str

    def series(self) -> tuple[str, ...]:
        """The series names this metric appears under in a scrape."""
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


CATALOGUE: tuple[MetricDoc, ...] = (
    MetricDoc(
        "shaping_events_consumed_total",
        "counter",
        ("service", "topic", "event_type"),
        ("processor", "projector"),
        "Messages consumed, by topic and event type (event_type 'undecodable' for bytes that"
        " are no Shaping event).",
    ),
    MetricDoc(
        "shaping_events_produced_total",
        "counter",
        ("service", "topic", "event_type"),
        ("processor",),
        "Events published and acknowledged by the broker, by topic and event type.",
    ),
    MetricDoc(
        "shaping_events_rejected_total",
        "counter",
        ("service", "error_kind"),
        ("processor",),
        "Input messages sent to the dead-letter topic, by EventRejected.error_kind.",
    ),
    MetricDoc(
        "shaping_events_duplicate_total",
        "counter",
        ("service",),
        ("processor",),
        "Input messages dropped as duplicates: redeliveries and events seen before.",
    ),
    MetricDoc(
        "shaping_processing_retries_total",
        "counter",
        ("service", "outcome"),
        ("processor", "projector"),
        "Messages whose processing failed and was retried (outcome retried) or parked on the "
        "dead-letter topic or table after the last try (outcome parked).",
    ),
    MetricDoc(
        "shaping_event_time_offset_seconds",
        "gauge",
        ("rig",),
        ("processor",),
        "occurred_at minus the broker's time of a rig's latest accepted event: its clock skew "
        "plus the time the event waited in its outbox (the rig measures its skew alone).",
    ),
    MetricDoc(
        "shaping_processing_seconds",
        "histogram",
        ("service", "unit"),
        ("processor", "projector"),
        "Time to process one unit of work: unit 'message' (processor: decode, decide, publish,"
        " store state) or 'batch' (projector: one transaction of rows and offsets).",
    ),
    MetricDoc(
        "shaping_event_age_seconds",
        "histogram",
        ("service",),
        ("processor", "projector"),
        "Time from a message's broker timestamp to the moment the service processed it.",
    ),
    MetricDoc(
        "shaping_consumer_lag",
        "gauge",
        ("service", "topic", "partition"),
        ("processor", "projector"),
        "Messages between the service's position and the end of the partition.",
    ),
    MetricDoc(
        "shaping_decisions_total",
        "counter",
        ("curriculum", "stage", "decision"),
        ("processor",),
        "StageTransitioned decisions, by curriculum, the stage judged and the decision.",
    ),
    MetricDoc(
        "shaping_mice_per_stage",
        "gauge",
        ("curriculum", "stage"),
        ("projector",),
        "Mice whose next session is on a stage (from the mouse_status table, at scrape time).",
    ),
    MetricDoc(
        RIG_OUTBOX_DEPTH,
        "gauge",
        ("rig",),
        ("rig",),
        "Events in a rig's durable outbox that Kafka has not acknowledged yet.",
    ),
    MetricDoc(
        "shaping_rig_stale_assignments_total",
        "counter",
        ("rig", "action"),
        ("rig",),
        "Sessions about to start whose assignment had not arrived in time: run on the cached "
        "assignment (action ran_cached) or refused (action refused).",
    ),
    MetricDoc(
        "shaping_rig_unsafe_assignments_total",
        "counter",
        ("rig", "action"),
        ("rig",),
        "Assignments outside the rig's safety limits ([safety] of its config) that a session "
        "was about to run: refused, nothing ran (action refused), or the newest safe assignment "
        "of the mouse ran instead (action ran_last_safe).",
    ),
    MetricDoc(
        "shaping_rig_undecodable_assignments_total",
        "counter",
        ("rig",),
        ("rig",),
        "Assignments for the rig's mice that it could not decode (a newer schema, corruption).",
    ),
    MetricDoc(
        "shaping_rig_undecodable_decisions_total",
        "counter",
        ("rig",),
        ("rig",),
        "Decisions for the rig's mice that it could not decode.",
    ),
    MetricDoc(
        "shaping_rig_held_refusals_total",
        "counter",
        ("rig",),
        ("rig",),
        "Sessions the rig refused because the mouse was held or not cleared (not weighed) by "
        "the welfare gate.",
    ),
    MetricDoc(
        "shaping_rig_clock_skew_seconds",
        "gauge",
        ("rig",),
        ("rig",),
        "The rig's clock minus the broker's, measured on its outbox's acknowledgements "
        "(smoothed; positive: ahead).",
    ),
    MetricDoc(
        "shaping_ingress_forwarded_total",
        "counter",
        ("source", "message_type"),
        ("ingress",),
        "Records of ingress topics forwarded to events or commands and acknowledged, by "
        "source kind (rig, operator) and message type.",
    ),
    MetricDoc(
        "shaping_ingress_rejected_total",
        "counter",
        ("source", "reason"),
        ("ingress",),
        "Records of ingress topics dead-lettered by the ingress gate, by source kind and "
        "reason (undecodable, invalid, wrong_type, impersonation, key, stale, topic, failed).",
    ),
    MetricDoc(
        "shaping_ingress_retries_total",
        "counter",
        (),
        ("ingress",),
        "Rounds of the ingress gate whose sends the broker did not acknowledge; read again.",
    ),
)
"""Every metric Shaping defines (faust's own sensors come on top, prefixed ``faust_``)."""


def _name(doc_name: str) -> str:
    """prometheus-client adds ``_total`` to counters itself."""
    return doc_name.removesuffix("_total")


def _doc(name: str) -> MetricDoc:
    return next(doc for doc in CATALOGUE if doc.name == name)


class QueryCollector(Collector):
    """A gauge family computed when Prometheus scrapes, e.g. by a query of the status tables.

    Args:
        name: metric name.
        documentation: its help text.
        labels: label names.
        fetch: returns ``(label values, value)`` pairs; an exception is logged and the metric is
            left out of that scrape (the other metrics still answer).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        fetch: Callable[[], Iterable[tuple[tuple[str, ...], float]]],
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.fetch = fetch

    def describe(self) -> Iterator[Any]:
        yield GaugeMetricFamily(self.name, self.documentation, labels=list(self.labels))

    def collect(self) -> Iterator[Any]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=list(self.labels))
        try:
            rows = list(self.fetch())
        except Exception as exc:  # a scrape must not fail because the database is away
            log.warning("cannot compute %s: %s", self.name, exc)
            return
        for values, value in rows:
            family.add_metric([str(v) for v in values], float(value))
        yield family


class MetricsServer:
    """The HTTP endpoint serving one registry (``GET /metrics``); stop it with :meth:`close`."""

    def __init__(self, registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> None:
        self.server, self.thread = start_http_server(port, addr=host, registry=registry)
        self.port = int(self.server.server_address[1])

    def close(self) -> None:
        """Stops serving and releases the port."""
        self.server.shutdown()
        self.server.server_close()


class Counters:
    """The counters of a small service (the ingress gate, the alerts service, the notifier,
    the web page), in a registry of their own (one per process or test), with the two things
    each needs: a sample's value and an HTTP endpoint."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()

    def counter(self, name: str, help_text: str, labels: tuple[str, ...] = ()) -> Counter:
        """A counter named ``name`` (its ``_total`` suffix is prometheus-client's to add)."""
        return Counter(name.removesuffix("_total"), help_text, labels, registry=self.registry)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when never counted): for tests and displays."""
        return float(self.registry.get_sample_value(name, labels) or 0.0)

    def serve(self, port: int, host: str = "0.0.0.0") -> MetricsServer:
        """Serves the registry over HTTP on ``host:port`` (port 0: any free port)."""
        return MetricsServer(self.registry, port, host)


class ServiceMetrics:
    """The Shaping metrics of one service process, in a registry of their own.

    Args:
        service: value of the ``service`` label (``processor`` or ``projector``).
        registry: where to register (a fresh one by default).
    """

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        if service not in SERVICES:
            raise ValueError(f"unknown service {service!r}; expected one of {SERVICES}")
        self.service = service
        self.registry = registry or CollectorRegistry()
        self._lock = threading.Lock()

        def counter(name: str) -> Counter:
            doc = _doc(name)
            return Counter(_name(doc.name), doc.help, doc.labels, registry=self.registry)

        def gauge(name: str) -> Gauge:
            doc = _doc(name)
            return Gauge(doc.name, doc.help, doc.labels, registry=self.registry)

        def histogram(name: str, buckets: tuple[float, ...]) -> Histogram:
            doc = _doc(name)
            return Histogram(
                doc.name, doc.help, doc.labels, registry=self.registry, buckets=buckets
            )

        self.consumed = counter("shaping_events_consumed_total")
        self.produced = counter("shaping_events_produced_total")
        self.rejected = counter("shaping_events_rejected_total")
        self.decisions = counter("shaping_decisions_total")
        self.duplicates = counter("shaping_events_duplicate_total")
        self.retries = counter("shaping_processing_retries_total")
        self.event_offset = gauge("shaping_event_time_offset_seconds")
        self.lag = gauge("shaping_consumer_lag")
        self.processing = histogram("shaping_processing_seconds", _LATENCY_BUCKETS)
        self.event_age = histogram("shaping_event_age_seconds", _AGE_BUCKETS)

    # -- recording ----------------------------------------------------------------------------

    def count_consumed(self, topic: str, event_type: str | None, n: int = 1) -> None:
        """Counts consumed messages; ``event_type`` None means the bytes did not decode."""
        self.consumed.labels(self.service, topic, event_type or "undecodable").inc(n)

    def count_produced(self, topic: str, event_type: str, n: int = 1) -> None:
        """Counts published (acknowledged) events."""
        self.produced.labels(self.service, topic, event_type).inc(n)

    def count_rejected(self, error_kind: str) -> None:
        """Counts one input sent to the dead-letter topic."""
        self.rejected.labels(self.service, error_kind).inc()

    def count_duplicate(self, n: int = 1) -> None:
        """Counts inputs dropped as duplicates."""
        self.duplicates.labels(self.service).inc(n)

    def count_retry(self, outcome: str) -> None:
        """Counts a failed processing attempt: ``retried`` or ``parked``."""
        self.retries.labels(self.service, outcome).inc()

    def set_event_offset(self, rig: str, seconds: float) -> None:
        """Records how far a rig's latest event is dated from the broker's time."""
        self.event_offset.labels(rig).set(seconds)

    def count_decision(self, curriculum: str, stage: str, decision: str) -> None:
        """Counts one StageTransitioned."""
        self.decisions.labels(curriculum, stage, decision).inc()

    def observe_processing(self, unit: str, *seconds: float) -> None:
        """Records the time each ``message`` or ``batch`` took."""
        observe_many(self.processing.labels(self.service, unit), seconds)

    def observe_age(self, *seconds: float) -> None:
        """Records how old each message was (since its broker timestamp) when processed."""
        observe_many(self.event_age.labels(self.service), seconds)

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        """Sets the consumer lag of one partition (never below 0)."""
        self.lag.labels(self.service, topic, str(partition)).set(max(0, lag))

    def add_collector(self, collector: Collector) -> None:
        """Registers a scrape-time collector such as a :class:`QueryCollector`."""
        self.registry.register(collector)

    def mice_per_stage(self, fetch: Callable[[], Iterable[tuple[tuple[str, str], int]]]) -> None:
        """Exports ``shaping_mice_per_stage`` from ``fetch`` (curriculum, stage) -> count."""
        doc = _doc("shaping_mice_per_stage")

        def rows() -> Iterable[tuple[tuple[str, ...], float]]:
            return [(labels, float(count)) for labels, count in fetch()]

        self.add_collector(QueryCollector(doc.name, doc.help, doc.labels, rows))

    def serve(self, port: int, host: str = "0.0.0.0") -> MetricsServer:
        """Serves this registry over HTTP on ``host:port`` (port 0: any free port)."""
        server = MetricsServer(self.registry, port, host)
        log.info("%s metrics on http://%s:%d/metrics", self.service, host, server.port)
        return server


class _SecondsFromMilliseconds:
    """Takes faust's millisecond observations and records them in a seconds histogram."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram

    def observe(self, amount: float, exemplar: Any = None) -> None:
        self.histogram.observe(amount / 1000.0)


def attach_faust_sensors(app: Any, registry: CollectorRegistry) -> None:
    """Attaches faust's Prometheus sensors to ``app``, registered in ``registry``.

    Does what :func:`faust.sensors.prometheus.setup_prometheus_sensors` does, except that the
    metrics are served by the service's own metrics endpoint (faust's web server is not needed)
    and that faust's millisecond histograms become ``faust_<name>_seconds`` histograms.
    """
    from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor

    scratch = CollectorRegistry()
    original = FaustMetrics.create(scratch, FAUST_PREFIX)
    fields: dict[str, Any] = {}
    for field, metric in original._asdict().items():
        if isinstance(metric, Histogram):
            # e.g. faust_events_runtime_ms -> faust_events_runtime_seconds,
            # faust_producer_send_latency -> faust_producer_send_latency_seconds.
            base = metric._name.removesuffix("_ms")
            seconds = Histogram(
                f"{base}_seconds",
                metric._documentation.replace(" in ms", "") + " (seconds)",
                registry=registry,
                buckets=tuple(b / 1000.0 for b in metric._upper_bounds if b != float("inf")),
            )
            fields[field] = _SecondsFromMilliseconds(seconds)
        else:
            registry.register(metric)
            fields[field] = metric
    app.monitor = PrometheusMonitor(metrics=FaustMetrics(**fields))


def observe_many(child: Histogram, seconds: Sequence[float]) -> None:
    """Observes each of ``seconds`` (negative ones as 0) in a labelled histogram, as one
    ``observe`` per value would, with one update per bucket touched: the processor observes
    two values per message, and one ``observe`` (a loop over the bounds and two locked
    increments) cost a few percent of a trial's processing. Uses the child's bucket bounds
    and values, which prometheus_client keeps as ``_upper_bounds``, ``_buckets`` and
    ``_sum``; without them it observes one by one (tests/unit/test_service_metrics.py holds
    the two to the same scrape)."""
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if bounds is None or buckets is None or total is None or len(seconds) < 2:
        for each in seconds:
            child.observe(max(0.0, each))
        return
    values = [max(0.0, each) for each in seconds]
    # ``observe`` counts a value in the first bucket whose bound is >= it (the last is +Inf).
    for index, n in Tally(bisect_left(bounds, value) for value in values).items():
        buckets[index].inc(n)
    total.inc(sum(values))  # the same sum, up to the rounding of the additions' order
