"""Where projections live: the ``ProjectionStore`` port and its SQLAlchemy adapter.

The projector folds events into status tables (see :mod:`shaping.services.projector.tables`). Its
tracking record, the next offset per topic-partition, is written in the same transaction as the
rows of the batch it covers, so a crash between two batches never loses or double-counts one.
Events are also deduplicated on ``event_id``, so one published twice is applied once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, get_args

from sqlalchemy import (
    URL,
    ColumnElement,
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    inspect,
    make_url,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.base import Executable

from shaping.schemas.alerts import (
    AlertAcknowledged,
    AlertEvent,
    AlertRaised,
    AlertResolved,
    AlertUpdated,
)
from shaping.schemas.codec import EventCodec
from shaping.schemas.commands import Command
from shaping.schemas.errors import SerializationError
from shaping.schemas.events import (
    EVENT_TYPES,
    WATER_EARNED_METRIC,
    AssignmentHeld,
    AssignmentIssued,
    CurriculumPublished,
    Event,
    EventRejected,
    HoldReleased,
    HusbandryNote,
    MouseEjected,
    MouseEnrolled,
    MouseMigrated,
    MovementDetected,
    ParametersAdjusted,
    RestrictionEnded,
    RestrictionStarted,
    RigsAllowed,
    SessionEnded,
    SessionStarted,
    StageOverridden,
    StageTransitioned,
    TrainingWarning,
    TrialCompleted,
    WaterGiven,
    WeightRecorded,
)
from shaping.schemas.topics import PROJECTED_KINDS, ROUTES, TopicKind
from shaping.services.projector.errors import ProjectorError
from shaping.services.projector.tables import (
    PROJECTION_TABLES,
    alerts,
    decision_log,
    husbandry_notes,
    husbandry_restrictions,
    husbandry_water,
    husbandry_weights,
    interventions,
    metadata,
    mouse_adjustments,
    mouse_status,
    projected_events,
    projector_offsets,
    rejected_events,
    session_summaries,
    stage_history,
    stage_reached,
    training_warnings,
    welfare_gate,
    welfare_holds,
)

log = logging.getLogger(__name__)

"""Which of Shaping's topics a message came from (independent of the topic prefix)."""

TOPIC_KINDS: tuple[TopicKind, ...] = get_args(TopicKind)

# The event types each topic carries. An event found on another topic (say a StageTransitioned
# published to the events topic by hand) is not the processor's word, so it is not projected.
# The raw events topic is not projected at all: what rigs and operators send may be refused, and
# the tables hold accepted facts only, which the processor republishes on the accepted topic.
_ACCEPTED: dict[str, tuple[type[Event], ...]] = {
    kind: tuple(EVENT_TYPES[name] for name in ROUTES[kind]) for kind in PROJECTED_KINDS
}
"""The event types the projector takes from each kind of topic: the contract's routing table."""

# Trials are far too many to keep one row each; the processor summarises them in the
# StageTransitioned of their session. Movements (reach's resets and spontaneous reaches) are
# more numerous still. Only their offsets are tracked.
# A migration shows in the tables through the AssignmentIssued it causes, and a published
# curriculum through the assignments that name its version.
_NOT_PROJECTED: tuple[type[Event], ...] = (
    TrialCompleted,
    MovementDetected,
    CurriculumPublished,
    MouseMigrated,
)

SnapshotRow = dict[str, Any]

_INTERVENTION_REASONS = ("override", "ejected", "adjusted", "released")
"""Reasons of the assignments the processor issues for a trainer's intervention."""


@dataclass(frozen=True)
class ProjectedMessage:
    """One consumed message, decoded, as the projector applies it.

    Attributes:
        topic: topic the message was read from.
        partition: partition of that topic.
        offset: offset of the message in the partition.
        event: the decoded event, or ``None`` when the bytes could not be decoded (then only the
            offset advances; the processor dead-letters the message with an EventRejected).
        topic_kind: which of Shaping's topics ``topic`` is.
    """

    topic: str
    partition: int
    offset: int
    event: Event | None
    topic_kind: TopicKind

    def __post_init__(self) -> None:
        if self.topic_kind not in TOPIC_KINDS:
            raise ValueError(f"unknown topic kind {self.topic_kind!r}; expected {TOPIC_KINDS}")
        if self.offset < 0 or self.partition < 0:
            raise ValueError(f"negative partition or offset in {self.topic}/{self.partition}")


class ProjectionStore(Protocol):
    """Storage of the projection tables and of the projector's tracking record."""

    def apply_batch(self, consumer: str, messages: Sequence[ProjectedMessage]) -> int:
        """Applies a batch atomically: its rows and its offsets commit together or not at all.

        Messages at offsets below the consumer's committed offset for their topic-partition are
        skipped (already applied), as are events whose ``event_id`` was projected before.

        Args:
            consumer: name of the projector whose offsets advance.
            messages: consumed messages, in offset order within each topic-partition.

        Returns:
            How many events were projected for the first time.

        Raises:
            ProjectorError: when a message cannot be applied; nothing of the batch is kept.
        """
        ...

    def park(self, consumer: str, message: ProjectedMessage, reason: str) -> None:
        """Records a message that cannot be applied in ``rejected_events`` and moves
        ``consumer`` past it, in one transaction."""
        ...

    def committed_offsets(self, consumer: str) -> dict[tuple[str, int], int]:
        """Returns the next offset to read, per ``(topic, partition)``, for ``consumer``."""
        ...

    def reset(self) -> None:
        """Drops and recreates every projection table, the offsets and the dedup record."""
        ...

    def snapshot(self) -> dict[str, list[SnapshotRow]]:
        """Returns every projection table (not the bookkeeping) as JSON-friendly rows.

        Rows are sorted by primary key and timestamps are ISO 8601 UTC text, so snapshots of two
        stores (or two backends) compare equal exactly when their tables hold the same facts.
        """
        ...


