"""Published curriculum versions on real Kafka: `shaping curriculum publish` writes a version to
the compacted curricula topic, `shaping migrate` moves a mouse onto it, and a restarted
processor, which knows the version only from that topic, judges the mouse's next session by it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from kafka import KafkaProducer
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from shaping.schemas.codec import default_codec
from shaping.schemas.events import AssignmentIssued, EventRejected, StageTransitioned
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.curricula_topic import (
    CurriculaFollower,
    FollowingCatalog,
    publish_version,
    read_published,
    version_key,
)
from shaping.services.cli import app
from shaping.services.curricula.catalog import default_catalog
from shaping.services.curricula.errors import PublishError
from shaping.services.curricula.migrate import published_event
from shaping.services.curricula.validate import compile_curriculum
from shaping.services.operator.curricula import mice_on
from tests.support.kafka import TEST_PARTITIONS
from tests.support.kafka_io import Publisher, TopicReader
from tests.support.processes import shaping_process, stop, wait_until
from tests.support.scripts import REPO
from tests.support.story import T0, enrolled, session, trials
from tests.support.wiring import sql_store

pytestmark = pytest.mark.kafka

BASIC = (REPO / "curricula" / "basic-shaping.yaml").read_text()

# A major version known only from the curricula topic: s1_habituation is renamed s1_water and
# its rule asks for 90% accuracy (0.1.0 asks for 65%).
MAJOR = (
    BASIC.replace("version: 0.1.0", "version: 1.0.0")
    .replace("name: s1_habituation", "name: s1_water")
    .replace("name: engaged_and_accurate", "name: engaged_and_very_accurate")
    .replace("accuracy(window=200) >= 0.65", "accuracy(window=200) >= 0.9")
    .replace(
        "\nstages:\n",
        "\nmigrations:\n  - from_version: '0'\n    stages: {s1_habituation: s1_water}\n"
        "    description: s1 renamed\n\nstages:\n",
    )
)


def prefix_of(topics: TopicNames) -> str:
    return topics.events.removesuffix(".events")


@pytest.fixture
def status_db(postgres_url: str) -> Iterator[str]:
    """A database of its own on the test PostgreSQL, with the projector's tables."""
    database = f"pub_{uuid4().hex[:8]}"
    admin = create_engine(
        make_url(postgres_url).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {database}"))
    url = make_url(postgres_url).set(database=database).render_as_string(hide_password=False)
    sql_store(url).close()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE {database} WITH (FORCE)"))
    admin.dispose()


def cli(*args: str) -> str:
    """Runs `shaping ARGS` in this process; fails the test on a non-zero exit."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_a_published_version_survives_a_processor_restart(
    kafka_bootstrap: str,
    kafka_topics: TopicNames,
    status_db: str,
    tmp_path: Path,
) -> None:
    prefix = prefix_of(kafka_topics)
    target = ["--bootstrap", kafka_bootstrap, "--prefix", prefix]
    env = {
        "SHAPING_PROCESSOR_ID": f"proc-{uuid4().hex[:6]}",
        "SHAPING_PROJECTOR_ID": f"proj-{uuid4().hex[:6]}",
        "SHAPING_DATA_DIR": str(tmp_path / "data"),
        "SHAPING_PARTITIONS": str(TEST_PARTITIONS),
    }
    major = tmp_path / "basic-shaping-1.0.0.yaml"
    major.write_text(MAJOR)
    mouse = "M-published"
    with (
        TopicReader(
            kafka_bootstrap,
            [kafka_topics.decisions, kafka_topics.assignments, kafka_topics.dead_letter],
        ) as outputs,
        Publisher(kafka_bootstrap, kafka_topics.events) as events,
        shaping_process(
            ["projector", *target, "--db-url", status_db], tmp_path / "projector.log", env
        ),
    ):

        def logs() -> str:
            return "\n".join(
                f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                for p in sorted(tmp_path.glob("*.log"))
            )

        def assignments() -> list[AssignmentIssued]:
            return [e for e in outputs.events(event_type=AssignmentIssued) if e.mouse_id == mouse]

        with shaping_process(["processor", *target], tmp_path / "processor-1.log", env) as first:
            events.events([enrolled(mouse, curriculum_version="0.1.0")])
            outputs.wait_for(lambda _: assignments(), what="the enrolment", on_timeout=logs)
            wait_until(lambda: mice_on(status_db, "basic-shaping"), 60, "the status table")

            # Publish through the command line: the version goes to the curricula topic only.
            out = cli("curriculum", "publish", str(major), *target, "--db-url", status_db)
            assert "basic-shaping 1.0.0 (major)" in out
            assert f"published basic-shaping 1.0.0 to {kafka_topics.curricula}" in out
            [record] = read_published(
                kafka_bootstrap, kafka_topics.curricula, codec=default_codec()
            )
            assert (record.curriculum_version, record.bump) == ("1.0.0", "major")

            # The dry run finds 1.0.0 on the topic (no file has it) and prints the plan.
            migrate = ["migrate", "--from", "basic-shaping@0.1.0", "--to", "basic-shaping@1.0.0"]
            out = cli(*migrate, *target, "--db-url", status_db, "--dry-run")
            [row] = [line for line in out.splitlines() if line.startswith(mouse)]
            assert row.split()[1:5] == ["s1_habituation", "(0.1.0)", "s1_water", "(1.0.0)"]
            assert "dry run: 1 mouse(s) would move, 0 cannot" in out
            assert len(assignments()) == 1  # nothing was sent

            out = cli(*migrate, *target, "--db-url", status_db, "--by", "ada")
            # One MigrateMouse command, answered by MouseMigrated and the new assignment.
            assert f"sent 1 MigrateMouse command(s) to {kafka_topics.commands}" in out
            assert f"migration of {mouse} honoured" in out, out
            assert "stage s1_water" in out, out
            [moved] = outputs.wait_for(
                lambda _: [a for a in assignments() if a.reason == "migrated"],
                what="the migrated assignment",
                on_timeout=logs,
            )
            assert (moved.curriculum_version, moved.stage) == ("1.0.0", "s1_water")

            # A patch of the same major version moves the mice on it by itself: one
            # MigrateMouse command each, answered by the processor.
            wait_until(
                lambda: (
                    [m.curriculum_version for m in mice_on(status_db, "basic-shaping")] == ["1.0.0"]
                ),
                60,
                "the status table on 1.0.0",
            )
            patch = tmp_path / "basic-shaping-1.0.1.yaml"
            patch.write_text(
                MAJOR.replace("version: 1.0.0", "version: 1.0.1").replace(
                    "description: Built-in", "description: The built-in"
                )
            )
            out = cli("curriculum", "publish", str(patch), *target, "--db-url", status_db)
            assert "basic-shaping 1.0.1 (patch)" in out, out
            assert f"migration of {mouse} honoured" in out, out
            assert f"sent 1 MigrateMouse command(s) to {kafka_topics.commands}; 0 refused" in out
            [patched] = outputs.wait_for(
                lambda _: [a for a in assignments() if a.curriculum_version == "1.0.1"],
                what="the assignment on the patch",
                on_timeout=logs,
            )
            assert (patched.reason, patched.stage) == ("migrated", "s1_water")
            assert stop(first) == 0, logs()

        # While no processor runs, the mouse has a session at the renamed stage; a fresh
        # processor (same id: state from its changelog) must know 1.0.0 before judging it.
        events.events(session(mouse, f"{mouse}-s1", trials(96, 24), stage="s1_water", day=1))
        with shaping_process(["processor", *target], tmp_path / "processor-2.log", env):
            [decision] = outputs.wait_for(
                lambda _: [
                    e for e in outputs.events(event_type=StageTransitioned) if e.mouse_id == mouse
                ],
                what="the decision after the restart",
                on_timeout=logs,
            )
            after = outputs.wait_for(
                lambda _: [a for a in assignments() if a.causation_id == decision.event_id],
                what="the next assignment",
                on_timeout=logs,
            )
        rejected = [e for e in outputs.events(event_type=EventRejected) if e.mouse_id == mouse]
        assert rejected == []
        # 80% accuracy: 0.1.0 would progress; 1.0.0 (and its patch) asks for 90%: it stays.
        assert (decision.curriculum_version, decision.from_stage, decision.decision) == (
            "1.0.1",
            "s1_water",
            "stay",
        )
        assert [r.rule for r in decision.rule_evaluations] == ["engaged_and_very_accurate"]
        assert (after[0].curriculum_version, after[0].stage) == ("1.0.1", "s1_water")


def test_publish_refuses_a_version_already_published_with_other_content(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
) -> None:
    target = ["--bootstrap", kafka_bootstrap, "--prefix", prefix_of(kafka_topics)]
    db = f"sqlite:///{tmp_path / 'status.sqlite'}"
    sql_store(db).close()
    major = tmp_path / "major.yaml"
    major.write_text(MAJOR)
    cli("curriculum", "publish", str(major), *target, "--db-url", db)
    out = cli("curriculum", "publish", str(major), *target, "--db-url", db)
    assert "basic-shaping 1.0.0 was already published (same content)" in out

    major.write_text(MAJOR.replace(">= 0.9", ">= 0.95"))
    result = CliRunner().invoke(app, ["curriculum", "publish", str(major), *target, "--db-url", db])
    assert result.exit_code == 1, result.output
    assert "basic-shaping 1.0.0 is already known with other content" in result.output
    assert "Traceback" not in result.output
    # and the library call refuses it too, whatever the caller checked before
    changed = compile_curriculum(__import__("yaml").safe_load(major.read_text()))
    event = published_event(changed, None, T0)
    with pytest.raises(PublishError, match="already published with other content"):
        publish_version(kafka_bootstrap, kafka_topics.curricula, event, default_codec())
    assert len(read_published(kafka_bootstrap, kafka_topics.curricula, codec=default_codec())) == 1


def test_a_miss_reads_the_topic_and_bad_records_are_left_out(
    kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    catalog = FollowingCatalog.copy_of(default_catalog([]))
    follower = CurriculaFollower(
        kafka_bootstrap, kafka_topics.curricula, catalog, codec=default_codec()
    )
    try:
        assert follower.load() == 0
        assert catalog.versions("basic-shaping") == ["0.1.0"]
        # Published after the load, and the following thread is not running: the lookup
        # misses without any I/O and remembers it; the processor then catches up off its
        # event loop and looks again.
        major = compile_curriculum(__import__("yaml").safe_load(MAJOR))
        event = published_event(major, catalog.get("basic-shaping", "0.1.0"), T0)  # type: ignore[arg-type]
        forged = event.model_copy(update={"curriculum_version": "2.0.0", "event_id": "forged"})
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        try:
            producer.send(
                kafka_topics.curricula,
                key=version_key("basic-shaping", "2.0.0"),
                value=default_codec().encode(forged),
            ).get(timeout=30)
            producer.send(kafka_topics.curricula, key=b"junk", value=b"not an event").get(30)
        finally:
            producer.close()
        assert publish_version(kafka_bootstrap, kafka_topics.curricula, event, default_codec())
        with pytest.raises(Exception, match=r"no version '1\.0\.0'"):
            catalog.get("basic-shaping", "1.0.0")
        assert catalog.take_missed() == {("basic-shaping", "1.0.0")}
        assert catalog.take_missed() == set()
        follower.catch_up()
        found = catalog.get("basic-shaping", "1.0.0")
        assert getattr(found, "content_hash", None) == major.content_hash
        assert catalog.versions("basic-shaping") == ["0.1.0", "1.0.0"]
        problems = "\n".join(follower.problems)
        assert "content is basic-shaping 1.0.0, not basic-shaping 2.0.0" in problems
        assert "does not decode" in problems
        with pytest.raises(Exception, match=r"no version '2\.0\.0'"):
            catalog.get("basic-shaping", "2.0.0")

        # Another content under a version already known: the first one stays.
        other = compile_curriculum(__import__("yaml").safe_load(MAJOR.replace("0.9", "0.95")))
        rewritten = published_event(other, None, T0)
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        try:
            producer.send(
                kafka_topics.curricula,
                key=version_key("basic-shaping", "1.0.0"),
                value=default_codec().encode(rewritten),
            ).get(timeout=30)
        finally:
            producer.close()
        follower.catch_up()
        assert catalog.versions("basic-shaping") == ["0.1.0", "1.0.0"]
        kept = catalog.get("basic-shaping", "1.0.0")
        assert getattr(kept, "content_hash", None) == major.content_hash
        [conflict] = catalog.rejected
        assert "basic-shaping 1.0.0 is already known with other content" in conflict
    finally:
        follower.stop()
