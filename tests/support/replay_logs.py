"""Logs a running system leaves behind, for the replay tests: a small lab trained through the
embedded runtime, refused and foreign records added, written as an ``events.jsonl``."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from shaping.rig.sim.lab import LabPlan, run_lab
from shaping.schemas.codec import default_codec
from shaping.schemas.events import (
    EventRejected,
    MouseEnrolled,
    SessionStarted,
    StageOverridden,
)
from shaping.services.cli import app
from shaping.services.embedded.log import LogRecord
from shaping.services.embedded.runtime import EmbeddedRuntime
from tests.support.wiring import embedded_runtime, sql_store

PLAN = LabPlan(n_mice=3, n_rigs=3, n_days=4, seed=7)
CODEC = default_codec()
LATER = datetime(2026, 2, 1, tzinfo=UTC)


def invoke(args: list[str], env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, args, env={"COLUMNS": "200", **(env or {})})


def write_log(path: Path, records: Iterable[LogRecord]) -> None:
    """An ``events.jsonl`` of these records (position, key, base64 value: what replay reads;
    the decoded copy is left out, so writing never depends on what the bytes hold)."""
    with path.open("w", encoding="utf-8") as out:
        for r in records:
            line = {
                "topic": r.topic,
                "partition": r.partition,
                "offset": r.offset,
                "key": r.key.decode("utf-8") if r.key is not None else None,
                "value_b64": base64.b64encode(r.value or b"").decode("ascii"),
                "event": None,
            }
            out.write(json.dumps(line, sort_keys=True) + "\n")


@dataclass
class Recorded:
    folder: Path
    runtime: EmbeddedRuntime

    @property
    def log(self) -> Path:
        return self.folder / "events.jsonl"

    @property
    def db(self) -> Path:
        return self.folder / "shaping.sqlite"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db}"

    def replay(self, *extra: str, env: dict[str, str] | None = None) -> Any:
        args = ["replay", "--events-log", str(self.log), "--db-url", self.db_url, *extra]
        return invoke(args, env)

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        store = sql_store(self.db_url)
        try:
            return store.snapshot()
        finally:
            store.close()

    def files(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.folder.iterdir())}


def record(
    folder: Path,
    more: Callable[[EmbeddedRuntime], None] | None = None,
    keep: Callable[[LogRecord], bool] | None = None,
) -> Recorded:
    """The plan trained through the embedded runtime (the processor's step and the projector's
    store), then ``more`` done to it; the log file keeps the records ``keep`` accepts."""
    folder.mkdir(parents=True, exist_ok=True)
    store = sql_store(f"sqlite:///{folder / 'shaping.sqlite'}")
    try:
        runtime = embedded_runtime(store)
        run_lab(PLAN, runtime)
        if more is not None:
            more(runtime)
    finally:
        store.close()
    recorded = Recorded(folder, runtime)
    write_log(recorded.log, [r for r in runtime.log.records() if keep is None or keep(r)])
    return recorded


def refused_and_foreign(runtime: EmbeddedRuntime) -> None:
    """What a live system meets besides training: refused Avro events (an enrolment of an
    enrolled mouse, an override to a stage that does not exist, a session at such a stage),
    bytes that are no Shaping event on the events topic, and on the output topics."""
    topics = runtime.topics
    runtime.publish(
        [
            MouseEnrolled(
                event_id="enrolled-again",
                mouse_id="M001",
                occurred_at=LATER,
                curriculum_name="basic-shaping",
            ),
            StageOverridden(
                event_id="override-nowhere",
                mouse_id="M002",
                occurred_at=LATER,
                to_stage="no_such_stage",
                reason="typo",
            ),
            SessionStarted(
                event_id="session-nowhere",
                mouse_id="M003",
                rig_id="rig-3",
                session_id="M003-nowhere",
                occurred_at=LATER + timedelta(minutes=1),
                stage="no_such_stage",
                curriculum_name="basic-shaping",
                curriculum_version="0.1.0",
                parameters={},
            ),
        ]
    )
    runtime.publish_raw(b"M001", b"\xc3\x01" + bytes(8) + b"\xff\xfe not a record")
    runtime.publish_raw(b"M002", b"\xff\xfe\xfd\x00 not avro at all")
    runtime.publish_raw(b"M003", b"")
    runtime.log.append(topics.decisions, b"M001", b"\x00\xff\xc3 no decision")
    runtime.log.append(topics.dead_letter, None, b"\xc3\x01\xff\xff\xff")
    runtime.log.append(topics.assignments, b"M002", b"\x80")
    runtime.project_pending()


def dead_letters(runtime: EmbeddedRuntime) -> list[EventRejected]:
    codec = default_codec()
    found = []
    for r in runtime.log.read(runtime.topics.dead_letter):
        try:
            event = codec.decode(r.value)
        except Exception:
            continue
        if isinstance(event, EventRejected):
            found.append(event)
    return found


# -- any log content --------------------------------------------------------------------------
