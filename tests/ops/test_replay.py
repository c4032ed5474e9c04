"""``shaping replay`` on real parts: the faust processor and the projector run as separate
processes against Kafka and PostgreSQL while simulated rigs train mice; then replay rebuilds
the processor's state and the status tables from offset 0 and switches over.

And in embedded mode, on the event log and SQLite file ``shaping demo`` leaves.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from kafka import KafkaAdminClient
from sqlalchemy import create_engine, make_url, text
from typer.testing import CliRunner

from rig.kafka_transport import KafkaRigTransport
from rig.lab import LabPlan, run_lab
from schemas.events import AssignmentIssued, SessionEnded, StageTransitioned
from services.cli import app
from services.common.topics import TopicNames, ensure_topics
from services.domain import MouseState
from services.embedded.demo import run_demo
from services.operator.replay import changelog_topic, kafka_offsets
from services.projector.runner import run_projector
from services.projector.store import SqlProjectionStore
from tests.support.kafka_io import Publisher, ReadRecord, TopicReader
from tests.support.processes import shaping_process, stop, wait_until
from tests.support.scripts import REPO

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
        store = SqlProjectionStore(self.db_url)
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


def settled(db_url: str) -> dict[str, list[dict[str, Any]]] | None:
    """The tables once every session's decision and next assignment are projected."""
    store = SqlProjectionStore(db_url)
    try:
        tables = store.snapshot()
    finally:
        store.close()
    status = tables["mouse_status"]
    done = len(tables["decision_log"]) == SESSIONS and len(status) == PLAN.n_mice
    if done and all(row["next_session_number"] == PLAN.n_days + 1 for row in status):
        return tables
    return None


@pytest.fixture(scope="module")
def lab(
    kafka_bootstrap: str, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    """Trains the plan's mice through the real processor and projector, asks replay to run
    while the processor is still up (it must refuse), then stops both services."""
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
            kafka_bootstrap, topics.events, topics.assignments, client_id="replay-rigs"
        )
        try:
            run_lab(PLAN, transport, wait_s=90)
        finally:
            transport.close()
        lab.live = wait_until(lambda: settled(db_url), 120, "the projector to catch up")
        lab.refusal = invoke(lab.args())
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
        r.key.decode(): MouseState.from_bytes(r.value)
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

    # A restarted processor recovers the rebuilt state: the rig's duplicate of a changed
    # mouse's last SessionEnded makes it repeat the decision that now stands (the correction),
    # not the one it had made before.
    mouse = sorted(moved_out_of_s2)[0]
    [last_end] = [
        r
        for r in read_to_end(lab.bootstrap, [lab.topics.events])
        if isinstance(r.event, SessionEnded) and r.event.mouse_id == mouse
    ][-1:]
    ended = last_end.event
    assert isinstance(ended, SessionEnded)
    standing = [d for d in corrections if d.mouse_id == mouse and d.session_id == ended.session_id]
    assert standing, "the last decision of the mouse was corrected"
    decisions_end = lab.ends([lab.topics.decisions])
    with lab.processor("processor-after-replay.log", env) as processor:
        with Publisher(lab.bootstrap, lab.topics.events) as publisher:
            publisher.raw(last_end.key, last_end.value)
        with TopicReader(lab.bootstrap, [lab.topics.decisions]) as reader:
            [repeated] = reader.wait_for(
                lambda recs: [
                    r.event
                    for r in recs
                    if r.offset >= decisions_end[(r.topic, r.partition)]
                    and isinstance(r.event, StageTransitioned)
                ],
                what="the repeated decision",
                on_timeout=lambda: (lab.tmp / "processor-after-replay.log").read_text()[-3000:],
            )
        assert processor.poll() is None
    assert repeated.event_id == standing[-1].event_id
    assert repeated.decision == "stay"

    # The projector goes on with the switched tables: the corrections and the repeated
    # decision are events it already has, so the tables stay as replay built them.
    store = SqlProjectionStore(lab.db_url)
    try:
        run_projector(lab.bootstrap, lab.topics, store, consumer="projector", idle_exit_s=3)
        assert store.snapshot() == after
    finally:
        store.close()


# -- embedded mode -------------------------------------------------------------------------------


def test_replay_of_a_demo_log(tmp_path: Path) -> None:
    demo = run_demo(tmp_path / "demo", LabPlan(n_mice=4, n_rigs=4, n_days=5, seed=7))
    db_url = f"sqlite:///{demo.db_path}"
    args = ["replay", "--events-log", str(demo.log_path), "--db-url", db_url]
    lines = demo.log_path.read_text().count("\n")

    unchanged = invoke(args)
    assert unchanged.exit_code == 0, unchanged.output
    assert "no change" in unchanged.stdout
    store = SqlProjectionStore(db_url)
    try:
        assert store.snapshot() == demo.tables
    finally:
        store.close()
    assert demo.log_path.read_text().count("\n") == lines

    env = {"SHAPING_CURRICULA_DIR": str(strict_curricula(tmp_path / "strict"))}
    fixed = invoke(args, env)
    assert fixed.exit_code == 0, fixed.output
    assert "switched over" in fixed.stdout
    store = SqlProjectionStore(db_url)
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
