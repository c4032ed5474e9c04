"""The rig's durable local store (SQLite): the outbox, the assignment cache, calibrations.

* **Outbox.** Every event a session produces is appended here, in one committed transaction
  (synchronous=FULL), before anything else happens; the drainer (:mod:`shaping.rig.link.drain`)
  sends the rows in order and marks them sent with their partition and offset. The outbox is also
  the rig's journal: an interrupted session is resumed from it. Appending an event whose id is
  already stored is a no-op, so re-recording after a crash never duplicates.
* **Partition marks.** For every partition the drainer ever sent to, the offset from which a
  record of this rig not yet marked sent could be found. After a crash or a failed send the
  drainer reads the partition from there to find what already arrived (see
  :meth:`OutboxDrainer.reconcile <rig.link.drain.OutboxDrainer.reconcile>`).
* **Assignment cache and decisions.** The latest AssignmentIssued per mouse and the
  StageTransitioned per session, as read from Kafka, so a session can start offline; and per
  mouse the latest assignment that followed a decision, with the evidence it carries (a
  trainer's later override or adjustment replaces the cached assignment, not the evidence).
* **Calibrations.** Every valve calibration, newest last (``calibrations``: what rewards use),
  and the history of every calibration measured (``calibration_history``): when, who, on which
  rig, the measurements, the slope, the warnings, and whether it was saved, declined or
  refused. Rows of ``calibrations`` written before the history existed stay readable.
* **Assignment history.** Every assignment received for each mouse (its newest
  :data:`HISTORY_PER_MOUSE`), whether or not it replaced the cached one, so a rig whose
  current assignment lies outside its safety limits can run the newest one that does
  (``safety.on_violation = "last_safe"``; :mod:`rig.safety`). A store of an older release gets
  the table when it is opened, filled from its cache.
* **What the rig could not read, what it ran stale, what it refused as unsafe.** Every record
  of the rig's mice on the assignments and decisions topics that this rig's schemas cannot
  decode (a newer release wrote it), until a readable record of the mouse follows it; every
  session start where the rig knew its assignment was stale (run anyway, or refused); and
  every assignment outside the rig's safety limits (refused, or replaced by the last safe
  one). The rig's metrics count them.
* **Clock skew.** The rig's clock minus the broker's, measured by the drainer on every
  acknowledged send to a topic with ``LogAppendTime`` (the latest value and a smoothed one).

Several processes may open the store (``rig run`` and ``rig status``); SQLite's WAL mode and a
busy timeout let them share it.

**Format and versions.** The store's format is numbered by SQLite's ``PRAGMA user_version``
and changed only by the numbered steps of :data:`MIGRATIONS`, oldest first. Opening a store
applies every step above its number, each in its own transaction that also sets the new
number, so a store is always at exactly one version and a failed step leaves the previous one.
Version 1 is the format the releases before versioning wrote (and left at ``user_version``
0): a file at 0 that holds all of its tables and indexes is recognised as version 1 and only
stamped, nothing recreated; one that holds some of them (a still older release) gets the
missing ones, as those releases did when opened; an empty file gets every step. A store whose
version is higher than this code knows was written by a newer Shaping: it is refused with
:class:`StoreVersionError` before anything is written to it. Steps are never edited or
renumbered once released; a change to the format is a new step at the end (additive where it
can be, so that an older release that ignores it still works on the store, and written to be
harmless when its objects exist already: ``IF NOT EXISTS``).
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path

from shaping.rig.config import ValveCalibration
from shaping.rig.errors import RigError
from shaping.rig.safety import UNSAFE_ACTIONS
from shaping.schemas.codec import EventCodec, encode_key
from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    SessionEnded,
    SessionStarted,
    StageTransitioned,
)

log = logging.getLogger(__name__)

# Format version 1, exactly as the releases before versioning created it on every open (hence
# IF NOT EXISTS throughout, and the history filled from the cache). Never edit it: change the
# format with a new step of MIGRATIONS.
_V1 = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    mouse_id TEXT NOT NULL,
    session_id TEXT,
    occurred_at TEXT NOT NULL,
    topic TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    sent_partition INTEGER,
    sent_offset INTEGER,
    sent_at TEXT
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_session ON outbox (session_id, seq);
CREATE TABLE IF NOT EXISTS partition_marks (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS assignments (
    mouse_id TEXT PRIMARY KEY,
    session_number INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    value BLOB NOT NULL,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS evidence (
    mouse_id TEXT PRIMARY KEY,
    session_number INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    value BLOB NOT NULL,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    mouse_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    value BLOB NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (mouse_id, session_id)
);
CREATE TABLE IF NOT EXISTS read_positions (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS undecodable_records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    mouse_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    record_offset INTEGER NOT NULL,
    error TEXT NOT NULL,
    received_at TEXT NOT NULL,
    resolved_by TEXT,
    UNIQUE (topic, partition, record_offset)
);
CREATE TABLE IF NOT EXISTS stale_runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    mouse_id TEXT NOT NULL,
    assignment_id TEXT,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    waited_s REAL NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS assignment_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    mouse_id TEXT NOT NULL,
    session_number INTEGER NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    value BLOB NOT NULL,
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS assignment_history_mouse
    ON assignment_history (mouse_id, session_number, seq);
INSERT OR IGNORE INTO assignment_history (mouse_id, session_number, event_id, value, received_at)
    SELECT mouse_id, session_number, event_id, value, received_at FROM assignments
    UNION ALL
    SELECT mouse_id, session_number, event_id, value, received_at FROM evidence;
CREATE TABLE IF NOT EXISTS unsafe_assignments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    mouse_id TEXT NOT NULL,
    assignment_id TEXT NOT NULL,
    action TEXT NOT NULL,
    violations TEXT NOT NULL,
    ran_assignment_id TEXT,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS clock_skew (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    latest_s REAL NOT NULL,
    smoothed_s REAL NOT NULL,
    uncertainty_s REAL NOT NULL,
    samples INTEGER NOT NULL,
    measured_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS calibrations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    valve TEXT NOT NULL,
    ml_per_ms REAL NOT NULL,
    calibrated_at TEXT NOT NULL,
    points TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS calibration_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    valve TEXT NOT NULL,
    calibrated_at TEXT NOT NULL,
    calibrated_by TEXT NOT NULL,
    rig_id TEXT NOT NULL,
    ml_per_ms REAL NOT NULL,
    points TEXT NOT NULL,
    warnings TEXT NOT NULL,
    outcome TEXT NOT NULL,
    calibration_id INTEGER
);
"""

