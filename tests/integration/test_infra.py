"""The real infrastructure works: Kafka broker, topic layout, PostgreSQL."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from uuid import uuid4

import pytest
import sqlalchemy as sa
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from shaping.schemas.topics import TopicNames, topic_specs
from shaping.services.adapters.errors import BrokerUnavailableError, InfraError, TopicMismatchError
from shaping.services.adapters.topics import describe_topics, ensure_topics, wait_for_broker
from tests.support.scripts import REPO, port_in_use


@pytest.fixture
def fresh_names(kafka_bootstrap: str) -> Iterator[TopicNames]:
    """Topic names nobody has created yet; whatever the test creates is deleted after."""
    names = TopicNames.with_prefix(f"infra{uuid4().hex[:8]}")
    yield names
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="test-infra")
    try:
        admin.delete_topics(names.all(), raise_errors=False)
    finally:
        admin.close()


# --- topic names (no broker needed) ------------------------------------------------


def test_topic_names_with_prefix() -> None:
    names = TopicNames.with_prefix("lab1")
    assert names.all() == [
        "lab1.events",
        "lab1.accepted",
        "lab1.decisions",
        "lab1.assignments",
        "lab1.dead-letter",
        "lab1.curricula",
        "lab1.commands",
        "lab1.alerts",
    ]
    assert TopicNames.with_prefix().events == "shaping.events"
    specs = {spec.name: spec for spec in topic_specs(names, partitions=6)}
    assert specs["lab1.assignments"].cleanup_policy == "compact"
    assert specs["lab1.curricula"].cleanup_policy == "compact"
    # The broker, not the rig, stamps the input: dates are checked against its time.
    assert specs["lab1.events"].configs["message.timestamp.type"] == "LogAppendTime"
    assert specs["lab1.commands"].configs["message.timestamp.type"] == "LogAppendTime"
    assert {spec.partitions for spec in specs.values()} == {6}


def test_topic_errors_are_infra_errors() -> None:
    assert issubclass(TopicMismatchError, InfraError)
    assert issubclass(BrokerUnavailableError, InfraError)


# --- infra/bootstrap.sh (a stand-in python, no network) ---------------------------------

FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python3 and the venv's python: 'venv DIR' makes DIR/bin/python this script;
# 'pip install' talks as much as setuptools does and exits with $FAKE_PIP_RC.
if [[ "$1" == "-m" && "$2" == "venv" ]]; then
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0
fi
if [[ "$1" == "-m" && "$2" == "pip" ]]; then
    for i in $(seq 40); do echo "  BuildBackendWarning: project.license is a table ($i)" >&2; done
    echo "pip noise on stdout"
    [[ "${FAKE_PIP_RC:-0}" == 0 ]] || echo "ERROR: No matching distribution found for faust" >&2
    exit "${FAKE_PIP_RC:-0}"
fi
exit 0
"""


