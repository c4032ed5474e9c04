"""Replay and what-if on the logs a running system leaves behind, in embedded mode (an event
log file and a SQLite file, no broker):

- dead letters that hold arbitrary bytes (every refused Avro event starts with ``C3 01``),
  records on any topic that are no Shaping event, events the processor refused;
- enrolments that name no curriculum version, after a newer major version was added to the
  lab's folder (``SHAPING_CURRICULA_DIR``) and no mouse was migrated to it; also after the
  compacted assignments topic dropped the assignments the enrolments caused;
- ``--dry-run`` writes nothing at all: not the status database, not the folder beside it.
"""

from __future__ import annotations

import csv
import json
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

from shaping.schemas.codec import default_codec
from shaping.schemas.events import (
    AssignmentIssued,
    EventRejected,
    MouseEjected,
    MouseEnrolled,
    MouseMigrated,
    SessionStarted,
)
from shaping.services.curricula.catalog import default_catalog
from shaping.services.domain.core import derived_event_id
from shaping.services.embedded.runtime import EmbeddedRuntime
from shaping.services.operator.replay.log import SourceRecord, read_jsonl
from shaping.services.operator.replay.pins import EnrolmentPins
from shaping.services.operator.replay.reconcile import content_of
from shaping.services.operator.whatif import run_whatif
from tests.support.curricula import major_version
from tests.support.replay_logs import (
    CODEC,
    LATER,
    PLAN,
    Recorded,
    dead_letters,
    invoke,
    record,
    refused_and_foreign,
)
from tests.support.wiring import sql_store


def test_content_of_a_dead_letter_shows_its_bytes_in_hex() -> None:
    rejected = EventRejected(
        event_id="r1",
        mouse_id="M001",
        occurred_at=LATER,
        reason="refused",
        error_kind="impossible",
        source_topic="shaping.events",
        source_partition=0,
        source_offset=7,
        original_key=b"\xff",
        original_value=b"\xc3\x01\x00\xff",
        rejected_by="processor",
    )
    content = json.loads(content_of(rejected))
    assert content["original_value"] == "c30100ff"
    assert content["original_key"] == "ff"
    assert "event_id" not in content


def test_replay_and_whatif_take_refused_and_foreign_records(tmp_path: Path) -> None:
    recorded = record(tmp_path / "lab", refused_and_foreign)
    refused = dead_letters(recorded.runtime)
    # Every refused Avro event is kept with bytes that are not UTF-8.
    assert {r.causation_id for r in refused} >= {
        "enrolled-again",
        "override-nowhere",
        "session-nowhere",
    }
    assert all(r.original_value[:2] == b"\xc3\x01" for r in refused if r.causation_id)
    tables = recorded.tables()
    files = recorded.files()

    dry = recorded.replay("--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "no change" in dry.stdout, dry.stdout
    assert recorded.files() == files  # nothing written, not even a scratch file beside it

    again = recorded.replay()
    assert again.exit_code == 0, again.output
    assert "no change" in again.stdout
    assert recorded.tables() == tables
    assert recorded.files() == files

    out_csv = tmp_path / "whatif.csv"
    whatif = invoke(
        [
            "whatif",
            "--events-log",
            str(recorded.log),
            "--curriculum",
            "basic-shaping@0.1.0",
            "--out-csv",
            str(out_csv),
        ]
    )
    assert whatif.exit_code == 0, whatif.output
    with out_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == PLAN.n_mice * PLAN.n_days
    assert all(r["differs"] == "False" for r in rows)
    assert "Traceback" not in dry.output + again.output + whatif.output


def test_replay_publishes_missing_dead_letters_into_the_log_file(tmp_path: Path) -> None:
    """The dead letters never reached the log (say the processor stopped before it wrote
    them): replay appends them, with their bytes, and the log still reads; a second replay
    changes nothing."""
    topics_dead_letter = "shaping.dead-letter"
    recorded = record(
        tmp_path / "lab", refused_and_foreign, keep=lambda r: r.topic != topics_dead_letter
    )
    refused = {r.event_id for r in dead_letters(recorded.runtime)}
    assert refused

    result = recorded.replay()
    assert result.exit_code == 0, result.output
    assert f"published {len(refused)} events" in result.stdout, result.stdout
    records = read_jsonl(recorded.log)
    appended = [r for r in records if r.topic == topics_dead_letter]
    assert len(appended) == len(refused)
    codec = default_codec()
    for r in appended:
        event = codec.decode(r.value)
        assert isinstance(event, EventRejected) and event.event_id in refused
    lines = [json.loads(line) for line in recorded.log.read_text().splitlines()]
    shown = [line["event"] for line in lines if line["topic"] == topics_dead_letter]
    refused_avro = [e for e in shown if e["causation_id"]]
    assert refused_avro
    assert all(bytes.fromhex(e["original_value"])[:2] == b"\xc3\x01" for e in refused_avro)

    again = recorded.replay()
    assert again.exit_code == 0, again.output
    assert "no change" in again.stdout


# -- enrolments pinned to the version they were accepted on ---------------------------------


def sessions_per_mouse(recorded: Recorded) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in recorded.tables()["session_summaries"]:
        if row["decision"] is not None:
            counts[row["mouse_id"]] = counts.get(row["mouse_id"], 0) + 1
    return counts


def assert_whatif_shows_the_live_versions(
    recorded: Recorded, tmp_path: Path, env: dict[str, str]
) -> None:
    out_csv = tmp_path / "whatif-v2.csv"
    result = invoke(
        [
            "whatif",
            "--events-log",
            str(recorded.log),
            "--curriculum",
            "basic-shaping@2.0.0",
            "--out-csv",
            str(out_csv),
        ],
        env,
    )
    assert result.exit_code == 0, result.output
    with out_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["curriculum_live"] for r in rows} == {"basic-shaping@0.1.0"}
    assert {r["curriculum_new"] for r in rows} == {"basic-shaping@2.0.0"}
    per_mouse: dict[str, int] = {}
    for row in rows:
        per_mouse[row["mouse_id"]] = per_mouse.get(row["mouse_id"], 0) + 1
    assert per_mouse == sessions_per_mouse(recorded)
    assert "basic-shaping@0.1.0" in result.stdout


