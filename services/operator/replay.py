"""``shaping replay``: rebuild the processor's state and the status tables from the event log.

The live processor keeps per-mouse state in a changelog-backed faust table and the projector
keeps the status tables; both are folds over the log. Replay redoes both folds from offset 0,
with the code and curricula installed now, next to the live ones, and then switches over:

1. Snapshot. The processor's consumer group must be inactive (the processor stopped). Replay
   takes the end offsets of the events topic as its snapshot and reads the live output topics
   (decisions, assignments, dead letters) to their ends.
2. Fold. A throwaway consumer (no group, nothing committed) reads the events topic up to the
   snapshot, partitions merged by broker timestamp, and every message goes through the same
   :class:`~services.processor.step.ProcessorStep` and
   :class:`~services.domain.TrainingCore` the processor runs (so the same curricula, dead
   letters and ids). A rich progress bar shows events/s and the time left.
3. Project. The input messages and the outputs the fold produced are projected by the
   projector's own store into fresh tables: a fresh PostgreSQL schema, or a fresh SQLite file.
4. Reconcile. Each output is compared with the live one of the same id. Identical: the live
   event is kept. Different: a correction with a new id and ``supersedes`` naming the live
   version is published (decisions; for the compacted assignments topic only each mouse's
   latest assignment, which is what rigs read), so rigs get corrected assignments and every
   consumer keeps the audit trail. Absent: published as it is.
5. Diff. The fresh tables are compared with the live ones: per mouse, the stage now and after
   replay, and the decisions added, removed or changed (by session).
6. Switch over. In one transaction the live tables are locked, checked to be untouched since
   the snapshot (a running projector would have moved its offsets), and replaced: PostgreSQL
   moves the old tables to a backup schema and the fresh ones in; SQLite copies the fresh rows
   over the live ones (after a backup file made with ``VACUUM INTO``). The projector's offsets
   in the new tables are the snapshot, so a restarted projector goes on from there.
7. Hand over. The corrections are published; the rebuilt state of every mouse whose state
   differs from the changelog's is written to the processor's changelog topic
   (``<processor_id>-mouse_state-changelog``, the mouse's partition, raw bytes as faust writes
   them), and the processor group's offsets on the events topic are moved to the snapshot. A
   restarted processor recovers the rebuilt state and goes on with the events that arrived
   during the replay.

Every step compares before it writes, so replaying twice changes nothing, and a replay that
stopped half-way converges when run again. ``--dry-run`` stops after the diff.

The embedded mode (``shaping demo``'s ``events.jsonl`` and SQLite file) runs the same fold,
projection, reconciliation, diff and switch-over; corrections are appended to the log file,
and there is no processor state to hand over (the embedded runtime folds the log when it
starts). See ``docs/replay.md``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import sqlite3
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import delete, make_url, select, text
from sqlalchemy.engine import URL

from schemas.codec import EventCodec, default_codec, encode_key
from schemas.errors import SerializationError
from schemas.events import AssignmentIssued, Event, EventRejected
from services.common.topics import TopicNames
from services.curricula.catalog import default_catalog
from services.domain import CurriculumCatalog, MouseState, TrainingCore
from services.domain.state import join_sessions
from services.operator.errors import OperatorError
from services.processor.step import Outgoing, ProcessorStep, TopicKind
from services.projector.store import ProjectedMessage, SqlProjectionStore
from services.projector.tables import PROJECTION_TABLES, metadata, projector_offsets

log = logging.getLogger(__name__)

REPLAY_NAMESPACE = uuid.UUID("8f0e2a51-6c3d-4e7b-9b1a-2d5c7e9f4a60")
"""Namespace of the ids of corrections (outputs that differ from the live ones)."""

BUILD_CONSUMER = "replay-build"
"""Consumer name under which the fresh tables are built (replaced by the projector's own)."""

STATE_TABLE = "mouse_state"
"""The processor's faust table (see services/processor/app.py); its changelog topic is
``<processor_id>-mouse_state-changelog``."""

SESSIONS_TABLE = "mouse_sessions"
"""The processor's table of open-sessions records, written after trials on top of the state
record (see services/domain/state.py, OpenSessions)."""

INACTIVE_GROUP_STATES = {"Empty", "Dead", ""}
"""Consumer group states in which the group's offsets may be moved from outside."""

_CONTENT_EXCLUDED = {"event_id", "supersedes", "causation_id", "schema_version"}
_BATCH = 1000
_POLL_MS = 500
_BUFFER_HIGH = 20_000
_BUFFER_LOW = 2_000
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


def changelog_topic(processor_id: str, table: str = STATE_TABLE) -> str:
    """The changelog topic of one of the processor's tables (faust's naming)."""
    return f"{processor_id}-{table}-changelog"


def _kafka_consumer(bootstrap: str, client_id: str) -> Any:
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        group_id=None,  # throwaway: no group, nothing committed
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=2000,
    )


