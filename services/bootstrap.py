"""The composition root: the one place that builds the services' collaborators from
:class:`~shaping.services.adapters.settings.Settings` and hands them down.

Library code (the projector, the operator's use cases, the adapters) never builds a codec,
a curriculum catalog, a metric registry or a Kafka client of its own: it takes them as
arguments. The entry points (the ``shaping`` commands in ``services/cli/``,
``python -m shaping.services.processor``) call the functions here; a test passes its own
(an in-memory catalog, a fake store, a consumer on a test broker) to the same library code.

Every function imports what it builds when it is called, so importing this module costs the
command line nothing (the rig's commands run on a Pi without SQLAlchemy or faust).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from shaping.services.adapters.settings import Settings

if TYPE_CHECKING:
    import threading

    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from prometheus_client import CollectorRegistry
    from sqlalchemy import Engine

    from shaping.schemas.codec import EventCodec
    from shaping.services.adapters.curricula_topic import CurriculaFollower, FollowingCatalog
    from shaping.services.adapters.metrics import ServiceMetrics
    from shaping.services.alerts.config import AlertRules
    from shaping.services.alerts.runner import AlertsStatus
    from shaping.services.domain.curriculum import CurriculumCatalog
    from shaping.services.domain.welfare import WelfarePolicy
    from shaping.services.ingress.gate import IngressGate
    from shaping.services.ingress.runner import GateStatus
    from shaping.services.notifier.routing import Routing
    from shaping.services.notifier.runner import NotifierStatus
    from shaping.services.projector.store import SqlProjectionStore


def settings(**overrides: Any) -> Settings:
    """The settings: ``SHAPING_*`` from the environment with a command's options on top
    (None: not given); see :meth:`Settings.load`.

    Raises:
        SettingsError: a value breaks its rule (the message names the variable or option).
    """
    return Settings.load(**overrides)


def codec() -> EventCodec:
    """The event codec (the contract's Avro schemas, parsed once per process)."""
    from shaping.schemas.codec import default_codec

    return default_codec()


def welfare_policy(settings: Settings) -> WelfarePolicy:
    """The lab's welfare policy: ``settings.welfare_policy``'s file, read and checked, or the
    built-in default policy when none is set.

    Raises:
        SettingsError: the file cannot be read or is invalid (each problem with its line).
    """
    from shaping.services.adapters.settings import SettingsError
    from shaping.services.curricula.policy import PolicyInvalid, load_policy
    from shaping.services.domain.welfare import DEFAULT_POLICY

    if not settings.welfare_policy:
        return DEFAULT_POLICY
    try:
        return load_policy(Path(settings.welfare_policy))
    except PolicyInvalid as exc:
        raise SettingsError("SHAPING_WELFARE_POLICY", str(exc), "welfare_policy") from exc


def catalog() -> CurriculumCatalog:
    """The curricula on this machine: the shipped ones and those in ``SHAPING_CURRICULA_DIR``.

    Raises:
        CurriculumInvalid: a curriculum file is invalid or the folder does not exist.
    """
    from shaping.services.curricula.catalog import default_catalog

    return default_catalog()


def following_catalog(
    settings: Settings, codec: EventCodec, base: CurriculumCatalog | None = None
) -> tuple[FollowingCatalog, CurriculaFollower]:
    """The processor's catalog: ``base`` (by default :func:`catalog`) plus every version
    published on the curricula topic, and the follower that feeds it (not yet loaded or
    started: the processor calls ``load`` before its first event, then ``start``).

    Raises:
        PublishError: no broker answers or the curricula topic does not exist.
    """
    from shaping.services.adapters.curricula_topic import CurriculaFollower, FollowingCatalog

    following = FollowingCatalog.copy_of(base if base is not None else catalog())
    follower = CurriculaFollower(settings.kafka, settings.topics.curricula, following, codec=codec)
    return following, follower


def published_catalog(
    settings: Settings, codec: EventCodec, base: CurriculumCatalog | None = None
) -> tuple[CurriculumCatalog, list[str]]:
    """``base`` (by default :func:`catalog`) plus the versions published on the curricula
    topic, read once (the command line's view), and a message for each publication left out.

    Raises:
        PublishError: Kafka cannot be reached or the topic does not exist.
    """
    from shaping.services.adapters.curricula_topic import add_published, read_published

    known = base if base is not None else catalog()
    published = read_published(settings.kafka, settings.topics.curricula, codec=codec)
    return known, add_published(known, published)


def metric_registry() -> CollectorRegistry:
    """A fresh Prometheus registry (one per service process, never the library's global)."""
    from prometheus_client import CollectorRegistry

    return CollectorRegistry()


def service_metrics(service: str, registry: CollectorRegistry | None = None) -> ServiceMetrics:
    """The Shaping metrics of a service process (``processor``, ``projector``), in
    ``registry`` (by default a fresh :func:`metric_registry`)."""
    from shaping.services.adapters.metrics import ServiceMetrics

    return ServiceMetrics(service, registry if registry is not None else metric_registry())


def publisher(settings: Settings, client_id: str, **options: Any) -> KafkaProducer:
    """An idempotent producer on the deployment's brokers (``acks=all``; see
    :func:`shaping.services.adapters.kafka.producer`)."""
    from shaping.services.adapters.kafka import producer

    return producer(settings.kafka, client_id, **options)


def reader(settings: Settings, client_id: str, **options: Any) -> KafkaConsumer:
    """A consumer on the deployment's brokers, in no group, committing nothing (see
    :func:`shaping.services.adapters.kafka.consumer`)."""
    from shaping.services.adapters.kafka import consumer

    return consumer(settings.kafka, client_id, **options)


def admin(settings: Settings, client_id: str, **options: Any) -> KafkaAdminClient:
    """An admin client on the deployment's brokers."""
    from shaping.services.adapters.kafka import admin as kafka_admin

    return kafka_admin(settings.kafka, client_id, **options)


def ensure_topics(settings: Settings) -> None:
    """Creates the deployment's topics unless they exist (checking those that do).

    Raises:
        InfraError: the broker cannot be reached, or an existing topic differs.
    """
    from shaping.services.adapters.topics import ensure_topics as ensure

    ensure(settings.kafka, settings.topics, partitions=settings.partitions)


def ingress_gate(settings: Settings, codec: EventCodec) -> IngressGate:
    """The ingress gate's judgement for the deployment's topics (commands older than
    ``settings.command_max_age_s`` are not forwarded)."""
    from datetime import timedelta

    from shaping.services.ingress.gate import IngressGate

    return IngressGate(settings.topics, codec, timedelta(seconds=settings.command_max_age_s))


def until_signalled() -> threading.Event:
    """What a long-running service needs before it starts: INFO logging with timestamps, and an
    event that SIGTERM or SIGINT sets (the service then finishes what is in flight and stops)."""
    import logging
    import signal
    import threading

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop


def port_from_env(name: str) -> int | None:
    """The port number in the environment variable ``name`` (None when unset or empty).

    Raises:
        SettingsError: the value is not a port number.
    """
    import os

    from shaping.services.adapters.settings import SettingsError

    text = os.environ.get(name, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) > 65535:
        raise SettingsError(name, f"not a port number: {text!r}")
    return int(text)


def alert_rules(rules_file: Path | None, policy_file: str | None = None) -> AlertRules:
    """The lab's alert rules from ``rules_file``; without one, the built-in rules with the
    heartbeats on (a service watches the rigs and the processor) and the welfare policy of
    ``policy_file`` (the built-in policy when None).

    Raises:
        FileInvalid: the rules file, with each problem and its line.
        PolicyInvalid: the policy file, likewise.
    """
    from shaping.services.alerts.config import default_rules, load_rules
    from shaping.services.curricula.policy import load_policy
    from shaping.services.domain.welfare import DEFAULT_POLICY

    if rules_file is not None:
        return load_rules(rules_file)
    welfare = load_policy(Path(policy_file)) if policy_file else DEFAULT_POLICY
    return default_rules(welfare=welfare, heartbeats=True)


def run_alerts_service(
    settings: Settings,
    rules: AlertRules,
    stop: threading.Event,
    metrics_port: int | None = None,
    metrics_host: str = "0.0.0.0",
) -> AlertsStatus:
    """Runs the alerts service with ``rules`` on ``settings.kafka`` until ``stop`` is set,
    serving its metrics on ``metrics_port`` when given."""
    from shaping.services.alerts.metrics import AlertsMetrics
    from shaping.services.alerts.rules import AlertEngine
    from shaping.services.alerts.runner import run_alerts

    metrics = AlertsMetrics(metric_registry())
    server = metrics.serve(metrics_port, metrics_host) if metrics_port is not None else None
    try:
        return run_alerts(
            settings.kafka, settings.topics, lambda: AlertEngine(rules), codec(), stop, metrics
        )
    finally:
        if server is not None:
            server.close()


def run_notifier_service(
    settings: Settings,
    routing: Routing,
    stop: threading.Event,
    metrics_port: int | None = None,
    metrics_host: str = "0.0.0.0",
) -> NotifierStatus:
    """Runs the notifier with ``routing`` on ``settings.kafka`` until ``stop`` is set, serving
    its metrics on ``metrics_port`` when given."""
    from shaping.services.notifier.metrics import NotifierMetrics
    from shaping.services.notifier.runner import run_notifier

    metrics = NotifierMetrics(metric_registry())
    server = metrics.serve(metrics_port, metrics_host) if metrics_port is not None else None
    try:
        return run_notifier(settings.kafka, settings.topics, routing, codec(), stop, metrics)
    finally:
        if server is not None:
            server.close()


def run_ingress(
    settings: Settings,
    stop: threading.Event,
    metrics_port: int | None = None,
    metrics_host: str = "0.0.0.0",
) -> GateStatus:
    """Runs the ingress gate on ``settings.kafka`` until ``stop`` is set, serving its metrics
    on ``metrics_port`` when given.

    Raises:
        KafkaError: no broker answered at the start.
    """
    from shaping.services.ingress.metrics import IngressMetrics
    from shaping.services.ingress.runner import run_gate

    metrics = IngressMetrics(metric_registry())
    server = metrics.serve(metrics_port, metrics_host) if metrics_port is not None else None
    try:
        return run_gate(
            settings.kafka, settings.topics, ingress_gate(settings, codec()), stop, metrics
        )
    finally:
        if server is not None:
            server.close()


def projection_store(settings: Settings, codec: EventCodec) -> SqlProjectionStore:
    """The status tables at ``settings.db_url`` (created when absent, checked when present).

    Raises:
        ProjectorError: the database cannot be reached, or its tables are from an older
            Shaping.
    """
    from shaping.services.projector.store import SqlProjectionStore

    return SqlProjectionStore(settings.db_url, codec=codec)


def database(settings: Settings) -> Engine:
    """A read-only view of the status tables at ``settings.db_url``, for the operator's
    queries.

    Raises:
        OperatorError: the database cannot be opened, or holds no status tables.
    """
    from shaping.services.operator.queries import open_database

    return open_database(settings.db_url)


__all__ = [
    "admin",
    "catalog",
    "codec",
    "database",
    "ensure_topics",
    "following_catalog",
    "ingress_gate",
    "metric_registry",
    "projection_store",
    "published_catalog",
    "publisher",
    "reader",
    "run_ingress",
    "service_metrics",
    "settings",
]