def test_a_new_major_version_in_the_folder_moves_no_mouse(tmp_path: Path) -> None:
    recorded = record(tmp_path / "lab")
    enrolments = [
        e
        for e in (
            default_codec().decode(r.value) for r in recorded.runtime.log.read("shaping.events")
        )
        if isinstance(e, MouseEnrolled)
    ]
    assert enrolments and all(e.curriculum_version is None for e in enrolments)
    env = {"SHAPING_CURRICULA_DIR": str(major_version(tmp_path / "folder"))}
    files = recorded.files()

    dry = recorded.replay("--dry-run", env=env)
    assert dry.exit_code == 0, dry.output
    assert "no change" in dry.stdout, dry.stdout
    assert "would publish" not in dry.stdout
    real = recorded.replay(env=env)
    assert real.exit_code == 0, real.output
    assert "no change" in real.stdout, real.stdout
    assert recorded.files() == files

    assert_whatif_shows_the_live_versions(recorded, tmp_path, env)


def test_versions_stay_pinned_after_compaction_and_with_lost_tables(tmp_path: Path) -> None:
    """The compacted assignments topic kept only each mouse's latest assignment (none of those
    the enrolments caused) and the status tables are lost: the sessions the mice ran still
    say which version they were on."""
    latest: dict[bytes | None, int] = {}

    def compacted(runtime: EmbeddedRuntime) -> None:
        for r in runtime.log.read(runtime.topics.assignments):
            latest[r.key] = r.offset

    recorded = record(
        tmp_path / "lab",
        compacted,
        keep=lambda r: r.topic != "shaping.assignments" or latest.get(r.key) == r.offset,
    )
    codec = default_codec()
    kept = [
        codec.decode(r.value) for r in read_jsonl(recorded.log) if r.topic == "shaping.assignments"
    ]
    assert kept and all(isinstance(a, AssignmentIssued) and a.reason != "enrolled" for a in kept)
    env = {"SHAPING_CURRICULA_DIR": str(major_version(tmp_path / "folder"))}
    sessions = sessions_per_mouse(recorded)

    assert_whatif_shows_the_live_versions(recorded, tmp_path, env)
    # Library call without the output topics: the sessions alone pin the versions.
    whatif = run_whatif(
        read_jsonl(recorded.log),
        "shaping.events",
        _catalog_with(env),
        default_catalog().get("basic-shaping", "0.1.0"),
        codec=CODEC,
    )
    assert {m.curriculum_live for m in whatif.mice} == {"basic-shaping@0.1.0"}
    assert {m.mouse_id: len(m.rows) for m in whatif.mice} == sessions

    # Tables lost: an empty database. Replay rebuilds them on the recorded versions.
    recorded.db.unlink()
    sql_store(recorded.db_url).close()
    rebuilt = recorded.replay(env=env)
    assert rebuilt.exit_code == 0, rebuilt.output
    status = recorded.tables()["mouse_status"]
    assert {r["curriculum_version"] for r in status} == {"0.1.0"}
    assert sessions_per_mouse(recorded) == sessions


