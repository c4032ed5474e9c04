"""Reading the live status tables: the projector's offsets and every projection table, as
rows that compare equal across PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, inspect, make_url, select
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from shaping.schemas.codec import EventCodec
from shaping.services.operator.replay.errors import ReplayError
from shaping.services.projector.errors import ProjectorError
from shaping.services.projector.store import SqlProjectionStore
from shaping.services.projector.tables import PROJECTION_TABLES, metadata, projector_offsets

OffsetRow = tuple[str, str, int, int]
"""A row of the projector's offsets table: consumer, topic, partition, next offset."""

TableRows = dict[str, list[dict[str, Any]]]
"""Every projection table by name, its rows as JSON-ready dicts sorted by primary key."""


def read_live(db_url: str) -> tuple[list[OffsetRow], TableRows]:
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


def _offset_rows(conn: Connection) -> list[OffsetRow]:
    if not inspect(conn).has_table(projector_offsets.name):
        return []
    rows = conn.execute(select(projector_offsets)).all()
    return sorted((str(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in rows)


def table_rows(conn: Connection) -> TableRows:
    """Every projection table, as :meth:`SqlProjectionStore.snapshot` gives it (values as JSON
    ready data, rows sorted by primary key in Python, so both backends compare equal); a table
    the database lacks is empty."""
    present = set(inspect(conn).get_table_names())
    result: TableRows = {}
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


def open_live(db_url: str, codec: EventCodec) -> SqlProjectionStore:
    """The live tables, opened for the switch-over.

    Raises:
        ReplayError: when there is no such database (a SQLite file is never made here).
    """
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or not Path(database).is_file():
            raise ReplayError(f"no status database at {db_url}: point --db-url at the live one")
    try:
        return SqlProjectionStore(db_url, codec=codec)
    except ProjectorError as exc:
        raise ReplayError(str(exc)) from exc


BULK_ROWS = 5000
"""Rows per executemany call when the fresh tables are written in bulk."""


def write_rows(
    store: SqlProjectionStore, parts: Iterable[Mapping[str, list[dict[str, Any]]]]
) -> int:
    """Writes rows read from other stores of the projector's tables (one part per replay
    worker, :func:`~.parallel.fold_partitions`) into ``store``'s tables, in bulk: one
    transaction, table by table in dependency order, ``executemany`` batches of
    :data:`BULK_ROWS`. The parts hold different mice; a row whose key another part already
    wrote (only a log that reuses an id across mice makes one) is left as the first wrote it.
    Returns how many rows were written.

    Raises:
        ReplayError: when the database refuses them.
    """
    parts = list(parts)
    written = 0
    dialect = store.engine.dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    try:
        with store.engine.begin() as conn:
            for table in metadata.sorted_tables:
                if table.name == projector_offsets.name:
                    continue
                statement = insert(table).on_conflict_do_nothing()
                for part in parts:
                    rows = part.get(table.name, [])
                    for start in range(0, len(rows), BULK_ROWS):
                        conn.execute(statement, rows[start : start + BULK_ROWS])
                    written += len(rows)
    except SQLAlchemyError as exc:
        raise ReplayError(f"cannot write the fresh tables: {exc}") from exc
    return written


def live_offsets(store: SqlProjectionStore) -> list[OffsetRow]:
    """Every row of the projector's offsets table (all consumers), sorted."""
    with store.engine.connect() as conn:
        rows = conn.execute(select(projector_offsets)).all()
    return sorted((str(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in rows)


__all__ = [
    "BULK_ROWS",
    "OffsetRow",
    "TableRows",
    "live_offsets",
    "open_live",
    "read_live",
    "table_rows",
    "write_rows",
]