def _partitions(consumer: Any, topics: list[str]) -> list[Any]:
    from services.common.errors import TopicMissingError
    from services.common.topics import wait_for_partitions

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
    bootstrap: str, bounds: dict[tuple[str, int], tuple[int, int]], client_id: str
) -> Iterator[SourceRecord]:
    """Every message of the given partitions between their bounds, partitions merged by broker
    timestamp (then partition, offset), which is close to the order a live consumer saw.

    A throwaway consumer (no group) reads them; nothing is committed.
    """
    from kafka import TopicPartition

    pending = {TopicPartition(t, p): b for (t, p), b in bounds.items() if b[0] < b[1]}
    if not pending:
        return
    consumer = _kafka_consumer(bootstrap, client_id)
    try:
        consumer.assign(list(pending))
        for tp, (begin, _) in pending.items():
            consumer.seek(tp, begin)
        buffers: dict[Any, deque[SourceRecord]] = {tp: deque() for tp in pending}
        exhausted: set[Any] = set()
        paused: set[Any] = set()
        deadline = time.monotonic() + _KAFKA_TIMEOUT_S
        while buffers:
            # The next record in order is known once every partition that may still hold one
            # has a record buffered.
            if any(not buf and tp not in exhausted for tp, buf in buffers.items()):
                resume = [tp for tp in paused if len(buffers.get(tp, ())) < _BUFFER_LOW]
                if resume:
                    consumer.resume(*resume)
                    paused.difference_update(resume)
                polled = consumer.poll(timeout_ms=_POLL_MS)
                for tp, messages in polled.items():
                    end = pending[tp][1]
                    buffers[tp].extend(_record(m) for m in messages if m.offset < end)
                    if len(buffers[tp]) > _BUFFER_HIGH:  # bound the memory a fast one takes
                        consumer.pause(tp)
                        paused.add(tp)
                for tp in buffers:
                    if tp not in exhausted and consumer.position(tp) >= pending[tp][1]:
                        exhausted.add(tp)
                        consumer.pause(tp)
                        paused.discard(tp)
                if polled:
                    deadline = time.monotonic() + _KAFKA_TIMEOUT_S
                elif time.monotonic() > deadline:
                    stuck = [tp for tp, buf in buffers.items() if not buf and tp not in exhausted]
                    raise ReplayError(f"no progress reading {sorted(map(str, stuck))}")
                for tp in [tp for tp, buf in buffers.items() if tp in exhausted and not buf]:
                    del buffers[tp]
                continue
            head = min(buffers, key=lambda tp: _order(buffers[tp][0]))
            yield buffers[head].popleft()
            if not buffers[head] and head in exhausted:
                del buffers[head]
    finally:
        consumer.close(autocommit=False)


def _order(record: SourceRecord) -> tuple[float, int, int]:
    stamp = record.timestamp.timestamp() if record.timestamp is not None else 0.0
    return (stamp, record.partition, record.offset)