def _catalog_with(env: dict[str, str]) -> Any:
    return default_catalog([Path(env["SHAPING_CURRICULA_DIR"])])


# -- where a pin comes from -------------------------------------------------------------------


def _enrolment(event_id: str = "enrol-1", mouse: str = "M001") -> MouseEnrolled:
    return MouseEnrolled(
        event_id=event_id, mouse_id=mouse, occurred_at=LATER, curriculum_name="basic-shaping"
    )


def _assignment(cause: str, version: str, event_id: str = "a-1") -> AssignmentIssued:
    return AssignmentIssued(
        event_id=event_id,
        mouse_id="M001",
        occurred_at=LATER,
        causation_id=cause,
        stage="s1_habituation",
        parameters={},
        curriculum_name="basic-shaping",
        curriculum_version=version,
        reason="enrolled",
        sessions_at_stage=0,
        session_number=1,
    )


def _started(event_id: str, version: str, minutes: int = 1) -> SessionStarted:
    return SessionStarted(
        event_id=event_id,
        mouse_id="M001",
        rig_id="rig-1",
        session_id=f"M001-{event_id}",
        occurred_at=LATER + timedelta(minutes=minutes),
        stage="s1_habituation",
        curriculum_name="basic-shaping",
        curriculum_version=version,
        parameters={},
    )


def _inputs(*events: Any) -> list[Any]:
    codec = default_codec()
    return [
        SourceRecord("shaping.events", 0, n, e.mouse_id.encode(), codec.encode(e))
        for n, e in enumerate(events)
    ]


