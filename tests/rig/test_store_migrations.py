"""The rig store's versioned format: stores in the field survive every upgrade.

``tests/data/rig_store/rig-v1.sqlite.gz`` is a store written by the release before versioning
(``RigStore`` of commit 56fe485, run unchanged): nine events of two mice in the outbox, the
first three sent (partition marks at 100 + 10 * partition), the last six unsent, one re-record
ignored; two cached assignments, a decision and its evidence; read positions; an undecodable
record, a stale run, an unsafe assignment, a clock skew; three saved calibrations and two that
were not (refused, declined). ``user_version`` is 0, as that release left it.
"""

from __future__ import annotations

import gzip
import hashlib
import sqlite3
import threading
from collections import defaultdict
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shaping.rig.errors import RigError
from shaping.rig.link.drain import OutboxDrainer, partition_for
from shaping.rig.link.store import (
    MIGRATIONS,
    STORE_VERSION,
    Migration,
    RigStore,
    StoreVersionError,
    migrate,
)
from shaping.schemas.events import SessionStarted
from tests.support.rig import CODEC

FIXTURE = Path(__file__).parents[1] / "data" / "rig_store" / "rig-v1.sqlite.gz"
TOPIC = "shaping.events"
UNSENT = ["M001-paw-0", "M001-trial-1", "M002-trial-0", "M001-trial-2", "M001-end", "M002-trial-1"]
FUTURE = Migration(
    STORE_VERSION + 1, "a step of a newer Shaping", "CREATE TABLE future_things (id INTEGER)"
)


def v1_store(folder: Path) -> Path:
    path = folder / "rig.sqlite"
    path.write_bytes(gzip.decompress(FIXTURE.read_bytes()))
    return path


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def user_version(path: Path) -> int:
    with closing(raw(path)) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


def schema(path: Path) -> dict[str, tuple[str, int, str | None]]:
    """Every table and index: its type, root page (a recreated table gets a new one), SQL."""
    with closing(raw(path)) as conn:
        return {
            name: (kind, rootpage, sql)
            for kind, name, rootpage, sql in conn.execute(
                "SELECT type, name, rootpage, sql FROM sqlite_master"
            )
        }


