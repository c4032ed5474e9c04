"""``shaping replay``: rebuild the processor's state and the status tables from the event log.

The live processor keeps per-mouse state in a changelog-backed faust table and the projector
keeps the status tables; both are folds over the log. Replay redoes both folds from offset 0,
with the code and curricula installed now, next to the live ones, and then switches over:

1. Snapshot. The processor's consumer group must be inactive (the processor stopped). Replay
   takes the end offsets of the events topic as its snapshot and reads the live output topics
   (accepted, decisions, assignments, dead letters) to their ends.
2. Fold. A throwaway consumer (no group, nothing committed) reads the events topic up to the
   snapshot, partitions merged by broker timestamp, and every message goes through the same
   :class:`~services.processor.step.ProcessorStep` and
   :class:`~services.domain.TrainingCore` the processor runs (so the same curricula, dead
   letters and ids). An enrolment that names no curriculum version is pinned to the version
   the log says it was accepted on (:class:`EnrolmentPins`), never to a newer one known now.
   A rich progress bar shows events/s and the time left.
3. Project. What the fold republished on the accepted topic and its outputs are projected by
   the projector's own store into fresh tables: a fresh PostgreSQL schema, or a fresh SQLite
   file.
4. Reconcile. Each output is compared with the live one of the same id. Identical: the live
   event is kept. Different: a correction with a new id and ``supersedes`` naming the live
   version is published (decisions; for the compacted assignments topic only each mouse's
   latest assignment, which is what rigs read), so rigs get corrected assignments and every
   consumer keeps the audit trail. Absent: published as it is (an accepted input verbatim).
5. Diff. The fresh tables are compared with the live ones: per mouse, the stage now and after
   replay, and the decisions added, removed or changed (by session).
6. Switch over. In one transaction the live tables are locked, checked to be untouched since
   the snapshot (a running projector would have moved its offsets), and replaced: PostgreSQL
   moves the old tables to a backup schema and the fresh ones in; SQLite copies the fresh rows
   over the live ones (after a backup file made with ``VACUUM INTO``). The projector's offsets
   in the new tables are the snapshot, so a restarted projector goes on from there.
7. Hand over. The corrections are published; the rebuilt state of every mouse whose state
   differs from the changelog's is written to the processor's changelog topic
   (``<processor_id>-mouse_state-changelog``, the mouse's partition, a state record as the
   processor's store encodes it: :mod:`~services.processor.state_store`), and the processor
   group's offsets on the events topic are moved to the snapshot. A restarted processor
   recovers the rebuilt state and goes on with the events that arrived during the replay.

Every step compares before it writes, so replaying twice changes nothing, and a replay that
stopped half-way converges when run again. ``--dry-run`` stops after the diff and is read-only,
so it may run while the services run: the live tables are read on a read-only connection, the
fresh ones built in a temporary SQLite file, and nothing is published, written to a changelog
or committed to a consumer group.

Nothing in a log makes replay fail: records that hold no event, dead letters with arbitrary
bytes (shown as hex), events the processor refused are all taken as the processor takes them.

The embedded mode (``shaping demo``'s ``events.jsonl`` and SQLite file) runs the same fold,
projection, reconciliation, diff and switch-over; corrections are appended to the log file,
and there is no processor state to hand over (the embedded runtime folds the log when it
starts). See ``docs/replay.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, create_engine, delete, inspect, make_url, select, text
from sqlalchemy import event as sa_event
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from shaping.schemas.codec import EventCodec, default_codec, encode_key
from shaping.schemas.errors import SerializationError
from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    EventRejected,
    MouseEjected,
    MouseEnrolled,
    MouseMigrated,
    SessionStarted,
)
from shaping.schemas.headers import headers_for
from shaping.schemas.topics import TopicKind, TopicNames
from shaping.services.curricula.catalog import default_catalog
from shaping.services.domain import CurriculumCatalog, MouseState, TrainingCore
from shaping.services.domain.core import derived_event_id
from shaping.services.embedded.log import event_json, jsonl_fields, jsonl_line
from shaping.services.operator.errors import OperatorError
from shaping.services.processor.state_store import (
    CHANGELOG_REPLICATION_FACTOR,
    Changelogs,
    changelog_topic,
    encode_state,
    join_sessions,
)
from shaping.services.processor.step import ClockWindow, Outgoing, ProcessorStep
from shaping.services.projector.errors import ProjectorError
from shaping.services.projector.store import ProjectedMessage, SqlProjectionStore
from shaping.services.projector.tables import PROJECTION_TABLES, metadata, projector_offsets

log = logging.getLogger(__name__)

REPLAY_NAMESPACE = uuid.UUID("8f0e2a51-6c3d-4e7b-9b1a-2d5c7e9f4a60")
"""Namespace of the ids of corrections (outputs that differ from the live ones)."""

BUILD_CONSUMER = "replay-build"
"""Consumer name under which the fresh tables are built (replaced by the projector's own)."""

INACTIVE_GROUP_STATES = {"Empty", "Dead", ""}
"""Consumer group states in which the group's offsets may be moved from outside."""

_CONTENT_EXCLUDED = {"event_id", "supersedes", "causation_id", "schema_version"}
_BATCH = 1000
_POLL_MS = 500
_READ_AHEAD = 10_000  # records read ahead per partition at most (and one fetch)
_KAFKA_TIMEOUT_S = 60.0


class ReplayError(OperatorError):
    """Replay cannot run or cannot switch over; nothing was switched."""


# -- the log ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceRecord:
    """One message of the log, as replay reads it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: datetime | None = None


def _kafka_consumer(bootstrap: str, client_id: str, **config: Any) -> Any:
    from shaping.services.adapters.kafka import consumer

    # Throwaway: no group, nothing committed.
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
    consumer = _kafka_consumer(bootstrap, "shaping-replay-offsets")
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
    timeout_s: float = _KAFKA_TIMEOUT_S,
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
    consumer = _kafka_consumer(bootstrap, client_id, **config)
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


def _order(record: SourceRecord) -> tuple[float, int, int]:
    stamp = record.timestamp.timestamp() if record.timestamp is not None else 0.0
    return (stamp, record.partition, record.offset)


def read_jsonl(path: Path) -> list[SourceRecord]:
    """Every message of an embedded log (``events.jsonl`` of ``shaping demo``), in log order.

    A key that is not UTF-8 is read from ``key_b64`` when the line has it (replay writes it).

    Raises:
        ReplayError: when the file cannot be read or is not such a log.
    """
    records = []
    try:
        with path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    records.append(_jsonl_record(json.loads(line)))
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    raise ReplayError(
                        f"{path}:{number}: not an event-log line ({type(exc).__name__}: "
                        f"{str(exc)[:200]})"
                    ) from None
    except OSError as exc:
        raise ReplayError(f"cannot read the event log {path}: {exc.strerror}") from None
    return records


def _jsonl_record(item: dict[str, Any]) -> SourceRecord:
    """One line of an embedded log (raises KeyError, TypeError or ValueError if it is none)."""
    return SourceRecord(*jsonl_fields(item))


def _jsonl_line(record: SourceRecord, codec: EventCodec) -> str:
    """A log line as :meth:`shaping.services.embedded.log.InProcessLog.save_jsonl` writes it."""
    return jsonl_line(
        record.topic, record.partition, record.offset, record.key, record.value or b"", codec
    )


def decode_or_none(codec: EventCodec, value: bytes | None) -> Event | None:
    """The event in ``value``, or None when it holds none (a log may hold any bytes)."""
    try:
        return codec.decode(value)
    except SerializationError:
        return None


# -- reconciling outputs with the live ones -----------------------------------------------------


def content_of(event: Event) -> str:
    """What an output says, without its identity (id, causation, supersedes, schema version).

    A dead letter whose input could not be decoded has no date of its own (the step dates it
    with the broker's time, or the time it ran), so its date is left out too.
    """
    exclude = _CONTENT_EXCLUDED
    if isinstance(event, EventRejected) and event.causation_id is None:
        exclude = exclude | {"occurred_at"}
    return json.dumps(event_json(event, exclude), sort_keys=True, default=str)


class LiveOutputs:
    """The outputs on the live topics, indexed for comparison.

    Args:
        events: decoded events of the decisions, assignments and dead-letter topics, in the
            order they were read (per partition: topic order).
        accepted: ids of the events on the accepted topic (the inputs the live processor
            accepted, republished verbatim).
    """

    def __init__(self, events: Iterable[Event], accepted: Iterable[str] = ()) -> None:
        self.by_id: dict[str, Event] = {}
        self.successors: dict[str, list[str]] = {}
        self.latest_assignment: dict[str, AssignmentIssued] = {}
        self.accepted: set[str] = set(accepted)
        for event in events:
            self.by_id[event.event_id] = event
            replaced = getattr(event, "supersedes", None)
            if replaced:
                self.successors.setdefault(replaced, []).append(event.event_id)
            if isinstance(event, AssignmentIssued):
                known = self.latest_assignment.get(event.mouse_id)
                # A rig keeps the assignment with the highest session number; later wins ties.
                if known is None or event.session_number >= known.session_number:
                    self.latest_assignment[event.mouse_id] = event

    def latest_version(self, event_id: str) -> Event | None:
        """The live event that is the newest version of ``event_id``: the event itself, or
        the last correction of it an earlier replay published.

        Only corrections are followed (they keep the cause of what they correct); a decision
        the core itself replaced after a late session has another cause and is an output of
        its own.
        """
        current = self.by_id.get(event_id)
        if current is None:
            return None
        seen = {event_id}
        while True:
            nexts = [
                self.by_id[i]
                for i in self.successors.get(current.event_id, [])
                if i not in seen and self.by_id[i].causation_id == current.causation_id
            ]
            if not nexts:
                return current
            current = nexts[-1]
            seen.add(current.event_id)


def correction_id(original_id: str, replaced_id: str, content: str) -> str:
    """Id of a correction: a function of what it corrects and of what it says."""
    digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
    return str(uuid.uuid5(REPLAY_NAMESPACE, f"{original_id}/{replaced_id}/{digest}"))


class Reconciler:
    """Decides, output by output, which event the rebuilt tables hold and what to publish.

    Attributes:
        to_publish: the messages to publish, in order (corrections, outputs absent from the
            live topics, and accepted inputs missing from the accepted topic, verbatim).
    """

    def __init__(self, live: LiveOutputs, codec: EventCodec | None = None) -> None:
        self.live = live
        self.codec = codec or default_codec()
        self.to_publish: list[Outgoing] = []
        self.renamed: dict[str, str] = {}
        self.unfixable: list[str] = []
        self.corrections = 0
        self.standing: dict[str, Event] = {}

    def _publish(self, event: Event) -> None:
        self.to_publish.append(
            Outgoing(_kind_of(event), encode_key(event.mouse_id), self.codec.encode(event), event)
        )

    def accepted(self, out: Outgoing) -> None:
        """An input the fold accepted: published (its original bytes) when the accepted topic
        lacks it (the live processor refused it, had not got that far, or predates the topic).
        """
        if out.event.event_id not in self.live.accepted:
            self.to_publish.append(out)
            self.live.accepted.add(out.event.event_id)

    def output(self, event: Event) -> Event:
        """The event that stands for ``event`` (the live one when they agree), noting any
        correction or new event to publish. Assignments go through :meth:`final_assignment`."""
        final = self._output(event)
        self.standing[event.event_id] = final
        return final

    def _output(self, event: Event) -> Event:
        latest = self.live.latest_version(event.event_id)
        if latest is None:
            self._publish(event)
            return event
        content = content_of(event)
        if content_of(latest) == content:
            return latest
        if "supersedes" not in type(event).model_fields:
            # Dead letters and warnings cannot supersede: the live event stands (a rejection
            # is a fact about the input bytes; its wording may come from an older release).
            self.unfixable.append(
                f"{event.event_type} {event.event_id} differs from the live one and cannot "
                "supersede it; the live one is kept"
            )
            return latest
        return self._correct(event, latest.event_id, content)

    def final_assignment(self, event: AssignmentIssued) -> Event:
        """The latest assignment of a mouse: the live latest when they agree, else a
        correction superseding it."""
        final = self._final_assignment(event)
        self.standing[event.event_id] = final
        return final

    def _final_assignment(self, event: AssignmentIssued) -> Event:
        live = self.live.latest_assignment.get(event.mouse_id)
        if live is None:
            self._publish(event)
            return event
        content = content_of(event)
        if content_of(live) == content:
            return live
        if event.session_number < live.session_number:
            self.unfixable.append(
                f"{event.mouse_id}: the rebuilt assignment is for session {event.session_number}"
                f", the live one for {live.session_number}; rigs keep the live one"
            )
        return self._correct(event, live.event_id, content)

    def _correct(self, event: Event, replaced_id: str, content: str) -> Event:
        new_id = correction_id(event.event_id, replaced_id, content)
        update: dict[str, Any] = {"event_id": new_id, "supersedes": replaced_id}
        cause = getattr(event, "causation_id", None)
        if cause in self.renamed:
            update["causation_id"] = self.renamed[cause]
        corrected = event.model_copy(update=update)
        self.renamed[event.event_id] = new_id
        if new_id not in self.live.by_id:
            self._publish(corrected)
            self.corrections += 1
        return corrected


# -- enrolments pinned to the version they were accepted on ------------------------------------

LOOKAHEAD = 200_000
"""How many input messages a fold reads ahead at most to find the version an enrolment was
accepted on (see :class:`EnrolmentPins`)."""


class Lookahead:
    """Input messages in order, with the ability to look at the next ones first (those read
    ahead are kept and handed out in their turn)."""

    def __init__(self, records: Iterable[SourceRecord], limit: int = LOOKAHEAD) -> None:
        self._source = iter(records)
        self._ahead: deque[SourceRecord] = deque()
        self.limit = limit

    def __iter__(self) -> Lookahead:
        return self

    def __next__(self) -> SourceRecord:
        if self._ahead:
            return self._ahead.popleft()
        return next(self._source)

    def ahead(self) -> Iterator[SourceRecord]:
        """The messages after the last one handed out, reading ahead up to :attr:`limit`."""
        index = 0
        while True:
            if index < len(self._ahead):
                yield self._ahead[index]
            elif len(self._ahead) < self.limit:
                record = next(self._source, None)
                if record is None:
                    return
                self._ahead.append(record)
                yield record
            else:
                return
            index += 1


class EnrolmentPins:
    """The curriculum version each enrolment that names none was accepted on, as the log says.

    The processor resolves an enrolment without a version to the newest version it knows when
    it accepts it. A fold today may know newer ones (a major version added to the lab's folder,
    a version published since) and must not move the mouse onto one of them: a mouse changes
    version only by a MouseMigrated. What the log recorded, in order of trust:

    1. the assignment the enrolment caused (``causation_id`` = the enrolment's id) on the
       assignments topic, or its row in the live stage history (the compacted topic drops an
       enrolment's assignment once the mouse has a newer one);
    2. else the mouse's next events, read ahead up to its next enrolment: a migration's
       ``from_version``, the version named by an output one of them caused (a decision, an
       assignment, a warning), or a session's version (the rig ran what it was assigned).
       Events the live processor refused are passed over.

    An enrolment the live processor refused, or one the log says nothing more about, is not
    pinned: it resolves as the processor would resolve it now.

    Args:
        outputs: the live outputs (decisions, assignments, dead letters).
        tables: the live status tables (their ``stage_history``).
    """

    def __init__(
        self,
        outputs: Iterable[Event] = (),
        tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        self.codec = default_codec()
        self._caused: dict[str, tuple[str, str]] = {}
        self._refused: set[str] = set()
        corrections: dict[str, tuple[str, str]] = {}
        for event in outputs:
            cause = event.causation_id
            if not cause:
                continue
            if isinstance(event, EventRejected):
                self._refused.add(cause)
                continue
            name = getattr(event, "curriculum_name", None)
            version = getattr(event, "curriculum_version", None)
            if isinstance(name, str) and isinstance(version, str):
                # A correction an earlier replay published says what that replay decided; the
                # processor's own output says what the mouse was on.
                found = corrections if getattr(event, "supersedes", None) else self._caused
                found.setdefault(cause, (name, version))
        for cause, named in corrections.items():
            self._caused.setdefault(cause, named)
        self._history: dict[str, tuple[str, str]] = {
            str(row["event_id"]): (str(row.get("curriculum_name")), str(row["curriculum_version"]))
            for row in (tables or {}).get("stage_history", [])
            if row.get("decision") == "enrolled" and row.get("curriculum_version")
        }
        self.pinned: dict[str, str | None] = {}
        self._inputs: Lookahead | None = None

    def read(self, records: Iterable[SourceRecord], limit: int = LOOKAHEAD) -> Lookahead:
        """The input messages for the fold, in which :meth:`version_for` may read ahead."""
        self._inputs = Lookahead(records, limit)
        return self._inputs

    def version_for(self, event: MouseEnrolled) -> str | None:
        """The version the enrolment was accepted on (None: as the processor resolves it)."""
        if event.curriculum_version is not None:
            return event.curriculum_version
        if event.event_id not in self.pinned:
            self.pinned[event.event_id] = self._find(event)
        return self.pinned[event.event_id]

    def _find(self, event: MouseEnrolled) -> str | None:
        name = event.curriculum_name
        recorded = (
            self._caused.get(event.event_id),
            self._history.get(derived_event_id(event, "AssignmentIssued")),
        )
        for found in recorded:
            if found is not None and found[0] == name:
                return found[1]
        if event.event_id in self._refused or self._inputs is None:
            return None
        key = encode_key(event.mouse_id)
        ejected = False
        for record in self._inputs.ahead():
            if record.key != key:
                continue
            later = decode_or_none(self.codec, record.value)
            if (
                later is None
                or later.mouse_id != event.mouse_id
                or later.event_id == event.event_id
                or later.event_id in self._refused
            ):
                continue
            if isinstance(later, MouseEjected):
                ejected = True
            elif isinstance(later, MouseEnrolled):
                if ejected:
                    return None  # enrolled again: this enrolment left no trace
                # else refused live (the mouse was enrolled), its dead letter maybe expired
            elif isinstance(later, MouseMigrated):
                return later.from_version if later.curriculum_name == name else None
            named = self._caused.get(later.event_id)
            if named is not None and named[0] == name:
                return named[1]
            if isinstance(later, SessionStarted) and later.curriculum_name == name:
                return later.curriculum_version
        return None


class PinnedCore(TrainingCore):
    """The training core, with every enrolment that names no version pinned to the version the
    log says it was accepted on (:class:`EnrolmentPins`)."""

    def __init__(self, catalog: CurriculumCatalog, pins: EnrolmentPins) -> None:
        super().__init__(catalog)
        self.pins = pins

    def handle(self, state: MouseState, event: Event) -> tuple[MouseState, list[Event]]:
        if isinstance(event, MouseEnrolled) and event.curriculum_version is None:
            version = self.pins.version_for(event)
            if version is not None:
                # The state and outputs are those of the enrolment as accepted: the version
                # goes into the state only with the assignment it causes, as it did live.
                event = event.model_copy(update={"curriculum_version": version})
        return super().handle(state, event)


# -- the fold -----------------------------------------------------------------------------------


class Rebuild:
    """Folds input messages through the processor's step and projects into fresh tables.

    The projector takes no fact from the events topic: it projects what the processor
    republished on the accepted topic and its outputs, and so does the rebuild.

    Args:
        step: the processor's step (its core holds the catalog).
        topics: the deployment's topic names.
        reconciler: compares outputs with the live ones.
        store: the fresh tables.
        batch_size: messages per projection transaction.
    """

    def __init__(
        self,
        step: ProcessorStep,
        topics: TopicNames,
        reconciler: Reconciler,
        store: SqlProjectionStore | None,
        batch_size: int = _BATCH,
    ) -> None:
        self.step = step
        self.topics = topics
        self.reconciler = reconciler
        self.store = store
        self.batch_size = batch_size
        self.states: dict[str, MouseState] = {}
        self.partition_of: dict[str, int] = {}
        self.processed = 0
        self.parked = 0
        self._batch: list[ProjectedMessage] = []
        self._out_offsets: dict[str, int] = {}
        self._pending_assignment: dict[str, AssignmentIssued] = {}

    def feed(self, record: SourceRecord) -> None:
        """Processes one message of the events topic, as the processor would."""
        mouse = (record.key or b"").decode("utf-8", "replace")
        result = self.step.process(
            self.states.get(mouse),
            record.key,
            record.value,
            record.topic,
            record.partition,
            record.offset,
            record.timestamp,
        )
        if result.state is not None:
            self.states[result.state.mouse_id] = result.state
            self.partition_of[result.state.mouse_id] = record.partition
        for out in result.outputs:
            self._output(out)
        self.processed += 1

    def _output(self, out: Outgoing) -> None:
        event = out.event
        if out.topic_kind == "accepted":
            self.reconciler.accepted(out)
            self._project_output(event, "accepted")
            return
        if isinstance(event, AssignmentIssued):
            # Only each mouse's latest assignment is reconciled (the topic is compacted).
            earlier = self._pending_assignment.pop(event.mouse_id, None)
            if earlier is not None:
                self._project_output(earlier, "assignments")
            self._pending_assignment[event.mouse_id] = event
            return
        final = self.reconciler.output(event)
        self._project_output(final, out.topic_kind)

    def _project_output(self, event: Event, kind: TopicKind) -> None:
        topic = str(getattr(self.topics, kind))
        offset = self._out_offsets.get(topic, 0)
        self._out_offsets[topic] = offset + 1
        self._project(ProjectedMessage(topic, 0, offset, event, kind))

    def _project(self, message: ProjectedMessage) -> None:
        if self.store is None:
            return
        self._batch.append(message)
        if len(self._batch) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Projects what is buffered. A message the projector's store cannot apply is parked
        in ``rejected_events``, as the projector parks it (it stops neither)."""
        if self.store is not None and self._batch:
            try:
                self.store.apply_batch(BUILD_CONSUMER, self._batch)
            except ProjectorError as exc:
                if exc.transient:
                    raise ReplayError(f"cannot write the fresh tables: {exc}") from exc
                for message in self._batch:
                    try:
                        self.store.apply_batch(BUILD_CONSUMER, [message])
                    except ProjectorError as failed:
                        if failed.transient:
                            raise ReplayError(f"cannot write the fresh tables: {failed}") from None
                        reason = f"the projector could not apply it: {failed}"
                        self.store.park(BUILD_CONSUMER, message, reason)
                        self.parked += 1
        self._batch = []

    def finish(self) -> None:
        """Reconciles each mouse's latest assignment, projects the rest, and puts the events
        that stand on the topics into the states.

        A state keeps its last decision and assignment to send them again when the session's
        end is redelivered; after a correction that must be the correction, not the event it
        superseded.
        """
        for event in self._pending_assignment.values():
            self._project_output(self.reconciler.final_assignment(event), "assignments")
        self._pending_assignment.clear()
        self.flush()
        standing = self.reconciler.standing
        for mouse_id, state in self.states.items():
            update: dict[str, Any] = {}
            for name in ("last_decision", "last_assignment"):
                event = getattr(state, name)
                final = standing.get(event.event_id) if event is not None else None
                if final is not None and final is not event and isinstance(final, type(event)):
                    update[name] = final
            if update:
                self.states[mouse_id] = state.model_copy(update=update)


# -- fresh tables and the switch-over -------------------------------------------------------------


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:4]


def live_offsets(store: SqlProjectionStore) -> list[tuple[str, str, int, int]]:
    """Every row of the projector's offsets table (all consumers), sorted."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(projector_offsets)).all()
    return sorted((str(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in rows)


class FreshTables:
    """A fresh set of the projector's tables beside the live ones, and the switch-over.

    Args:
        live_url: the live status tables.
        scratch: build the tables in a SQLite file in a temporary folder instead, away from the
            live database (a dry run writes nothing there); they cannot be swapped in.
    """

    def __init__(self, live_url: str, scratch: bool = False) -> None:
        self.live_url = make_url(live_url)
        self.dialect = self.live_url.get_backend_name()
        self.stamp = _stamp()
        self.schema: str | None = None
        self.path: Path | None = None
        self.scratch: Path | None = None
        if self.dialect not in ("postgresql", "sqlite"):
            raise ReplayError(f"unsupported database {self.dialect!r}")
        url: str | URL
        if scratch:
            # Snapshots of SQLite and PostgreSQL tables compare equal when they hold the same
            # facts (SqlProjectionStore.snapshot), so the dry run's tables may be SQLite.
            self.scratch = Path(tempfile.mkdtemp(prefix="shaping-replay-"))
            self.path = self.scratch / "fresh.sqlite"
            url = f"sqlite:///{self.path}"
        elif self.dialect == "postgresql":
            live = SqlProjectionStore(self.live_url)
            try:
                with live.engine.begin() as conn:
                    self.live_schema = str(conn.execute(text("SELECT current_schema()")).scalar())
                    self.schema = f"shaping_replay_{self.stamp}"
                    conn.execute(text(f'CREATE SCHEMA "{self.schema}"'))
            finally:
                live.close()
            url = self.live_url.update_query_dict({"options": f"-csearch_path={self.schema}"})
        else:
            database = self.live_url.database or ""
            if database in ("", ":memory:"):
                raise ReplayError("replay needs a database file, not an in-memory SQLite")
            self.path = Path(database).with_name(f"{Path(database).name}.replay-{self.stamp}")
            url = f"sqlite:///{self.path}"
        self.store = SqlProjectionStore(url)

    def set_offsets(self, consumer: str, offsets: dict[tuple[str, int], int]) -> None:
        """Makes ``offsets`` the projector's positions in the fresh tables."""
        with self.store.engine.begin() as conn:
            conn.execute(delete(projector_offsets))
            for (topic, partition), next_offset in sorted(offsets.items()):
                conn.execute(
                    projector_offsets.insert().values(
                        consumer=consumer, topic=topic, partition=partition, next_offset=next_offset
                    )
                )

    def discard(self) -> None:
        """Drops the fresh tables."""
        self.store.close()
        if self.schema is not None:
            live = SqlProjectionStore(self.live_url)
            try:
                with live.engine.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
            finally:
                live.close()
        if self.path is not None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def swap(self, expected: list[tuple[str, str, int, int]]) -> str:
        """Replaces the live tables with the fresh ones in one transaction.

        Args:
            expected: the live offsets read at the snapshot; if they changed, a projector is
                running and nothing is swapped.

        Returns:
            Where the old tables were kept (a schema or a file).

        Raises:
            ReplayError: when the live offsets moved since the snapshot.
        """
        if self.scratch is not None:
            raise ReplayError("scratch tables cannot be switched in")
        self.store.close()
        if self.dialect == "postgresql":
            return self._swap_postgres(expected)
        return self._swap_sqlite(expected)

    def _swap_postgres(self, expected: list[tuple[str, str, int, int]]) -> str:
        backup = f"shaping_replaced_{self.stamp}"
        live = SqlProjectionStore(self.live_url)
        names = [table.name for table in metadata.sorted_tables]
        try:
            with live.engine.begin() as conn:
                quoted = ", ".join(f'"{self.live_schema}"."{n}"' for n in names)
                conn.execute(text(f"LOCK TABLE {quoted} IN ACCESS EXCLUSIVE MODE"))
                rows = conn.execute(select(projector_offsets)).all()
                now = sorted((str(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in rows)
                if now != expected:
                    raise ReplayError(_PROJECTOR_MOVED)
                conn.execute(text(f'CREATE SCHEMA "{backup}"'))
                for name in names:
                    conn.execute(
                        text(f'ALTER TABLE "{self.live_schema}"."{name}" SET SCHEMA "{backup}"')
                    )
                    conn.execute(
                        text(
                            f'ALTER TABLE "{self.schema}"."{name}" SET SCHEMA "{self.live_schema}"'
                        )
                    )
                conn.execute(text(f'DROP SCHEMA "{self.schema}"'))
        finally:
            live.close()
        self.schema = None
        return f"schema {backup}"

    def _swap_sqlite(self, expected: list[tuple[str, str, int, int]]) -> str:
        database = Path(self.live_url.database or "")
        backup = database.with_name(f"{database.name}.before-replay-{self.stamp}")
        conn = sqlite3.connect(database, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("VACUUM INTO ?", (str(backup),))
            conn.execute("ATTACH DATABASE ? AS fresh", (str(self.path),))
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = conn.execute(
                    "SELECT consumer, topic, partition, next_offset FROM main.projector_offsets"
                ).fetchall()
                if sorted((str(a), str(b), int(c), int(d)) for a, b, c, d in rows) != expected:
                    raise ReplayError(_PROJECTOR_MOVED)
                for table in metadata.sorted_tables:
                    columns = ", ".join(f'"{c.name}"' for c in table.columns)
                    conn.execute(f'DELETE FROM main."{table.name}"')
                    conn.execute(
                        f'INSERT INTO main."{table.name}" ({columns}) '
                        f'SELECT {columns} FROM fresh."{table.name}"'
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("DETACH DATABASE fresh")
        finally:
            conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self.path = None
        return f"file {backup}"


_PROJECTOR_MOVED = (
    "the projector wrote to the status tables during the replay (its offsets moved): stop the "
    "projector and run replay again; nothing was switched"
)


# -- comparing tables -------------------------------------------------------------------------


@dataclass
class MouseChange:
    """How replay changes one mouse."""

    mouse_id: str
    stage_before: str | None
    stage_after: str | None
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)


@dataclass
class TableChange:
    """Rows of one table that replay adds, removes or changes (by primary key)."""

    added: int = 0
    removed: int = 0
    changed: int = 0

    @property
    def total(self) -> int:
        """Rows that differ."""
        return self.added + self.removed + self.changed


def _key_columns(table_name: str) -> list[str]:
    table = metadata.tables[table_name]
    return [column.name for column in table.primary_key.columns]


def _decisions_by_session(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The decision in force per (mouse, session): the newest row that nothing supersedes."""
    rows = list(rows)
    replaced = {row.get("supersedes") for row in rows if row.get("supersedes")}
    result: dict[tuple[str, str], dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (str(r.get("occurred_at")), str(r.get("event_id")))):
        if row["event_id"] in replaced or row.get("superseded_by"):
            continue
        result[(row["mouse_id"], row.get("session_id") or row["event_id"])] = row
    return result


_DECISION_FIELDS = ("from_stage", "to_stage", "decision", "rule", "curriculum_version")


def diff_tables(
    before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]]
) -> tuple[list[MouseChange], dict[str, TableChange]]:
    """Per mouse and per table, what differs between two snapshots of the status tables."""
    tables: dict[str, TableChange] = {}
    for name in sorted(set(before) | set(after)):
        keys = _key_columns(name) if name in metadata.tables else []
        if not keys:
            continue

        def index(rows: list[dict[str, Any]], keys: list[str] = keys) -> dict[tuple[Any, ...], Any]:
            return {tuple(row[k] for k in keys): row for row in rows}

        old, new = index(before.get(name, [])), index(after.get(name, []))
        change = TableChange(
            added=len(new.keys() - old.keys()),
            removed=len(old.keys() - new.keys()),
            changed=sum(1 for k in old.keys() & new.keys() if old[k] != new[k]),
        )
        if change.total:
            tables[name] = change
    stage_before = {r["mouse_id"]: r.get("stage") for r in before.get("mouse_status", [])}
    stage_after = {r["mouse_id"]: r.get("stage") for r in after.get("mouse_status", [])}
    old_decisions = _decisions_by_session(before.get("decision_log", []))
    new_decisions = _decisions_by_session(after.get("decision_log", []))
    mice: dict[str, MouseChange] = {}

    def mouse(mouse_id: str) -> MouseChange:
        if mouse_id not in mice:
            mice[mouse_id] = MouseChange(
                mouse_id, stage_before.get(mouse_id), stage_after.get(mouse_id)
            )
        return mice[mouse_id]

    for key in sorted(new_decisions.keys() - old_decisions.keys()):
        mouse(key[0]).added.append(_describe(new_decisions[key]))
    for key in sorted(old_decisions.keys() - new_decisions.keys()):
        mouse(key[0]).removed.append(_describe(old_decisions[key]))
    for key in sorted(old_decisions.keys() & new_decisions.keys()):
        old_row, new_row = old_decisions[key], new_decisions[key]
        if any(old_row.get(f) != new_row.get(f) for f in _DECISION_FIELDS):
            mouse(key[0]).changed.append(
                f"session {new_row.get('session_total')}: {_verdict(old_row)} -> "
                f"{_verdict(new_row)}"
            )
    for mouse_id in sorted(set(stage_before) | set(stage_after)):
        if stage_before.get(mouse_id) != stage_after.get(mouse_id):
            mouse(mouse_id)
    return [mice[m] for m in sorted(mice)], tables


def _verdict(row: dict[str, Any]) -> str:
    return f"{row.get('decision')} {row.get('to_stage')}"


def _describe(row: dict[str, Any]) -> str:
    return f"session {row.get('session_total')}: {_verdict(row)}"


# -- the processor's state and offsets ----------------------------------------------------------


class ProcessorHandover:
    """The live processor's group and changelog on Kafka.

    Args:
        bootstrap: Kafka bootstrap servers.
        processor_id: the faust app id: consumer group and changelog prefix.
    """

    def __init__(self, bootstrap: str, processor_id: str) -> None:
        self.bootstrap = bootstrap
        self.group = processor_id
        changelogs = Changelogs.of(processor_id)
        self.changelog = changelogs.state
        self.sessions_changelog = changelogs.sessions

    def _admin(self) -> Any:
        from shaping.services.adapters.kafka import admin as kafka_admin

        return kafka_admin(self.bootstrap, "shaping-replay")

    def activity(self) -> tuple[int, str]:
        """The processor group's members and state (read only)."""
        admin = self._admin()
        try:
            described = admin.describe_groups([self.group]).get(self.group, {})
        finally:
            admin.close()
        state = str(described.get("group_state") or described.get("state") or "")
        return len(described.get("members") or []), state

    def running(self) -> bool:
        """Whether a processor is in the group."""
        members, state = self.activity()
        return bool(members) or state not in INACTIVE_GROUP_STATES

    def check_inactive(self) -> None:
        """Raises ReplayError when the processor's consumer group has members."""
        members, state = self.activity()
        if members or state not in INACTIVE_GROUP_STATES:
            raise ReplayError(
                f"the processor (consumer group {self.group!r}) is running: {members} "
                f"member(s), state {state or 'unknown'}. Stop every processor first: replay "
                "rebuilds its state and hands it over (--dry-run works while it runs)"
            )

    def committed(self, topic: str) -> dict[int, int]:
        """The group's committed offsets on ``topic``."""
        admin = self._admin()
        try:
            offsets = admin.list_group_offsets(self.group).get(self.group, {})
        finally:
            admin.close()
        return {
            tp.partition: oam.offset
            for tp, oam in offsets.items()
            if tp.topic == topic and oam.offset >= 0
        }

    def read_states(self, topic: str | None = None) -> dict[bytes, tuple[int, bytes | None]]:
        """The latest record per key of a changelog (the state table's by default):
        ``{key: (partition, value)}``."""
        topic = topic or self.changelog
        bounds = {k: v for k, v in self._bounds([topic]).items() if k[0] == topic}
        latest: dict[bytes, tuple[int, bytes | None]] = {}
        for record in read_kafka(self.bootstrap, bounds, "shaping-replay-changelog"):
            if record.key is not None:
                latest[record.key] = (record.partition, record.value)
        return latest

    def _bounds(self, topics: list[str]) -> dict[tuple[str, int], tuple[int, int]]:
        consumer = _kafka_consumer(self.bootstrap, "shaping-replay-offsets")
        try:
            found = consumer.partitions_for_topic(topics[0])
        finally:
            consumer.close(autocommit=False)
        if not found:
            return {}
        return kafka_offsets(self.bootstrap, topics)

    def write_states(
        self, states: dict[str, MouseState], partition_of: dict[str, int], partitions: int
    ) -> int:
        """Writes every state that differs from the live one (and a tombstone for a mouse the
        rebuilt state does not have). Returns how many records were written.

        The live state of a mouse is its state record joined with its open-sessions record
        (what the processor would load). A rewritten mouse also gets a tombstone for its
        open-sessions record, so no open sessions of the old state outlive the hand-over.
        """
        from shaping.services.adapters.kafka import producer as kafka_producer

        live = self.read_states()
        sessions = {k: v for k, v in self.read_states(self.sessions_changelog).items() if v[1]}
        records: list[tuple[str, bytes, bytes | None, int]] = []
        for mouse_id, state in sorted(states.items()):
            key = encode_key(mouse_id)
            known = live.get(key)
            extra = sessions.get(key)
            stored = known[1] if known is not None else None
            if stored is not None and _same_state(stored, extra[1] if extra else None, state):
                continue
            records.append((self.changelog, key, encode_state(state), partition_of[mouse_id]))
            if extra is not None:
                records.append((self.sessions_changelog, key, None, extra[0]))
        wanted = {encode_key(m) for m in states}
        for key, (partition, value) in sorted(live.items()):
            if key not in wanted and value is not None:
                records.append((self.changelog, key, None, partition))
                if key in sessions:
                    records.append((self.sessions_changelog, key, None, sessions[key][0]))
        if not records:
            return 0
        self._ensure_changelog(partitions)
        producer = kafka_producer(self.bootstrap, "shaping-replay")
        try:
            for topic, key, value, partition in records:
                producer.send(topic, key=key, value=value, partition=partition)
            producer.flush(timeout=_KAFKA_TIMEOUT_S)
        finally:
            producer.close()
        return len(records)

    def _ensure_changelog(self, partitions: int) -> None:
        from kafka.admin import NewTopic
        from kafka.errors import TopicAlreadyExistsError

        admin = self._admin()
        try:
            admin.create_topics(
                [
                    NewTopic(
                        self.changelog,
                        partitions,
                        CHANGELOG_REPLICATION_FACTOR,
                        topic_configs={"cleanup.policy": "compact"},
                    )
                ]
            )
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()

    def move_offsets(self, topic: str, bounds: dict[int, tuple[int, int]]) -> int:
        """Sets the group's offsets on ``topic`` to the ends of ``bounds`` (``{partition:
        (first, end)}``); returns how many moved. A partition without a committed offset
        whose log is empty needs no move: the processor starts at its first offset anyway.

        Raises:
            ReplayError: when the broker refuses (the group became active).
        """
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        current = self.committed(topic)
        moves = {
            TopicPartition(topic, p): OffsetAndMetadata(end, "", -1)
            for p, (first, end) in bounds.items()
            if current.get(p, first) != end
        }
        if not moves:
            return 0
        admin = self._admin()
        try:
            results = admin.alter_group_offsets(self.group, moves)
        finally:
            admin.close()
        failed = {tp: err for tp, err in results.items() if err.__name__ != "NoError"}
        if failed:
            raise ReplayError(
                f"the broker refused to move the offsets of group {self.group!r} "
                f"({', '.join(f'{tp.partition}: {err.__name__}' for tp, err in failed.items())});"
                " is a processor running? Stop it and run replay again"
            )
        return len(moves)


def _same_state(stored: bytes, sessions: bytes | None, state: MouseState) -> bool:
    """Whether the live records (state record, open-sessions record) hold ``state``.

    Records this version cannot read (damaged, or of another format: StateFormatError is a
    ValueError) hold no state: the hand-over rewrites them, which is how a replay brings a
    store written by another version to this version's format.
    """
    try:
        return join_sessions(stored, sessions) == state
    except ValueError:
        return False


# -- the whole run --------------------------------------------------------------------------------


ProgressFn = Callable[[int], None]
"""Called with the number of events folded since the last call."""


class Source(Protocol):
    """Where a replay reads the log and publishes its corrections."""

    topics: TopicNames

    def snapshot(self) -> int:
        """Takes the snapshot; returns how many input messages it covers."""
        ...

    def inputs(self) -> Iterator[SourceRecord]:
        """The events topic up to the snapshot, in processing order."""
        ...

    def live_outputs(self, skip: Collection[str] = ()) -> list[SourceRecord]:
        """The output topics (accepted, decisions, assignments, dead letters) but ``skip``, to
        their ends at the snapshot."""
        ...

    def projector_offsets(self) -> dict[tuple[str, int], int]:
        """The projector's positions that go with the rebuilt tables."""
        ...

    def publish(self, messages: Sequence[Outgoing]) -> None:
        """Publishes corrections and new outputs to the live topics."""
        ...

    def catalog(self) -> CurriculumCatalog:
        """The curricula the live processor knows."""
        ...


class KafkaSource:
    """The event log on Kafka (read by throwaway consumers: no group, nothing committed)."""

    def __init__(self, bootstrap: str, topics: TopicNames) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.input_bounds: dict[tuple[str, int], tuple[int, int]] = {}
        self.output_bounds: dict[tuple[str, int], tuple[int, int]] = {}

    def output_topics(self) -> list[str]:
        """The output topics there are (the accepted topic is missing before its release)."""
        outputs = [self.topics.decisions, self.topics.assignments, self.topics.dead_letter]
        consumer = _kafka_consumer(self.bootstrap, "shaping-replay-offsets")
        try:
            if consumer.partitions_for_topic(self.topics.accepted):
                outputs.insert(0, self.topics.accepted)
        finally:
            consumer.close(autocommit=False)
        return outputs

    def snapshot(self) -> int:
        bounds = kafka_offsets(self.bootstrap, [self.topics.events, *self.output_topics()])
        self.input_bounds = {k: v for k, v in bounds.items() if k[0] == self.topics.events}
        self.output_bounds = {k: v for k, v in bounds.items() if k[0] != self.topics.events}
        return sum(end - begin for begin, end in self.input_bounds.values())

    def inputs(self) -> Iterator[SourceRecord]:
        return read_kafka(self.bootstrap, self.input_bounds, "shaping-replay")

    def live_outputs(self, skip: Collection[str] = ()) -> list[SourceRecord]:
        bounds = {tp: b for tp, b in self.output_bounds.items() if tp[0] not in skip}
        return list(read_kafka(self.bootstrap, bounds, "shaping-replay-outputs"))

    def projector_offsets(self) -> dict[tuple[str, int], int]:
        # The projector reads the output topics (facts come from the accepted topic, not the
        # events topic), and records a partition once it has read a message there.
        return {tp: end for tp, (_, end) in self.output_bounds.items() if end > 0}

    def publish(self, messages: Sequence[Outgoing]) -> None:
        from shaping.services.adapters.kafka import producer as kafka_producer

        if not messages:
            return
        producer = kafka_producer(self.bootstrap, "shaping-replay")
        try:
            for message in messages:
                topic = getattr(self.topics, message.topic_kind)
                producer.send(
                    topic, key=message.key, value=message.value, headers=headers_for(message.value)
                )
            producer.flush(timeout=_KAFKA_TIMEOUT_S)
        finally:
            producer.close()

    def catalog(self) -> CurriculumCatalog:
        catalog = default_catalog()
        curricula = getattr(self.topics, "curricula", None)
        if curricula:
            try:
                from shaping.services.adapters.curricula_topic import add_published, read_published

                for problem in add_published(catalog, read_published(self.bootstrap, curricula)):
                    log.warning("published curriculum left out: %s", problem)
            except Exception as exc:  # the topic may not exist in older deployments
                log.warning("cannot read the published curricula from %s: %s", curricula, exc)
        return catalog


class JsonlSource:
    """The embedded log of ``shaping demo`` (``events.jsonl``)."""

    def __init__(self, path: Path, topics: TopicNames | None = None) -> None:
        self.path = path
        self.topics = topics or TopicNames.with_prefix("shaping")
        self.records: list[SourceRecord] = []

    def snapshot(self) -> int:
        self.records = read_jsonl(self.path)
        return sum(1 for r in self.records if r.topic == self.topics.events)

    def inputs(self) -> Iterator[SourceRecord]:
        return (r for r in self.records if r.topic == self.topics.events)

    def live_outputs(self, skip: Collection[str] = ()) -> list[SourceRecord]:
        return [r for r in self.records if r.topic != self.topics.events and r.topic not in skip]

    def projector_offsets(self) -> dict[tuple[str, int], int]:
        ends: dict[tuple[str, int], int] = {}
        for record in self.records:
            ends[(record.topic, record.partition)] = record.offset + 1
        return ends

    def publish(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        codec = default_codec()
        ends = self.projector_offsets()
        lines = []
        for message in messages:
            topic = getattr(self.topics, message.topic_kind)
            offset = ends.get((topic, 0), 0)
            ends[(topic, 0)] = offset + 1
            record = SourceRecord(topic, 0, offset, message.key, message.value)
            self.records.append(record)
            lines.append(_jsonl_line(record, codec))
        with self.path.open("a", encoding="utf-8") as out:
            out.write("".join(line + "\n" for line in lines))
            out.flush()
            os.fsync(out.fileno())

    def catalog(self) -> CurriculumCatalog:
        return default_catalog()


def _kind_of(event: Event) -> TopicKind:
    from shaping.services.processor.step import OUTPUT_TOPIC

    return OUTPUT_TOPIC[event.event_type]


@dataclass
class ReplaySummary:
    """What a replay found and did."""

    events: int = 0
    mice: int = 0
    mouse_changes: list[MouseChange] = field(default_factory=list)
    table_changes: dict[str, TableChange] = field(default_factory=dict)
    published: int = 0
    corrections: int = 0
    unfixable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    states_written: int = 0
    offsets_moved: int = 0
    switched: bool = False
    kept_old: str | None = None
    dry_run: bool = False

    @property
    def no_change(self) -> bool:
        """Whether the replay found nothing to change anywhere."""
        return not (
            self.mouse_changes
            or self.table_changes
            or self.published
            or self.states_written
            or self.offsets_moved
        )


def run_replay(
    source: Source,
    db_url: str,
    *,
    handover: ProcessorHandover | None = None,
    projector_id: str = "projector",
    dry_run: bool = False,
    progress: Callable[[int], ProgressFn] | None = None,
    clock: ClockWindow | None = None,
) -> ReplaySummary:
    """Rebuilds state and tables from the log and switches over (see the module docstring).

    A dry run is read-only and may run while the services run: it reads the live tables on a
    read-only connection, the topics with throwaway consumers (no group, nothing committed),
    builds the fresh tables in a temporary SQLite file away from the live database, and
    publishes nothing, writes no changelog and moves no offset.

    Args:
        source: where the log is (Kafka or an embedded log file).
        db_url: the live status tables.
        handover: the live processor on Kafka (None in embedded mode).
        projector_id: the projector's name in its offsets table.
        dry_run: stop after the diff; change nothing.
        progress: called with the number of input messages; returns the function to call as
            they are folded.
        clock: the processor's window of accepted dates (its settings; None: the default).

    Raises:
        ReplayError: when the processor is running (not for a dry run), the log or tables
            cannot be read, or the projector wrote during the replay (then nothing was
            switched).
    """
    running = False
    if handover is not None:
        if dry_run:
            running = handover.running()
        else:
            handover.check_inactive()
    if dry_run:
        before_offsets, before = read_live(db_url)
    else:
        live_store = _open_live(db_url)
        try:
            before_offsets = live_offsets(live_store)
            before = live_store.snapshot()
        finally:
            live_store.close()
    total = source.snapshot()
    codec = default_codec()
    outputs = source.live_outputs()
    accepted_topic = source.topics.accepted
    produced = list(_decoded(codec, (r for r in outputs if r.topic != accepted_topic)))
    accepted = (
        e.event_id for e in _decoded(codec, (r for r in outputs if r.topic == accepted_topic))
    )
    reconciler = Reconciler(LiveOutputs(produced, accepted), codec)
    pins = EnrolmentPins(produced, before)
    try:
        fresh = FreshTables(db_url, scratch=dry_run)
    except (ProjectorError, SQLAlchemyError) as exc:
        raise ReplayError(f"cannot make the fresh tables: {exc}") from exc
    summary = ReplaySummary(events=total, dry_run=dry_run)
    try:
        step = ProcessorStep(PinnedCore(source.catalog(), pins), codec, clock=clock)
        rebuild = Rebuild(step, source.topics, reconciler, fresh.store)
        tick = progress(total) if progress is not None else None
        done = 0
        for record in pins.read(source.inputs()):
            rebuild.feed(record)
            done += 1
            if tick is not None and done % 200 == 0:
                tick(200)
        if tick is not None:
            tick(done % 200)
        rebuild.finish()
        if dry_run:  # read as the live tables were, row for row
            with fresh.store.engine.connect() as conn:
                after = table_rows(conn)
        else:
            after = fresh.store.snapshot()
        summary.mice = len(rebuild.states)
        summary.mouse_changes, summary.table_changes = diff_tables(before, after)
        summary.unfixable = reconciler.unfixable
        wanted_offsets = source.projector_offsets()
        if dry_run:
            summary.published = len(reconciler.to_publish)
            summary.corrections = reconciler.corrections
            summary.notes = _running_notes(source, handover, running, before_offsets, projector_id)
            return summary
        fresh.set_offsets(projector_id, wanted_offsets)
        # Identical tables stay: the live projector goes on from its own offsets (it drops the
        # corrections published below as events it has projected or will supersede).
        if summary.table_changes:
            if handover is not None:
                handover.check_inactive()
            summary.kept_old = fresh.swap(before_offsets)
            summary.switched = True
        source.publish(reconciler.to_publish)
        summary.published = len(reconciler.to_publish)
        summary.corrections = reconciler.corrections
        if handover is not None and isinstance(source, KafkaSource):
            partitions = len(source.input_bounds)
            summary.states_written = handover.write_states(
                rebuild.states, rebuild.partition_of, partitions
            )
            bounds = {p: b for (_, p), b in source.input_bounds.items()}
            summary.offsets_moved = handover.move_offsets(source.topics.events, bounds)
        return summary
    finally:
        if not summary.switched:
            fresh.discard()


def _running_notes(
    source: Source,
    handover: ProcessorHandover | None,
    running: bool,
    offsets: list[tuple[str, str, int, int]],
    projector_id: str,
) -> list[str]:
    """What a dry run says about services that ran while it read: how far each was behind the
    snapshot (what it had yet to do shows as changes)."""
    if not isinstance(source, KafkaSource):
        return []
    notes = []
    if handover is not None and running:
        committed = handover.committed(source.topics.events)
        behind = sum(
            max(0, end - committed.get(p, first))
            for (_, p), (first, end) in source.input_bounds.items()
        )
        notes.append(
            f"the processor (group {handover.group!r}) is running"
            + (
                f"; {behind} events of the snapshot were not yet committed by it: what it had "
                "not processed shows as changes"
                if behind
                else "; it had processed the whole snapshot"
            )
        )
    read = {(t, p): n for c, t, p, n in offsets if c == projector_id}
    behind = sum(
        max(0, end - read.get(tp, first)) for tp, (first, end) in source.output_bounds.items()
    )
    if behind:
        notes.append(
            f"the projector ({projector_id!r}) had {behind} messages of the output topics left "
            "to project: the live tables were behind, and what they lacked shows as changes"
        )
    return notes


def read_live(
    db_url: str,
) -> tuple[list[tuple[str, str, int, int]], dict[str, list[dict[str, Any]]]]:
    """The projector's offsets and the live tables, read in one read-only transaction:
    PostgreSQL ``REPEATABLE READ, READ ONLY``; SQLite ``PRAGMA query_only`` in one read
    transaction. Nothing is written, not even a missing table (it reads as empty).

    Raises:
        ReplayError: when there is no such database, or it cannot be read.
    """
    url = make_url(db_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or not Path(database).is_file():
            raise ReplayError(f"no status database at {db_url}: point --db-url at the live one")
    elif backend != "postgresql":
        raise ReplayError(f"unsupported database {backend!r}")
    try:
        engine = create_engine(url)
    except (ArgumentError, ImportError) as exc:
        raise ReplayError(f"cannot open the status database: {exc}") from exc
    if backend == "sqlite":
        sa_event.listen(engine, "connect", _sqlite_query_only)
    try:
        with engine.connect() as conn:
            if backend == "postgresql":
                conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            else:
                conn.exec_driver_sql("BEGIN")
            try:
                return _offset_rows(conn), table_rows(conn)
            finally:
                conn.rollback()
    except SQLAlchemyError as exc:
        shown = url.render_as_string(hide_password=True)
        raise ReplayError(f"cannot read the status tables at {shown}: {exc}") from exc
    finally:
        engine.dispose()


def _sqlite_query_only(dbapi_connection: Any, connection_record: Any) -> None:
    """A SQLite connection that refuses every change, with explicit transactions."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA query_only=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
    finally:
        cursor.close()


def _offset_rows(conn: Connection) -> list[tuple[str, str, int, int]]:
    if not inspect(conn).has_table(projector_offsets.name):
        return []
    rows = conn.execute(select(projector_offsets)).all()
    return sorted((str(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in rows)


def table_rows(conn: Connection) -> dict[str, list[dict[str, Any]]]:
    """Every projection table, as :meth:`SqlProjectionStore.snapshot` gives it (values as JSON
    ready data, rows sorted by primary key in Python, so both backends compare equal); a table
    the database lacks is empty."""
    present = set(inspect(conn).get_table_names())
    result: dict[str, list[dict[str, Any]]] = {}
    for table in PROJECTION_TABLES:
        rows: list[dict[str, Any]] = []
        if table.name in present:
            rows = [
                {key: _cell(value) for key, value in row.items()}
                for row in conn.execute(select(table)).mappings()
            ]
        keys = [column.name for column in table.primary_key.columns]
        rows.sort(key=_by_columns(keys))
        result[table.name] = rows
    return result


def _by_columns(keys: list[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    return lambda row: tuple(row[k] for k in keys)


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return value


def _open_live(db_url: str) -> SqlProjectionStore:
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or not Path(database).is_file():
            raise ReplayError(f"no status database at {db_url}: point --db-url at the live one")
    try:
        return SqlProjectionStore(db_url)
    except ProjectorError as exc:
        raise ReplayError(str(exc)) from exc


def _decoded(codec: EventCodec, records: Iterable[SourceRecord]) -> Iterator[Event]:
    for record in records:
        event = decode_or_none(codec, record.value)
        if event is not None:
            yield event


def live_events(codec: EventCodec, records: Iterable[SourceRecord]) -> list[Event]:
    """The decoded events among ``records`` (what is no event is left out)."""
    return list(_decoded(codec, records))


__all__ = [
    "EnrolmentPins",
    "EventRejected",
    "FreshTables",
    "JsonlSource",
    "KafkaSource",
    "LiveOutputs",
    "PinnedCore",
    "ProcessorHandover",
    "Reconciler",
    "ReplayError",
    "ReplaySummary",
    "changelog_topic",
    "content_of",
    "diff_tables",
    "read_live",
    "run_replay",
]
