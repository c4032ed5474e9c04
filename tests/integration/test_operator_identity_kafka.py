"""Operators known by their authenticated identity, on the secured broker (issue 13, item 3).

A secured broker started by the script (``infra/kafka/kafka.sh up --secure``) with one operator
principal, ``alice``. Through the ``shaping`` entry point, as a user would: alice enrols a mouse
and overrides its stage without saying who she is; the commands on the commands topic and the
events that answer them carry ``alice``; a ``--by mallory`` is refused before anything is
sent; after the projector (as its own principal) has run, ``shaping history`` and ``shaping
interventions`` show alice, when, what, and the id of the command each answer answered.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from kafka import TopicPartition

from shaping.schemas.codec import default_codec
from shaping.schemas.commands import Command, EnrolMouse, OverrideStage
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.kafka import KafkaConnection
from shaping.services.adapters.kafka import consumer as kafka_consumer
from shaping.services.adapters.topics import ensure_topics
from tests.support.kafka import KafkaBroker, start_kafka
from tests.support.ops import free_port
from tests.support.processes import shaping_process
from tests.support.scripts import InfraStartError

PREFIX = "oid"
PROCESSOR_ID = "oid-processor"
TOPICS = TopicNames.with_prefix(PREFIX)
MOUSE = "OID-M1"


@pytest.fixture(scope="module")
def broker() -> Iterator[KafkaBroker]:
    env = {
        "SHAPING_KAFKA_RIGS": "rig-1",
        "SHAPING_KAFKA_OPERATORS": "alice",
        "SHAPING_TOPIC_PREFIX": PREFIX,
        "SHAPING_PROCESSOR_ID": PROCESSOR_ID,
        "SHAPING_PARTITIONS": "2",
    }
    try:
        started = start_kafka(free_port(), free_port(), secure=True, env=env)
    except InfraStartError as exc:
        pytest.fail(f"could not start the secured broker:\n{exc}", pytrace=False)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in started.credentials("admin").items():
                patch.setenv(key, value)
            ensure_topics(started.bootstrap, TOPICS, partitions=2)
        yield started
    finally:
        started.stop()


def _read(broker: KafkaBroker, topic: str) -> list[object]:
    """Every record of ``topic`` decoded (as commands or events), read as alice."""
    codec = default_codec()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in broker.credentials("alice").items():
            patch.setenv(key, value)
        reader = kafka_consumer(KafkaConnection(), "oid-audit", consumer_timeout_ms=3000)
        try:
            parts = [TopicPartition(topic, p) for p in range(2)]
            reader.assign(parts)
            reader.seek_to_beginning(*parts)
            values = [record.value for record in reader]
        finally:
            reader.close()
    decode = codec.decode_message if topic == TOPICS.commands else codec.decode
    return [decode(value) for value in values]


@pytest.mark.kafka
def test_an_operator_is_known_by_the_principal_she_logs_in_as(
    broker: KafkaBroker, tmp_path: Path
) -> None:
    db_url = f"sqlite:///{tmp_path / 'status.sqlite'}"
    common = {
        "SHAPING_TOPIC_PREFIX": PREFIX,
        "SHAPING_PROCESSOR_ID": PROCESSOR_ID,
        "SHAPING_PARTITIONS": "2",
        "SHAPING_DATA_DIR": str(tmp_path / "data"),
        "SHAPING_DB_URL": db_url,
        "SHAPING_OPERATOR": "carol",  # a plaintext default: ignored when authenticated
        "COLUMNS": "250",
    }

    def shaping(principal: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **common, **broker.credentials(principal)}
        return subprocess.run(
            [sys.executable, "-m", "shaping.services.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    log = tmp_path / "processor.log"
    with ExitStack() as services:
        services.enter_context(
            shaping_process(["processor"], log, {**common, **broker.credentials("processor")})
        )
        if (broker.secrets_dir / "ingress.env").exists():
            # operators write their own ingress topic; the gate forwards what they say as
            # themselves to the commands topic (docs/security.md)
            services.enter_context(
                shaping_process(
                    ["ingress", "run"],
                    tmp_path / "ingress.log",
                    {**common, **broker.credentials("ingress")},
                )
            )
        enrolled = shaping(
            "alice", "enroll", MOUSE, "--curriculum", "basic-shaping", "--wait", "90"
        )
        assert enrolled.returncode == 0, enrolled.stderr + log.read_text(errors="replace")
        assert f"enrolled {MOUSE} on basic-shaping (event " in enrolled.stdout

        forged = shaping(
            "alice",
            "override",
            MOUSE,
            "--stage",
            "s3_full_task",
            "--reason",
            "forged",
            "--by",
            "mallory",
        )
        assert forged.returncode == 2, forged.stdout + forged.stderr
        assert "--by 'mallory' is not who you are" in " ".join(forged.stderr.split())
        assert "authenticates you as 'alice'" in " ".join(forged.stderr.split())

        overridden = shaping(
            "alice",
            "override",
            MOUSE,
            "--stage",
            "s3_full_task",
            "--reason",
            "learns fast",
            "--wait",
            "90",
        )
        assert overridden.returncode == 0, overridden.stderr + log.read_text(errors="replace")
        assert f"override of {MOUSE} honoured" in overridden.stdout, overridden.stdout

    # What went on the log: two commands, both alice's; their answers name her too.
    commands = [c for c in _read(broker, TOPICS.commands) if isinstance(c, Command)]
    assert [type(c) for c in commands] == [EnrolMouse, OverrideStage]
    assert {c.requested_by for c in commands} == {"alice"}
    answers = {getattr(e, "causation_id", None): e for e in _read(broker, TOPICS.events)}
    enrol, override = commands
    assert answers[enrol.command_id].enrolled_by == "alice"  # type: ignore[attr-defined]
    assert answers[override.command_id].overridden_by == "alice"  # type: ignore[attr-defined]

    projected = shaping("projector", "projector", "--db-url", db_url, "--idle-exit", "8")
    assert projected.returncode == 0, projected.stderr

    history = shaping("alice", "history", MOUSE, "--wide")
    assert history.returncode == 0, history.stderr
    assert re.search(r"enrol .*alice", history.stdout), history.stdout
    assert re.search(r"override -> s3_full_task .*alice .*learns fast", history.stdout)
    assert override.command_id in history.stdout
    assert "mallory" not in history.stdout and "carol" not in history.stdout

    audit = shaping("alice", "interventions", "--wide")
    assert audit.returncode == 0, audit.stderr
    assert "2 interventions, oldest first" in audit.stdout, audit.stdout
    assert re.search(
        rf"{MOUSE} .*override -> s3_full_task .*alice .*{override.command_id}", audit.stdout
    ), audit.stdout
    assert re.search(rf"{MOUSE} .*enrol .*alice", audit.stdout), audit.stdout

    # Replay on the secured broker. It reads every topic, publishes the outputs the log lacks
    # and hands the rebuilt state to the processor (its changelog topics and its consumer
    # group): an administrative act. An operator is refused by Kafka itself, with the reason
    # in words and nothing switched; the admin rebuilds the same tables (docs/security.md).
    before = shaping("alice", "status").stdout
    refused = shaping("alice", "replay", "--workers", "1", "--reader", "kafka-python")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    said = " ".join(refused.stderr.split())
    assert "not authorised" in said or "not authorized" in said.lower(), said
    assert "Traceback" not in refused.stderr, refused.stderr
    assert shaping("alice", "status").stdout == before

    replayed = shaping("admin", "replay", "--workers", "1")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "replayed" in replayed.stdout, replayed.stdout
    assert shaping("alice", "status").stdout == before  # the same state, rebuilt
    again = shaping("alice", "history", MOUSE, "--wide")
    assert override.command_id in again.stdout, again.stdout
