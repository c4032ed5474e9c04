"""A processor process and a projector thread on the session's Kafka and PostgreSQL, for the
Kafka tests of operators' commands (interventions, allowed rigs, husbandry, the welfare gate)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from uuid import uuid4

from sqlalchemy import create_engine, make_url, text
from typer.testing import CliRunner

from shaping.schemas.codec import default_codec
from shaping.schemas.events import Event, StageTransitioned
from shaping.schemas.topics import TopicNames
from shaping.services.cli import app
from shaping.services.projector.runner import run_projector
from shaping.services.projector.store import SqlProjectionStore
from tests.support.kafka import TEST_PARTITIONS
from tests.support.kafka_io import Publisher, TopicReader
from tests.support.processes import stop, wait_until
from tests.support.scripts import REPO

WAIT_S = 120.0


def fresh_database(server_url: str) -> str:
    """A database of its own on the session's PostgreSQL (other tests reset theirs)."""
    name = f"interventions_{uuid4().hex[:8]}"
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


class Stack:
    """The processor process and the projector thread of one test, and ways to look at them."""

    def __init__(self, bootstrap: str, topics: TopicNames, db_url: str, workdir: Path) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.prefix = topics.events.removesuffix(".events")
        self.db_url = db_url
        self.workdir = workdir
        self.log = workdir / "processor.log"
        env = {
            **os.environ,
            "SHAPING_BOOTSTRAP": bootstrap,
            "SHAPING_TOPIC_PREFIX": self.prefix,
            "SHAPING_PARTITIONS": str(TEST_PARTITIONS),
            "SHAPING_PROCESSOR_ID": f"processor-{uuid4().hex[:8]}",
            "SHAPING_DATA_DIR": str(workdir / "data"),
            "PYTHONUNBUFFERED": "1",
        }
        with self.log.open("wb") as out:
            self.processor = subprocess.Popen(
                [sys.executable, "-m", "shaping.services.processor"],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.store = SqlProjectionStore(db_url, codec=default_codec())
        self.stop_projector = threading.Event()
        self.projector = threading.Thread(
            target=run_projector,
            args=(bootstrap, topics, self.store, default_codec()),
            kwargs={"stop": self.stop_projector},
            daemon=True,
        )
        self.projector.start()
        self.reader = TopicReader(
            bootstrap, [topics.decisions, topics.assignments, topics.dead_letter]
        )
        self.publisher = Publisher(bootstrap, topics.events)

    def close(self) -> None:
        self.stop_projector.set()
        self.projector.join(60)
        stop(self.processor, 60)
        self.reader.close()
        self.publisher.close()
        self.store.close()

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    def publish(self, events: list[Event]) -> None:
        self.publisher.events(events)

    def shaping(self, *args: str) -> tuple[int, str]:
        """Runs ``shaping ARGS`` in-process against this stack."""
        env = {
            "SHAPING_BOOTSTRAP": self.bootstrap,
            "SHAPING_TOPIC_PREFIX": self.prefix,
            "SHAPING_DB_URL": self.db_url,
            "SHAPING_OPERATOR": "ada",
            "COLUMNS": "220",
        }
        result = CliRunner().invoke(app, list(args), env=env)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.output

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        return self.store.snapshot()

    def status(self, mouse: str) -> dict[str, Any] | None:
        rows = [r for r in self.tables()["mouse_status"] if r["mouse_id"] == mouse]
        return rows[0] if rows else None

    def wait_for_status(self, mouse: str, **expected: Any) -> dict[str, Any]:
        def matches() -> dict[str, Any] | None:
            row = self.status(mouse)
            ok = row is not None and all(row[k] == v for k, v in expected.items())
            return row if ok else None

        return wait_until(matches, WAIT_S, f"status {expected} of {mouse}")

    def decision_on(self, session_id: str) -> StageTransitioned:
        [decision] = self.reader.wait_for(
            lambda _: [
                e
                for e in self.reader.events(event_type=StageTransitioned)
                if e.session_id == session_id
            ],
            WAIT_S,
            f"the decision on {session_id}",
            self.tail,
        )
        return decision
