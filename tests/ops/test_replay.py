"""``shaping replay`` on real parts: the faust processor and the projector run as separate
processes against Kafka and PostgreSQL while simulated rigs train mice; then replay rebuilds
the processor's state and the status tables from offset 0 and switches over.

And in embedded mode, on the event log and SQLite file ``shaping demo`` leaves.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from kafka import KafkaAdminClient
from sqlalchemy import create_engine, make_url, text
from typer.testing import CliRunner

from shaping.rig.link.kafka import KafkaRigTransport
from shaping.rig.sim.lab import LabPlan, run_lab
from shaping.schemas.codec import default_codec
from shaping.schemas.events import (
    AssignmentIssued,
    MouseEnrolled,
    StageOverridden,
    StageTransitioned,
)
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.topics import ensure_topics
from shaping.services.cli import app
from shaping.services.embedded.demo import run_demo
from shaping.services.operator.replay.log import kafka_offsets
from shaping.services.processor.state_store import changelog_topic, decode_state
from shaping.services.projector.runner import run_projector
from tests.support.curricula import major_version
from tests.support.kafka_io import Publisher, ReadRecord, TopicReader
from tests.support.processes import shaping_process, stop, wait_until
from tests.support.scripts import REPO
from tests.support.wiring import sql_store

PLAN = LabPlan(n_mice=4, n_rigs=4, n_days=5, seed=7)
SESSIONS = PLAN.n_mice * PLAN.n_days
SHIPPED = REPO / "curricula" / "basic-shaping.yaml"
S2_RULE = "accuracy(window=200) >= 0.75 and session_trials >= 150"


def strict_curricula(folder: Path) -> Path:
    """A "bug fix" of basic-shaping (same version): nobody leaves s2_training any more."""
    folder.mkdir(parents=True, exist_ok=True)
    content = SHIPPED.read_text()
    assert S2_RULE in content
    (folder / "basic-shaping.yaml").write_text(
        content.replace(S2_RULE, "accuracy(window=200) >= 0.75 and session_trials >= 100000")
    )
    return folder


def invoke(args: list[str], env: dict[str, str] | None = None) -> Any:
    """Runs ``shaping ARGS`` in this process (stdout and stderr apart)."""
    runner = CliRunner()
    return runner.invoke(app, args, env={"COLUMNS": "200", **(env or {})})


def read_to_end(bootstrap: str, topics: list[str]) -> list[ReadRecord]:
    """Every record still on the topics, read up to their current ends (a compacted topic
    may have dropped older records, never the last one)."""
    ends = {tp: end for tp, (_, end) in kafka_offsets(bootstrap, topics).items() if end}
    with TopicReader(bootstrap, topics) as reader:
        reader.wait_for(
            lambda recs: (
                {
                    (r.topic, r.partition)
                    for r in recs
                    if r.offset == ends[(r.topic, r.partition)] - 1
                }
                == set(ends)
            ),
            what=f"every record of {topics}",
        )
        return list(reader.records)


def decisions_by_session(tables: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {str(row["session_id"]): row for row in tables["decision_log"]}


# -- Kafka + PostgreSQL --------------------------------------------------------------------------


@dataclass
class Lab:
    bootstrap: str
    topics: TopicNames
    prefix: str
    processor_id: str
    db_url: str
    tmp: Path
    live: dict[str, list[dict[str, Any]]]
    refusal: Any
    # Dry runs while the processor and the projector ran: the plain one, one with a new major
    # version in the lab's folder, one as a PostgreSQL role that may only read; and what the
    # broker and the database looked like before and after them.
    dry_runs: dict[str, Any] = field(default_factory=dict)
    observed: tuple[Any, Any] = (None, None)

    def args(self) -> list[str]:
        return [
            "replay",
            "--bootstrap",
            self.bootstrap,
            "--prefix",
            self.prefix,
            "--db-url",
            self.db_url,
            "--processor-id",
            self.processor_id,
            "--projector-id",
            "projector",
        ]

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        store = sql_store(self.db_url)
        try:
            return store.snapshot()
        finally:
            store.close()

    def ends(self, topics: list[str]) -> dict[tuple[str, int], int]:
        return {tp: end for tp, (_, end) in kafka_offsets(self.bootstrap, topics).items()}

    def outputs(self) -> list[str]:
        return [self.topics.decisions, self.topics.assignments, self.topics.dead_letter]

    def committed(self) -> dict[int, int]:
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="replay-tests")
        try:
            offsets = admin.list_group_offsets(self.processor_id)[self.processor_id]
        finally:
            admin.close()
        return {
            tp.partition: o.offset for tp, o in offsets.items() if tp.topic == self.topics.events
        }

    def processor(self, log: str, env: dict[str, str] | None = None) -> Any:
        return shaping_process(
            ["processor", "--bootstrap", self.bootstrap, "--prefix", self.prefix],
            self.tmp / log,
            {
                "SHAPING_PROCESSOR_ID": self.processor_id,
                "SHAPING_DATA_DIR": str(self.tmp),
                **(env or {}),
            },
        )


def observe(lab: Lab) -> dict[str, Any]:
    """What a read-only command must leave as it was: the end of every topic on the broker
    (the deployment's and the processor's changelogs), the consumer groups and the processor's
    committed offsets, and the database's schemas and tables."""
    admin = KafkaAdminClient(bootstrap_servers=lab.bootstrap, client_id="replay-tests")
    try:
        topics = sorted(t for t in admin.list_topics() if not t.startswith("__"))
        groups = sorted(str(g[0] if isinstance(g, tuple) else g) for g in admin.list_groups())
    finally:
        admin.close()
    engine = create_engine(lab.db_url)
    try:
        with engine.connect() as conn:
            schemas = sorted(conn.execute(text("SELECT nspname FROM pg_namespace")).scalars())
    finally:
        engine.dispose()
    return {
        "ends": lab.ends(topics),
        "groups": groups,
        "committed": lab.committed(),
        "schemas": schemas,
        "tables": lab.snapshot(),
    }