def read_jsonl(path: Path) -> list[SourceRecord]:
    """Every message of an embedded log (``events.jsonl`` of ``shaping demo``), in log order.

    Raises:
        ReplayError: when the file cannot be read or is not such a log.
    """
    records = []
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                    key = item["key"].encode("utf-8") if item["key"] is not None else None
                    value = base64.b64decode(item["value_b64"])
                    records.append(
                        SourceRecord(item["topic"], item["partition"], item["offset"], key, value)
                    )
                except (KeyError, TypeError, ValueError) as exc:
                    raise ReplayError(f"{path}:{number}: not an event-log line ({exc})") from None
    except OSError as exc:
        raise ReplayError(f"cannot read the event log {path}: {exc.strerror}") from None
    return records


def _jsonl_line(record: SourceRecord, codec: EventCodec) -> str:
    """A log line as :meth:`services.embedded.log.InProcessLog.save_jsonl` writes it."""
    try:
        event: Any = codec.decode(record.value).model_dump(mode="json")
    except SerializationError as exc:
        event = {"undecodable": str(exc)}
    line = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": record.key.decode("utf-8", "replace") if record.key else None,
        "value_b64": base64.b64encode(record.value or b"").decode("ascii"),
        "event": event,
    }
    return json.dumps(line, sort_keys=True)


# -- reconciling outputs with the live ones -----------------------------------------------------


def content_of(event: Event) -> str:
    """What an output says, without its identity (id, causation, supersedes, schema version)."""
    return json.dumps(
        event.model_dump(mode="json", exclude=_CONTENT_EXCLUDED), sort_keys=True, default=str
    )


class LiveOutputs:
    """The outputs on the live topics, indexed for comparison.

    Args:
        events: decoded events of the decisions, assignments and dead-letter topics, in the
            order they were read (per partition: topic order).
    """

    def __init__(self, events: Iterable[Event]) -> None:
        self.by_id: dict[str, Event] = {}
        self.successors: dict[str, list[str]] = {}
        self.latest_assignment: dict[str, AssignmentIssued] = {}
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
    """Decides, output by output, which event the rebuilt tables hold and what to publish."""

    def __init__(self, live: LiveOutputs) -> None:
        self.live = live
        self.to_publish: list[Event] = []
        self.renamed: dict[str, str] = {}
        self.unfixable: list[str] = []
        self.corrections = 0
        self.standing: dict[str, Event] = {}

    def output(self, event: Event) -> Event:
        """The event that stands for ``event`` (the live one when they agree), noting any
        correction or new event to publish. Assignments go through :meth:`final_assignment`."""
        final = self._output(event)
        self.standing[event.event_id] = final
        return final

    def _output(self, event: Event) -> Event:
        latest = self.live.latest_version(event.event_id)
        if latest is None:
            self.to_publish.append(event)
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
            self.to_publish.append(event)
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
            self.to_publish.append(corrected)
            self.corrections += 1
        return corrected


# -- the fold -----------------------------------------------------------------------------------


