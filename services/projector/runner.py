"""The projector's Kafka loop: read the processor's topics and apply them to a projection store.

It reads what the processor wrote, never what rigs and operators sent: the accepted facts,
decisions, assignments and dead letters. So a refused event changes no row but
``rejected_events``.

Offsets are never committed to Kafka. The store's tracking record, written in the same
transaction as the rows, is the only record of what was applied, so the consumer is assigned
every partition by hand and seeks each to the store's committed offset on start.

It rides out outages: when the broker or the database is out of reach it waits, with a
growing pause (up to :data:`MAX_BACKOFF_S`), and resumes where it was. A message it fails to
apply for another reason (a bug) is tried :data:`ATTEMPTS` times, then recorded in
``rejected_events`` (rejected by the projector, kind ``failed``) and passed over, so no message
can stop or loop it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from shaping.schemas.codec import EventCodec
from shaping.schemas.errors import SerializationError
from shaping.schemas.events import Event
from shaping.schemas.topics import PROJECTED_KINDS, TopicKind, TopicNames
from shaping.services.adapters.errors import TopicMissingError
from shaping.services.adapters.kafka import KafkaConnection
from shaping.services.adapters.kafka import consumer as kafka_consumer
from shaping.services.adapters.metrics import ServiceMetrics
from shaping.services.adapters.topics import wait_for_partitions
from shaping.services.projector.errors import ProjectorError
from shaping.services.projector.store import ProjectedMessage, ProjectionStore

log = logging.getLogger(__name__)

# How long one poll waits for data: the longest a set ``stop`` goes unnoticed.
_POLL_TIMEOUT_MS = 200
# Pause between attempts to read a topic's partitions from the broker's metadata.
_METADATA_RETRY_S = 0.5

ATTEMPTS = 3
"""Tries of one message before the projector parks it in ``rejected_events``."""

MAX_BACKOFF_S = 10.0
"""Longest pause between two tries to reach the broker or the database."""


def run_projector(
    connection: KafkaConnection | str,
    topics: TopicNames,
    store: ProjectionStore,
    codec: EventCodec,
    consumer: str = "projector",
    stop: threading.Event | None = None,
    idle_exit_s: float | None = None,
    batch_size: int = 500,
    *,
    metadata_timeout_s: float = 60.0,
    metrics: ServiceMetrics | None = None,
) -> int:
    """Projects Shaping's topics into ``store`` until stopped or idle.

    Every partition of the four topics is read from the store's committed offset (or from the
    beginning when there is none). Each poll becomes one :meth:`ProjectionStore.apply_batch`,
    so rows and offsets commit together. Messages that cannot be decoded advance the offset
    only; the processor dead-letters them.

    The collaborators are built by :mod:`shaping.services.bootstrap` (``shaping projector``);
    a test passes its own.

    Args:
        connection: the brokers (``Settings.kafka``), or just their addresses, e.g.
            ``localhost:9092`` (the rest of the connection from the environment).
        topics: the deployment's topic names.
        store: where the projection and its tracking record live.
        codec: decodes the messages.
        consumer: name of this projector in the store's tracking record.
        stop: when set, the projector finishes its current batch and returns.
        idle_exit_s: return once no message arrived for this long (None: run until ``stop``).
        batch_size: most messages per batch (and per transaction).
        metadata_timeout_s: how long to wait for the broker to report the topics' partitions.
        metrics: where to count consumed messages, batch latency and lag (None: not measured).

    Returns:
        How many messages were consumed (including those skipped or not projected).

    Raises:
        ProjectorError: when the topics' partitions cannot be found in time, or a batch cannot
            be applied (it was rolled back; a restart resumes from the last committed batch).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    kinds = topics.kinds(PROJECTED_KINDS)
    # From the start if a committed offset is no longer on the broker (say after the topic
    # was recreated): the store skips offsets it has already applied.
    kafka = kafka_consumer(connection, consumer, max_poll_records=batch_size)
    try:
        try:
            partitions = wait_for_partitions(
                kafka, list(kinds), metadata_timeout_s, stop, _METADATA_RETRY_S
            )
        except TopicMissingError as exc:
            raise ProjectorError(str(exc)) from exc
        if partitions is None:
            return 0
        kafka.assign(partitions)
        committed = store.committed_offsets(consumer)
        for tp in partitions:
            position = committed.get((tp.topic, tp.partition))
            if position is None:
                kafka.seek_to_beginning(tp)
            else:
                kafka.seek(tp, position)
        log.info(
            "projector %s reading %d partitions of %s from %d committed positions",
            consumer,
            len(partitions),
            ", ".join(kinds),
            len(committed),
        )
        return _consume(
            kafka, codec, kinds, store, consumer, stop, idle_exit_s, batch_size, metrics
        )
    finally:
        kafka.close(autocommit=False)


