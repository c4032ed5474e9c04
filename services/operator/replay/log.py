"""Reading the log: the partitions of Kafka topics between two offsets, and the embedded log
file of ``shaping demo``.

The embedded log's line format is :mod:`shaping.services.embedded.log`'s (:func:`jsonl_line`,
:func:`jsonl_fields`); this module reads and appends such lines, it does not define them.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from shaping.schemas.codec import EventCodec
from shaping.schemas.errors import SerializationError
from shaping.schemas.events import Event
from shaping.services.embedded.log import jsonl_fields, jsonl_line
from shaping.services.operator.replay.errors import ReplayError

KAFKA_TIMEOUT_S = 60.0
"""How long replay waits on Kafka: a partition that delivers nothing, a producer's flush."""

_POLL_MS = 500
_READ_AHEAD = 10_000  # records read ahead per partition at most (and one fetch)
_CONSUME = 2000  # records taken from confluent-kafka per call


@dataclass(frozen=True)
class SourceRecord:
    """One message of the log, as replay reads it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: datetime | None = None


# -- Kafka --------------------------------------------------------------------------------------


def throwaway_consumer(bootstrap: str, client_id: str, **config: Any) -> Any:
    """A Kafka consumer in no group, which commits nothing."""
    from shaping.services.adapters.kafka import consumer

    return consumer(bootstrap, client_id, **{"max_poll_records": _READ_AHEAD, **config})


def _partitions(consumer: Any, topics: list[str]) -> list[Any]:
    from shaping.services.adapters.errors import TopicMissingError
    from shaping.services.adapters.topics import wait_for_partitions

    try:
        return wait_for_partitions(consumer, topics, 30.0) or []
    except TopicMissingError as exc:
        raise ReplayError(str(exc)) from exc


def kafka_offsets(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], tuple[int, int]]:
    """``{(topic, partition): (first offset, end offset)}`` of every partition of ``topics``."""
    consumer = throwaway_consumer(bootstrap, "shaping-replay-offsets")
    try:
        partitions = _partitions(consumer, topics)
        begins = consumer.beginning_offsets(partitions)
        ends = consumer.end_offsets(partitions)
        return {(tp.topic, tp.partition): (begins[tp], ends[tp]) for tp in partitions}
    finally:
        consumer.close(autocommit=False)


def _record(message: Any) -> SourceRecord:
    stamp = message.timestamp
    when = datetime.fromtimestamp(stamp / 1000, UTC) if stamp is not None and stamp >= 0 else None
    return SourceRecord(
        message.topic, message.partition, message.offset, message.key, message.value, when
    )


def read_kafka(
    bootstrap: str,
    bounds: dict[tuple[str, int], tuple[int, int]],
    client_id: str,
    *,
    buffer: int = _READ_AHEAD,
    fetch_bytes: int | None = None,
    timeout_s: float = KAFKA_TIMEOUT_S,
) -> Iterator[SourceRecord]:
    """Every message of the given partitions between their bounds, each partition in offset
    order, partitions merged by broker timestamp (then partition, offset), which is close to
    the order a live consumer saw. Nothing at or past a partition's end bound is yielded.

    A throwaway consumer (no group) reads them; nothing is committed. It reads one partition at
    a time: when a partition's buffer runs dry, the consumer is assigned that partition alone,
    seeks to where it left off and polls it once (one fetch, at most ``buffer`` records). So the
    memory held is at most one fetch (``max_partition_fetch_bytes``) and ``buffer`` records per
    partition, whatever the size of the log, and no partition is ever paused: kafka-python
    3.0.12 keeps the records it had fetched for a paused partition parked after the partition
    is resumed, and never fetches that partition again.

    Args:
        bounds: ``{(topic, partition): (first offset, end offset)}``; empty ranges are skipped.
        buffer: most records read ahead per partition.
        fetch_bytes: the consumer's ``max_partition_fetch_bytes`` (None: kafka-python's).
        timeout_s: how long a partition may deliver nothing before replay gives up.

    Raises:
        ReplayError: when a partition delivers nothing for ``timeout_s``.
    """
    from kafka import TopicPartition

    ends = {TopicPartition(t, p): end for (t, p), (begin, end) in bounds.items() if begin < end}
    if not ends:
        return
    positions = {TopicPartition(t, p): begin for (t, p), (begin, _) in bounds.items()}
    config: dict[str, Any] = {"max_poll_records": buffer}
    if fetch_bytes is not None:
        config["max_partition_fetch_bytes"] = fetch_bytes
    consumer = throwaway_consumer(bootstrap, client_id, **config)
    try:
        buffers: dict[Any, deque[SourceRecord]] = {tp: deque() for tp in ends}
        while buffers:
            # The next record in order is known once every partition that may still hold one
            # has a record buffered.
            for tp in [tp for tp, buf in buffers.items() if not buf]:
                if positions[tp] < ends[tp]:
                    records, positions[tp] = _read_on(
                        consumer, tp, positions[tp], ends[tp], buffer, timeout_s
                    )
                    buffers[tp].extend(records)
                if not buffers[tp]:  # read to its end bound
                    del buffers[tp]
            if buffers:
                head = min(buffers, key=lambda tp: _order(buffers[tp][0]))
                yield buffers[head].popleft()
    finally:
        consumer.close(autocommit=False)


def _read_on(
    consumer: Any, tp: Any, position: int, end: int, most: int, timeout_s: float
) -> tuple[list[SourceRecord], int]:
    """The next records of partition ``tp`` from offset ``position`` (at most ``most``, none at
    or past ``end``) and the offset to go on from; no records when the partition has none left
    before ``end``.

    The consumer is assigned ``tp`` alone (it stays so between calls for the same partition,
    keeping what it fetched ahead). Records at offsets already read (a fetch sent before a seek)
    are dropped, so every record comes once and in offset order.
    """
    if consumer.assignment() != {tp}:
        consumer.assign([tp])
        consumer.seek(tp, position)
    elif consumer.position(tp) != position:
        consumer.seek(tp, position)
    deadline = time.monotonic() + timeout_s
    while True:
        polled = consumer.poll(timeout_ms=_POLL_MS, max_records=most)
        records = [_record(m) for m in polled.get(tp, ()) if position <= m.offset < end]
        # The position also moves past offsets that hold no record (transaction markers,
        # compacted records).
        reached = max(consumer.position(tp), records[-1].offset + 1 if records else position)
        if records or reached >= end:
            return records, reached
        if reached > position:
            position = reached
            deadline = time.monotonic() + timeout_s
        elif time.monotonic() > deadline:
            raise ReplayError(
                f"no progress reading {tp.topic} partition {tp.partition} at offset {position} "
                f"(end {end}) for {timeout_s:g} s"
            )


Reader = Literal["confluent", "kafka-python"]
"""The client that reads a partition in bulk (:func:`read_partition`)."""

READERS: tuple[Reader, ...] = ("confluent", "kafka-python")


def default_reader() -> Reader:
    """confluent-kafka when it is installed (it reads several times faster here: see
    bench/REPLAY.md), else kafka-python."""
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return "kafka-python"
    return "confluent"


def read_partition(
    bootstrap: str,
    topic: str,
    partition: int,
    begin: int,
    end: int,
    client_id: str,
    *,
    reader: Reader | None = None,
    batch: int = _READ_AHEAD,
    timeout_s: float = KAFKA_TIMEOUT_S,
) -> Iterator[SourceRecord]:
    """Every message of one partition from ``begin`` up to (not including) ``end``, in offset
    order, streamed: at most one fetch and ``batch`` records are held at a time.

    The bulk path of replay (each worker reads its partitions one after the other). Nothing is
    paused or committed; the consumer is in no group.

    Args:
        reader: ``confluent`` (confluent-kafka) or ``kafka-python``; None: :func:`default_reader`.
        batch: records taken per call to the client.
        timeout_s: how long the partition may deliver nothing before replay gives up.

    Raises:
        ReplayError: when the partition delivers nothing for ``timeout_s``, or the client
            reports an error.
    """
    if begin >= end:
        return
    chosen = reader or default_reader()
    if chosen == "confluent":
        yield from _read_confluent(
            bootstrap, topic, partition, begin, end, client_id, batch, timeout_s
        )
    else:
        bounds = {(topic, partition): (begin, end)}
        yield from read_kafka(
            bootstrap, bounds, client_id, buffer=batch, fetch_bytes=None, timeout_s=timeout_s
        )


def _read_confluent(
    bootstrap: str,
    topic: str,
    partition: int,
    begin: int,
    end: int,
    client_id: str,
    batch: int,
    timeout_s: float,
) -> Iterator[SourceRecord]:
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    from shaping.services.adapters.kafka import KafkaConnection, confluent_options

    consumer = Consumer(
        {
            **confluent_options(KafkaConnection.of(bootstrap), client_id),
            # No group is joined (assign, never subscribe) and nothing is committed; librdkafka
            # wants a group id all the same.
            "group.id": f"{client_id}-unused",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            # What librdkafka fetches ahead: bounded, whatever the size of the log.
            "queued.max.messages.kbytes": 32 * 1024,
            "fetch.max.bytes": 16 * 1024 * 1024,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, partition, begin)])
        position = begin
        deadline = time.monotonic() + timeout_s
        while position < end:
            # consume() waits until it has ``num_messages`` or the timeout passes: a short wait,
            # so the last records of a partition are not held back for long.
            messages = consumer.consume(num_messages=min(batch, _CONSUME), timeout=0.05)
            progressed = False
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise ReplayError(f"reading {topic} partition {partition}: {error.str()}")
                offset = message.offset()
                if offset is None or offset < position or offset >= end:
                    continue
                kind, stamp = message.timestamp()
                when = (
                    datetime.fromtimestamp(stamp / 1000, UTC)
                    if kind != 0 and stamp is not None and stamp >= 0
                    else None
                )
                position = offset + 1
                progressed = True
                yield SourceRecord(topic, partition, offset, message.key(), message.value(), when)
            if progressed:
                deadline = time.monotonic() + timeout_s
                continue
            if position < end:
                # Offsets that hold no record (transaction markers, compacted records) are
                # passed over: the partition's position tells how far it went.
                reached = _confluent_position(consumer, topic, partition)
                if reached is not None and reached >= end:
                    return
                if reached is not None and reached > position:
                    position = reached
                    deadline = time.monotonic() + timeout_s
                elif time.monotonic() > deadline:
                    raise ReplayError(
                        f"no progress reading {topic} partition {partition} at offset "
                        f"{position} (end {end}) for {timeout_s:g} s"
                    )
    finally:
        consumer.close()


def _confluent_position(consumer: Any, topic: str, partition: int) -> int | None:
    from confluent_kafka import TopicPartition

    found = consumer.position([TopicPartition(topic, partition)])
    offset = found[0].offset if found else -1
    return offset if offset >= 0 else None


def _order(record: SourceRecord) -> tuple[float, int, int]:
    stamp = record.timestamp.timestamp() if record.timestamp is not None else 0.0
    return (stamp, record.partition, record.offset)


# -- the embedded log ---------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[SourceRecord]:
    """Every message of an embedded log (``events.jsonl`` of ``shaping demo``), in log order,
    at the positions the lines record (:func:`iter_jsonl`, into a list).

    Raises:
        ReplayError: when the file cannot be read or is not such a log.
    """
    return list(iter_jsonl(path))


def iter_jsonl(path: Path, topic: str | None = None) -> Iterator[SourceRecord]:
    """The messages of an embedded log, streamed line by line, in log order (only those of
    ``topic`` when it is given).

    A key that is not UTF-8 is read from ``key_b64`` when the line has it (replay writes it).
    Unlike :meth:`~shaping.services.embedded.log.InProcessLog.load_jsonl`, which trusts a file
    it wrote, this takes any file: bytes that are not UTF-8 are replaced, and a line that is
    no event-log line is named by its number.

    Raises:
        ReplayError: when the file cannot be read or is not such a log.
    """
    try:
        with path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    record = SourceRecord(*jsonl_fields(json.loads(line)))
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    raise ReplayError(
                        f"{path}:{number}: not an event-log line ({type(exc).__name__}: "
                        f"{str(exc)[:200]})"
                    ) from None
                if topic is None or record.topic == topic:
                    yield record
    except OSError as exc:
        raise ReplayError(f"cannot read the event log {path}: {exc.strerror}") from None


def record_line(record: SourceRecord, codec: EventCodec) -> str:
    """A log line as :meth:`~shaping.services.embedded.log.InProcessLog.save_jsonl` writes it."""
    return jsonl_line(
        record.topic, record.partition, record.offset, record.key, record.value or b"", codec
    )


# -- decoding -----------------------------------------------------------------------------------


def decode_or_none(codec: EventCodec, value: bytes | None) -> Event | None:
    """The event in ``value``, or None when it holds none (a log may hold any bytes)."""
    try:
        return codec.decode(value)
    except SerializationError:
        return None


def decoded(codec: EventCodec, records: Iterable[SourceRecord]) -> Iterator[Event]:
    """The events among ``records``, in order (what is no event is passed over)."""
    for record in records:
        event = decode_or_none(codec, record.value)
        if event is not None:
            yield event


def live_events(codec: EventCodec, records: Iterable[SourceRecord]) -> list[Event]:
    """The decoded events among ``records`` (what is no event is left out)."""
    return list(decoded(codec, records))


__all__ = [
    "KAFKA_TIMEOUT_S",
    "READERS",
    "Reader",
    "SourceRecord",
    "decode_or_none",
    "decoded",
    "default_reader",
    "iter_jsonl",
    "kafka_offsets",
    "live_events",
    "read_jsonl",
    "read_kafka",
    "read_partition",
    "record_line",
    "throwaway_consumer",
]