def contents(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in rowid order."""
    with closing(raw(path)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY rowid').fetchall() for t in tables}


def unsent_rows(path: Path) -> list[tuple[int, str, str, bytes, bytes]]:
    with closing(raw(path)) as conn:
        return conn.execute(
            "SELECT seq, event_id, topic, key, value FROM outbox WHERE sent_at IS NULL ORDER BY seq"
        ).fetchall()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- a broker in memory, for the real drainer -------------------------------------------------


@dataclass
class Record:
    offset: int
    key: bytes
    value: bytes


@dataclass
class Metadata:
    partition: int
    offset: int
    timestamp: int = -1


class Future:
    def __init__(self, value: Metadata) -> None:
        self.value = value
        self.is_done = True
        self.exception = None

    def failed(self) -> bool:
        return False


class Broker:
    """Partitions as lists of records; each starts at its offset of ``starts``."""

    def __init__(self, starts: dict[tuple[str, int], int], partitions: int = 4) -> None:
        self.partitions = partitions
        self.logs: dict[tuple[str, int], list[Record]] = defaultdict(list)
        self.starts = starts
        self.sent: list[tuple[str, int, bytes, bytes]] = []

    def end(self, topic: str, partition: int) -> int:
        return self.starts.get((topic, partition), 0) + len(self.logs[(topic, partition)])


class Producer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.broker.partitions))

    def send(self, topic: str, *, key: bytes, value: bytes, partition: int, **_: Any) -> Future:
        offset = self.broker.end(topic, partition)
        self.broker.logs[(topic, partition)].append(Record(offset, key, value))
        self.broker.sent.append((topic, partition, key, value))
        return Future(Metadata(partition, offset))

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


class Consumer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.positions: dict[Any, int] = {}

    def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: self.broker.end(tp.topic, tp.partition) for tp in tps}

    def assign(self, tps: list[Any]) -> None:
        pass

    def seek(self, tp: Any, offset: int) -> None:
        self.positions[tp] = offset

    def position(self, tp: Any) -> int:
        return self.positions[tp]

    def poll(self, timeout_ms: int = 0) -> dict[Any, list[Record]]:
        found = {}
        for tp, at in self.positions.items():
            records = [r for r in self.broker.logs[(tp.topic, tp.partition)] if r.offset >= at]
            self.positions[tp] = self.broker.end(tp.topic, tp.partition)
            found[tp] = records
        return found

    def close(self) -> None:
        pass


class InMemoryDrainer(OutboxDrainer):
    def __init__(self, store: RigStore, broker: Broker) -> None:
        super().__init__(store, "in-memory:0", codec=CODEC)
        self._producer = Producer(broker)
        self._consumer = Consumer(broker)


def drain(store: RigStore, broker: Broker) -> None:
    drainer = InMemoryDrainer(store, broker)
    try:
        while drainer.drain_once():
            pass
    finally:
        drainer.close()


def broker_as_left(path: Path) -> Broker:
    """The broker holding what the old release sent (its partitions end at the marks)."""
    with closing(raw(path)) as conn:
        marks = conn.execute("SELECT topic, partition, next_offset FROM partition_marks").fetchall()
        sent = conn.execute(
            "SELECT topic, sent_partition, sent_offset, key, value FROM outbox "
            "WHERE sent_at IS NOT NULL ORDER BY seq"
        ).fetchall()
    starts = {(topic, part): mark for topic, part, mark in marks}
    for topic, part, offset, _, _ in sent:
        starts[(topic, part)] = min(starts[(topic, part)], offset)
    broker = Broker(starts)
    for topic, part, offset, key, value in sent:
        broker.logs[(topic, part)].append(Record(offset, key, value))
    return broker


# -- (a) a store of the release before versioning ---------------------------------------------


def test_the_fixture_is_what_the_release_before_versioning_wrote(tmp_path: Path) -> None:
    path = v1_store(tmp_path)
    assert user_version(path) == 0
    assert "outbox_mouse" not in schema(path)
    assert [row[1] for row in unsent_rows(path)] == UNSENT
    assert len(contents(path)["outbox"]) == 9
    with closing(raw(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_store_of_the_release_before_versioning_is_kept_whole_and_upgraded(
    tmp_path: Path,
) -> None:
    path = v1_store(tmp_path)
    before_schema, before_rows, waiting = schema(path), contents(path), unsent_rows(path)

    store = RigStore(path, codec=CODEC)

    assert user_version(path) == STORE_VERSION == 3
    after_schema = schema(path)
    # recognised as version 1: no table or index recreated (same root pages, same SQL) ...
    assert {name: after_schema[name] for name in before_schema} == before_schema
    # ... only version 2's index and version 3's table added
    assert set(after_schema) - set(before_schema) == {"outbox_mouse", "held_refusals"}
    # not a row lost, changed or added (version 3's table is new and empty)
    assert contents(path) == {**before_rows, "held_refusals": []}
    assert [
        (r.seq, r.event_id, r.topic, r.key, r.value)
        for r in store.unsent(limit=100, max_bytes=1 << 30)
    ] == waiting
    assert store.unsent_count() == 6 and store.unsent_count("M002") == 2
    # the journal reads the old rows: M002's session is open, M001's ended
    open_session = store.open_session("M002")
    assert open_session is not None and isinstance(open_session.started, SessionStarted)
    assert [e.event_id for e in open_session.events] == [
        "M002-start",
        "M002-trial-0",
        "M002-trial-1",
    ]
    assert store.open_session("M001") is None
    last = store.last_session("M001")
    assert last is not None and last.event_id == "M001-end" and last.n_trials == 3
    # calibrations: the newest saved per valve is in force; the whole history is there
    assert {v: c.ml_per_ms for v, c in store.calibrations().items()} == {
        "left": pytest.approx(0.0000861),
        "right": pytest.approx(0.0000912),
    }
    history = store.calibration_history()
    assert [(r.valve, r.outcome, r.by, r.in_force) for r in history] == [
        ("left", "saved", "alice", False),
        ("right", "saved", "alice", True),
        ("right", "refused", "bob", False),
        ("left", "saved", "bob", True),
        ("left", "declined", "bob", False),
    ]
    cached = store.cached_assignment("M001")
    assert cached is not None and cached.assignment.event_id == "assignment-M001-2"
    assert [a.assignment.event_id for a in store.assignment_history("M001")] == [
        "assignment-M001-2",
        "assignment-M001-1",
    ]
    store.close()


def test_the_upgraded_outbox_drains_the_same_bytes_in_the_same_order(tmp_path: Path) -> None:
    path = v1_store(tmp_path)
    waiting = unsent_rows(path)
    broker = broker_as_left(path)
    ends = {key: broker.end(*key) for key in list(broker.logs)}
    store = RigStore(path, codec=CODEC)

    drain(store, broker)

    assert broker.sent == [
        (topic, partition_for(key, 4), key, value) for _, _, topic, key, value in waiting
    ]
    assert store.unsent_count() == 0
    with closing(raw(path)) as conn:
        marked = conn.execute(
            "SELECT event_id, sent_partition, sent_offset FROM outbox ORDER BY seq"
        ).fetchall()
    # every row sent once, at the offset after what the old release had sent there
    offsets: dict[int, int] = {}
    for event_id, partition, offset in marked:
        if event_id in UNSENT:
            expected = offsets.get(partition, ends[(TOPIC, partition)])
            assert offset == expected, event_id
            offsets[partition] = offset + 1
    assert store.partition_mark(TOPIC, partition_for(waiting[0][3], 4)) is not None
    store.close()


def test_an_older_store_lacking_later_tables_gets_them_filled(tmp_path: Path) -> None:
    path = v1_store(tmp_path)
    with closing(raw(path)) as conn:  # as a release before the histories left it
        for table in ("assignment_history", "calibration_history", "unsafe_assignments"):
            conn.execute(f"DROP TABLE {table}")
    assert user_version(path) == 0

    store = RigStore(path, codec=CODEC)

    assert user_version(path) == STORE_VERSION
    assert {"assignment_history", "calibration_history", "unsafe_assignments"} <= set(schema(path))
    assert [a.assignment.event_id for a in store.assignment_history("M002")] == [
        "assignment-M002-1"
    ]  # filled from the cache
    assert [(r.valve, r.by, r.in_force) for r in store.calibration_history("left")] == [
        ("left", None, False),
        ("left", None, True),
    ]  # readable without their history rows
    assert [r.event_id for r in store.unsent(limit=100)] == UNSENT
    store.close()


def test_a_version_1_store_gets_only_the_steps_after_it(tmp_path: Path) -> None:
    path = v1_store(tmp_path)
    with closing(raw(path)) as conn:
        assert migrate(conn, MIGRATIONS[:1]) == 1
    assert user_version(path) == 1 and "outbox_mouse" not in schema(path)
    rows = contents(path)

    RigStore(path, codec=CODEC).close()

    assert user_version(path) == STORE_VERSION == 3
    assert schema(path)["outbox_mouse"][0] == "index"
    assert schema(path)["held_refusals"][0] == "table"
    assert contents(path) == {**rows, "held_refusals": []}


def test_the_journal_look_ups_use_the_index_of_version_2(tmp_path: Path) -> None:
    store = RigStore(v1_store(tmp_path), codec=CODEC)
    queries: list[str] = []
    store._conn().set_trace_callback(queries.append)
    store.open_session("M002")
    store.last_session("M001")
    store.mouse_events("M001", ["SessionStarted", "TrialCompleted"])
    store._conn().set_trace_callback(None)
    counted: list[str] = []
    store._conn().set_trace_callback(counted.append)
    store.unsent_count("M001")
    store._conn().set_trace_callback(None)
    [count] = counted
    count_plan = [row[3] for row in store._conn().execute("EXPLAIN QUERY PLAN " + count)]
    assert count_plan == ["SCAN outbox USING INDEX outbox_unsent"]  # the few, not all M001's
    plans = {}
    for sql in queries:
        if sql.lstrip().upper().startswith("SELECT") and "FROM outbox" in sql:
            plans[sql] = " / ".join(
                row[3] for row in store._conn().execute("EXPLAIN QUERY PLAN " + sql)
            )
    by_mouse = [sql for sql in plans if "mouse_id = " in sql]
    assert len(by_mouse) == 3, queries
    for sql, plan in plans.items():
        assert "SCAN" not in plan, (sql, plan)  # every look-up through an index
        assert "outbox_mouse" in plan or sql not in by_mouse, (sql, plan)
    store.close()


# -- (b) reopening ------------------------------------------------------------------------------


def test_reopening_a_current_store_changes_nothing(tmp_path: Path) -> None:
    path = v1_store(tmp_path)
    RigStore(path, codec=CODEC).close()
    before = digest(path)
    ran: list[int] = []

    def step(number: int) -> Migration:
        return Migration(number, "must not run", lambda conn: ran.append(number))

    RigStore(path, codec=CODEC).close()
    steps = [step(n) for n in range(1, STORE_VERSION + 1)]
    RigStore(path, migrations=steps, codec=CODEC).close()

    assert ran == []
    assert digest(path) == before  # not a byte written
    assert user_version(path) == STORE_VERSION


def test_stores_opened_at_once_by_several_processes_migrate_once(tmp_path: Path) -> None:
    path = v1_store(tmp_path)
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_it() -> None:
        start.wait()
        try:
            RigStore(path, codec=CODEC).close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert user_version(path) == STORE_VERSION


def test_a_failed_step_leaves_the_store_at_the_version_before(tmp_path: Path) -> None:
    path = v1_store(tmp_path)
    RigStore(path, codec=CODEC).close()
    rows = contents(path)

    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half (x INTEGER)")
        conn.execute("DELETE FROM outbox")
        raise RuntimeError("the disk is full")

    with pytest.raises(RuntimeError, match="disk is full"):
        RigStore(
            path,
            migrations=[*MIGRATIONS, Migration(STORE_VERSION + 1, "breaks", half_done)],
            codec=CODEC,
        )

    assert user_version(path) == STORE_VERSION
    assert "half" not in schema(path)
    assert contents(path) == rows
    assert [r.event_id for r in RigStore(path, codec=CODEC).unsent(limit=100)] == UNSENT


# -- (c) a store of a newer Shaping --------------------------------------------------------------


def test_a_store_of_a_newer_shaping_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = v1_store(tmp_path)
    RigStore(
        path, migrations=[*MIGRATIONS, FUTURE], codec=CODEC
    ).close()  # a newer Shaping opened it
    assert user_version(path) == STORE_VERSION + 1
    before = digest(path)

    with pytest.raises(StoreVersionError) as refused:
        RigStore(path, codec=CODEC)

    message = str(refused.value)
    assert isinstance(refused.value, RigError)  # the command line prints it, no traceback
    assert str(path) in message and f"format version {STORE_VERSION + 1}" in message
    assert "written by a newer Shaping" in message and f"up to {STORE_VERSION}" in message
    assert "Install the Shaping release that wrote it, or a newer one" in message
    with (
        closing(sqlite3.connect(path, isolation_level=None)) as conn,
        pytest.raises(StoreVersionError, match=f"format version {STORE_VERSION + 1}"),
    ):
        migrate(conn)
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rig.sqlite"]
    assert [row[1] for row in unsent_rows(path)] == UNSENT


def test_a_newer_store_in_another_journal_mode_is_not_switched_to_wal(tmp_path: Path) -> None:
    path = tmp_path / "rig.sqlite"
    with closing(raw(path)) as conn:
        conn.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, value BLOB)")
        conn.execute("INSERT INTO outbox (value) VALUES (x'0102')")
        conn.execute("PRAGMA user_version = 7")
    before = digest(path)

    with pytest.raises(StoreVersionError, match="format version 7"):
        RigStore(path, codec=CODEC)

    assert digest(path) == before
    with closing(raw(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


# -- (d) a new store -------------------------------------------------------------------------


def test_a_new_store_gets_every_step_and_the_same_format_as_an_upgraded_one(
    tmp_path: Path,
) -> None:
    fresh = tmp_path / "new" / "state" / "rig.sqlite"
    store = RigStore(fresh, codec=CODEC)
    store.save_calibration("left", 0.0000857, [{"open_ms": 50, "pulses": 100, "grams": 0.43}])
    store.close()
    upgraded = v1_store(tmp_path)
    RigStore(upgraded, codec=CODEC).close()

    assert user_version(fresh) == STORE_VERSION == MIGRATIONS[-1].number
    assert {name: sql for name, (_, _, sql) in schema(fresh).items()} == {
        name: sql for name, (_, _, sql) in schema(upgraded).items()
    }
    assert RigStore(fresh, codec=CODEC).calibrations()["left"].ml_per_ms == pytest.approx(0.0000857)


def test_migrations_must_be_numbered_in_order(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="numbered 1, 2, 3"):
        RigStore(tmp_path / "rig.sqlite", migrations=[MIGRATIONS[0], FUTURE], codec=CODEC)