def _consume(
    kafka: Any,
    codec: EventCodec,
    kinds: dict[str, TopicKind],
    store: ProjectionStore,
    consumer: str,
    stop: threading.Event | None,
    idle_exit_s: float | None,
    batch_size: int,
    metrics: ServiceMetrics | None = None,
) -> int:
    consumed = 0
    last_arrival = time.monotonic()
    backoff = _Backoff(stop)
    while stop is None or not stop.is_set():
        try:
            polled = kafka.poll(timeout_ms=_POLL_TIMEOUT_MS, max_records=batch_size)
        except Exception as exc:  # the broker is out of reach: wait and try again
            backoff.wait(f"cannot read from Kafka ({type(exc).__name__}: {exc})")
            continue
        backoff.reset()
        records = [record for tp in sorted(polled) for record in polled[tp]]
        if metrics is not None:
            _measure_lag(kafka, metrics)
        if not records:
            if idle_exit_s is not None and time.monotonic() - last_arrival >= idle_exit_s:
                log.info("projector %s idle for %.1f s; stopping", consumer, idle_exit_s)
                break
            continue
        last_arrival = time.monotonic()
        messages = [
            ProjectedMessage(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                event=_decode(codec, record),
                topic_kind=kinds[record.topic],
            )
            for record in records
        ]
        started = time.perf_counter()
        applied = _apply(store, consumer, messages, stop, metrics)
        if metrics is not None:
            _measure_batch(metrics, messages, records, time.perf_counter() - started)
        consumed += len(messages)
        log.debug("projector %s: %d messages, %d new events", consumer, len(messages), applied)
    return consumed


class _Backoff:
    """Growing pauses while something is out of reach, cut short by ``stop``."""

    def __init__(self, stop: threading.Event | None) -> None:
        self.stop = stop
        self.pause = 0.0

    def wait(self, why: str) -> None:
        self.pause = min(MAX_BACKOFF_S, max(0.5, self.pause * 2))
        log.warning("%s; trying again in %.1f s", why, self.pause)
        if self.stop is not None:
            self.stop.wait(self.pause)
        else:
            time.sleep(self.pause)

    def reset(self) -> None:
        self.pause = 0.0


def _apply(
    store: ProjectionStore,
    consumer: str,
    messages: list[ProjectedMessage],
    stop: threading.Event | None,
    metrics: ServiceMetrics | None,
) -> int:
    """Applies a batch; waits out a database outage; parks a message that keeps failing."""
    backoff = _Backoff(stop)
    while True:
        try:
            return store.apply_batch(consumer, messages)
        except ProjectorError as exc:
            if not exc.transient:
                break
            if stop is not None and stop.is_set():
                raise
            backoff.wait(f"the projection database is out of reach ({exc})")
    # A message of the batch cannot be applied: apply them one by one to find it.
    applied = 0
    for message in messages:
        failures = 0
        error: ProjectorError | None = None
        while True:
            try:
                if failures < ATTEMPTS:
                    applied += store.apply_batch(consumer, [message])
                else:
                    log.error(
                        "parking %s/%d@%d after %d failures",
                        message.topic,
                        message.partition,
                        message.offset,
                        failures,
                    )
                    store.park(consumer, message, f"the projector could not apply it: {error}")
                    if metrics is not None:
                        metrics.count_retry("parked")
                break
            except ProjectorError as exc:
                if exc.transient:  # not the message's fault: wait, and do not count it
                    if stop is not None and stop.is_set():
                        raise
                    backoff.wait(f"the projection database is out of reach ({exc})")
                    continue
                failures += 1
                error = exc
                if metrics is not None and failures < ATTEMPTS:
                    metrics.count_retry("retried")
    return applied


def _measure_lag(kafka: Any, metrics: ServiceMetrics) -> None:
    """Lag per assigned partition, from the high watermarks the last fetches reported."""
    for tp in kafka.assignment():
        highwater = kafka.highwater(tp)
        if highwater is not None:
            metrics.set_lag(tp.topic, tp.partition, highwater - kafka.position(tp))


def _measure_batch(
    metrics: ServiceMetrics, messages: list[ProjectedMessage], records: list[Any], seconds: float
) -> None:
    counts: dict[tuple[str, str | None], int] = {}
    for message in messages:
        key = (message.topic, message.event.event_type if message.event else None)
        counts[key] = counts.get(key, 0) + 1
    for (topic, event_type), n in counts.items():
        metrics.count_consumed(topic, event_type, n)
    metrics.observe_processing("batch", seconds)
    now_ms = time.time() * 1000
    for record in records:
        if record.timestamp is not None and record.timestamp >= 0:
            metrics.observe_age((now_ms - record.timestamp) / 1000)


def _decode(codec: EventCodec, record: Any) -> Event | None:
    try:
        return codec.decode(record.value)
    except SerializationError as exc:
        # Not the projector's to report: the processor reads the same message and publishes an
        # EventRejected for it, which the projector then records from the dead-letter topic.
        log.debug(
            "skipping undecodable %s/%d@%d: %s", record.topic, record.partition, record.offset, exc
        )
        return None
