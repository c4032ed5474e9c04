"""Versions as events: CurriculumPublished adds a version to the processor's catalog,
MouseMigrated moves a mouse (with a stage mapping for a major version), `shaping migrate
--dry-run` prints the plan, and old decisions keep the version they were made with."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shaping.schemas.events import (
    AssignmentIssued,
    CurriculumPublished,
    MouseMigrated,
    StageTransitioned,
)
from shaping.services.cli import app
from shaping.services.curricula.catalog import default_catalog
from shaping.services.curricula.engine import CompiledCurriculum
from shaping.services.curricula.migrate import migration_events, plan, published_event
from shaping.services.domain import ImpossibleEvent, TrainingCore, initial_state
from shaping.services.operator.curricula import mice_on, migration_commands
from tests.support.scripts import REPO
from tests.support.story import enrolled, next_id, run, session, trials
from tests.support.wiring import embedded_runtime, sql_store

BASIC = (REPO / "curricula" / "basic-shaping.yaml").read_text()
AT = datetime(2026, 3, 1, tzinfo=UTC)

MAJOR = (
    BASIC.replace("version: 0.1.0", "version: 1.0.0")
    .replace("s2_training", "s2_practice")
    .replace(
        "stages:\n  - name: s1_habituation",
        "migrations:\n  - from_version: '0'\n    stages: {s2_training: s2_practice}\n"
        "    description: s2 renamed\n\nstages:\n  - name: s1_habituation",
    )
)
MINOR = BASIC.replace("version: 0.1.0", "version: 0.2.0").replace(
    "accuracy(window=200) >= 0.65", "accuracy(window=200) >= 0.6"
)


@pytest.fixture
def lab_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "curricula"
    folder.mkdir()
    (folder / "basic-1.0.0.yaml").write_text(MAJOR)
    monkeypatch.setenv("SHAPING_CURRICULA_DIR", str(folder))
    return folder


def version(catalog: object, v: str) -> CompiledCurriculum:
    found = catalog.get("basic-shaping", v)  # type: ignore[attr-defined]
    assert isinstance(found, CompiledCurriculum)
    return found


def test_publishing_adds_the_version_to_the_catalog_once_and_checks_its_content() -> None:
    catalog = default_catalog([])
    core = TrainingCore(catalog)
    import yaml

    from shaping.services.curricula.validate import compile_curriculum

    minor = compile_curriculum(yaml.safe_load(MINOR))
    event = published_event(minor, version(catalog, "0.1.0"), AT, by="ada")
    assert (event.mouse_id, event.bump, event.previous_version) == (
        "curriculum:basic-shaping",
        "minor",
        "0.1.0",
    )
    state = initial_state(event.mouse_id)
    assert core.decide(state, event) == []  # it concerns no mouse
    # The core is a function of values: it compiles the version and leaves the catalog alone;
    # the caller adds it (the processor's step does, see the next test).
    added = core.publication(event)
    assert added is not None and (added.name, added.version) == ("basic-shaping", "0.2.0")
    assert catalog.versions("basic-shaping") == ["0.1.0"]
    with pytest.raises(TypeError, match="publication"):
        core.handle(state, event)
    catalog.add(added)
    assert catalog.versions("basic-shaping") == ["0.1.0", "0.2.0"]
    assert version(catalog, "0.2.0").content_hash == minor.content_hash
    assert core.publication(event) is None  # again: nothing to add
    tampered = event.model_copy(update={"content": event.content.replace("0.6", "0.5")})
    with pytest.raises(ImpossibleEvent, match="does not match its content_hash"):
        core.publication(tampered)
    other = rehashed(tampered)
    with pytest.raises(ImpossibleEvent, match="already known with other content"):
        core.publication(other)
    forged = rehashed(other.model_copy(update={"curriculum_version": "0.3.0"}))
    with pytest.raises(ImpossibleEvent, match=r"content is basic-shaping 0\.2\.0, not"):
        core.publication(forged)
    broken = rehashed(forged.model_copy(update={"content": '{"name": "basic-shaping"}'}))
    with pytest.raises(ImpossibleEvent, match="published curriculum is invalid"):
        core.decide(state, broken)
    assert catalog.versions("basic-shaping") == ["0.1.0", "0.2.0"]


def test_the_processor_step_adds_a_published_version_to_its_catalog_once() -> None:
    import yaml

    from shaping.schemas.codec import default_codec, encode_key
    from shaping.services.curricula.validate import compile_curriculum
    from shaping.services.processor.step import ProcessorStep

    catalog = default_catalog([])
    step = ProcessorStep(TrainingCore(catalog), default_codec())
    minor = compile_curriculum(yaml.safe_load(MINOR))
    event = published_event(minor, version(catalog, "0.1.0"), AT, by="ada")
    key, value = encode_key(event.mouse_id), default_codec().encode(event)
    result = step.process(None, key, value, "shaping.events", 0, 0)
    assert (result.outcome, result.state, result.outputs) == ("accepted", None, [])
    assert result.curriculum is not None and result.curriculum.version == "0.2.0"
    assert catalog.versions("basic-shaping") == ["0.1.0", "0.2.0"]
    again = step.process(None, key, value, "shaping.events", 0, 1)
    assert (again.outcome, again.curriculum) == ("accepted", None)
    tampered = rehashed(event.model_copy(update={"content": event.content.replace("0.6", "0.5")}))
    refused = step.process(None, key, default_codec().encode(tampered), "shaping.events", 0, 2)
    assert refused.rejected and refused.curriculum is None
    assert "already known with other content" in refused.outputs[0].event.reason  # type: ignore[attr-defined]


def rehashed(event: CurriculumPublished) -> CurriculumPublished:
    digest = hashlib.sha256(event.content.encode()).hexdigest()
    return event.model_copy(update={"content_hash": f"sha256:{digest}"})


def test_a_too_small_bump_cannot_be_published() -> None:
    import yaml

    from shaping.services.curricula.errors import VersionBumpTooSmall
    from shaping.services.curricula.validate import compile_curriculum

    catalog = default_catalog([])
    patch = compile_curriculum(yaml.safe_load(MINOR.replace("0.2.0", "0.1.1")))
    with pytest.raises(VersionBumpTooSmall):
        published_event(patch, version(catalog, "0.1.0"), AT)


def migrated(mouse: str, **fields: object) -> MouseMigrated:
    base = {
        "curriculum_name": "basic-shaping",
        "from_version": "0.1.0",
        "to_version": "1.0.0",
        "from_stage": "s2_training",
        "to_stage": "s2_practice",
    }
    base.update(fields)  # type: ignore[arg-type]
    return MouseMigrated(event_id=next_id(), mouse_id=mouse, occurred_at=AT, **base)  # type: ignore[arg-type]


def test_a_migrated_mouse_continues_on_the_renamed_stage_with_its_count(lab_dir: Path) -> None:
    core = TrainingCore(default_catalog())
    given = [
        enrolled("M1", start_stage="s2_training", curriculum_version="0.1.0"),
        *session("M1", "s-1", trials(60, 40), stage="s2_training"),
    ]
    state, _ = run(core, given)
    assert (state.stage, state.sessions_at_stage) == ("s2_training", 1)
    state, out = core.handle(state, migrated("M1"))
    [assignment] = out
    assert isinstance(assignment, AssignmentIssued)
    assert (assignment.stage, assignment.curriculum_version, assignment.reason) == (
        "s2_practice",
        "1.0.0",
        "migrated",
    )
    assert assignment.session_number == 2
    # The next session is judged by 1.0.0, and the run at the (renamed) stage goes on.
    for event in session("M1", "s-2", trials(60, 40), stage="s2_practice", day=1):
        state, out = core.handle(state, event)
    decision = out[0]
    assert isinstance(decision, StageTransitioned)
    assert (decision.curriculum_version, decision.from_stage, decision.sessions_at_stage) == (
        "1.0.0",
        "s2_practice",
        2,
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"from_version": "0.0.9"}, "is on version 0.1.0, not 0.0.9"),
        ({"from_stage": "s1_habituation"}, "at 's2_training' now, not 's1_habituation'"),
        ({"to_stage": "s9"}, "has no stage 's9'"),
        ({"to_version": "7.0.0"}, "no version '7.0.0'"),
        ({"curriculum_name": "reach-task"}, "is on 'basic-shaping'"),
        ({"content_hash": "sha256:00"}, "differs from the one the migration was planned with"),
    ],
)
def test_impossible_migrations_are_refused(
    lab_dir: Path, fields: dict[str, object], message: str
) -> None:
    core = TrainingCore(default_catalog())
    state, _ = run(core, [enrolled("M1", start_stage="s2_training", curriculum_version="0.1.0")])
    with pytest.raises(ImpossibleEvent, match=message):
        core.handle(state, migrated("M1", **fields))


def test_a_minor_version_takes_over_the_session_in_progress(tmp_path: Path) -> None:
    (tmp_path / "minor.yaml").write_text(MINOR)
    core = TrainingCore(default_catalog([tmp_path]))
    events = session("M1", "s-1", trials(63, 37), stage="s1_habituation")
    state, _ = run(core, [enrolled("M1", curriculum_version="0.1.0"), *events[:-1]])
    move = migrated(
        "M1", to_version="0.2.0", from_stage="s1_habituation", to_stage="s1_habituation"
    )
    state, _ = core.handle(state, move)
    state, out = core.handle(state, events[-1])
    decision = out[0]
    assert isinstance(decision, StageTransitioned)
    # 63% passes 0.2.0's threshold (60%), not 0.1.0's (65%)
    assert (decision.curriculum_version, decision.decision) == ("0.2.0", "progress")


def test_no_renaming_migration_in_the_middle_of_a_session(lab_dir: Path) -> None:
    core = TrainingCore(default_catalog())
    started = session("M1", "s-1", trials(3), stage="s2_training")[:2]
    state, _ = run(
        core, [enrolled("M1", start_stage="s2_training", curriculum_version="0.1.0"), *started]
    )
    with pytest.raises(ImpossibleEvent, match="migrate between sessions"):
        core.handle(state, migrated("M1"))


def test_migrate_plans_from_the_status_tables_then_moves_the_mice(
    lab_dir: Path, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'status.sqlite'}"
    store = sql_store(db)
    runtime = embedded_runtime(store, catalog=default_catalog())
    runtime.publish(
        [
            enrolled("A", curriculum_version="0.1.0"),
            enrolled("B", start_stage="s2_training", curriculum_version="0.1.0"),
            enrolled("C", start_stage="s3_full_task", curriculum_version="0.1.0"),
            *session("A", "a-1", trials(90, 30)),  # progresses to s2_training
        ]
    )
    result = CliRunner().invoke(
        app,
        [
            "migrate",
            "--from",
            "basic-shaping@0.1.0",
            "--to",
            "basic-shaping@1.0.0",
            "--db-url",
            db,
            "--dry-run",
        ],
    )
    assert result.exit_code == 0, result.output
    # (no broker here: a warning says the published versions were not read)
    lines = [line for line in result.output.splitlines() if not line.startswith("warning:")]
    assert lines[1].split()[:5] == ["A", "s2_training", "(0.1.0)", "s2_practice", "(1.0.0)"]
    assert lines[2].split()[:5] == ["B", "s2_training", "(0.1.0)", "s2_practice", "(1.0.0)"]
    assert lines[3].split()[:5] == ["C", "s3_full_task", "(0.1.0)", "s3_full_task", "(1.0.0)"]
    assert lines[-1] == "dry run: 3 mouse(s) would move, 0 cannot"

    catalog = runtime.step.core.catalog
    steps = plan(version(catalog, "0.1.0"), version(catalog, "1.0.0"), mice_on(db, "basic-shaping"))
    # `shaping migrate` sends one MigrateMouse per mouse; the processor answers each with
    # MouseMigrated on the events topic, then the mouse's assignment on the new version.
    commands = migration_commands(steps, version(catalog, "1.0.0"), AT, by="ada")
    assert [(c.mouse_id, c.from_stage, c.to_stage) for c in commands] == [
        ("A", "s2_training", "s2_practice"),
        ("B", "s2_training", "s2_practice"),
        ("C", "s3_full_task", "s3_full_task"),
    ]
    runtime.send_commands(commands)
    migrated = [
        event
        for event in (runtime.codec.decode(r.value) for r in runtime.log.read("shaping.events"))
        if isinstance(event, MouseMigrated)
    ]
    assert {(m.mouse_id, m.event_id, m.migrated_by) for m in migrated} == {
        (c.mouse_id, c.answer_id, "ada") for c in commands
    }
    assert {m: (a.stage, a.curriculum_version) for m, a in runtime.assignments.items()} == {
        "A": ("s2_practice", "1.0.0"),
        "B": ("s2_practice", "1.0.0"),
        "C": ("s3_full_task", "1.0.0"),
    }
    runtime.publish(session("A", "a-2", trials(150, 10), stage="s2_practice", day=1))
    tables = store.snapshot()
    status = {row["mouse_id"]: row for row in tables["mouse_status"]}
    assert (status["A"]["curriculum_version"], status["A"]["stage"]) == ("1.0.0", "s3_full_task")
    # Old decisions keep the version they were made with.
    decisions = sorted(
        (row["session_id"], row["curriculum_version"]) for row in tables["decision_log"]
    )
    assert decisions == [("a-1", "0.1.0"), ("a-2", "1.0.0")]
    store.close()


def test_a_mouse_with_no_mapping_cannot_migrate(lab_dir: Path, tmp_path: Path) -> None:
    (lab_dir / "basic-1.0.0.yaml").write_text(
        MAJOR.replace("{s2_training: s2_practice}", "{x: s2_practice}")
    )
    catalog = default_catalog()
    steps = plan(
        version(catalog, "0.1.0"),
        version(catalog, "1.0.0"),
        [
            __import__("shaping.services.curricula.migrate", fromlist=["x"]).MouseOnCurriculum(
                "B", "basic-shaping", "0.1.0", "s2_training"
            )
        ],
    )
    [step] = steps
    assert not step.possible and "no mapping" in step.note
    assert migration_events(steps, version(catalog, "1.0.0"), AT) == []
    assert migration_commands(steps, version(catalog, "1.0.0"), AT, by="ada") == []


def test_publish_dry_run_checks_the_bump_and_plans_the_automatic_moves(
    lab_dir: Path, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'status.sqlite'}"
    store = sql_store(db)
    embedded_runtime(store, catalog=default_catalog()).publish(
        [enrolled("A", curriculum_version="0.1.0")]
    )
    store.close()
    minor = tmp_path / "minor.yaml"
    minor.write_text(MINOR)
    result = CliRunner().invoke(
        app, ["curriculum", "publish", str(minor), "--db-url", db, "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    assert "basic-shaping 0.2.0 (minor)" in result.output
    assert "s1_habituation (0.1.0)" in result.output and "s1_habituation (0.2.0)" in result.output
    assert "dry run: 2 event(s) not sent" in result.output
    minor.write_text(MINOR.replace("0.2.0", "0.1.1"))
    result = CliRunner().invoke(app, ["curriculum", "publish", str(minor), "--dry-run"])
    assert result.exit_code == 1
    assert "is a patch bump, but the changes need a minor bump" in result.output


def test_published_content_compiles_to_the_same_hash() -> None:
    from shaping.services.curricula.catalog import compile_content

    for curriculum in default_catalog([]):
        assert isinstance(curriculum, CompiledCurriculum)
        content = json.dumps(curriculum.content(), sort_keys=True)
        assert compile_content(content).content_hash == curriculum.content_hash