def _parameters_json(parameters: Mapping[str, Any]) -> str:
    return json.dumps(dict(parameters), sort_keys=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return value


_Excluded = Any  # the dialect's ``excluded`` pseudo-table: the row that failed to insert
_Where = Callable[[_Excluded], ColumnElement[bool]]


class SqlProjectionStore:
    """A :class:`ProjectionStore` in any SQLite or PostgreSQL database, through SQLAlchemy.

    Tables are created when absent. Upserts use ``INSERT ... ON CONFLICT``, which both backends
    support, so one statement both creates a row and updates only its own column group.

    Attributes:
        engine: the SQLAlchemy engine, for read-only queries by other tools.
    """

    _DIALECTS = ("sqlite", "postgresql")

    def __init__(self, url: str | URL, *, codec: EventCodec, echo: bool = False) -> None:
        """Connects to the database and creates the tables that are missing.

        Args:
            url: a SQLAlchemy URL, e.g. ``sqlite:///shaping.db`` or
                ``postgresql+psycopg://user@host/db``.
            codec: reads the original of a dead-lettered intervention
                (:func:`shaping.services.bootstrap.codec`; the projector's entry point passes
                it, see :func:`shaping.services.bootstrap.projection_store`).
            echo: log every SQL statement (debugging).

        Raises:
            ProjectorError: for a database other than SQLite or PostgreSQL, or one that cannot
                be reached.
        """
        try:
            parsed = make_url(url)
            options: dict[str, Any] = {}
            if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
                # An in-memory database lives in one connection: share it with every thread
                # (a runner thread and a reader), or each would see its own empty database.
                options = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
            self.engine: Engine = create_engine(parsed, echo=echo, **options)
        except (ArgumentError, ImportError) as exc:
            raise ProjectorError(f"cannot open the projection database: {exc}") from exc
        # One handler per projected event type (each writes the column group it owns).
        self._handlers: dict[type[Event], Callable[[Connection, Any], None]] = {
            MouseEnrolled: self._mouse_enrolled,
            SessionStarted: self._session_started,
            SessionEnded: self._session_ended,
            StageTransitioned: self._stage_transitioned,
            AssignmentIssued: self._assignment_issued,
            EventRejected: self._event_rejected,
            StageOverridden: self._intervention,
            MouseEjected: self._intervention,
            ParametersAdjusted: self._intervention,
            RigsAllowed: self._intervention,
            HoldReleased: self._intervention,
            AssignmentHeld: self._assignment_held,
            TrainingWarning: self._training_warning,
            WeightRecorded: self._weight_recorded,
            WaterGiven: self._water_given,
            RestrictionStarted: self._restriction_started,
            RestrictionEnded: self._restriction_ended,
            HusbandryNote: self._husbandry_note,
            AlertRaised: self._alert_state,
            AlertUpdated: self._alert_state,
            AlertResolved: self._alert_state,
            AlertAcknowledged: self._alert_acknowledged,
        }
        self._dialect = self.engine.dialect.name
        self._statements: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Executable] = {}
        self._codec = codec
        if self._dialect not in self._DIALECTS:
            self.engine.dispose()
            raise ProjectorError(
                f"unsupported database {self._dialect!r}: use one of {self._DIALECTS}"
            )
        if self._dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        try:
            metadata.create_all(self.engine)
            missing = _missing_columns(self.engine)
        except SQLAlchemyError as exc:
            self.engine.dispose()
            raise ProjectorError(
                f"cannot create the projection tables: {exc}", transient=_transient(exc)
            ) from exc
        if missing:
            self.engine.dispose()
            raise ProjectorError(
                "the projection tables were made by an older Shaping and lack "
                f"{', '.join(missing)}; rebuild them from the log with `shaping replay` "
                "(or point --db-url at a new database)"
            )

    def close(self) -> None:
        """Closes every pooled connection."""
        self.engine.dispose()

    # -- the port ---------------------------------------------------------------------------

    def apply_batch(self, consumer: str, messages: Sequence[ProjectedMessage]) -> int:
        """Applies a batch in one transaction; see :meth:`ProjectionStore.apply_batch`."""
        if not messages:
            return 0
        applied = 0
        try:
            with self.engine.begin() as conn:
                positions = self._offsets(conn, consumer)
                advanced: dict[tuple[str, int], int] = {}
                for message in messages:
                    tp = (message.topic, message.partition)
                    if message.offset < positions.get(tp, 0):
                        continue  # applied by an earlier batch (or earlier in this one)
                    positions[tp] = advanced[tp] = message.offset + 1
                    try:
                        applied += self._apply(conn, message)
                    except Exception as exc:
                        raise ProjectorError(
                            f"cannot apply {message.topic}/{message.partition}@{message.offset}"
                            f" ({type(message.event).__name__}): {exc}",
                            transient=_transient(exc),
                        ) from exc
                for (topic, partition), next_offset in advanced.items():
                    self._upsert(
                        conn,
                        projector_offsets,
                        {
                            "consumer": consumer,
                            "topic": topic,
                            "partition": partition,
                            "next_offset": next_offset,
                        },
                    )
        except SQLAlchemyError as exc:
            # Raised at commit or connect (the per-message errors are wrapped above): nothing
            # was kept.
            raise ProjectorError(
                f"cannot commit the batch: {exc}", transient=_transient(exc)
            ) from exc
        log.debug(
            "consumer %s applied %d new events of %d messages", consumer, applied, len(messages)
        )
        return applied

    def park(self, consumer: str, message: ProjectedMessage, reason: str) -> None:
        """Records a message the projector failed to apply in ``rejected_events`` (kind
        ``failed``, rejected by the projector) and moves the consumer past it, in one
        transaction: the stream goes on and a person can see what was skipped and why."""
        ev = message.event
        row = {
            "event_id": f"projector:{message.topic}/{message.partition}/{message.offset}",
            "mouse_id": ev.mouse_id if ev is not None else "unknown",
            "occurred_at": ev.occurred_at if ev is not None else datetime.now(UTC),
            "reason": reason[:2000],
            "error_kind": "failed",
            "source_topic": message.topic,
            "source_partition": message.partition,
            "source_offset": message.offset,
            "rejected_by": "projector",
            "original_value_hex": "",
            "original_size": None,
            "original_sha256": None,
        }
        try:
            with self.engine.begin() as conn:
                self._insert_if_absent(conn, rejected_events, row)
                position = self._offsets(conn, consumer).get((message.topic, message.partition))
                if position is None or position <= message.offset:
                    self._upsert(
                        conn,
                        projector_offsets,
                        {
                            "consumer": consumer,
                            "topic": message.topic,
                            "partition": message.partition,
                            "next_offset": message.offset + 1,
                        },
                    )
        except SQLAlchemyError as exc:
            raise ProjectorError(
                f"cannot park {message.topic}/{message.partition}@{message.offset}: {exc}",
                transient=_transient(exc),
            ) from exc

    def committed_offsets(self, consumer: str) -> dict[tuple[str, int], int]:
        """Returns the committed next offsets of ``consumer`` per ``(topic, partition)``."""
        with self.engine.connect() as conn:
            return self._offsets(conn, consumer)

    def reset(self) -> None:
        """Drops and recreates every table of the projector (data, offsets, dedup record)."""
        metadata.drop_all(self.engine)
        metadata.create_all(self.engine)

    def snapshot(self) -> dict[str, list[SnapshotRow]]:
        """Returns every projection table; see :meth:`ProjectionStore.snapshot`."""
        result: dict[str, list[SnapshotRow]] = {}
        with self.engine.connect() as conn:
            for table in PROJECTION_TABLES:
                rows = [
                    {key: _jsonable(value) for key, value in row.items()}
                    for row in conn.execute(select(table)).mappings()
                ]
                # Sorted here, not by ORDER BY: PostgreSQL collates text by locale and SQLite
                # by bytes, and snapshots of both must compare equal.
                keys = [column.name for column in table.primary_key.columns]
                rows.sort(key=lambda row: tuple(row[k] for k in keys))
                result[table.name] = rows
        return result

    # -- applying one message ----------------------------------------------------------------

    def _apply(self, conn: Connection, message: ProjectedMessage) -> int:
        """Projects one message; returns 1 when its event was new, else 0."""
        ev = message.event
        if ev is None or message.topic_kind == "events":
            return 0
        if type(ev) not in _ACCEPTED[message.topic_kind]:
            log.warning(
                "not projecting %s found on the %s topic (%s/%d@%d)",
                ev.event_type,
                message.topic_kind,
                message.topic,
                message.partition,
                message.offset,
            )
            return 0
        if isinstance(ev, _NOT_PROJECTED):
            return 0
        handler = self._handlers.get(type(ev))
        if handler is None:  # pragma: no cover - a test checks every routed type has one
            raise ProjectorError(f"no projection for {ev.event_type}")
        if not self._claim(conn, ev.event_id):
            return 0
        handler(conn, ev)
        return 1

    def _claim(self, conn: Connection, event_id: str) -> bool:
        """Records ``event_id`` as projected; False when it already was."""
        stmt = self._insert_statement(projected_events, ("event_id",))
        # SQLAlchemy keeps an INSERT's rowcount only when asked (psycopg's is lost otherwise).
        result = conn.execute(
            stmt, {"event_id": event_id}, execution_options={"preserve_rowcount": True}
        )
        return result.rowcount == 1

    def _mouse_enrolled(self, conn: Connection, ev: MouseEnrolled) -> None:
        # Enrolments of a mouse share its partition of the accepted topic, so the projector
        # applies them in log order: the last one applied is the newest, whatever its clock.
        self._upsert(
            conn,
            mouse_status,
            {"mouse_id": ev.mouse_id, "enrolled_at": ev.occurred_at, "enrolled_by": ev.enrolled_by},
        )

    def _session_started(self, conn: Connection, ev: SessionStarted) -> None:
        if ev.session_id is None:
            log.warning("SessionStarted %s has no session_id; not summarised", ev.event_id)
            return
        self._upsert(
            conn,
            session_summaries,
            {
                "session_id": ev.session_id,
                "mouse_id": ev.mouse_id,
                "rig_id": ev.rig_id,
                "stage": ev.stage,
                "curriculum_name": ev.curriculum_name,
                "curriculum_version": ev.curriculum_version,
                "assignment_id": ev.assignment_id,
                "parameters_json": _parameters_json(ev.parameters),
                "started_at": ev.occurred_at,
            },
            insert_only=("mouse_id",),
        )

    def _session_ended(self, conn: Connection, ev: SessionEnded) -> None:
        if ev.session_id is None:
            log.warning("SessionEnded %s has no session_id; not summarised", ev.event_id)
            return
        self._upsert(
            conn,
            session_summaries,
            {
                "session_id": ev.session_id,
                "mouse_id": ev.mouse_id,
                "ended_at": ev.occurred_at,
                "end_reason": ev.end_reason,
                "duration_s": ev.duration_s,
                "n_trials_reported": ev.n_trials,
            },
            insert_only=("mouse_id",),
        )
        earned = ev.metrics.get(WATER_EARNED_METRIC)
        if earned is not None and earned > 0:
            # The session's end is the fact of the water its rewards delivered (the processor
            # folds it into the mouse's water the same way): one earned row, keyed by it.
            self._insert_if_absent(
                conn,
                husbandry_water,
                {
                    "event_id": ev.event_id,
                    "mouse_id": ev.mouse_id,
                    "given_at": ev.occurred_at,
                    "ml": earned,
                    "kind": "earned",
                    "water_type": "water",
                    "given_by": ev.rig_id or "",
                    "session_id": ev.session_id,
                    "command_id": None,
                },
            )

    def _stage_transitioned(self, conn: Connection, ev: StageTransitioned) -> None:
        # A decision replaced after a late session (a recompute) stays in the log, marked by
        # superseded_by. Whichever of the two decisions is projected first, the marks end up
        # the same: the replacing one marks the replaced row, and a replaced one projected
        # after its replacement finds it by ``supersedes``.
        superseded_by = conn.execute(
            select(decision_log.c.event_id)
            .where(decision_log.c.supersedes == ev.event_id)
            .order_by(decision_log.c.event_id)
            .limit(1)
        ).scalar()
        evidence = [evaluation.model_dump(mode="json") for evaluation in ev.rule_evaluations]
        self._insert_if_absent(
            conn,
            decision_log,
            {
                "event_id": ev.event_id,
                "mouse_id": ev.mouse_id,
                "session_id": ev.session_id,
                "occurred_at": ev.occurred_at,
                "curriculum_name": ev.curriculum_name,
                "curriculum_version": ev.curriculum_version,
                "from_stage": ev.from_stage,
                "to_stage": ev.to_stage,
                "decision": ev.decision,
                "rule": ev.rule,
                "sessions_at_stage": ev.sessions_at_stage,
                "session_total": ev.session_total,
                "evidence_json": json.dumps(evidence, sort_keys=True),
                "metrics_json": json.dumps(ev.metrics, sort_keys=True),
                "session_date": ev.session_date or ev.occurred_at.date().isoformat(),
                "supersedes": ev.supersedes,
                "superseded_by": superseded_by,
            },
        )
        if ev.decision != "stay":
            self._insert_if_absent(
                conn,
                stage_history,
                {
                    "mouse_id": ev.mouse_id,
                    "entered_at_session": ev.session_total,
                    "event_id": ev.event_id,
                    "stage": ev.to_stage,
                    "from_stage": ev.from_stage,
                    "decision": ev.decision,
                    "rule": ev.rule,
                    "curriculum_name": ev.curriculum_name,
                    "curriculum_version": ev.curriculum_version,
                    "occurred_at": ev.occurred_at,
                    "superseded_by": superseded_by,
                },
            )
        if ev.supersedes is not None:
            for table in (decision_log, stage_history):
                conn.execute(
                    update(table)
                    .where(table.c.event_id == ev.supersedes)
                    .values(superseded_by=ev.event_id)
                )
        # Everything below is derived from the effective decisions (not superseded), so it
        # follows the newest of them whatever order the decisions were projected in.
        self._follow_effective_decisions(conn, ev)

    def _effective_decisions(self, conn: Connection, mouse_id: str) -> list[Any]:
        """The mouse's decisions in force (not superseded), in no particular order."""
        return list(
            conn.execute(
                select(decision_log)
                .where(decision_log.c.mouse_id == mouse_id)
                .where(decision_log.c.superseded_by.is_(None))
            ).mappings()
        )

    def _follow_effective_decisions(self, conn: Connection, ev: StageTransitioned) -> None:
        """Rewrites what derives from the mouse's effective decisions: the decision columns of
        its status and of the session's summary, and its first date per stage."""
        mouse_id, session_id = ev.mouse_id, ev.session_id
        effective = sorted(
            self._effective_decisions(conn, mouse_id),
            key=lambda row: (row["session_total"], row["occurred_at"], row["event_id"]),
        )
        if not effective:
            return
        newest = effective[-1]
        self._upsert(
            conn,
            mouse_status,
            {
                "mouse_id": mouse_id,
                "last_decision": newest["decision"],
                "last_decision_at": newest["occurred_at"],
                "last_session_id": newest["session_id"],
                "sessions_completed": newest["session_total"],
            },
        )
        judged = [row for row in effective if row["session_id"] == session_id]
        if session_id is not None and judged:
            self._session_decision(conn, ev, judged[-1])
        self._stage_reached(conn, mouse_id, effective)

    def _session_decision(
        self, conn: Connection, ev: StageTransitioned, row: Mapping[str, Any]
    ) -> None:
        """The session summary's columns from its decisions: the counts (every decision on a
        session reports the same ones) and the decision in force (``row``)."""
        summary = ev.session_summary
        self._upsert(
            conn,
            session_summaries,
            {
                "session_id": row["session_id"],
                "mouse_id": ev.mouse_id,
                "n_trials": summary.n_trials,
                "n_correct": summary.n_correct,
                "n_incorrect": summary.n_incorrect,
                "n_miss": summary.n_miss,
                "accuracy": summary.accuracy,
                "decision": row["decision"],
                "next_stage": row["to_stage"],
                "decided_at": row["occurred_at"],
            },
            insert_only=("mouse_id",),
        )

    def _stage_reached(
        self, conn: Connection, mouse_id: str, effective: Sequence[Mapping[str, Any]]
    ) -> None:
        """The first date each stage was reached, from the effective decisions: the date of
        the first session judged at it (the stage the mouse started on, an override) or sent
        to it."""
        first: dict[str, dict[str, Any]] = {}
        ordered = sorted(
            effective, key=lambda r: (r["session_date"] or "", r["session_total"], r["event_id"])
        )
        for row in ordered:
            for stage in (row["from_stage"], row["to_stage"]):
                first.setdefault(
                    stage,
                    {
                        "mouse_id": mouse_id,
                        "stage": stage,
                        "first_date": row["session_date"] or row["occurred_at"].date().isoformat(),
                        "session_id": row["session_id"],
                        "decision_id": row["event_id"],
                        "session_total": row["session_total"],
                    },
                )
        conn.execute(delete(stage_reached).where(stage_reached.c.mouse_id == mouse_id))
        if first:
            conn.execute(self._insert(stage_reached).values(list(first.values())))

    def _assignment_issued(self, conn: Connection, ev: AssignmentIssued) -> None:
        # "Current" is the newest by processing order: a mouse's assignments share one partition
        # of the assignments topic, so the last one applied is the newest. Never by occurred_at
        # (a rig's or an operator's clock) or by session number (a migration or an override
        # keeps the session number; a re-enrolment starts it over).
        self._upsert(
            conn,
            mouse_status,
            {
                "mouse_id": ev.mouse_id,
                "curriculum_name": ev.curriculum_name,
                "curriculum_version": ev.curriculum_version,
                "stage": ev.stage,
                "parameters_json": _parameters_json(ev.parameters),
                "sessions_at_stage": ev.sessions_at_stage,
                "next_session_number": ev.session_number,
                "last_reason": ev.reason,
                "assignment_id": ev.event_id,
                "assigned_at": ev.occurred_at,
            },
        )
        self._current_adjustments(conn, ev)
        self._gate_from_assignment(conn, ev)
        if ev.reason in _INTERVENTION_REASONS and ev.causation_id is not None:
            self._intervention_honoured(conn, ev)
        # Stage changes come from StageTransitioned (the decisions topic is never compacted);
        # only the stage a mouse starts on has no decision behind it.
        if ev.reason == "enrolled":
            self._insert_if_absent(
                conn,
                stage_history,
                {
                    "mouse_id": ev.mouse_id,
                    # session_number is 1-based: the sessions finished before this one.
                    "entered_at_session": ev.session_number - 1,
                    "event_id": ev.event_id,
                    "stage": ev.stage,
                    "from_stage": None,
                    "decision": "enrolled",
                    "rule": None,
                    "curriculum_name": ev.curriculum_name,
                    "curriculum_version": ev.curriculum_version,
                    "occurred_at": ev.occurred_at,
                },
            )

    def _gate_from_assignment(self, conn: Connection, ev: AssignmentIssued) -> None:
        """The welfare gate row of a mouse as its newest assignment says it (only for a mouse
        that was ever restricted: an assignment without welfare ends its restriction's row)."""
        welfare = ev.welfare
        if welfare is None:
            conn.execute(
                update(welfare_gate)
                .where(welfare_gate.c.mouse_id == ev.mouse_id)
                .values(
                    _storable(
                        {
                            "restricted": False,
                            "cleared_on": None,
                            "held": False,
                            "hold_reason": None,
                            "assignment_id": ev.event_id,
                            "updated_at": ev.occurred_at,
                        }
                    )
                )
            )
            return
        row: dict[str, Any] = {
            "mouse_id": ev.mouse_id,
            "restricted": welfare.restricted,
            "cleared_on": welfare.cleared_on,
            "held": welfare.held_reason is not None,
            "hold_reason": welfare.held_reason,
            "status": welfare.status,
            "percent_of_expected": welfare.percent_of_expected,
            "water_required_ml": welfare.water_required_ml_today,
            "water_given_ml": welfare.water_given_ml_today,
            "water_still_due_ml": welfare.water_still_due_ml,
            "supplement_ml": welfare.supplement_ml,
            "supplement_exceeds_cap": welfare.supplement_exceeds_cap,
            "assignment_id": ev.event_id,
            "updated_at": ev.occurred_at,
        }
        if welfare.held_reason is None:
            row.update(held_at=None, hold_event_id=None)
        self._upsert(conn, welfare_gate, row)

    def _assignment_held(self, conn: Connection, ev: AssignmentHeld) -> None:
        welfare = ev.welfare
        self._insert_if_absent(
            conn,
            welfare_holds,
            {
                "event_id": ev.event_id,
                "mouse_id": ev.mouse_id,
                "held_at": ev.held_at,
                "session_number": ev.session_number,
                "reason": ev.reason,
                "status": welfare.status,
                "percent_of_expected": welfare.percent_of_expected,
                "weight_event_id": ev.causation_id,
            },
        )
        self._upsert(
            conn,
            welfare_gate,
            {
                "mouse_id": ev.mouse_id,
                "restricted": True,
                "cleared_on": None,
                "held": True,
                "hold_reason": ev.reason,
                "held_at": ev.held_at,
                "hold_event_id": ev.event_id,
                "status": welfare.status,
                "percent_of_expected": welfare.percent_of_expected,
                "water_required_ml": welfare.water_required_ml_today,
                "water_given_ml": welfare.water_given_ml_today,
                "water_still_due_ml": welfare.water_still_due_ml,
                "supplement_ml": welfare.supplement_ml,
                "supplement_exceeds_cap": welfare.supplement_exceeds_cap,
                "updated_at": ev.occurred_at,
            },
        )

    def _event_rejected(self, conn: Connection, ev: EventRejected) -> None:
        self._insert_if_absent(
            conn,
            rejected_events,
            {
                "event_id": ev.event_id,
                "mouse_id": ev.mouse_id,
                "occurred_at": ev.occurred_at,
                "reason": ev.reason,
                "error_kind": ev.error_kind,
                "source_topic": ev.source_topic,
                "source_partition": ev.source_partition,
                "source_offset": ev.source_offset,
                "rejected_by": ev.rejected_by,
                "original_value_hex": ev.original_value.hex(),
                "original_size": ev.original_size,
                "original_sha256": ev.original_sha256,
            },
        )
        if ev.causation_id is not None:
            self._intervention_refused(conn, ev)

    # -- interventions and warnings ------------------------------------------------------------
    # An intervention's row has three column groups, each written by one event type: the
    # trainer's event (events topic), the assignment that honoured it (assignments topic,
    # causation_id = the event) or the dead letter that refused it (dead-letter topic). Whichever
    # arrives first creates the row, so the topics may interleave in any order.

    def _intervention(
        self,
        conn: Connection,
        ev: StageOverridden | MouseEjected | ParametersAdjusted | RigsAllowed | HoldReleased,
        refusal: EventRejected | None = None,
    ) -> None:
        """Writes the request's columns: from the accepted request, always (it owns the row,
        and clears any refusal of a message that used its id); from a refused one, only while
        no accepted request has the id, and only the first refusal, so a corrupted or reused
        copy of an accepted request never rewrites its audit row, whatever order the topics
        arrive in."""
        row: dict[str, Any] = {
            "event_id": ev.event_id,
            "mouse_id": ev.mouse_id,
            "requested_at": ev.occurred_at,
            "reason": ev.reason,
            "command_id": ev.causation_id,  # the command it answers (a refused one's too)
        }
        if isinstance(ev, StageOverridden):
            row.update(
                kind="override",
                requested_by=ev.overridden_by,
                from_stage=ev.from_stage,
                to_stage=ev.to_stage,
            )
        elif isinstance(ev, MouseEjected):
            row.update(kind="eject", requested_by=ev.ejected_by)
        elif isinstance(ev, HoldReleased):
            row.update(kind="release", requested_by=ev.released_by)
            if refusal is None:  # accepted is honoured (the assignment it re-issues follows)
                row.update(honoured_at=ev.occurred_at)
        elif isinstance(ev, RigsAllowed):
            row.update(
                kind="allow-rigs", requested_by=ev.allowed_by, rig_ids_json=json.dumps(ev.rig_ids)
            )
            if refusal is None:  # no assignment follows: accepted is honoured
                row.update(honoured_at=ev.occurred_at)
        else:
            row.update(
                kind="adjust",
                requested_by=ev.adjusted_by,
                adjustments_json=_parameters_json(ev.adjustments),
            )
        if refusal is None:
            row.update(accepted=True, refused_reason=None, refused_at=None)
            self._upsert(conn, interventions, row, insert_only=("mouse_id",))
            return
        row.update(refused_reason=refusal.reason, refused_at=refusal.occurred_at)
        self._upsert(
            conn,
            interventions,
            row,
            insert_only=("mouse_id",),
            where=lambda _new: (
                (interventions.c.accepted.is_not(True)) & interventions.c.refused_reason.is_(None)
            ),
        )

    def _current_adjustments(self, conn: Connection, ev: AssignmentIssued) -> None:
        # The newest assignment by processing order, as for mouse_status.
        self._upsert(
            conn,
            mouse_adjustments,
            {
                "mouse_id": ev.mouse_id,
                "adjustments_json": _parameters_json(ev.adjustments),
                "stage": ev.stage,
                "assignment_id": ev.event_id,
                "session_number": ev.session_number,
                "assigned_at": ev.occurred_at,
            },
        )

    def _intervention_honoured(self, conn: Connection, ev: AssignmentIssued) -> None:
        self._upsert(
            conn,
            interventions,
            {
                "event_id": ev.causation_id,
                "mouse_id": ev.mouse_id,
                "assignment_id": ev.event_id,
                "assigned_stage": ev.stage,
                "honoured_at": ev.occurred_at,
            },
            insert_only=("mouse_id",),
        )

    def _intervention_refused(self, conn: Connection, ev: EventRejected) -> None:
        try:
            message = self._codec.decode_message(ev.original_value)
        except SerializationError:
            return
        # A refused command (OverrideStage, ...) is audited as the event it asked for; one that
        # cannot even be answered (say a weight of -3 g) asked for nothing to audit.
        try:
            original = message.answer() if isinstance(message, Command) else message
        except ValueError:
            return
        if not isinstance(
            original,
            StageOverridden | MouseEjected | ParametersAdjusted | RigsAllowed | HoldReleased,
        ):
            return
        # The processor refused the request, so it never reaches the accepted topic: its audit
        # row (who asked for what, and why) comes from the dead letter, marked refused.
        self._intervention(conn, original, refusal=ev)

    def _training_warning(self, conn: Connection, ev: TrainingWarning) -> None:
        evidence = [evaluation.model_dump(mode="json") for evaluation in ev.evidence]
        self._insert_if_absent(
            conn,
            training_warnings,
            {
                "event_id": ev.event_id,
                "mouse_id": ev.mouse_id,
                "session_id": ev.session_id,
                "occurred_at": ev.occurred_at,
                "kind": ev.kind,
                "message": ev.message,
                "stage": ev.stage,
                "curriculum_name": ev.curriculum_name,
                "curriculum_version": ev.curriculum_version,
                "decision_id": ev.causation_id,
                "evidence_json": json.dumps(evidence, sort_keys=True),
            },
        )

    # -- husbandry -----------------------------------------------------------------------------

    def _weight_recorded(self, conn: Connection, ev: WeightRecorded) -> None:
        self._insert_if_absent(
            conn,
            husbandry_weights,
            {
                "event_id": ev.event_id,
                "mouse_id": ev.mouse_id,
                "weighed_at": ev.occurred_at,
                "grams": ev.grams,
                "scale_id": ev.scale_id,
                "recorded_by": ev.recorded_by,
                "confirmed": ev.confirmed,
                "command_id": ev.causation_id,
            },
        )

    def _water_given(self, conn: Connection, ev: WaterGiven) -> None:
        self._insert_if_absent(
            conn,
            husbandry_water,
            {
                "event_id": ev.event_id,
                "mouse_id": ev.mouse_id,
                "given_at": ev.occurred_at,
                "ml": ev.ml,
                "kind": ev.kind,
                "water_type": ev.water_type,
                "given_by": ev.given_by,
                "session_id": ev.session_id,
                "command_id": ev.causation_id,
            },
        )

    def _restriction_started(self, conn: Connection, ev: RestrictionStarted) -> None:
        self._insert_if_absent(
            conn,
            husbandry_restrictions,
            {
                "event_id": ev.event_id,
                "mouse_id": ev.mouse_id,
                "started_at": ev.occurred_at,
                "reference_grams": ev.reference_grams,
                "reference_method": ev.reference_method,
                "implant_grams": ev.implant_grams,
                "birth_date": ev.birth_date,
                "sex": ev.sex,
                "started_by": ev.started_by,
                "command_id": ev.causation_id,
            },
        )

    def _restriction_ended(self, conn: Connection, ev: RestrictionEnded) -> None:
        # The processor accepts an end only while a restriction is in force, and a mouse's
        # facts are applied in log order: the open episode is the one it ends.
        conn.execute(
            update(husbandry_restrictions)
            .where(husbandry_restrictions.c.mouse_id == ev.mouse_id)
            .where(husbandry_restrictions.c.ended_at.is_(None))
            .values(
                _storable(
                    {
                        "ended_at": ev.occurred_at,
                        "ended_by": ev.ended_by,
                        "end_reason": ev.reason,
                        "end_event_id": ev.event_id,
                    }
                )
            )
        )

    def _husbandry_note(self, conn: Connection, ev: HusbandryNote) -> None:
        self._insert_if_absent(
            conn,
            husbandry_notes,
            {
                "event_id": ev.event_id,
                "mouse_id": ev.mouse_id,
                "noted_at": ev.occurred_at,
                "text": ev.text,
                "noted_by": ev.noted_by,
            },
        )

    # -- alerts --------------------------------------------------------------------------------
    # One row per alert. Its state columns follow the newest event by (episode, revision): an
    # older one (redelivered, or applied late) changes nothing, a raise of a later episode
    # reopens the row and clears the previous episode's acknowledgement. An acknowledgement
    # writes its own columns, for the episode it names only.

    @staticmethod
    def _alert_row(ev: AlertEvent) -> dict[str, Any]:
        return {
            "alert_id": ev.alert_id,
            "rule": ev.rule,
            "severity": ev.severity,
            "scope": ev.scope,
            "scope_key": ev.scope_key,
            "mouse_id": ev.mouse,
            "lab": ev.lab,
            "message": ev.message,
            "evidence_json": json.dumps(ev.evidence, sort_keys=True),
            "raised_at": ev.raised_at,
            "updated_at": ev.occurred_at,
            "resolved_at": None,
            "resolution": None,
            "acknowledged_by": None,
            "acknowledged_at": None,
            "episode": ev.episode,
            "revision": ev.revision,
        }

    def _alert_state(
        self, conn: Connection, ev: AlertRaised | AlertUpdated | AlertResolved
    ) -> None:
        row = self._alert_row(ev)
        # What each event owns once the row exists: a raise or an update the alert's values, a
        # resolution when and why it closed (the alert's message stays the rule's).
        owned = ["updated_at", "resolved_at", "resolution", "episode", "revision", "raised_at"]
        if isinstance(ev, AlertResolved):
            why = f"{ev.resolved_by}: {ev.message}" if ev.resolved_by else ev.message
            row.update(resolved_at=ev.occurred_at, resolution=why)
        else:
            owned += ["rule", "severity", "scope", "scope_key", "mouse_id", "lab", "message"]
            owned += ["evidence_json"]
        row = _storable(row)
        stmt = self._insert(alerts).values(row)
        new = stmt.excluded
        later_episode = new.episode > alerts.c.episode
        updates: dict[str, Any] = {name: new[name] for name in owned}
        for name in ("acknowledged_by", "acknowledged_at"):
            updates[name] = case((later_episode, None), else_=alerts.c[name])
        newer = later_episode | and_(
            new.episode == alerts.c.episode, new.revision > alerts.c.revision
        )
        conn.execute(
            stmt.on_conflict_do_update(index_elements=["alert_id"], set_=updates, where=newer)
        )

    def _alert_acknowledged(self, conn: Connection, ev: AlertAcknowledged) -> None:
        row = self._alert_row(ev)
        row.update(acknowledged_by=ev.acknowledged_by, acknowledged_at=ev.occurred_at)
        # The row exists unless the alert's own events are not on the log (the acknowledgement
        # carries the alert's values, so it can stand for them).
        self._insert_if_absent(conn, alerts, row)
        conn.execute(
            update(alerts)
            .where(alerts.c.alert_id == ev.alert_id)
            .where(alerts.c.episode == ev.episode)
            .values(
                _storable(
                    {"acknowledged_by": ev.acknowledged_by, "acknowledged_at": ev.occurred_at}
                )
            )
        )

    # -- SQL helpers ---------------------------------------------------------------------------

    def _insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        if self._dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    def _insert_if_absent(self, conn: Connection, table: Table, row: dict[str, Any]) -> None:
        row = _storable(row)
        conn.execute(self._insert_statement(table, tuple(row)), row)

    def _insert_statement(self, table: Table, columns: tuple[str, ...]) -> Executable:
        """The insert of these columns that does nothing on a conflict, built once (as
        :meth:`_upsert_statement`)."""
        key = (table.name, columns, ("-nothing-",))
        cached = self._statements.get(key)
        if cached is None:
            cached = self._statements[key] = (
                self._insert(table)
                .values({name: bindparam(name, type_=table.c[name].type) for name in columns})
                .on_conflict_do_nothing()
            )
        return cached

    def _upsert(
        self,
        conn: Connection,
        table: Table,
        row: dict[str, Any],
        *,
        where: _Where | None = None,
        insert_only: Sequence[str] = (),
    ) -> None:
        """Inserts ``row``, or updates the columns it names (bar the key) on the existing row.

        Args:
            conn: connection inside the batch's transaction.
            table: the table to write.
            row: the key columns and the column group one event type owns.
            where: condition on the existing row (``table.c``) and the new one (its argument)
                for the update to happen, e.g. "the new assignment is newer".
            insert_only: columns set when the row is created but never updated (facts that
                every writer of the row agrees on, like the mouse of a session).
        """
        row = _storable(row)
        if where is None:
            conn.execute(self._upsert_statement(table, tuple(row), tuple(insert_only)), row)
            return
        keys = [column.name for column in table.primary_key.columns]
        stmt = self._insert(table).values(row)
        updates = {
            name: stmt.excluded[name]
            for name in row
            if name not in keys and name not in insert_only
        }
        condition = where(stmt.excluded)
        conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=updates, where=condition))

    def _upsert_statement(
        self, table: Table, columns: tuple[str, ...], insert_only: tuple[str, ...]
    ) -> Executable:
        """The upsert of these columns, built once with a parameter per column and executed
        with each row's values: building the statement with the values in it cost about
        270 µs a row (SQLAlchemy compiled it again each time), executing the built one 20."""
        cached = self._statements.get((table.name, columns, insert_only))
        if cached is not None:
            return cached
        keys = [column.name for column in table.primary_key.columns]
        stmt = self._insert(table).values(
            {name: bindparam(name, type_=table.c[name].type) for name in columns}
        )
        updates = {
            name: stmt.excluded[name]
            for name in columns
            if name not in keys and name not in insert_only
        }
        built = stmt.on_conflict_do_update(index_elements=keys, set_=updates)
        self._statements[(table.name, columns, insert_only)] = built
        return built

    @staticmethod
    def _offsets(conn: Connection, consumer: str) -> dict[tuple[str, int], int]:
        rows = conn.execute(
            select(
                projector_offsets.c.topic,
                projector_offsets.c.partition,
                projector_offsets.c.next_offset,
            ).where(projector_offsets.c.consumer == consumer)
        )
        return {(topic, partition): next_offset for topic, partition, next_offset in rows}