class Rebuild:
    """Folds input messages through the processor's step and projects into fresh tables.

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
        self._project(
            ProjectedMessage(record.topic, record.partition, record.offset, result.event, "events")
        )
        for out in result.outputs:
            self._output(out)
        self.processed += 1

    def _output(self, out: Outgoing) -> None:
        event = out.event
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
        """Projects what is buffered."""
        if self.store is not None and self._batch:
            self.store.apply_batch(BUILD_CONSUMER, self._batch)
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
    """A fresh set of the projector's tables beside the live ones, and the switch-over."""

    def __init__(self, live_url: str) -> None:
        self.live_url = make_url(live_url)
        self.dialect = self.live_url.get_backend_name()
        self.stamp = _stamp()
        self.schema: str | None = None
        self.path: Path | None = None
        if self.dialect == "postgresql":
            live = SqlProjectionStore(self.live_url)
            try:
                with live.engine.begin() as conn:
                    self.live_schema = str(conn.execute(text("SELECT current_schema()")).scalar())
                    self.schema = f"shaping_replay_{self.stamp}"
                    conn.execute(text(f'CREATE SCHEMA "{self.schema}"'))
            finally:
                live.close()
            url: str | URL = self.live_url.update_query_dict(
                {"options": f"-csearch_path={self.schema}"}
            )
        elif self.dialect == "sqlite":
            database = self.live_url.database or ""
            if database in ("", ":memory:"):
                raise ReplayError("replay needs a database file, not an in-memory SQLite")
            self.path = Path(database).with_name(f"{Path(database).name}.replay-{self.stamp}")
            url = f"sqlite:///{self.path}"
        else:
            raise ReplayError(f"unsupported database {self.dialect!r}")
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
        self.changelog = changelog_topic(processor_id)
        self.sessions_changelog = changelog_topic(processor_id, SESSIONS_TABLE)

    def _admin(self) -> Any:
        from kafka import KafkaAdminClient

        return KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="shaping-replay")

    def check_inactive(self) -> None:
        """Raises ReplayError when the processor's consumer group has members."""
        admin = self._admin()
        try:
            described = admin.describe_groups([self.group]).get(self.group, {})
        finally:
            admin.close()
        state = str(described.get("group_state") or described.get("state") or "")
        members = described.get("members") or []
        if members or state not in INACTIVE_GROUP_STATES:
            raise ReplayError(
                f"the processor (consumer group {self.group!r}) is running: {len(members)} "
                f"member(s), state {state or 'unknown'}. Stop every processor first: replay "
                "rebuilds its state and hands it over"
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
        from kafka import KafkaProducer

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
            records.append((self.changelog, key, state.to_bytes(), partition_of[mouse_id]))
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
        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id="shaping-replay",
            acks="all",
            enable_idempotence=True,
        )
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
                        1,
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
    """Whether the live records (state record, open-sessions record) hold ``state``."""
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

    def live_outputs(self) -> list[SourceRecord]:
        """The output topics, to their ends at the snapshot."""
        ...

    def projector_offsets(self) -> dict[tuple[str, int], int]:
        """The projector's positions that go with the rebuilt tables."""
        ...

    def publish(self, events: Sequence[Event]) -> None:
        """Publishes corrections and new outputs to the live topics."""
        ...

    def catalog(self) -> CurriculumCatalog:
        """The curricula the live processor knows."""
        ...


class KafkaSource:
    """The event log on Kafka."""

    def __init__(self, bootstrap: str, topics: TopicNames) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.input_bounds: dict[tuple[str, int], tuple[int, int]] = {}
        self.output_bounds: dict[tuple[str, int], tuple[int, int]] = {}

    def snapshot(self) -> int:
        outputs = [self.topics.decisions, self.topics.assignments, self.topics.dead_letter]
        bounds = kafka_offsets(self.bootstrap, [self.topics.events, *outputs])
        self.input_bounds = {k: v for k, v in bounds.items() if k[0] == self.topics.events}
        self.output_bounds = {k: v for k, v in bounds.items() if k[0] != self.topics.events}
        return sum(end - begin for begin, end in self.input_bounds.values())

    def inputs(self) -> Iterator[SourceRecord]:
        return read_kafka(self.bootstrap, self.input_bounds, "shaping-replay")

    def live_outputs(self) -> list[SourceRecord]:
        return list(read_kafka(self.bootstrap, self.output_bounds, "shaping-replay-outputs"))

    def projector_offsets(self) -> dict[tuple[str, int], int]:
        # The projector records a partition once it has read a message there.
        bounds = {**self.input_bounds, **self.output_bounds}
        return {tp: end for tp, (_, end) in bounds.items() if end > 0}

    def publish(self, events: Sequence[Event]) -> None:
        from kafka import KafkaProducer

        if not events:
            return
        codec = default_codec()
        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id="shaping-replay",
            acks="all",
            enable_idempotence=True,
        )
        try:
            for event in events:
                topic = getattr(self.topics, _kind_of(event))
                producer.send(topic, key=encode_key(event.mouse_id), value=codec.encode(event))
            producer.flush(timeout=_KAFKA_TIMEOUT_S)
        finally:
            producer.close()

    def catalog(self) -> CurriculumCatalog:
        catalog = default_catalog()
        curricula = getattr(self.topics, "curricula", None)
        if curricula:
            try:
                from services.curricula.published import add_published, read_published

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

    def live_outputs(self) -> list[SourceRecord]:
        return [r for r in self.records if r.topic != self.topics.events]

    def projector_offsets(self) -> dict[tuple[str, int], int]:
        ends: dict[tuple[str, int], int] = {}
        for record in self.records:
            ends[(record.topic, record.partition)] = record.offset + 1
        return ends

    def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        codec = default_codec()
        ends = self.projector_offsets()
        lines = []
        for event in events:
            topic = getattr(self.topics, _kind_of(event))
            offset = ends.get((topic, 0), 0)
            ends[(topic, 0)] = offset + 1
            record = SourceRecord(topic, 0, offset, encode_key(event.mouse_id), codec.encode(event))
            self.records.append(record)
            lines.append(_jsonl_line(record, codec))
        with self.path.open("a", encoding="utf-8") as out:
            out.write("".join(line + "\n" for line in lines))
            out.flush()
            os.fsync(out.fileno())

    def catalog(self) -> CurriculumCatalog:
        return default_catalog()


