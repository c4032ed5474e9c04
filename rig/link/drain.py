"""Sends the outbox to Kafka, in order, each event once.

The drainer takes the oldest unsent rows, sends them with an idempotent kafka-python producer
(``acks=all``, one request in flight, every row of a partition in one batch per round) and
marks them sent with the offset the broker gave each. Within one producer session, the
producer's sequence numbers let the broker drop a retried batch it already wrote.

What a producer cannot know is what happened to a batch whose acknowledgement it never got
(the broker went away, or the rig was killed between the acknowledgement and the mark). So
after any failure, and at every start, the drainer *reconciles*: for every partition that holds
unsent rows it reads the partition from its mark (the end of the partition before this rig
first sent to it, then one past the last offset it confirmed) and marks sent every unsent row
whose event id it finds there. Only then does it send again. Every event reaches the topic
once, in the order it was recorded.

**Clock skew.** Every record is sent with the rig's clock as its timestamp. On a topic with
``message.timestamp.type=LogAppendTime`` the broker answers with its own append time instead,
and the drainer measures the rig's clock against it: the broker appended the record between
the start of the round and its acknowledgement (rig time ``t0`` and ``t1``), so the rig's
clock minus the broker's is ``(t0 + t1) / 2 - broker time``, to within half the round trip.
It is measured from the send time and not from the event's ``occurred_at``, which may be hours
old when the outbox waited for the network. The store keeps the latest and a smoothed value
(:meth:`RigStore.record_clock_skew <rig.link.store.RigStore.record_clock_skew>`); ``rig status``
and the ``shaping_rig_clock_skew_seconds`` gauge show them. A topic with ``CreateTime`` echoes
the rig's timestamp back, and nothing is measured.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2

from shaping.rig.errors import BrokerUnreachableError, RigBusyError
from shaping.rig.faults import FaultPlan
from shaping.rig.link.connection import KafkaLink, client_options
from shaping.rig.link.store import ClockSkew, OutboxRow, RigStore, Sent
from shaping.rig.locks import FileLock
from shaping.rig.task.clock import Clock, SystemClock
from shaping.schemas.codec import EventCodec
from shaping.schemas.errors import SerializationError
from shaping.schemas.headers import headers_for

log = logging.getLogger(__name__)

MAX_SKEW_UNCERTAINTY_S = 10.0
"""A round slower than twice this measures no clock skew (the broker's time is too loose)."""


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a key (murmur2, as the Java client)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def kafka_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the broker is not there (yet)"."""
    return (KafkaError, OSError, TimeoutError)


@dataclass
class DrainStatus:
    """What the drainer last saw (for displays)."""

    sent: int = 0
    last_error: str | None = None
    last_success: float | None = None
    failures: int = 0
    reconciled: int = 0
    order_problems: list[str] = field(default_factory=list)
    clock_skew: ClockSkew | None = None


class OutboxDrainer:
    """Drains a :class:`~rig.link.store.RigStore` outbox to Kafka.

    Args:
        store: the rig's store.
        bootstrap: how to reach Kafka (:attr:`RigConfig.link <shaping.rig.config.RigConfig.link>`),
            or just the bootstrap servers of a plaintext broker.
        client_id: the rig's name in broker logs.
        codec: event codec (to read event ids back during reconciliation).
        delivery_timeout_ms: how long one round may wait for the broker before it counts as
            failed (the rows stay in the outbox and are retried).
        lock: held while draining, so two processes never send the same rows (default: a
            ``drain.lock`` next to the store).
        clock: the rig's clock: the records' timestamps and the clock skew measurement.
        faults: crash tests only: the faults to inject (:meth:`FaultPlan.after_ack
            <rig.faults.FaultPlan.after_ack>` after every acknowledgement; None: none).
    """

    def __init__(
        self,
        store: RigStore,
        bootstrap: KafkaLink | str,
        client_id: str = "shaping-rig",
        *,
        codec: EventCodec,
        delivery_timeout_ms: int = 15000,
        lock: FileLock | None = None,
        clock: Clock | None = None,
        faults: FaultPlan | None = None,
    ) -> None:
        self.store = store
        self.clock = clock or SystemClock()
        self.lock = lock or FileLock(store.path.parent / "drain.lock", "the outbox")
        self.link = KafkaLink.of(bootstrap)
        self.bootstrap = self.link.bootstrap
        self.client_id = client_id
        self.codec = codec
        self.delivery_timeout_ms = delivery_timeout_ms
        self.status = DrainStatus()
        self._producer: Any = None
        self._consumer: Any = None
        self._partitions: dict[str, int] = {}
        self._reconciled = False
        self.faults = faults if faults is not None else FaultPlan.none()
        self._acks = 0

    # -- clients --------------------------------------------------------------------------------

    def _clients(self) -> tuple[Any, Any]:
        if self._producer is None:
            request_timeout_ms = min(5000, self.delivery_timeout_ms // 2)
            self._producer = KafkaProducer(
                **client_options(self.link),
                client_id=self.client_id,
                acks="all",
                enable_idempotence=True,
                # One request in flight and one batch per partition per round: a batch is
                # written whole or not at all, and nothing overtakes a batch that failed.
                # The long linger keeps the sender from shipping part of a round early; the
                # flush() that ends every round sends the batches at once. A round is at
                # most half a batch (see RigStore.unsent), so it never splits.
                max_in_flight_requests_per_connection=1,
                linger_ms=self.delivery_timeout_ms - request_timeout_ms,
                batch_size=1024 * 1024,
                request_timeout_ms=request_timeout_ms,
                delivery_timeout_ms=self.delivery_timeout_ms,
                max_block_ms=5000,
                bootstrap_timeout_ms=5000,
            )
            self._reconciled = False
        if self._consumer is None:
            self._consumer = KafkaConsumer(
                **client_options(self.link),
                client_id=f"{self.client_id}-reconcile",
                group_id=None,
                enable_auto_commit=False,
                request_timeout_ms=max(6000, min(30000, self.delivery_timeout_ms)),
                bootstrap_timeout_ms=5000,
            )
        return self._producer, self._consumer

    def close(self) -> None:
        """Closes the Kafka clients and releases the drain lock (unsent rows stay)."""
        self._drop_clients(timeout=5)
        self.lock.release()

    def _drop_clients(self, timeout: float = 0) -> None:
        for client, closer in (
            (self._producer, lambda c: c.close(timeout=timeout)),
            (self._consumer, lambda c: c.close()),
        ):
            if client is not None:
                try:
                    closer(client)
                except Exception as exc:  # closing a broken client must not hide the cause
                    log.debug("closing a Kafka client failed: %s", exc)
        self._producer = None
        self._consumer = None
        self._partitions.clear()
        self._reconciled = False

    def _partition_count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            producer, _ = self._clients()
            found = producer.partitions_for(topic)
            if not found:
                raise BrokerUnreachableError(f"topic {topic} has no partitions on the broker")
            count = len(found)
            self._partitions[topic] = count
        return count

    # -- draining -------------------------------------------------------------------------------

    def drain_once(self) -> int:
        """One round: reconcile if needed, then send the oldest unsent rows.

        Returns:
            How many rows were confirmed sent in this round (0 when the outbox is empty).

        Raises:
            BrokerUnreachableError: the broker did not take the rows; they stay unsent and the
                next round reconciles first.
            RigBusyError: another process drains this outbox.
        """
        if not self.lock.try_acquire():
            raise RigBusyError(f"another process drains this outbox (see {self.lock.path})")
        try:
            if not self._reconciled:
                self.reconcile()
            rows = self.store.unsent()
            if not rows:
                return 0
            return self._send(rows)
        except kafka_errors() as exc:
            self._fail(exc)
            raise BrokerUnreachableError(self.status.last_error or str(exc)) from exc
        except BrokerUnreachableError as exc:
            self._fail(exc)
            raise

    def drain(self, timeout_s: float) -> bool:
        """Drains until the outbox is empty or ``timeout_s`` pass; returns whether it is empty."""
        deadline = time.monotonic() + timeout_s
        backoff = 0.2
        while True:
            try:
                if self.drain_once() == 0 and self.store.unsent_count() == 0:
                    return True
                backoff = 0.2
            except BrokerUnreachableError:
                if time.monotonic() + backoff >= deadline:
                    return False
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            if time.monotonic() >= deadline:
                return self.store.unsent_count() == 0

    def run(self, stop: threading.Event, wake: threading.Event) -> None:
        """Drains until ``stop`` is set; ``wake`` says new rows were appended."""
        backoff = 0.5
        while not stop.is_set():
            try:
                sent = self.drain_once()
                backoff = 0.5
                if sent:
                    continue
                wake.wait(1.0)
                wake.clear()
            except (BrokerUnreachableError, RigBusyError):
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception as exc:  # a drainer thread must never die silently
                log.exception("outbox drainer failed")
                self._fail(exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def _fail(self, exc: BaseException) -> None:
        self.status.last_error = describe_error(exc)
        self.status.failures += 1
        self._drop_clients()

    def _send(self, rows: list[OutboxRow]) -> int:
        producer, _ = self._clients()
        futures = []
        sent_at = self.clock.now()
        stamp_ms = int(sent_at * 1000)
        for row in rows:
            partition = partition_for(row.key, self._partition_count(row.topic))
            if self.store.partition_mark(row.topic, partition) is None:
                self._mark_partition_end(row.topic, partition)
            futures.append(
                producer.send(
                    row.topic,
                    key=row.key,
                    value=row.value,
                    partition=partition,
                    headers=headers_for(row.value),
                    timestamp_ms=stamp_ms,
                )
            )
        producer.flush(timeout=self.delivery_timeout_ms / 1000 + 5)
        acked_at = self.clock.now()
        skews: list[float] = []
        sent: dict[str, list[Sent]] = defaultdict(list)
        failure: BaseException | None = None
        for row, future in zip(rows, futures, strict=True):
            if not future.is_done or future.failed():
                failure = future.exception or TimeoutError("no acknowledgement in time")
                break
            metadata = future.value
            broker_ms = getattr(metadata, "timestamp", None)
            if isinstance(broker_ms, int) and broker_ms not in (-1, stamp_ms):
                # LogAppendTime: the broker's clock (CreateTime echoes stamp_ms back).
                skews.append((sent_at + acked_at) / 2 - broker_ms / 1000)
            self._acks += 1
            self.faults.after_ack(self._acks)
            sent[row.topic].append(Sent(row.seq, metadata.partition, metadata.offset))
        for topic, done in sent.items():
            self.store.mark_sent(done, topic)
        uncertainty = (acked_at - sent_at) / 2
        if skews and uncertainty <= MAX_SKEW_UNCERTAINTY_S:
            self.status.clock_skew = self.store.record_clock_skew(skews[-1], uncertainty)
        count = sum(len(done) for done in sent.values())
        if count:
            self.status.sent += count
            self.status.last_success = time.time()
        if failure is not None:
            raise BrokerUnreachableError(f"{type(failure).__name__}: {failure}")
        return count

    def _mark_partition_end(self, topic: str, partition: int) -> None:
        _, consumer = self._clients()
        tp = TopicPartition(topic, partition)
        end = consumer.end_offsets([tp])[tp]
        self.store.set_partition_mark(topic, partition, end)

    # -- reconciliation -------------------------------------------------------------------------

    def reconcile(self) -> int:
        """Marks sent every unsent row that is already on its partition.

        Reads each partition holding unsent rows from its mark to its end. Rows found are
        marked sent with the offset they have. A found row that comes after an unsent row that
        is *not* found would mean the order broke; that cannot happen with one batch per
        partition in flight, but it is checked and reported in ``status.order_problems``.

        Returns:
            How many rows were found already delivered.
        """
        _, consumer = self._clients()
        pending: dict[tuple[str, int], list[OutboxRow]] = defaultdict(list)
        for row in self.store.unsent(limit=1_000_000, max_bytes=1 << 62):
            partition = partition_for(row.key, self._partition_count(row.topic))
            pending[(row.topic, partition)].append(row)
        found_total = 0
        for (topic, partition), rows in pending.items():
            mark = self.store.partition_mark(topic, partition)
            if mark is None:
                continue  # the rig never sent to this partition: nothing can be there
            found = self._read_event_ids(consumer, TopicPartition(topic, partition), mark)
            delivered = []
            missing_before = None
            for row in rows:
                offset = found.get(row.event_id)
                if offset is None:
                    missing_before = missing_before or row.event_id
                    continue
                if missing_before is not None:
                    problem = (
                        f"{row.event_id} reached {topic}[{partition}] although the earlier "
                        f"{missing_before} did not"
                    )
                    log.error("outbox order broken: %s", problem)
                    self.status.order_problems.append(problem)
                delivered.append(Sent(row.seq, partition, offset))
            self.store.mark_sent(delivered, topic)
            found_total += len(delivered)
        self._reconciled = True
        self.status.reconciled += found_total
        if found_total:
            log.info("reconciled %d events already on the broker", found_total)
        return found_total

    def _read_event_ids(self, consumer: Any, tp: TopicPartition, start: int) -> dict[str, int]:
        end = consumer.end_offsets([tp])[tp]
        ids: dict[str, int] = {}
        if end <= start:
            return ids
        consumer.assign([tp])
        consumer.seek(tp, start)
        deadline = time.monotonic() + self.delivery_timeout_ms / 1000
        while consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise BrokerUnreachableError(f"could not read {tp.topic}[{tp.partition}] back")
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    try:
                        ids[self.codec.decode(record.value).event_id] = record.offset
                    except SerializationError:
                        continue  # not ours to judge; the processor dead-letters it
        return ids


def describe_error(exc: BaseException) -> str:
    """An exception as one line, its type named once."""
    text = str(exc)
    name = type(exc).__name__
    return (
        text
        if text.startswith(name) or isinstance(exc, BrokerUnreachableError)
        else (f"{name}: {text}")
    )
