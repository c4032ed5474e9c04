"""Creating and checking Shaping's topics on a broker (pure kafka-python).

The layout itself (names, partitions, configs) is the contract's: :mod:`shaping.schemas.topics`.
:func:`ensure_topics` creates what is missing and checks what exists. It never
alters an existing topic: a wrong partition count or a non-compacted
``assignments`` or ``curricula`` topic raises
:class:`~services.adapters.errors.TopicMismatchError`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kafka import TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaTimeoutError, for_code

from shaping.schemas.topics import TopicNames, TopicSpec, topic_specs
from shaping.services.adapters.errors import (
    BrokerUnavailableError,
    InfraError,
    TopicCreationError,
    TopicMismatchError,
    TopicMissingError,
)
from shaping.services.adapters.kafka import KafkaConnection
from shaping.services.adapters.kafka import admin as kafka_admin

log = logging.getLogger(__name__)

# Kafka protocol error codes we handle explicitly.
_UNKNOWN_TOPIC_OR_PARTITION = 3
_TOPIC_ALREADY_EXISTS = 36


# The configs describe_topics() reports (besides the partition count).
_REPORTED_CONFIGS = (
    "cleanup.policy",
    "message.timestamp.type",
    "retention.ms",
    "min.cleanable.dirty.ratio",
    "segment.ms",
)


def _where(connection: KafkaConnection | str) -> str:
    return connection if isinstance(connection, str) else connection.bootstrap


@contextmanager
def _admin(connection: KafkaConnection | str, timeout_s: float) -> Iterator[Any]:
    timeout_ms = max(1000, int(timeout_s * 1000))
    try:
        admin = kafka_admin(
            connection,
            "shaping-topics",
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
        )
    except Exception as exc:
        raise BrokerUnavailableError(
            f"no Kafka broker answered at {_where(connection)} within {timeout_s:g} s "
            f"({type(exc).__name__}: {exc}); start one with `infra/kafka/kafka.sh up`"
        ) from exc
    try:
        yield admin
    finally:
        admin.close()


def wait_for_broker(bootstrap: KafkaConnection | str, timeout_s: float) -> None:
    """Block until a broker at ``bootstrap`` (a connection, or just the brokers' addresses)
    answers a metadata request.

    Raises :class:`BrokerUnavailableError` when ``timeout_s`` passes first.
    """
    deadline = time.monotonic() + timeout_s
    last = "no attempt made"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerUnavailableError(
                f"no Kafka broker answered at {_where(bootstrap)} within {timeout_s:g} s ({last})"
            )
        try:
            with _admin(bootstrap, min(remaining, 5.0)) as admin:
                if admin.describe_cluster().get("brokers"):
                    admin.list_topics()
                    return
                last = "the cluster reports no brokers yet"
        except Exception as exc:
            cause = exc.__cause__ if isinstance(exc, BrokerUnavailableError) else exc
            last = f"{type(cause).__name__}: {cause}"
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def _describe(admin: Any, topics: list[str]) -> dict[str, dict[str, Any]]:
    """Partition count and the reported configs of those of ``topics`` that exist."""
    if not topics:
        return {}
    result: dict[str, dict[str, Any]] = {}
    for info in admin.describe_topics(topics):
        name = info.get("name")
        code = info.get("error_code", 0)
        if code == _UNKNOWN_TOPIC_OR_PARTITION:
            continue
        if code != 0:
            raise InfraError(
                f"cannot describe topic {name!r}: broker error {for_code(code).__name__} ({code})"
            )
        result[name] = {"partitions": len(info.get("partitions") or [])}
    if not result:
        return result
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, name, list(_REPORTED_CONFIGS)) for name in result
    ]
    described = admin.describe_configs(resources, config_filter="all").get("topic", {})
    for name, entry in result.items():
        configs = {key: value.get("value") for key, value in described.get(name, {}).items()}
        entry["cleanup.policy"] = configs.get("cleanup.policy", "delete")
        entry["configs"] = configs
    return result


def describe_topics(
    bootstrap: KafkaConnection | str, names: TopicNames, timeout_s: float = 30
) -> dict[str, dict[str, Any]]:
    """Describe the topics of ``names`` that exist on the broker (``bootstrap``: a
    connection, or just the brokers' addresses).

    Returns ``{topic: {"partitions": int, "cleanup.policy": str, "configs": {...}}}``
    where ``configs`` holds cleanup.policy, retention.ms, min.cleanable.dirty.ratio
    and segment.ms as the broker reports them. Missing topics are left out.
    """
    with _admin(bootstrap, timeout_s) as admin:
        return _describe(admin, names.all())


def _policies(value: str | None) -> set[str]:
    return {part.strip() for part in (value or "delete").split(",") if part.strip()}


def _mismatches(specs: list[TopicSpec], found: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    for spec in specs:
        info = found.get(spec.name)
        if info is None:
            problems.append(f"{spec.name}: does not exist after creation")
            continue
        if info["partitions"] != spec.partitions:
            problems.append(
                f"{spec.name}: has {info['partitions']} partitions, expected {spec.partitions}"
            )
        stamp = spec.configs.get("message.timestamp.type")
        if stamp is not None and info.get("configs", {}).get("message.timestamp.type") != stamp:
            # Not fatal (the topic works), but dates are then checked against the rigs' clocks.
            log.warning(
                "%s uses message.timestamp.type=%s, not %s: the processor checks dates against "
                "the producers' clocks; change it with kafka-configs.sh --alter",
                spec.name,
                info.get("configs", {}).get("message.timestamp.type"),
                stamp,
            )
        want, have = _policies(spec.cleanup_policy), _policies(info["cleanup.policy"])
        if want != have:
            problems.append(
                f"{spec.name}: cleanup.policy is {info['cleanup.policy']!r}, "
                f"expected {spec.cleanup_policy!r}"
            )
    return problems


def ensure_topics(
    bootstrap: KafkaConnection | str, names: TopicNames, partitions: int = 4, timeout_s: float = 30
) -> None:
    """Create Shaping's topics (replication factor 1) unless they exist; idempotent.

    ``bootstrap`` is the connection (:attr:`Settings.kafka
    <shaping.services.adapters.settings.Settings.kafka>`), or just the brokers' addresses.

    Existing topics are checked, never changed: a different partition count or a
    different cleanup.policy (in particular an ``assignments`` topic that is not
    compacted) raises :class:`TopicMismatchError`. Safe to call concurrently.
    """
    specs = topic_specs(names, partitions)
    deadline = time.monotonic() + timeout_s
    with _admin(bootstrap, timeout_s) as admin:
        existing = _describe(admin, [spec.name for spec in specs])
        missing = [spec for spec in specs if spec.name not in existing]
        if missing:
            request = {
                spec.name: {
                    "num_partitions": spec.partitions,
                    "replication_factor": 1,
                    "configs": dict(spec.configs),
                }
                for spec in missing
            }
            response = admin.create_topics(
                request, timeout_ms=max(1000, int(timeout_s * 1000)), raise_errors=False
            )
            created = []
            for result in response.get("topics", []):
                code = result.get("error_code", 0)
                if code == 0:
                    created.append(result["name"])
                elif code != _TOPIC_ALREADY_EXISTS:  # lost a race: checked below
                    raise TopicCreationError(
                        f"could not create topic {result['name']!r}: "
                        f"{result.get('error_message') or f'error code {code}'}"
                    )
            # Wait for every topic, not only ours: a concurrent caller may have
            # created some of them an instant ago.
            remaining_ms = max(1000, int((deadline - time.monotonic()) * 1000))
            try:
                admin.wait_for_topics([spec.name for spec in specs], timeout_ms=remaining_ms)
            except KafkaTimeoutError as exc:
                raise TopicCreationError(f"topics not ready in time: {exc}") from exc
            log.info("created topics %s", ", ".join(created) or "(none)")
            existing = _describe(admin, [spec.name for spec in specs])
        problems = _mismatches(specs, existing)
    if problems:
        raise TopicMismatchError(problems)


def wait_for_partitions(
    consumer: Any,
    topics: list[str],
    timeout_s: float = 30.0,
    stop: threading.Event | None = None,
    retry_s: float = 0.2,
) -> list[TopicPartition] | None:
    """Every partition of ``topics``, waiting for the consumer's metadata to know them.

    A freshly started broker or a just-created topic may not be in a client's metadata yet, so
    this retries until ``timeout_s``. Used by every client that assigns partitions by hand
    (rigs, the projector, tests, benchmarks).

    Returns:
        The partitions, sorted per topic; None if ``stop`` was set while waiting.

    Raises:
        TopicMissingError: when a topic still has no partitions at the deadline.
    """
    deadline = time.monotonic() + timeout_s
    partitions: list[TopicPartition] = []
    pending = list(topics)
    while pending:
        if stop is not None and stop.is_set():
            return None
        for name in list(pending):
            found = consumer.partitions_for_topic(name)
            if found:
                partitions.extend(TopicPartition(name, p) for p in sorted(found))
                pending.remove(name)
        if pending:
            if time.monotonic() >= deadline:
                raise TopicMissingError(
                    f"topics {pending} have no partitions this client can see after "
                    f"{timeout_s:g} s: they do not exist (create them with `shaping topics "
                    "create`), or the Kafka principal in use may not describe them (its ACLs, "
                    "docs/security.md)"
                )
            time.sleep(retry_s)
    return partitions
