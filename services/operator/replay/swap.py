"""Fresh projection tables beside the live ones, and the switch-over in one transaction
(raw DDL: PostgreSQL moves tables between schemas; SQLite copies rows from an attached file).
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import delete, make_url, select, text
from sqlalchemy.engine import URL

from shaping.schemas.codec import EventCodec
from shaping.services.operator.replay.errors import ReplayError
from shaping.services.operator.replay.tables import OffsetRow
from shaping.services.projector.store import SqlProjectionStore
from shaping.services.projector.tables import metadata, projector_offsets

_PROJECTOR_MOVED = (
    "the projector wrote to the status tables during the replay (its offsets moved): stop the "
    "projector and run replay again; nothing was switched"
)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:4]


class FreshTables:
    """A fresh set of the projector's tables beside the live ones, and the switch-over.

    Args:
        live_url: the live status tables.
        codec: what the projector's store decodes with (:class:`SqlProjectionStore`).
        scratch: build the tables in a SQLite file in a temporary folder instead, away from the
            live database (a dry run writes nothing there); they cannot be swapped in.
    """

    def __init__(self, live_url: str, codec: EventCodec, scratch: bool = False) -> None:
        self.live_url = make_url(live_url)
        self.codec = codec
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
            url = self._new_schema()
        else:
            database = self.live_url.database or ""
            if database in ("", ":memory:"):
                raise ReplayError("replay needs a database file, not an in-memory SQLite")
            self.path = Path(database).with_name(f"{Path(database).name}.replay-{self.stamp}")
            url = f"sqlite:///{self.path}"
        self.store = SqlProjectionStore(url, codec=codec)

    def _live_store(self) -> SqlProjectionStore:
        return SqlProjectionStore(self.live_url, codec=self.codec)

    def _new_schema(self) -> URL:
        """Makes the schema of the fresh tables beside the live one; the URL that uses it."""
        live = self._live_store()
        try:
            with live.engine.begin() as conn:
                self.live_schema = str(conn.execute(text("SELECT current_schema()")).scalar())
                self.schema = f"shaping_replay_{self.stamp}"
                conn.execute(text(f'CREATE SCHEMA "{self.schema}"'))
        finally:
            live.close()
        return self.live_url.update_query_dict({"options": f"-csearch_path={self.schema}"})

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
            live = self._live_store()
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

    def swap(self, expected: list[OffsetRow]) -> str:
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

    def _swap_postgres(self, expected: list[OffsetRow]) -> str:
        backup = f"shaping_replaced_{self.stamp}"
        live = self._live_store()
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

    def _swap_sqlite(self, expected: list[OffsetRow]) -> str:
        database = Path(self.live_url.database or "")
        backup = database.with_name(f"{database.name}.before-replay-{self.stamp}")
        conn = sqlite3.connect(database, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("VACUUM INTO ?", (str(backup),))
            conn.execute("ATTACH DATABASE ? AS fresh", (str(self.path),))
            conn.execute("BEGIN IMMEDIATE")
            try:
                _copy_fresh_rows(conn, expected)
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


def _copy_fresh_rows(conn: sqlite3.Connection, expected: list[OffsetRow]) -> None:
    """In the open transaction: checks the live offsets, then replaces every live table's rows
    with those of the attached ``fresh`` database."""
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


__all__ = ["FreshTables"]