_V1_OBJECTS = frozenset(re.findall(r"CREATE (?:TABLE|INDEX) IF NOT EXISTS (\w+)", _V1))
"""The tables and indexes of version 1: a store at user_version 0 holding all of them was
written by a release before versioning, in today's version 1."""


@dataclass(frozen=True)
class Migration:
    """One step of the store's format, from version ``number - 1`` to ``number``.

    Attributes:
        number: the version the store has after it.
        description: what it changes, in words (logged when it runs).
        apply: SQL statements, or a function given the connection; it runs inside the step's
            transaction and must not commit.
    """

    number: int
    description: str
    apply: str | Callable[[sqlite3.Connection], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the store of the releases before versioning", _V1),
    Migration(
        2,
        "index the outbox by mouse and event type: the journal's look-ups at every session "
        "start (open_session, last_session, mouse_events) no longer scan every event recorded",
        "CREATE INDEX IF NOT EXISTS outbox_mouse ON outbox (mouse_id, event_type)",
    ),
    Migration(
        3,
        "keep the sessions the rig refused because the mouse was held or not cleared by the "
        "welfare gate (shaping_rig_held_refusals_total)",
        """
CREATE TABLE IF NOT EXISTS held_refusals (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    mouse_id TEXT NOT NULL,
    assignment_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    at TEXT NOT NULL
)""",
    ),
)
"""The store's format, step by step; the last number is the version this code writes."""

STORE_VERSION = MIGRATIONS[-1].number
"""The store format version this code reads and writes."""


class StoreVersionError(RigError):
    """The store was written by a newer Shaping (its format version is unknown here)."""


def _shaping_version() -> str:
    try:
        return package_version("shaping")
    except PackageNotFoundError:
        return "unknown version"


def _user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _refuse_newer(found: int, latest: int, path: Path | str) -> None:
    if found > latest:
        raise StoreVersionError(
            f"the rig's store {path} has format version {found}: it was written by a newer "
            f"Shaping. This Shaping ({_shaping_version()}) reads store formats up to {latest}. "
            "Install the Shaping release that wrote it, or a newer one, on this rig. The store "
            "was left untouched (its unsent events are still in it)."
        )