def test_pins_come_from_what_the_log_recorded() -> None:
    enrol = _enrolment()
    # The assignment the enrolment caused.
    assert (
        EnrolmentPins([_assignment(enrol.event_id, "0.1.0")], codec=CODEC).version_for(enrol)
        == "0.1.0"
    )
    # A correction from an earlier replay does not outweigh the processor's own assignment.
    corrected = _assignment(enrol.event_id, "2.0.0", "a-2").model_copy(update={"supersedes": "a-1"})
    both = [_assignment(enrol.event_id, "0.1.0"), corrected]
    assert EnrolmentPins(both, codec=CODEC).version_for(enrol) == "0.1.0"
    # Its row in the live stage history, by the assignment's derived id.
    history = {
        "stage_history": [
            {
                "event_id": derived_event_id(enrol, "AssignmentIssued"),
                "decision": "enrolled",
                "curriculum_name": "basic-shaping",
                "curriculum_version": "0.1.0",
            }
        ]
    }
    assert EnrolmentPins(tables=history, codec=CODEC).version_for(enrol) == "0.1.0"
    # A version the enrolment names is its own.
    named = enrol.model_copy(update={"curriculum_version": "0.3.0"})
    assert (
        EnrolmentPins([_assignment(enrol.event_id, "0.1.0")], codec=CODEC).version_for(named)
        == "0.3.0"
    )

    # Read ahead: the mouse's first session says the version; the records read ahead are
    # still handed out in order.
    pins = EnrolmentPins(codec=CODEC)
    records = _inputs(enrol, _started("s-1", "0.1.0"), _started("s-2", "0.9.0", 90))
    inputs = pins.read(records)
    assert next(inputs) is records[0]
    assert pins.version_for(enrol) == "0.1.0"
    assert list(inputs) == records[1:]

    # A migration first: the version it moved the mouse from.
    migrated = MouseMigrated(
        event_id="mig-1",
        mouse_id="M001",
        occurred_at=LATER,
        curriculum_name="basic-shaping",
        from_version="0.1.0",
        to_version="0.2.0",
        from_stage="s1_habituation",
        to_stage="s1_habituation",
    )
    pins = EnrolmentPins(codec=CODEC)
    inputs = pins.read(_inputs(enrol, migrated, _started("s-1", "0.2.0")))
    next(inputs)
    assert pins.version_for(enrol) == "0.1.0"

    # Ejected, then enrolled again before any session: this enrolment left no trace.
    ejected = MouseEjected(event_id="ej-1", mouse_id="M001", occurred_at=LATER, reason="ill")
    pins = EnrolmentPins(codec=CODEC)
    inputs = pins.read(_inputs(enrol, ejected, _enrolment("enrol-2"), _started("s-1", "0.1.0")))
    next(inputs)
    assert pins.version_for(enrol) is None
    # An enrolment the processor refused (the mouse was enrolled) does not end the search.
    pins = EnrolmentPins(codec=CODEC)
    inputs = pins.read(_inputs(enrol, _enrolment("enrol-2"), _started("s-1", "0.1.0")))
    next(inputs)
    assert pins.version_for(enrol) == "0.1.0"

    # An enrolment the processor refused is not pinned; a session it refused says nothing.
    refusal = EventRejected(
        event_id="r-1",
        mouse_id="M001",
        occurred_at=LATER,
        causation_id=enrol.event_id,
        reason="already enrolled",
        error_kind="impossible",
        source_topic="shaping.events",
        source_partition=0,
        source_offset=0,
        original_value=b"\xc3\x01",
        rejected_by="processor",
    )
    pins = EnrolmentPins([refusal], codec=CODEC)
    inputs = pins.read(_inputs(enrol, _started("s-1", "0.1.0")))
    next(inputs)
    assert pins.version_for(enrol) is None
    refused_session = refusal.model_copy(update={"event_id": "r-2", "causation_id": "s-1"})
    pins = EnrolmentPins([refused_session], codec=CODEC)
    inputs = pins.read(_inputs(enrol, _started("s-1", "0.9.0"), _started("s-2", "0.1.0", 90)))
    next(inputs)
    assert pins.version_for(enrol) == "0.1.0"


def test_mutated_and_random_records_on_every_topic_stop_nothing(tmp_path: Path) -> None:
    """Records of every topic with bytes flipped, cut or replaced, and random bytes behind the
    Avro marker and a real fingerprint: replay (dry and real) and what-if run to the end."""
    rng = random.Random(11)

    def mangle(runtime: EmbeddedRuntime) -> None:
        refused_and_foreign(runtime)
        originals = [r for r in runtime.log.records() if r.value]
        for n in range(120):
            base = rng.choice(originals)
            value = bytearray(base.value)
            how = n % 4
            if how == 0:  # a flipped byte in the body
                i = rng.randrange(10, len(value)) if len(value) > 10 else 0
                value[i] ^= 1 << rng.randrange(8)
            elif how == 1:  # cut short
                value = value[: rng.randrange(len(value))]
            elif how == 2:  # a real header, a random body
                value = value[:10] + bytearray(rng.randbytes(rng.randrange(1, 60)))
            else:  # anything
                value = bytearray(rng.randbytes(rng.randrange(0, 40)))
            topics = runtime.topics
            topic = rng.choice(
                [
                    base.topic,
                    topics.events,
                    topics.accepted,
                    topics.decisions,
                    topics.assignments,
                    topics.dead_letter,
                ]
            )
            if topic == topics.events:
                runtime.publish_raw(base.key, bytes(value))
            else:
                runtime.log.append(topic, base.key, bytes(value))
        runtime.project_pending()

    recorded = record(tmp_path / "lab", mangle)
    results = [
        recorded.replay("--dry-run"),
        recorded.replay(),
        recorded.replay(),
        invoke(
            ["whatif", "--events-log", str(recorded.log), "--curriculum", "basic-shaping@0.1.0"]
        ),
    ]
    for result in results:
        assert result.exit_code == 0, result.output
        assert "Traceback" not in result.output
    assert "no change" in results[2].stdout, results[2].stdout