def _kind_of(event: Event) -> TopicKind:
    from services.processor.step import OUTPUT_TOPIC

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
) -> ReplaySummary:
    """Rebuilds state and tables from the log and switches over (see the module docstring).

    Args:
        source: where the log is (Kafka or an embedded log file).
        db_url: the live status tables.
        handover: the live processor on Kafka (None in embedded mode).
        projector_id: the projector's name in its offsets table.
        dry_run: stop after the diff; change nothing.
        progress: called with the number of input messages; returns the function to call as
            they are folded.

    Raises:
        ReplayError: when the processor is running, the log or tables cannot be read, or the
            projector wrote during the replay (then nothing was switched).
    """
    if handover is not None:
        handover.check_inactive()
    live_store = _open_live(db_url)
    try:
        before_offsets = live_offsets(live_store)
        before = live_store.snapshot()
    finally:
        live_store.close()
    total = source.snapshot()
    codec = default_codec()
    live = LiveOutputs(_decoded(codec, source.live_outputs()))
    reconciler = Reconciler(live)
    fresh = FreshTables(db_url)
    summary = ReplaySummary(events=total, dry_run=dry_run)
    try:
        step = ProcessorStep(TrainingCore(source.catalog()), codec)
        rebuild = Rebuild(step, source.topics, reconciler, fresh.store)
        tick = progress(total) if progress is not None else None
        done = 0
        for record in source.inputs():
            rebuild.feed(record)
            done += 1
            if tick is not None and done % 200 == 0:
                tick(200)
        if tick is not None:
            tick(done % 200)
        rebuild.finish()
        after = fresh.store.snapshot()
        summary.mice = len(rebuild.states)
        summary.mouse_changes, summary.table_changes = diff_tables(before, after)
        summary.unfixable = reconciler.unfixable
        wanted_offsets = source.projector_offsets()
        if dry_run:
            summary.published = len(reconciler.to_publish)
            summary.corrections = reconciler.corrections
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


def _open_live(db_url: str) -> SqlProjectionStore:
    from services.projector.errors import ProjectorError

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
        try:
            yield codec.decode(record.value)
        except SerializationError:
            continue


def projection_tables() -> list[str]:
    """Names of the tables a replay compares (the projector's fact tables)."""
    return [table.name for table in PROJECTION_TABLES]


__all__ = [
    "EventRejected",
    "FreshTables",
    "JsonlSource",
    "KafkaSource",
    "LiveOutputs",
    "ProcessorHandover",
    "Reconciler",
    "ReplayError",
    "ReplaySummary",
    "changelog_topic",
    "diff_tables",
    "run_replay",
]