def read_only_url(db_url: str) -> str:
    """The URL of a new role that may read the database's tables and create nothing."""
    role = f"ro_{uuid4().hex[:8]}"
    database = make_url(db_url).database
    engine = create_engine(db_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD 'read-only'"))
            conn.execute(text(f'REVOKE CREATE, TEMPORARY ON DATABASE "{database}" FROM PUBLIC'))
            conn.execute(text("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
            conn.execute(text(f'GRANT CONNECT ON DATABASE "{database}" TO {role}'))
            conn.execute(text(f"GRANT USAGE ON SCHEMA public TO {role}"))
            conn.execute(text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"))
    finally:
        engine.dispose()
    url = make_url(db_url).set(username=role, password="read-only")
    return url.render_as_string(hide_password=False)


def refused_avro_events(at: datetime) -> list[Any]:
    """Events the processor refuses; their dead letters hold Avro bytes (C3 01 ...), which are
    not UTF-8: an enrolment of an enrolled mouse and an override to a stage that does not
    exist."""
    return [
        MouseEnrolled(
            event_id=f"enrolled-again-{uuid4().hex[:6]}",
            mouse_id="M001",
            occurred_at=at,
            curriculum_name="basic-shaping",
        ),
        StageOverridden(
            event_id=f"override-nowhere-{uuid4().hex[:6]}",
            mouse_id="M002",
            occurred_at=at,
            to_stage="no_such_stage",
            reason="typo",
        ),
    ]


def fresh_database(server_url: str) -> str:
    """A database of its own on the session's PostgreSQL (other modules reset theirs)."""
    name = f"replay_{uuid4().hex[:8]}"
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def settled(db_url: str, refused: int = 0) -> dict[str, list[dict[str, Any]]] | None:
    """The tables once every session's decision and next assignment are projected (and the
    dead letters of ``refused`` refused events)."""
    store = sql_store(db_url)
    try:
        tables = store.snapshot()
    finally:
        store.close()
    status = tables["mouse_status"]
    done = len(tables["decision_log"]) == SESSIONS and len(status) == PLAN.n_mice
    done = done and len(tables["rejected_events"]) == refused
    if done and all(row["next_session_number"] == PLAN.n_days + 1 for row in status):
        return tables
    return None


@pytest.fixture(scope="module")
def lab(
    kafka_bootstrap: str, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    """Trains the plan's mice through the real processor and projector, with two events the
    processor refuses; asks replay to run while the processor is still up (it must refuse) and
    to dry-run (it must work and write nothing), then stops both services."""
    tmp = tmp_path_factory.mktemp("replay")
    prefix = f"r{uuid4().hex[:6]}"
    topics = TopicNames.with_prefix(prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=4)
    db_url = fresh_database(postgres_url)
    lab = Lab(kafka_bootstrap, topics, prefix, f"proc-{uuid4().hex[:6]}", db_url, tmp, {}, None)
    projector_args = ["projector", "--bootstrap", kafka_bootstrap, "--prefix", prefix]
    with (
        lab.processor("processor.log") as processor,
        shaping_process(
            [*projector_args, "--db-url", db_url], tmp / "projector.log", {}
        ) as projector,
    ):
        transport = KafkaRigTransport(
            kafka_bootstrap,
            topics.events,
            topics.assignments,
            client_id="replay-rigs",
            codec=default_codec(),
        )
        try:
            run_lab(PLAN, transport, wait_s=90)
        finally:
            transport.close()
        refused = refused_avro_events(PLAN.start + timedelta(days=PLAN.n_days))
        with Publisher(kafka_bootstrap, topics.events) as publisher:
            publisher.events(refused)
        lab.live = wait_until(
            lambda: settled(db_url, len(refused)), 120, "the projector to catch up"
        )
        lab.refusal = invoke(lab.args())
        # The processor commits its offsets now and then: wait until it has committed the
        # whole log, so that nothing but a dry run could move anything below.
        events_end = {p: end for (_, p), end in lab.ends([topics.events]).items() if end}
        wait_until(
            lambda: {p: o for p, o in lab.committed().items() if o} == events_end,
            60,
            "the processor to commit its offsets",
        )
        before = observe(lab)
        dry = [*lab.args(), "--dry-run"]
        lab.dry_runs["plain"] = invoke(dry)
        major = {"SHAPING_CURRICULA_DIR": str(major_version(tmp / "major"))}
        lab.dry_runs["major"] = invoke(dry, major)
        read_only = [a if a != db_url else read_only_url(db_url) for a in dry]
        lab.dry_runs["read-only"] = invoke(read_only)
        lab.observed = (before, observe(lab))
        assert processor.poll() is None, (tmp / "processor.log").read_text()[-3000:]
        assert projector.poll() is None, (tmp / "projector.log").read_text()[-3000:]
        assert stop(processor) == 0
        assert stop(projector) in (0, -15)
    yield lab


def test_replay_refuses_while_the_processor_runs(lab: Lab) -> None:
    assert lab.refusal.exit_code == 2, lab.refusal.output
    assert "processor" in lab.refusal.stderr and "running" in lab.refusal.stderr
    assert lab.processor_id in lab.refusal.stderr
    assert "Traceback" not in lab.refusal.output
    assert lab.snapshot() == lab.live


def test_dry_run_works_and_writes_nothing_while_the_services_run(lab: Lab) -> None:
    """Read only: no record produced anywhere (not on the outputs, not on a changelog), no
    consumer group made, no offset committed, no schema or table written, even as a role
    that may only read; and on a log whose dead letters hold Avro bytes."""
    before, after = lab.observed
    assert after == before
    assert before["tables"] == lab.live and len(lab.live["rejected_events"]) == 2
    for name, result in lab.dry_runs.items():
        assert result.exit_code == 0, f"{name}: {result.output}"
        assert "Traceback" not in result.output
        assert re.search(r"replayed \d+ events of 4 mice", result.stdout), result.stdout
        assert "no change" in result.stdout, f"{name}: {result.stdout}"
        assert "would publish" not in result.stdout
        assert f"note: the processor (group {lab.processor_id!r}) is running" in result.stdout


def test_a_new_major_version_in_the_folder_moves_no_mouse(lab: Lab) -> None:
    """The enrolments named no version; basic-shaping 2.0.0 (a major version) is now in the
    lab's folder and no mouse was migrated to it: replay keeps every mouse on the version it
    was enrolled on."""
    env = {"SHAPING_CURRICULA_DIR": str(major_version(lab.tmp / "major"))}
    outputs_before = lab.ends([*lab.outputs(), changelog_topic(lab.processor_id)])
    for args in ([*lab.args(), "--dry-run"], lab.args()):
        result = invoke(args, env)
        assert result.exit_code == 0, result.output
        assert "no change" in result.stdout, result.stdout
        assert lab.snapshot() == lab.live
    assert lab.ends([*lab.outputs(), changelog_topic(lab.processor_id)]) == outputs_before
    assert {r["curriculum_version"] for r in lab.live["mouse_status"]} == {"0.1.0"}


def test_replay_of_an_unchanged_log_changes_nothing_twice(lab: Lab) -> None:
    changelog = changelog_topic(lab.processor_id)
    outputs_before = lab.ends([*lab.outputs(), changelog])
    for _ in range(2):
        result = invoke(lab.args())
        assert result.exit_code == 0, result.output
        assert "no change" in result.stdout
        assert "switched" not in result.stdout
        assert re.search(r"replayed \d+ events of 4 mice", result.stdout)
        assert lab.snapshot() == lab.live
        # Nothing published, no state written, and the processor's offsets were already at
        # the end of the log (it had processed every event).
        assert lab.ends([*lab.outputs(), changelog]) == outputs_before
        events_end = {p: end for (_, p), end in lab.ends([lab.topics.events]).items()}
        assert {p: o for p, o in lab.committed().items() if o} == {
            p: end for p, end in events_end.items() if end
        }


def test_replay_after_a_curriculum_fix_changes_exactly_the_affected_mice(lab: Lab) -> None:
    """A fix of basic-shaping (same version) so that nobody leaves s2_training: replay changes
    the mice the live processor moved out of s2, corrects their assignments for the rigs,
    hands the rebuilt state to the processor, and a second replay changes nothing."""
    live = lab.snapshot()
    moved_out_of_s2 = {
        row["mouse_id"]
        for row in live["decision_log"]
        if row["from_stage"] == "s2_training" and row["decision"] == "progress"
    }
    assert moved_out_of_s2 and moved_out_of_s2 != {m for m, _ in PLAN.mice()}, (
        "the plan must move some mice out of s2_training and not others"
    )
    env = {"SHAPING_CURRICULA_DIR": str(strict_curricula(lab.tmp / "strict"))}
    changelog = changelog_topic(lab.processor_id)
    events_ends = lab.ends([lab.topics.events])

    dry = invoke([*lab.args(), "--dry-run"], env)
    assert dry.exit_code == 0, dry.output
    assert "dry run: nothing was changed" in dry.stdout
    assert lab.snapshot() == live

    result = invoke(lab.args(), env)
    assert result.exit_code == 0, result.output
    assert "switched over" in result.stdout
    after = lab.snapshot()
    assert after != live

    # Exactly the mice that progressed out of s2 have other decisions, now "stay".
    old, new = decisions_by_session(live), decisions_by_session(after)
    assert old.keys() == new.keys()
    changed = {
        s: (old[s], new[s])
        for s in old
        if (old[s]["decision"], old[s]["to_stage"]) != (new[s]["decision"], new[s]["to_stage"])
    }
    assert {o["mouse_id"] for o, _ in changed.values()} == moved_out_of_s2
    for o, n in changed.values():
        assert (o["from_stage"], o["decision"]) == ("s2_training", "progress")
        assert (n["decision"], n["to_stage"]) == ("stay", "s2_training")
    for mouse in moved_out_of_s2:
        assert mouse in result.stdout
        [status] = [r for r in after["mouse_status"] if r["mouse_id"] == mouse]
        assert status["stage"] == "s2_training"
    unaffected = {m for m, _ in PLAN.mice()} - moved_out_of_s2
    assert [r for r in after["mouse_status"] if r["mouse_id"] in unaffected] == [
        r for r in live["mouse_status"] if r["mouse_id"] in unaffected
    ]

    # The corrections are on the decisions topic, each superseding a live decision, and what
    # a rig reads (the latest assignment per mouse) is what the rebuilt status table says.
    records = read_to_end(lab.bootstrap, [lab.topics.decisions, lab.topics.assignments])
    decisions = [r.event for r in records if isinstance(r.event, StageTransitioned)]
    assignments = [r.event for r in records if isinstance(r.event, AssignmentIssued)]
    ids = {d.event_id for d in decisions}
    corrections = [d for d in decisions if d.supersedes]
    assert corrections and all(d.supersedes in ids for d in corrections)
    latest: dict[str, AssignmentIssued] = {}
    for a in assignments:
        if a.mouse_id not in latest or a.session_number >= latest[a.mouse_id].session_number:
            latest[a.mouse_id] = a
    for row in after["mouse_status"]:
        assert latest[row["mouse_id"]].event_id == row["assignment_id"]
        assert latest[row["mouse_id"]].stage == row["stage"]

    # The processor's state: rebuilt states in its changelog, its group at the snapshot.
    states = {
        r.key.decode(): decode_state(r.value)
        for r in read_to_end(lab.bootstrap, [changelog])
        if r.key and r.value
    }
    for mouse in moved_out_of_s2:
        assert states[mouse].stage == "s2_training"
    assert {p: o for p, o in lab.committed().items() if o} == {
        p: end for (_, p), end in events_ends.items() if end
    }

    again = invoke(lab.args(), env)
    assert again.exit_code == 0, again.output
    assert "no change" in again.stdout
    assert lab.snapshot() == after

    # The projector goes on with the switched tables: the corrections are events it already
    # has, so the tables stay as replay built them.
    store = sql_store(lab.db_url)
    try:
        run_projector(
            lab.bootstrap, lab.topics, store, default_codec(), consumer="projector", idle_exit_s=3
        )
        assert store.snapshot() == after
    finally:
        store.close()

    # A restarted processor recovers the rebuilt state: an override that says the mouse is at
    # s2_training (where the rebuilt state has it) is honoured; the state the processor had
    # before the replay (the mouse had left s2) would refuse it.
    mouse = sorted(moved_out_of_s2)[0]
    [was] = [r for r in live["mouse_status"] if r["mouse_id"] == mouse]
    assert was["stage"] != "s2_training"
    override = StageOverridden(
        event_id=f"after-replay-{uuid4().hex[:6]}",
        mouse_id=mouse,
        occurred_at=datetime.now(UTC),
        from_stage="s2_training",
        to_stage="s2_training",
        reason="check the hand-over",
    )
    with lab.processor("processor-after-replay.log", env) as processor:
        with Publisher(lab.bootstrap, lab.topics.events) as publisher:
            publisher.events([override])
        with TopicReader(lab.bootstrap, [lab.topics.assignments, lab.topics.dead_letter]) as reader:
            [answer] = reader.wait_for(
                lambda recs: [
                    r.event
                    for r in recs
                    if r.event is not None and r.event.causation_id == override.event_id
                ],
                what="the processor's answer to the override",
                on_timeout=lambda: (lab.tmp / "processor-after-replay.log").read_text()[-3000:],
            )
        assert processor.poll() is None
    assert isinstance(answer, AssignmentIssued), answer
    assert (answer.stage, answer.reason) == ("s2_training", "override")


# -- embedded mode -------------------------------------------------------------------------------


def test_replay_of_a_demo_log(tmp_path: Path) -> None:
    demo = run_demo(tmp_path / "demo", LabPlan(n_mice=4, n_rigs=4, n_days=5, seed=7))
    db_url = f"sqlite:///{demo.db_path}"
    args = ["replay", "--events-log", str(demo.log_path), "--db-url", db_url]
    lines = demo.log_path.read_text().count("\n")

    unchanged = invoke(args)
    assert unchanged.exit_code == 0, unchanged.output
    assert "no change" in unchanged.stdout
    store = sql_store(db_url)
    try:
        assert store.snapshot() == demo.tables
    finally:
        store.close()
    assert demo.log_path.read_text().count("\n") == lines

    env = {"SHAPING_CURRICULA_DIR": str(strict_curricula(tmp_path / "strict"))}
    fixed = invoke(args, env)
    assert fixed.exit_code == 0, fixed.output
    assert "switched over" in fixed.stdout
    store = sql_store(db_url)
    try:
        after = store.snapshot()
    finally:
        store.close()
    progressed = {
        r["mouse_id"]
        for r in demo.tables["decision_log"]
        if r["from_stage"] == "s2_training" and r["decision"] == "progress"
    }
    assert progressed
    assert {
        r["mouse_id"] for r in after["mouse_status"] if r["stage"] == "s2_training"
    } >= progressed
    assert demo.log_path.read_text().count("\n") > lines  # corrections appended

    again = invoke(args, env)
    assert again.exit_code == 0, again.output
    assert "no change" in again.stdout

    missing = invoke(["replay", "--events-log", str(tmp_path / "nope.jsonl"), "--db-url", db_url])
    assert missing.exit_code == 2
    assert "no event log" in missing.stderr
    assert os.path.exists(demo.db_path)