def _bootstrap(tmp_path: Path, pip_rc: int) -> tuple[subprocess.CompletedProcess[str], Path]:
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "cache" / "bootstrap.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAPING_")}
    env |= {"PYTHON_BIN": str(fake), "SHAPING_VENV": str(tmp_path / "venv")}
    env |= {"SHAPING_BOOTSTRAP_LOG": str(log), "FAKE_PIP_RC": str(pip_rc)}
    result = subprocess.run(
        ["bash", str(REPO / "infra" / "bootstrap.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, log


def test_bootstrap_keeps_pip_output_in_its_log_when_the_install_works(tmp_path: Path) -> None:
    result, log = _bootstrap(tmp_path, pip_rc=0)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "warning" not in output.lower() and "pip noise" not in output, output
    assert len(output.splitlines()) <= 2, output  # at most "creating" and "installing"
    assert "BuildBackendWarning" in log.read_text() and "pip noise" in log.read_text()
    assert (tmp_path / "venv" / ".shaping-installed").is_file()
    # Installed once: the second run has nothing to do and says nothing.
    again, _ = _bootstrap(tmp_path, pip_rc=0)
    assert again.returncode == 0 and again.stdout + again.stderr == ""


def test_bootstrap_shows_pip_output_when_the_install_fails(tmp_path: Path) -> None:
    result, log = _bootstrap(tmp_path, pip_rc=1)
    assert result.returncode != 0
    assert "No matching distribution found for faust" in result.stderr
    assert str(log) in result.stderr
    assert not (tmp_path / "venv" / ".shaping-installed").exists()


# --- the broker ----------------------------------------------------------------------


@pytest.mark.kafka
def test_broker_round_trip_keeps_keys_on_one_partition(
    kafka_bootstrap: str, kafka_topics: TopicNames, unique_group: str
) -> None:
    topic = kafka_topics.events
    keys = [f"mouse-{i}" for i in range(6)]
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
    )
    sent_partitions: dict[str, set[int]] = defaultdict(set)
    try:
        futures = []
        for seq in range(10):
            for key in keys:
                value = f"{key}:{seq}".encode()
                futures.append((key, producer.send(topic, key=key.encode(), value=value)))
        producer.flush(timeout=30)
        for key, future in futures:
            sent_partitions[key].add(future.get(timeout=30).partition)
    finally:
        producer.close(timeout=10)
    assert all(len(parts) == 1 for parts in sent_partitions.values()), sent_partitions
    # Six keys over four partitions: the keys really are spread out.
    assert len({p for parts in sent_partitions.values() for p in parts}) > 1

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=unique_group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    received: dict[str, list[str]] = defaultdict(list)
    received_partitions: dict[str, set[int]] = defaultdict(set)
    try:
        deadline = time.monotonic() + 30
        total = 0
        while total < len(keys) * 10 and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    key = record.key.decode()
                    received[key].append(record.value.decode())
                    received_partitions[key].add(tp.partition)
                    total += 1
        consumer.commit()
    finally:
        consumer.close()

    assert total == len(keys) * 10
    for key in keys:
        # Per key: everything, in the order it was produced, from the one partition.
        assert received[key] == [f"{key}:{seq}" for seq in range(10)]
        assert received_partitions[key] == sent_partitions[key]


@pytest.mark.kafka
def test_wait_for_broker(kafka_bootstrap: str) -> None:
    wait_for_broker(kafka_bootstrap, timeout_s=10)

    closed_port = 39099
    assert not port_in_use(closed_port)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match=re.escape("127.0.0.1:39099")):
        wait_for_broker(f"127.0.0.1:{closed_port}", timeout_s=1.5)
    assert time.monotonic() - started < 15


# --- topic creation -----------------------------------------------------------------


@pytest.mark.kafka
def test_kafka_topics_fixture_creates_fresh_topics(
    kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    described = describe_topics(kafka_bootstrap, kafka_topics)
    assert sorted(described) == sorted(kafka_topics.all())
    assert {info["partitions"] for info in described.values()} == {4}


@pytest.mark.kafka
def test_ensure_topics_creates_explicit_partitions_and_compacted_assignments(
    kafka_bootstrap: str, fresh_names: TopicNames
) -> None:
    assert describe_topics(kafka_bootstrap, fresh_names) == {}

    # 3 is neither the broker default (num.partitions=1) nor the function default (4).
    ensure_topics(kafka_bootstrap, fresh_names, partitions=3)

    described = describe_topics(kafka_bootstrap, fresh_names)
    assert sorted(described) == sorted(fresh_names.all())
    for name, info in described.items():
        assert info["partitions"] == 3, name
    assignments = described[fresh_names.assignments]
    assert assignments["cleanup.policy"] == "compact"
    assert float(assignments["configs"]["min.cleanable.dirty.ratio"]) <= 0.1
    assert int(assignments["configs"]["segment.ms"]) <= 60_000
    for name in (fresh_names.events, fresh_names.decisions, fresh_names.dead_letter):
        assert described[name]["cleanup.policy"] == "delete", name
    assert described[fresh_names.events]["configs"]["retention.ms"] == "-1"
    dead_letter_retention_ms = int(described[fresh_names.dead_letter]["configs"]["retention.ms"])
    assert dead_letter_retention_ms >= 30 * 24 * 3600 * 1000


@pytest.mark.kafka
def test_ensure_topics_is_idempotent(kafka_bootstrap: str, fresh_names: TopicNames) -> None:
    ensure_topics(kafka_bootstrap, fresh_names, partitions=4)
    before = describe_topics(kafka_bootstrap, fresh_names)
    ensure_topics(kafka_bootstrap, fresh_names, partitions=4)
    ensure_topics(kafka_bootstrap, fresh_names, partitions=4)
    assert describe_topics(kafka_bootstrap, fresh_names) == before


@pytest.mark.kafka
def test_ensure_topics_tolerates_concurrent_callers(
    kafka_bootstrap: str, fresh_names: TopicNames
) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(ensure_topics, kafka_bootstrap, fresh_names, 4) for _ in range(4)]
        for future in futures:
            future.result(timeout=60)
    described = describe_topics(kafka_bootstrap, fresh_names)
    assert {info["partitions"] for info in described.values()} == {4}
    assert len(described) == len(fresh_names.all())


@pytest.mark.kafka
def test_ensure_topics_creates_only_the_missing_ones(
    kafka_bootstrap: str, fresh_names: TopicNames
) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics(
            {fresh_names.events: {"num_partitions": 4, "replication_factor": 1}},
            wait_for_metadata=True,
        )
    finally:
        admin.close()
    ensure_topics(kafka_bootstrap, fresh_names, partitions=4)
    described = describe_topics(kafka_bootstrap, fresh_names)
    assert sorted(described) == sorted(fresh_names.all())


@pytest.mark.kafka
def test_ensure_topics_rejects_a_different_partition_count(
    kafka_bootstrap: str, fresh_names: TopicNames
) -> None:
    ensure_topics(kafka_bootstrap, fresh_names, partitions=4)
    with pytest.raises(TopicMismatchError, match="has 4 partitions, expected 2") as excinfo:
        ensure_topics(kafka_bootstrap, fresh_names, partitions=2)
    assert len(excinfo.value.problems) == len(fresh_names.all())
    # Nothing was changed.
    described = describe_topics(kafka_bootstrap, fresh_names)
    assert {info["partitions"] for info in described.values()} == {4}


@pytest.mark.kafka
def test_ensure_topics_rejects_an_uncompacted_assignments_topic(
    kafka_bootstrap: str, fresh_names: TopicNames
) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics(
            {
                fresh_names.assignments: {
                    "num_partitions": 4,
                    "replication_factor": 1,
                    "configs": {"cleanup.policy": "delete"},
                }
            },
            wait_for_metadata=True,
        )
    finally:
        admin.close()
    expected = re.escape(f"{fresh_names.assignments}: cleanup.policy is 'delete'")
    with pytest.raises(TopicMismatchError, match=expected) as excinfo:
        ensure_topics(kafka_bootstrap, fresh_names, partitions=4)
    assert len(excinfo.value.problems) == 1
    described = describe_topics(kafka_bootstrap, fresh_names)
    assert described[fresh_names.assignments]["cleanup.policy"] == "delete"


# --- PostgreSQL -----------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_accepts_sqlalchemy(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg://")
    engine = sa.create_engine(postgres_url)
    table = f"infra_check_{uuid4().hex[:8]}"
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT current_database()")).scalar_one() == "shaping"
            assert conn.execute(sa.text("SHOW listen_addresses")).scalar_one() == "127.0.0.1"
            conn.execute(sa.text(f"CREATE TABLE {table} (id serial PRIMARY KEY, mouse text)"))
            conn.execute(
                sa.text(f"INSERT INTO {table} (mouse) VALUES (:m)"),
                [{"m": "M1"}, {"m": "M2"}],
            )
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT id, mouse FROM {table} ORDER BY id")).all()
        assert [tuple(row) for row in rows] == [(1, "M1"), (2, "M2")]
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


# --- the infra scripts, called by a relative path from any working directory ------------

# (script, subcommand, exit codes that mean "it ran"): read-only subcommands only.
RELATIVE_CALLS = [
    ("infra/postgres/postgres.sh", "url", {0}),
    ("infra/postgres/postgres.sh", "status", {0, 3}),
    ("infra/kafka/kafka.sh", "status", {0, 3}),
    ("infra/prometheus/prometheus.sh", "url", {0}),
    ("infra/prometheus/prometheus.sh", "status", {0, 3}),
    ("infra/stack.sh", "config", {0}),
    ("infra/stack.sh", "status", {0, 3}),
]


@pytest.mark.parametrize("where", ["outside", "repo", "subdir"])
@pytest.mark.parametrize(("script", "command", "codes"), RELATIVE_CALLS)
def test_infra_scripts_work_by_a_relative_path_from_any_directory(
    tmp_path: Path, where: str, script: str, command: str, codes: set[int]
) -> None:
    """As `make pg-up` and `$(infra/postgres/postgres.sh url)` call them."""
    cwd = {"outside": tmp_path, "repo": REPO, "subdir": REPO / "tests"}[where]
    relative = os.path.relpath(REPO / script, cwd)
    assert not os.path.isabs(relative)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAPING_")}
    # Ports nothing listens on, and data where nothing is: the calls only look.
    env |= {"SHAPING_PG_PORT": "39431", "SHAPING_KAFKA_PORT": "39432"}
    env |= {"SHAPING_KAFKA_CONTROLLER_PORT": "39433", "SHAPING_PROMETHEUS_PORT": "39434"}
    env |= {"SHAPING_STACK_DIR": str(tmp_path / "stack")}
    env |= {"SHAPING_KAFKA_DATA": str(tmp_path / "kafka")}
    env |= {"SHAPING_PROMETHEUS_DATA": str(tmp_path / "prometheus")}
    result = subprocess.run(
        [relative, command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode in codes, output
    assert "No such file or directory" not in output, output
    if (script, command) == ("infra/postgres/postgres.sh", "url"):
        assert result.stdout == "postgresql+psycopg://shaping_projector@127.0.0.1:39431/shaping\n"


def test_postgres_data_dir_given_relative_is_taken_from_the_callers_directory(
    tmp_path: Path,
) -> None:
    """postgres.sh works from / (the server must not inherit an unreadable directory), so a
    relative SHAPING_PG_DATA is resolved against the directory it was called from first."""
    (tmp_path / "here").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAPING_")}
    env |= {"SHAPING_PG_PORT": "39431", "SHAPING_PG_DATA": "rel/pg"}
    result = subprocess.run(
        [str(REPO / "infra" / "postgres" / "postgres.sh"), "status"],
        cwd=tmp_path / "here",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode in {0, 3}, result.stdout + result.stderr
    if "not installed" not in result.stdout:
        assert f"(data {tmp_path / 'here' / 'rel' / 'pg'})" in result.stdout, result.stdout
