"""The rig on a secured broker (``infra/kafka/kafka.sh up --secure``; docs/security.md): with
the rig principal's credentials in its config file, the outbox drainer sends its events and
the assignment follower reads its assignments over SASL_SSL; without them, nothing leaves the
outbox and the drainer says why.

One secured broker for the module, started by the script on free ports with its own data dir;
the topics are created as ``admin`` and the assignment is written as ``processor``, each with
the credentials the script wrote.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from shaping.rig.config import RigConfig, load_config
from shaping.rig.link.drain import OutboxDrainer
from shaping.rig.link.follow import AssignmentFollower
from shaping.rig.link.store import RigStore
from shaping.schemas.codec import default_codec, encode_key
from shaping.schemas.headers import headers_for
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.topics import ensure_topics
from tests.support.kafka import KafkaBroker, start_kafka
from tests.support.ops import free_port
from tests.support.rig import assignment, write_config
from tests.support.scripts import InfraStartError
from tests.support.story import session, trials

pytestmark = pytest.mark.kafka

PREFIX = "rigsec"
TOPICS = TopicNames.with_prefix(PREFIX)
RIG = "rig-1"
MOUSE = "M001"
CODEC = default_codec()


@pytest.fixture(scope="module")
def broker() -> Iterator[KafkaBroker]:
    env = {
        "SHAPING_KAFKA_RIGS": RIG,
        "SHAPING_KAFKA_OPERATORS": "operator",
        "SHAPING_TOPIC_PREFIX": PREFIX,
        "SHAPING_PROCESSOR_ID": f"{PREFIX}-processor",
        "SHAPING_PARTITIONS": "2",  # the rig's ingress topic, made before the events topic
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


def _principal(broker: KafkaBroker, name: str) -> dict[str, Any]:
    """kafka-python options of a principal of the broker (from the script's files)."""
    return {
        "bootstrap_servers": broker.bootstrap,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": name,
        "sasl_plain_password": (broker.secrets_dir / f"{name}.password").read_text().strip(),
        "ssl_cafile": str(broker.secrets_dir / "ca.crt"),
        "request_timeout_ms": 10000,
    }


def _rig_config(folder: Path, broker: KafkaBroker, security: str = "") -> RigConfig:
    """A rig config for ``rig-1`` on the broker, with ``security`` added to its [broker]."""
    folder.mkdir(parents=True, exist_ok=True)
    path = write_config(folder, mice=[MOUSE], bootstrap=broker.bootstrap, prefix=PREFIX)
    text = path.read_text().replace("[broker]\n", f"[broker]\n{security.strip()}\n", 1)
    path.write_text(text)
    return load_config(path)


def _credentials(broker: KafkaBroker, password_file: Path | None = None) -> str:
    secrets = broker.secrets_dir
    return f"""
security_protocol = "SASL_SSL"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "{RIG}"
sasl_password_file = "{password_file or secrets / f"{RIG}.password"}"
ssl_cafile = "{secrets / "ca.crt"}"
"""


def _events_on_topic(broker: KafkaBroker, topic: str = TOPICS.events) -> dict[str, int]:
    """Event id to offset of every record of ``topic`` (the events topic), read as admin."""
    consumer = KafkaConsumer(**_principal(broker, "admin"), group_id=None)
    try:
        partitions = [TopicPartition(topic, p) for p in (0, 1)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        found: dict[str, int] = {}
        for _ in range(40):
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    found[CODEC.decode(record.value).event_id] = record.offset
            if all(consumer.position(tp) >= end for tp, end in ends.items()):
                break
        return found
    finally:
        consumer.close()


def _drainer(config: RigConfig, store: RigStore, timeout_ms: int = 15000) -> OutboxDrainer:
    return OutboxDrainer(
        store,
        config.link,
        client_id=f"shaping-rig-{config.rig_id}",
        codec=CODEC,
        delivery_timeout_ms=timeout_ms,
    )


def test_the_rig_sends_events_and_reads_assignments_with_its_credentials(
    broker: KafkaBroker, tmp_path: Path
) -> None:
    config = _rig_config(tmp_path / "rig", broker, _credentials(broker))
    assert config.link.security.protocol == "SASL_SSL"
    # A secured rig writes its own ingress topic (the ingress gate forwards it to the events
    # topic; tests/integration/test_ingress_kafka.py).
    own_topic = config.link.events_topic(TOPICS)
    assert own_topic == TOPICS.rig_ingress(RIG)
    store = RigStore(config.store_path, CODEC)
    try:
        events = session(MOUSE, f"{MOUSE}-secure-s1", trials(correct=2))
        for event in events:
            store.append(event, own_topic)
        drainer = _drainer(config, store)
        try:
            assert drainer.drain(60), drainer.status.last_error
        finally:
            drainer.close()
        assert store.unsent_count() == 0
        on_topic = _events_on_topic(broker, own_topic)
        assert {e.event_id for e in events} <= set(on_topic)

        # The processor writes the mouse's next assignment; the rig reads it.
        issued = assignment(MOUSE, session_number=2)
        producer = KafkaProducer(**_principal(broker, "processor"), acks="all")
        try:
            value = CODEC.encode(issued)
            producer.send(
                TOPICS.assignments,
                key=encode_key(MOUSE),
                value=value,
                headers=headers_for(value),
            ).get(timeout=15)
        finally:
            producer.close(timeout=5)
        follower = AssignmentFollower(
            store,
            config.link,
            TOPICS.assignments,
            TOPICS.decisions,
            config.mice,
            client_id=f"shaping-rig-{config.rig_id}",
            codec=CODEC,
        )
        try:
            follower.catch_up(30)
        finally:
            follower.close()
        cached = store.cached_assignment(MOUSE)
        assert cached is not None, follower.last_error
        assert cached.assignment.event_id == issued.event_id
    finally:
        store.close()


def test_without_credentials_nothing_leaves_the_outbox(broker: KafkaBroker, tmp_path: Path) -> None:
    config = _rig_config(tmp_path / "plain", broker)  # PLAINTEXT: the default
    store = RigStore(config.store_path, CODEC)
    try:
        [event] = session(MOUSE, f"{MOUSE}-plain-s1", trials(correct=1))[:1]
        store.append(event, TOPICS.events)
        drainer = _drainer(config, store, timeout_ms=4000)
        try:
            assert not drainer.drain(8)
        finally:
            drainer.close()
        assert store.unsent_count() == 1  # the event waits in the outbox
        error = drainer.status.last_error or ""
        assert drainer.status.failures >= 1
        assert "NoBrokersAvailable" in error or "bootstrap" in error.lower(), error
        assert event.event_id not in _events_on_topic(broker)
    finally:
        store.close()


def test_a_wrong_password_is_refused_by_the_broker(broker: KafkaBroker, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    config = _rig_config(tmp_path / "wrong", broker, _credentials(broker, wrong))
    store = RigStore(config.store_path, CODEC)
    try:
        [event] = session(MOUSE, f"{MOUSE}-wrong-s1", trials(correct=1))[:1]
        store.append(event, TOPICS.events)
        drainer = _drainer(config, store, timeout_ms=4000)
        try:
            assert not drainer.drain(8)
        finally:
            drainer.close()
        assert store.unsent_count() == 1
        error = drainer.status.last_error or ""
        # kafka-python reports the bootstrap that failed; the broker's log says why.
        assert "Authentication failed" in error or "bootstrap" in error.lower(), error
        log = broker.log_file.read_text(errors="replace")
        assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in log
    finally:
        store.close()
