"""The whole product on real parts: Apache Kafka, the faust processor and the projector as
separate processes, PostgreSQL, and simulated rigs that configure every session from the
compacted assignments topic."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from shaping.rig.link.kafka import KafkaRigTransport
from shaping.rig.sim.lab import LabPlan, LabRun, run_lab
from shaping.schemas.codec import default_codec
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.topics import ensure_topics
from shaping.services.projector.runner import run_projector
from tests.support.processes import shaping_process, wait_until
from tests.support.rig import CODEC
from tests.support.wiring import embedded_runtime, sql_store

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.e2e]

PLAN = LabPlan(n_mice=3, n_rigs=3, n_days=5, seed=21)
SESSIONS = PLAN.n_mice * PLAN.n_days


@dataclass
class StackRun:
    topics: TopicNames
    bootstrap: str
    run: LabRun
    tables: dict[str, list[dict[str, Any]]]
    db_url: str


@pytest.fixture(scope="module")
def stack_run(
    kafka_bootstrap: str, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StackRun]:
    """Runs the lab once through the real stack; the tests below look at what it left."""
    tmp = tmp_path_factory.mktemp("e2e")
    topics = TopicNames.with_prefix(f"e2e{uuid4().hex[:6]}")
    ensure_topics(kafka_bootstrap, topics, partitions=4)
    store = sql_store(postgres_url)
    store.reset()
    store.close()
    common = ["--bootstrap", kafka_bootstrap, "--prefix", topics.events.rsplit(".", 1)[0]]
    env = {"SHAPING_PROCESSOR_ID": f"proc-{uuid4().hex[:6]}", "SHAPING_DATA_DIR": str(tmp)}
    with (
        shaping_process(["processor", *common], tmp / "processor.log", env) as processor,
        shaping_process(
            ["projector", *common, "--db-url", postgres_url], tmp / "projector.log", env
        ) as projector,
    ):
        transport = KafkaRigTransport(
            kafka_bootstrap, topics.events, topics.assignments, client_id="e2e-rigs", codec=CODEC
        )
        try:
            run = run_lab(PLAN, transport, wait_s=90)
        finally:
            transport.close()
        store = sql_store(postgres_url)

        def caught_up() -> bool:
            tables = store.snapshot()
            return len(tables["decision_log"]) == SESSIONS and all(
                row["next_session_number"] == PLAN.n_days + 1 for row in tables["mouse_status"]
            )

        try:
            wait_until(caught_up, 90, "the projector to record every decision")
            tables = store.snapshot()
        finally:
            store.close()
        assert processor.poll() is None, (tmp / "processor.log").read_text()[-3000:]
        assert projector.poll() is None, (tmp / "projector.log").read_text()[-3000:]
    yield StackRun(topics, kafka_bootstrap, run, tables, postgres_url)


def test_status_table_has_every_mouse_after_five_sessions(stack_run: StackRun) -> None:
    status = stack_run.tables["mouse_status"]
    assert [row["mouse_id"] for row in status] == [m for m, _ in PLAN.mice()]
    for row in status:
        assert row["sessions_completed"] == PLAN.n_days
        assert row["curriculum_name"] == "basic-shaping"
        assert row["stage"] in {"s1_habituation", "s2_training", "s3_full_task", "graduated"}
        assert json.loads(row["parameters_json"])["max_trials"] > 0


def test_decision_log_has_a_decision_with_evidence_per_session(stack_run: StackRun) -> None:
    log = stack_run.tables["decision_log"]
    assert len(log) == SESSIONS
    assert {row["session_id"] for row in log} == {
        s.started.session_id for s in stack_run.run.sessions
    }
    for row in log:
        evidence = json.loads(row["evidence_json"])
        if row["from_stage"] != "graduated":
            assert evidence, row
            assert all("observations" in rule and "verdict" in rule for rule in evidence)
        assert row["decision"] in {"stay", "progress", "rollback", "graduate"}


def test_each_rig_ran_its_next_session_with_the_assigned_parameters(
    stack_run: StackRun,
) -> None:
    by_mouse: dict[str, list[Any]] = {}
    for record in stack_run.run.sessions:
        by_mouse.setdefault(record.mouse_id, []).append(record)
    summaries = {row["session_id"]: row for row in stack_run.tables["session_summaries"]}
    decisions = {row["session_id"]: row for row in stack_run.tables["decision_log"]}
    for records in by_mouse.values():
        assert [r.assignment.session_number for r in records] == list(range(1, PLAN.n_days + 1))
        for previous, record in itertools.pairwise(records):
            assert not record.stale_assignment
            # The assignment is the processor's answer to the previous session...
            decided = decisions[previous.started.session_id]
            assert record.assignment.stage == decided["to_stage"]
            # ...and the rig ran exactly it.
            assert record.started.parameters == record.assignment.parameters
            assert record.started.assignment_id == record.assignment.event_id
            row = summaries[record.started.session_id]
            assert json.loads(row["parameters_json"]) == record.assignment.parameters
            assert row["assignment_id"] == record.assignment.event_id


def test_kafka_and_embedded_paths_give_identical_tables(stack_run: StackRun) -> None:
    """Same seeded lab, once through Kafka + faust + Postgres, once in-process on SQLite."""
    embedded = embedded_runtime(sql_store("sqlite://"))
    run_lab(PLAN, embedded)
    assert embedded.store is not None
    assert embedded.store.snapshot() == stack_run.tables


def test_replay_rebuilds_identical_tables_from_offset_zero(
    stack_run: StackRun, tmp_path: Path
) -> None:
    """Drop the projection tables and rebuild them from the beginning of every topic."""
    store = sql_store(stack_run.db_url)
    try:
        store.reset()
        assert store.snapshot()["decision_log"] == []
        consumed = run_projector(
            stack_run.bootstrap,
            stack_run.topics,
            store,
            default_codec(),
            consumer="replay",
            idle_exit_s=5,
        )
        # Every session's start and end (accepted), decision and assignment was read again.
        assert consumed >= SESSIONS * 4
        assert store.snapshot() == stack_run.tables
    finally:
        store.close()