def _statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, one by one (executescript would commit first)."""
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            if buffer.strip(" \t\r\n;"):
                yield buffer
            buffer = ""
    if buffer.strip(" \t\r\n;"):
        raise ValueError(f"an incomplete SQL statement in a store migration: {buffer!r}")


def migrate(
    conn: sqlite3.Connection,
    migrations: Sequence[Migration] = MIGRATIONS,
    path: Path | str = "",
) -> int:
    """Brings a store to the newest version of ``migrations``; returns the version.

    Each step runs in its own ``BEGIN IMMEDIATE`` transaction, which reads the version again,
    so two processes opening an old store at once apply every step once.

    Args:
        conn: a connection to the store in autocommit mode (``isolation_level=None``).
        migrations: the format's steps, oldest first, numbered 1, 2, ... (the default: the
            format this code writes).
        path: the store's file, for messages.

    Raises:
        StoreVersionError: the store's version is higher than the last step's (nothing is
            written to it).
    """
    if [m.number for m in migrations] != list(range(1, len(migrations) + 1)):
        raise ValueError("store migrations must be numbered 1, 2, 3, ... in order")
    latest = len(migrations)
    found = _user_version(conn)
    _refuse_newer(found, latest, path)
    while found < latest:
        conn.execute("BEGIN IMMEDIATE")
        try:
            found = _user_version(conn)  # another process may have migrated meanwhile
            _refuse_newer(found, latest, path)
            if found == latest:
                conn.execute("COMMIT")
                break
            step = migrations[found]
            if found == 0 and _holds_v1(conn):
                log.info("rig store %s: a store of a release before versioning, version 1", path)
            else:
                log.info("rig store %s: version %d: %s", path, step.number, step.description)
                if isinstance(step.apply, str):
                    for statement in _statements(step.apply):
                        conn.execute(statement)
                else:
                    step.apply(conn)
            conn.execute(f"PRAGMA user_version = {step.number:d}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        found = step.number
    return found


def _holds_v1(conn: sqlite3.Connection) -> bool:
    names = {
        row[0]
        for row in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index')")
    }
    return names >= _V1_OBJECTS


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class OutboxRow:
    """One stored event waiting to be sent (or sent)."""

    seq: int
    event_id: str
    event_type: str
    mouse_id: str
    session_id: str | None
    topic: str
    key: bytes
    value: bytes


@dataclass(frozen=True)
class Sent:
    """Where the broker put a row."""

    seq: int
    partition: int
    offset: int


CALIBRATION_OUTCOMES = ("saved", "declined", "refused")
"""What became of a calibration measured (``CalibrationRecord.outcome``)."""


@dataclass(frozen=True)
class CalibrationRecord:
    """A calibration of the history.

    Attributes:
        valve: ``left`` or ``right``.
        calibrated_at: when (UTC).
        by: who calibrated (None for calibrations older than the history).
        rig_id: the rig (None for calibrations older than the history).
        ml_per_ms: the fitted slope.
        points: the measurements (``open_ms``, ``pulses``, ``grams``).
        warnings: what the checks found (refusal reasons for a refused one).
        outcome: ``saved``, ``declined`` (the person said no) or ``refused`` (impossible).
        calibration_id: its row in ``calibrations`` when saved.
        in_force: whether rewards use it now (the valve's newest saved calibration).
    """

    valve: str
    calibrated_at: datetime
    by: str | None
    rig_id: str | None
    ml_per_ms: float
    points: list[dict[str, float]]
    warnings: tuple[str, ...]
    outcome: str
    calibration_id: int | None = None
    in_force: bool = False


@dataclass(frozen=True)
class CachedAssignment:
    """An assignment from the cache and when the rig received it."""

    assignment: AssignmentIssued
    received_at: datetime


UNDECODABLE_KINDS = ("assignments", "decisions")
"""The topics whose unreadable records the store keeps (``UndecodableRecord.kind``)."""

STALE_ACTIONS = ("ran_cached", "refused")
"""What ``rig run`` did with a stale assignment (``StaleRun.action``)."""

HISTORY_PER_MOUSE = 50
"""How many of a mouse's assignments the history keeps (the newest)."""

SKEW_SMOOTHING = 0.2
"""Weight of a new clock skew sample in the smoothed value (exponential moving average)."""


@dataclass(frozen=True)
class UndecodableRecord:
    """A record of one of the rig's mice that this rig's schemas cannot decode.

    Attributes:
        kind: ``assignments`` or ``decisions`` (the topic it was read from).
        mouse_id: the mouse (the record's key).
        topic, partition, offset: where it is.
        error: why it does not decode (an unknown writer schema fingerprint: a newer release
            wrote it).
        received_at: when the rig read it (UTC).
    """

    kind: str
    mouse_id: str
    topic: str
    partition: int
    offset: int
    error: str
    received_at: datetime

    def describe(self) -> str:
        """Where the record is and why the rig cannot read it."""
        return f"{self.topic}[{self.partition}]@{self.offset}: {self.error}"


@dataclass(frozen=True)
class StaleRun:
    """A session start where the rig knew its assignment was stale."""

    mouse_id: str
    assignment_id: str | None
    action: str
    reason: str
    waited_s: float
    at: datetime


@dataclass(frozen=True)
class UnsafeAssignment:
    """An assignment the rig held outside its safety limits, and what it did.

    Attributes:
        mouse_id: the mouse.
        assignment_id: the unsafe assignment.
        action: ``refused`` (nothing ran) or ``ran_last_safe``.
        violations: how it broke the limits, in words.
        ran_assignment_id: the last safe assignment run instead (None: nothing ran).
        at: when (UTC).
    """

    mouse_id: str
    assignment_id: str
    action: str
    violations: str
    ran_assignment_id: str | None
    at: datetime


@dataclass(frozen=True)
class ClockSkew:
    """The rig's clock minus the broker's (seconds; positive: the rig's clock runs ahead).

    Attributes:
        latest_s: the last measurement.
        smoothed_s: the exponential moving average of the measurements.
        uncertainty_s: half the round trip of the last measurement (the broker's timestamp
            lies within it).
        samples: how many measurements went into ``smoothed_s``.
        measured_at: when the last one was taken (UTC, the rig's clock).
    """

    latest_s: float
    smoothed_s: float
    uncertainty_s: float
    samples: int
    measured_at: datetime


@dataclass(frozen=True)
class OpenSession:
    """A session the journal shows as started but not ended (the rig stopped mid-session)."""

    started: SessionStarted
    events: list[Event]


class RigStore:
    """The rig's SQLite store. Each thread gets its own connection.

    Args:
        path: the database file (created with its folder if missing); an existing store is
            brought to the current format (see the module's *Format and versions*).
        codec: the event codec (built once by the rig's composition point,
            :mod:`shaping.rig.bootstrap`).
        migrations: the format's steps (the default, :data:`MIGRATIONS`, is the only one the
            rig uses).

    Raises:
        StoreVersionError: a newer Shaping wrote the store; it is left untouched.
        RigError: the store cannot be opened or brought to the current format.
    """

    def __init__(
        self,
        path: Path | str,
        codec: EventCodec,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        self.path = Path(path)
        self.codec = codec
        self._local = threading.local()
        self._version = len(migrations)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            migrate(self._conn(), migrations, self.path)
        except (OSError, sqlite3.Error) as exc:
            raise RigError(f"cannot open the rig's store {self.path}: {exc}") from exc

    # -- connections --------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:  # before anything that could write to a store of a newer Shaping
                _refuse_newer(_user_version(conn), self._version, self.path)
            except BaseException:
                conn.close()
                raise
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before append() returns, so a power cut loses nothing
            # the task recorded.
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Closes this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- outbox -------------------------------------------------------------------------------

    def append(self, event: Event, topic: str) -> bool:
        """Stores an event for sending; returns False when its id was already stored."""
        value = self.codec.encode(event)
        with self._tx() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO outbox (event_id, event_type, mouse_id, session_id, "
                "occurred_at, topic, key, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.event_id,
                    event.event_type,
                    event.mouse_id,
                    event.session_id,
                    event.occurred_at.isoformat(),
                    topic,
                    encode_key(event.mouse_id),
                    value,
                ),
            )
            return cursor.rowcount == 1

    def unsent(self, limit: int = 500, max_bytes: int = 512 * 1024) -> list[OutboxRow]:
        """The oldest unsent rows, in order (at most ``limit`` rows or about ``max_bytes``)."""
        rows: list[OutboxRow] = []
        size = 0
        cursor = self._conn().execute(
            "SELECT seq, event_id, event_type, mouse_id, session_id, topic, key, value "
            "FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT ?",
            (limit,),
        )
        for row in cursor:
            size += len(row[7])
            if rows and size > max_bytes:
                break
            rows.append(OutboxRow(*row))
        return rows

    def mark_sent(self, sent: Sequence[Sent], topic: str) -> None:
        """Marks rows as delivered and moves the partition marks past their offsets."""
        if not sent:
            return
        at = _now()
        with self._tx() as conn:
            conn.executemany(
                "UPDATE outbox SET sent_partition = ?, sent_offset = ?, sent_at = ? "
                "WHERE seq = ? AND sent_at IS NULL",
                [(s.partition, s.offset, at, s.seq) for s in sent],
            )
            for s in sent:
                conn.execute(
                    "INSERT INTO partition_marks (topic, partition, next_offset) VALUES "
                    "(?, ?, ?) ON CONFLICT (topic, partition) DO UPDATE SET next_offset = "
                    "max(next_offset, excluded.next_offset)",
                    (topic, s.partition, s.offset + 1),
                )

    def unsent_count(self, mouse_id: str | None = None) -> int:
        """How many events wait to be sent (for one mouse, or all)."""
        # the unsent rows are few, a mouse's rows many: count through the index of the unsent
        query = "SELECT count(*) FROM outbox INDEXED BY outbox_unsent WHERE sent_at IS NULL"
        args: tuple[str, ...] = ()
        if mouse_id is not None:
            query += " AND mouse_id = ?"
            args = (mouse_id,)
        return int(self._conn().execute(query, args).fetchone()[0])

    def oldest_unsent(self) -> datetime | None:
        """When the oldest waiting event happened."""
        row = (
            self._conn()
            .execute("SELECT occurred_at FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT 1")
            .fetchone()
        )
        return datetime.fromisoformat(row[0]) if row else None

    def partition_mark(self, topic: str, partition: int) -> int | None:
        """The offset from which unconfirmed records of this rig could lie on a partition."""
        row = (
            self._conn()
            .execute(
                "SELECT next_offset FROM partition_marks WHERE topic = ? AND partition = ?",
                (topic, partition),
            )
            .fetchone()
        )
        return int(row[0]) if row else None

    def set_partition_mark(self, topic: str, partition: int, offset: int) -> None:
        """Records a partition's end before the rig first sends to it."""
        with self._tx() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO partition_marks (topic, partition, next_offset) "
                "VALUES (?, ?, ?)",
                (topic, partition, offset),
            )

    def events(self, session_id: str) -> list[Event]:
        """Every stored event of a session, in order."""
        cursor = self._conn().execute(
            "SELECT value FROM outbox WHERE session_id = ? ORDER BY seq", (session_id,)
        )
        return [self.codec.decode(row[0]) for row in cursor]

    def mouse_events(self, mouse_id: str, event_types: Sequence[str]) -> list[Event]:
        """Every stored event of a mouse of the given types, in order."""
        marks = ", ".join("?" for _ in event_types)
        cursor = self._conn().execute(
            f"SELECT value FROM outbox WHERE mouse_id = ? AND event_type IN ({marks}) ORDER BY seq",
            (mouse_id, *event_types),
        )
        return [self.codec.decode(row[0]) for row in cursor]

    def open_session(self, mouse_id: str) -> OpenSession | None:
        """The mouse's session that started on this rig and never ended, if any."""
        row = (
            self._conn()
            .execute(
                "SELECT s.session_id FROM outbox s WHERE s.mouse_id = ? AND "
                "s.event_type = 'SessionStarted' AND NOT EXISTS (SELECT 1 FROM outbox e WHERE "
                "e.session_id = s.session_id AND e.event_type = 'SessionEnded') "
                "ORDER BY s.seq DESC LIMIT 1",
                (mouse_id,),
            )
            .fetchone()
        )
        if row is None:
            return None
        events = self.events(row[0])
        started = events[0]
        assert isinstance(started, SessionStarted)
        return OpenSession(started, events)

    def last_session(self, mouse_id: str) -> SessionEnded | None:
        """The mouse's last session that ended on this rig."""
        row = (
            self._conn()
            .execute(
                "SELECT value FROM outbox WHERE mouse_id = ? AND event_type = 'SessionEnded' "
                "ORDER BY seq DESC LIMIT 1",
                (mouse_id,),
            )
            .fetchone()
        )
        if row is None:
            return None
        event = self.codec.decode(row[0])
        return event if isinstance(event, SessionEnded) else None

    # -- assignment cache and decisions ---------------------------------------------------------

    def save_assignment(self, assignment: AssignmentIssued) -> bool:
        """Caches an assignment unless a newer one (higher session number) is cached; the
        mouse's assignment history keeps it either way."""
        self._keep_history(assignment)
        return self._keep_latest("assignments", assignment)

    def _keep_history(self, assignment: AssignmentIssued) -> None:
        with self._tx() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO assignment_history (mouse_id, session_number, event_id, "
                "value, received_at) VALUES (?, ?, ?, ?, ?)",
                (
                    assignment.mouse_id,
                    assignment.session_number,
                    assignment.event_id,
                    self.codec.encode(assignment),
                    _now(),
                ),
            )
            if cursor.rowcount == 1:
                conn.execute(
                    "DELETE FROM assignment_history WHERE mouse_id = ? AND seq NOT IN (SELECT "
                    "seq FROM assignment_history WHERE mouse_id = ? ORDER BY session_number "
                    "DESC, seq DESC LIMIT ?)",
                    (assignment.mouse_id, assignment.mouse_id, HISTORY_PER_MOUSE),
                )

    def assignment_history(self, mouse_id: str) -> list[CachedAssignment]:
        """The mouse's assignments the rig received, newest first (by session number, then
        arrival); records this rig's codec no longer reads are left out."""
        history = []
        for value, received_at in self._conn().execute(
            "SELECT value, received_at FROM assignment_history WHERE mouse_id = ? "
            "ORDER BY session_number DESC, seq DESC",
            (mouse_id,),
        ):
            try:
                event = self.codec.decode(value)
            except Exception:  # a row an older codec wrote differently: not one to run
                continue
            if isinstance(event, AssignmentIssued):
                history.append(CachedAssignment(event, datetime.fromisoformat(received_at)))
        return history

    def cached_assignment(self, mouse_id: str) -> CachedAssignment | None:
        """The latest assignment known for a mouse."""
        return self._latest("assignments", mouse_id)

    def save_evidence(self, assignment: AssignmentIssued) -> bool:
        """Keeps the assignment that followed a decision (with its evidence), unless one of a
        later session is kept."""
        return self._keep_latest("evidence", assignment)

    def last_evidence(self, mouse_id: str) -> CachedAssignment | None:
        """The latest assignment that followed a decision on one of the mouse's sessions."""
        return self._latest("evidence", mouse_id)

    def _keep_latest(self, table: str, assignment: AssignmentIssued) -> bool:
        """Upserts the mouse's row of ``table`` (``assignments`` or ``evidence``) unless it holds
        one of a later session; True when the row changed."""
        assert table in ("assignments", "evidence")
        with self._tx() as conn:
            cursor = conn.execute(
                f"INSERT INTO {table} (mouse_id, session_number, event_id, value, "
                "received_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (mouse_id) DO UPDATE SET "
                "session_number = excluded.session_number, event_id = excluded.event_id, "
                "value = excluded.value, received_at = excluded.received_at "
                f"WHERE excluded.session_number >= {table}.session_number "
                f"AND excluded.event_id != {table}.event_id",
                (
                    assignment.mouse_id,
                    assignment.session_number,
                    assignment.event_id,
                    self.codec.encode(assignment),
                    _now(),
                ),
            )
            return cursor.rowcount == 1

    def _latest(self, table: str, mouse_id: str) -> CachedAssignment | None:
        assert table in ("assignments", "evidence")
        row = (
            self._conn()
            .execute(f"SELECT value, received_at FROM {table} WHERE mouse_id = ?", (mouse_id,))
            .fetchone()
        )
        if row is None:
            return None
        event = self.codec.decode(row[0])
        assert isinstance(event, AssignmentIssued)
        return CachedAssignment(event, datetime.fromisoformat(row[1]))

    def save_decision(self, decision: StageTransitioned) -> None:
        """Keeps the decision on a session."""
        with self._tx() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO decisions (mouse_id, session_id, event_id, value, "
                "received_at) VALUES (?, ?, ?, ?, ?)",
                (
                    decision.mouse_id,
                    decision.session_id or "",
                    decision.event_id,
                    self.codec.encode(decision),
                    _now(),
                ),
            )

    def decision(self, mouse_id: str, session_id: str) -> StageTransitioned | None:
        """The decision on a session, if it arrived."""
        row = (
            self._conn()
            .execute(
                "SELECT value FROM decisions WHERE mouse_id = ? AND session_id = ?",
                (mouse_id, session_id),
            )
            .fetchone()
        )
        if row is None:
            return None
        event = self.codec.decode(row[0])
        return event if isinstance(event, StageTransitioned) else None

    def decision_with_id(self, mouse_id: str, event_id: str) -> StageTransitioned | None:
        """A kept decision of the mouse by its event id (an assignment's ``causation_id``)."""
        row = (
            self._conn()
            .execute(
                "SELECT value FROM decisions WHERE mouse_id = ? AND event_id = ?",
                (mouse_id, event_id),
            )
            .fetchone()
        )
        if row is None:
            return None
        event = self.codec.decode(row[0])
        return event if isinstance(event, StageTransitioned) else None

    def read_position(self, topic: str, partition: int) -> int | None:
        """Where the follower stopped reading a partition."""
        row = (
            self._conn()
            .execute(
                "SELECT next_offset FROM read_positions WHERE topic = ? AND partition = ?",
                (topic, partition),
            )
            .fetchone()
        )
        return int(row[0]) if row else None

    def save_read_positions(self, positions: dict[tuple[str, int], int]) -> None:
        """Remembers where the follower stopped reading."""
        if not positions:
            return
        with self._tx() as conn:
            conn.executemany(
                "INSERT INTO read_positions (topic, partition, next_offset) VALUES (?, ?, ?) "
                "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                [(topic, partition, offset) for (topic, partition), offset in positions.items()],
            )

    # -- unreadable records, stale runs ---------------------------------------------------------

    def save_undecodable(
        self, kind: str, mouse_id: str, topic: str, partition: int, offset: int, error: str
    ) -> bool:
        """Keeps a record of the mouse the rig cannot decode; False when it was kept before."""
        assert kind in UNDECODABLE_KINDS
        with self._tx() as conn:
            cursor = conn.execute(
                "INSERT OR IGNORE INTO undecodable_records (kind, mouse_id, topic, partition, "
                "record_offset, error, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (kind, mouse_id, topic, partition, offset, error, _now()),
            )
            return cursor.rowcount == 1

    def resolve_undecodable(
        self, kind: str, mouse_id: str, topic: str, partition: int, offset: int, event_id: str
    ) -> None:
        """A readable record of the mouse at ``offset`` follows the unreadable ones before it."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE undecodable_records SET resolved_by = ? WHERE kind = ? AND mouse_id = ? "
                "AND topic = ? AND partition = ? AND record_offset < ? AND resolved_by IS NULL",
                (event_id, kind, mouse_id, topic, partition, offset),
            )

    def undecodable(self, mouse_id: str, kind: str = "assignments") -> UndecodableRecord | None:
        """The newest record of the mouse the rig cannot decode that no readable one followed."""
        row = (
            self._conn()
            .execute(
                "SELECT kind, mouse_id, topic, partition, record_offset, error, received_at "
                "FROM undecodable_records WHERE mouse_id = ? AND kind = ? AND resolved_by IS NULL "
                "ORDER BY seq DESC LIMIT 1",
                (mouse_id, kind),
            )
            .fetchone()
        )
        if row is None:
            return None
        return UndecodableRecord(
            kind=row[0],
            mouse_id=row[1],
            topic=row[2],
            partition=int(row[3]),
            offset=int(row[4]),
            error=row[5],
            received_at=datetime.fromisoformat(row[6]),
        )

    def undecodable_counts(self) -> dict[str, int]:
        """How many unreadable records the rig met, per kind (every kind, 0 included)."""
        counts = dict.fromkeys(UNDECODABLE_KINDS, 0)
        for kind, count in self._conn().execute(
            "SELECT kind, count(*) FROM undecodable_records GROUP BY kind"
        ):
            counts[kind] = int(count)
        return counts

    def record_stale_run(
        self, mouse_id: str, assignment_id: str | None, action: str, reason: str, waited_s: float
    ) -> None:
        """Keeps a session start on a stale assignment (``ran_cached``) or its refusal."""
        assert action in STALE_ACTIONS
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO stale_runs (mouse_id, assignment_id, action, reason, waited_s, at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (mouse_id, assignment_id, action, reason, waited_s, _now()),
            )

    def last_stale_run(self, mouse_id: str) -> StaleRun | None:
        """The mouse's last start on a stale assignment (run or refused)."""
        row = (
            self._conn()
            .execute(
                "SELECT mouse_id, assignment_id, action, reason, waited_s, at FROM stale_runs "
                "WHERE mouse_id = ? ORDER BY seq DESC LIMIT 1",
                (mouse_id,),
            )
            .fetchone()
        )
        if row is None:
            return None
        return StaleRun(
            mouse_id=row[0],
            assignment_id=row[1],
            action=row[2],
            reason=row[3],
            waited_s=float(row[4]),
            at=datetime.fromisoformat(row[5]),
        )

    def stale_run_counts(self) -> dict[str, int]:
        """How many stale assignments the rig ran and refused (every action, 0 included)."""
        counts = dict.fromkeys(STALE_ACTIONS, 0)
        for action, count in self._conn().execute(
            "SELECT action, count(*) FROM stale_runs GROUP BY action"
        ):
            counts[action] = int(count)
        return counts

    # -- unsafe assignments ---------------------------------------------------------------------

    def record_unsafe_assignment(
        self,
        mouse_id: str,
        assignment_id: str,
        action: str,
        violations: str,
        ran_assignment_id: str | None,
    ) -> None:
        """Keeps an assignment held outside the safety limits and what the rig did with it."""
        assert action in UNSAFE_ACTIONS
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO unsafe_assignments (mouse_id, assignment_id, action, violations, "
                "ran_assignment_id, at) VALUES (?, ?, ?, ?, ?, ?)",
                (mouse_id, assignment_id, action, violations, ran_assignment_id, _now()),
            )

    def last_unsafe_assignment(self, mouse_id: str) -> UnsafeAssignment | None:
        """The mouse's last assignment held outside the safety limits."""
        row = (
            self._conn()
            .execute(
                "SELECT mouse_id, assignment_id, action, violations, ran_assignment_id, at FROM "
                "unsafe_assignments WHERE mouse_id = ? ORDER BY seq DESC LIMIT 1",
                (mouse_id,),
            )
            .fetchone()
        )
        if row is None:
            return None
        return UnsafeAssignment(
            mouse_id=row[0],
            assignment_id=row[1],
            action=row[2],
            violations=row[3],
            ran_assignment_id=row[4],
            at=datetime.fromisoformat(row[5]),
        )

    # -- the welfare gate ------------------------------------------------------------------------

    def record_held_refusal(self, mouse_id: str, assignment_id: str, reason: str) -> None:
        """Keeps a session the rig refused: the mouse was held, or under water restriction and
        not cleared for the rig's day (:func:`shaping.rig.safety.welfare_refusal`)."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO held_refusals (mouse_id, assignment_id, reason, at) "
                "VALUES (?, ?, ?, ?)",
                (mouse_id, assignment_id, reason, _now()),
            )

    def held_refusal_count(self) -> int:
        """How many sessions the rig refused at the welfare gate."""
        row = self._conn().execute("SELECT count(*) FROM held_refusals").fetchone()
        return int(row[0])

    def unsafe_assignment_counts(self) -> dict[str, int]:
        """How many unsafe assignments the rig refused or replaced (every action, 0 included)."""
        counts: dict[str, int] = dict.fromkeys(UNSAFE_ACTIONS, 0)
        for action, count in self._conn().execute(
            "SELECT action, count(*) FROM unsafe_assignments GROUP BY action"
        ):
            counts[action] = int(count)
        return counts

    # -- clock skew -----------------------------------------------------------------------------

    def record_clock_skew(self, skew_s: float, uncertainty_s: float) -> ClockSkew:
        """Adds a measurement of the rig's clock minus the broker's; returns the new state."""
        with self._tx() as conn:
            row = conn.execute("SELECT smoothed_s, samples FROM clock_skew WHERE id = 1").fetchone()
            if row is None:
                smoothed, samples = skew_s, 1
            else:
                smoothed = row[0] + SKEW_SMOOTHING * (skew_s - row[0])
                samples = int(row[1]) + 1
            at = _now()
            conn.execute(
                "INSERT INTO clock_skew (id, latest_s, smoothed_s, uncertainty_s, samples, "
                "measured_at) VALUES (1, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "latest_s = excluded.latest_s, smoothed_s = excluded.smoothed_s, "
                "uncertainty_s = excluded.uncertainty_s, samples = excluded.samples, "
                "measured_at = excluded.measured_at",
                (skew_s, smoothed, uncertainty_s, samples, at),
            )
        return ClockSkew(skew_s, smoothed, uncertainty_s, samples, datetime.fromisoformat(at))

    def clock_skew(self) -> ClockSkew | None:
        """The rig's clock skew against the broker, if it was ever measured."""
        row = (
            self._conn()
            .execute(
                "SELECT latest_s, smoothed_s, uncertainty_s, samples, measured_at FROM clock_skew "
                "WHERE id = 1"
            )
            .fetchone()
        )
        if row is None:
            return None
        return ClockSkew(row[0], row[1], row[2], int(row[3]), datetime.fromisoformat(row[4]))

    # -- calibrations ---------------------------------------------------------------------------

    def save_calibration(
        self,
        valve: str,
        ml_per_ms: float,
        points: Sequence[dict[str, float]],
        *,
        by: str = "",
        rig_id: str = "",
        warnings: Sequence[str] = (),
    ) -> ValveCalibration:
        """Stores a valve calibration; it replaces the config file's value from now on. The
        history keeps it too, with who calibrated, on which rig and the warnings accepted."""
        at = _now()
        with self._tx() as conn:
            cursor = conn.execute(
                "INSERT INTO calibrations (valve, ml_per_ms, calibrated_at, points) "
                "VALUES (?, ?, ?, ?)",
                (valve, ml_per_ms, at, json.dumps(list(points))),
            )
            self._history_row(
                conn, valve, at, by, rig_id, ml_per_ms, points, warnings, "saved", cursor.lastrowid
            )
        return ValveCalibration(valve, ml_per_ms, f"calibrated {at[:16].replace('T', ' ')} UTC")

    def record_calibration(
        self,
        valve: str,
        ml_per_ms: float,
        points: Sequence[dict[str, float]],
        outcome: str,
        *,
        by: str = "",
        rig_id: str = "",
        warnings: Sequence[str] = (),
    ) -> None:
        """Keeps a calibration that was not saved (``declined`` by the person, or ``refused``
        as impossible) in the history; rewards do not use it."""
        assert outcome in CALIBRATION_OUTCOMES and outcome != "saved"
        with self._tx() as conn:
            self._history_row(
                conn, valve, _now(), by, rig_id, ml_per_ms, points, warnings, outcome, None
            )

    @staticmethod
    def _history_row(
        conn: sqlite3.Connection,
        valve: str,
        at: str,
        by: str,
        rig_id: str,
        ml_per_ms: float,
        points: Sequence[dict[str, float]],
        warnings: Sequence[str],
        outcome: str,
        calibration_id: int | None,
    ) -> None:
        conn.execute(
            "INSERT INTO calibration_history (valve, calibrated_at, calibrated_by, rig_id, "
            "ml_per_ms, points, warnings, outcome, calibration_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                valve,
                at,
                by,
                rig_id,
                ml_per_ms,
                json.dumps(list(points)),
                json.dumps(list(warnings)),
                outcome,
                calibration_id,
            ),
        )

    def calibration_history(self, valve: str | None = None) -> list[CalibrationRecord]:
        """Every calibration measured (of ``valve``, or of both), oldest first: the history's
        rows and the stored calibrations older than the history (who and where unknown)."""
        conn = self._conn()
        records = []
        for row in conn.execute(
            "SELECT valve, calibrated_at, calibrated_by, rig_id, ml_per_ms, points, warnings, "
            "outcome, calibration_id FROM calibration_history ORDER BY id"
        ):
            records.append(
                CalibrationRecord(
                    valve=row[0],
                    calibrated_at=datetime.fromisoformat(row[1]),
                    by=row[2] or None,
                    rig_id=row[3] or None,
                    ml_per_ms=row[4],
                    points=json.loads(row[5]),
                    warnings=tuple(json.loads(row[6])),
                    outcome=row[7],
                    calibration_id=row[8],
                )
            )
        for row in conn.execute(
            "SELECT id, valve, ml_per_ms, calibrated_at, points FROM calibrations WHERE id NOT IN "
            "(SELECT calibration_id FROM calibration_history WHERE calibration_id IS NOT NULL) "
            "ORDER BY id"
        ):
            records.append(
                CalibrationRecord(
                    valve=row[1],
                    calibrated_at=datetime.fromisoformat(row[3]),
                    by=None,
                    rig_id=None,
                    ml_per_ms=row[2],
                    points=json.loads(row[4]),
                    warnings=(),
                    outcome="saved",
                    calibration_id=row[0],
                )
            )
        in_force = {
            valve: number
            for number, valve in conn.execute("SELECT id, valve FROM calibrations ORDER BY id")
        }
        records = [
            replace(
                r,
                in_force=r.calibration_id is not None and in_force.get(r.valve) == r.calibration_id,
            )
            for r in records
            if valve is None or r.valve == valve
        ]
        return sorted(records, key=lambda r: (r.calibrated_at, r.calibration_id or 0))

    def calibrations(self) -> dict[str, ValveCalibration]:
        """The newest stored calibration of each valve."""
        rows = (
            self._conn()
            .execute("SELECT valve, ml_per_ms, calibrated_at FROM calibrations ORDER BY id")
            .fetchall()
        )
        return {
            valve: ValveCalibration(valve, rate, f"calibrated {at[:16].replace('T', ' ')} UTC")
            for valve, rate, at in rows
        }