def _missing_columns(engine: Engine) -> list[str]:
    """``table.column`` of every column this version's tables have and the database's lack."""
    inspector = inspect(engine)
    missing = []
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        missing += [f"{table.name}.{c.name}" for c in table.columns if c.name not in present]
    return missing


def _transient(exc: BaseException) -> bool:
    """Whether a database error says the database is out of reach rather than that a row is
    wrong: worth waiting for, never a reason to skip a message."""
    return isinstance(exc, OperationalError | InterfaceError | DisconnectionError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


def _storable(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with text every backend can hold: PostgreSQL's text cannot contain NUL, so a
    NUL in free text (a reason, a note) is stored as U+FFFD instead of failing the batch."""
    return {
        key: value.replace("\x00", "\ufffd") if isinstance(value, str) else value
        for key, value in row.items()
    }


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    """Prepares a new SQLite connection for the projector."""
    # Python's sqlite3 module opens a transaction only before the first write, so the offsets a
    # batch reads would not be in the batch's transaction; turning its own handling off lets
    # _sqlite_begin start a real one (SQLAlchemy's documented recipe).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers (the operator CLI) query a file database while the projector writes.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    """Starts SQLite transactions explicitly (see :func:`_sqlite_connect`)."""
    conn.exec_driver_sql("BEGIN")
