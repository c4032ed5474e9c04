"""Shaping's Kafka topic layout, and creating it on a broker (pure kafka-python).

Five topics, all with the same explicit partition count (keys are mouse ids, so
one mouse's records always land on one partition and stay ordered):

``<prefix>.events``       the event log of record; kept forever (event sourcing); the broker
                          stamps each record with its own time (LogAppendTime), which the
                          processor checks event dates against
``<prefix>.accepted``     the rig and operator facts the processor accepted, verbatim (trials
                          and movements aside): the projector's source of facts, so a refused
                          event never reaches a table; kept forever
``<prefix>.decisions``    what the processor decided; kept forever (audit trail)
``<prefix>.assignments``  current curriculum assignment per key; *compacted*
``<prefix>.dead-letter``  records that could not be processed; kept for a long time
``<prefix>.curricula``    published curriculum versions (CurriculumPublished), keyed by
                          ``name@version``; *compacted*, so every version is kept forever
                          (a version is immutable: compaction only drops repeats)

:func:`ensure_topics` creates what is missing and checks what exists. It never
alters an existing topic: a wrong partition count or a non-compacted
``assignments`` or ``curricula`` topic raises
:class:`~services.common.errors.TopicMismatchError`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaTimeoutError, for_code

from shaping.services.common.errors import (
    BrokerUnavailableError,
    InfraError,
    TopicCreationError,
    TopicMismatchError,
    TopicMissingError,
)

log = logging.getLogger(__name__)

# Kafka protocol error codes we handle explicitly.
_UNKNOWN_TOPIC_OR_PARTITION = 3
_TOPIC_ALREADY_EXISTS = 36

_FOREVER = "-1"
_DEAD_LETTER_RETENTION_MS = str(90 * 24 * 60 * 60 * 1000)  # 90 days

# The configs describe_topics() reports (besides the partition count).
_REPORTED_CONFIGS = (
    "cleanup.policy",
    "message.timestamp.type",
    "retention.ms",
    "min.cleanable.dirty.ratio",
    "segment.ms",
)


@dataclass(frozen=True)
class TopicNames:
    """The names of Shaping's topics; a prefix keeps deployments (and tests) apart."""

    events: str
    decisions: str
    assignments: str
    dead_letter: str
    curricula: str
    accepted: str = ""

    def __post_init__(self) -> None:
        if not self.accepted:  # names built by hand before the accepted topic existed
            prefix = self.events.removesuffix(".events")
            object.__setattr__(self, "accepted", f"{prefix}.accepted")

    @classmethod
    def with_prefix(cls, prefix: str = "shaping") -> TopicNames:
        if not prefix:
            raise ValueError("the topic prefix must not be empty")
        return cls(
            events=f"{prefix}.events",
            decisions=f"{prefix}.decisions",
            assignments=f"{prefix}.assignments",
            dead_letter=f"{prefix}.dead-letter",
            curricula=f"{prefix}.curricula",
            accepted=f"{prefix}.accepted",
        )

    def all(self) -> list[str]:
        return [
            self.events,
            self.accepted,
            self.decisions,
            self.assignments,
            self.dead_letter,
            self.curricula,
        ]


@dataclass(frozen=True)
class TopicSpec:
    """How one topic must look."""

    name: str
    partitions: int
    configs: Mapping[str, str]

    @property
    def cleanup_policy(self) -> str:
        return self.configs.get("cleanup.policy", "delete")


def topic_specs(names: TopicNames, partitions: int = 4) -> list[TopicSpec]:
    """The full layout: name, partition count and topic configs of every topic."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, not {partitions}")
    return [
        TopicSpec(
            names.events,
            partitions,
            {
                "cleanup.policy": "delete",
                "retention.ms": _FOREVER,
                "retention.bytes": "-1",
                # The broker's time, not the rig's: dates are checked against it and a rig's
                # clock skew is measured from it.
                "message.timestamp.type": "LogAppendTime",
            },
        ),
        TopicSpec(
            names.accepted,
            partitions,
            {"cleanup.policy": "delete", "retention.ms": _FOREVER, "retention.bytes": "-1"},
        ),
        TopicSpec(
            names.decisions,
            partitions,
            {"cleanup.policy": "delete", "retention.ms": _FOREVER, "retention.bytes": "-1"},
        ),
        TopicSpec(
            names.assignments,
            partitions,
            {
                "cleanup.policy": "compact",
                # Let the cleaner actually run on small, young logs: it only
                # compacts closed segments, and only once enough of the log is dirty.
                "min.cleanable.dirty.ratio": "0.1",
                "segment.ms": "60000",
                "delete.retention.ms": "86400000",
            },
        ),
        TopicSpec(
            names.dead_letter,
            partitions,
            {
                "cleanup.policy": "delete",
                "retention.ms": _DEAD_LETTER_RETENTION_MS,
                "retention.bytes": "-1",
            },
        ),
        TopicSpec(
            names.curricula,
            partitions,
            {
                # One record per published version (key name@version): compaction keeps
                # every version and drops only re-publications of the same one.
                "cleanup.policy": "compact",
                "min.cleanable.dirty.ratio": "0.1",
                "segment.ms": "60000",
                "delete.retention.ms": "86400000",
            },
        ),
    ]


@contextmanager
def _admin(bootstrap: str, timeout_s: float) -> Iterator[Any]:
    timeout_ms = max(1000, int(timeout_s * 1000))
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="shaping-topics",
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
        )
    except Exception as exc:
        raise BrokerUnavailableError(
            f"no Kafka broker answered at {bootstrap} within {timeout_s:g} s "
            f"({type(exc).__name__}: {exc}); start one with `infra/kafka/kafka.sh up`"
        ) from exc
    try:
        yield admin
    finally:
        admin.close()


def wait_for_broker(bootstrap: str, timeout_s: float) -> None:
    """Block until a broker at ``bootstrap`` answers a metadata request.

    Raises :class:`BrokerUnavailableError` when ``timeout_s`` passes first.
    """
    deadline = time.monotonic() + timeout_s
    last = "no attempt made"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerUnavailableError(
                f"no Kafka broker answered at {bootstrap} within {timeout_s:g} s ({last})"
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
    bootstrap: str, names: TopicNames, timeout_s: float = 30
) -> dict[str, dict[str, Any]]:
    """Describe the topics of ``names`` that exist on the broker.

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
    bootstrap: str, names: TopicNames, partitions: int = 4, timeout_s: float = 30
) -> None:
    """Create Shaping's topics (replication factor 1) unless they exist; idempotent.

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
                    f"topics {pending} have no partitions on the broker after {timeout_s:g} s;"
                    " create them first (`shaping topics create`)"
                )
            time.sleep(retry_s)
    return partitions
