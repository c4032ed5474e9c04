"""A rig (and an operator) speaks only for itself, on the secured broker: each principal
writes only its own ingress topic, and the ingress gate (``shaping ingress run``, as the
``ingress`` principal) forwards what it says as itself and dead-letters the rest.

One secured broker for the module, started by the script (which creates the ingress topics of
its rigs and operators), and one gate process for the module. Kafka's refusals are asserted as
its own authorization errors; the gate's as dead letters with their reasons.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer

from shaping.rig.config import RigConfig, load_config
from shaping.rig.link.drain import OutboxDrainer
from shaping.rig.link.outbox import OutboxTransport
from shaping.rig.link.store import RigStore
from shaping.schemas.codec import default_codec, encode_key
from shaping.schemas.commands import OverrideStage
from shaping.schemas.events import AssignmentIssued, Event, EventRejected
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.topics import ensure_topics
from tests.support.kafka import (
    KafkaBroker,
    assert_refused,
    ingress_gate,
    principal_options,
    produce_as,
    read_topic,
    start_kafka,
)
from tests.support.ops import free_port
from tests.support.processes import shaping_process, wait_until
from tests.support.rig import write_config
from tests.support.scripts import InfraStartError
from tests.support.story import T0, session, trials

pytestmark = pytest.mark.kafka

PREFIX = "ing"
PROCESSOR_ID = "ing-processor"
RIGS = ("rig-1", "rig-2")
OPERATORS = ("ada", "bob")
PARTITIONS = 2
TOPICS = TopicNames.with_prefix(PREFIX)
CODEC = default_codec()
WAIT_S = 60


@pytest.fixture(scope="module")
def broker() -> Iterator[KafkaBroker]:
    env = {
        "SHAPING_KAFKA_RIGS": " ".join(RIGS),
        "SHAPING_KAFKA_OPERATORS": " ".join(OPERATORS),
        "SHAPING_TOPIC_PREFIX": PREFIX,
        "SHAPING_PROCESSOR_ID": PROCESSOR_ID,
        "SHAPING_PARTITIONS": str(PARTITIONS),
    }
    try:
        started = start_kafka(free_port(), free_port(), secure=True, env=env)
    except InfraStartError as exc:
        pytest.fail(f"could not start the secured broker:\n{exc}", pytrace=False)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for key, value in started.credentials("admin").items():
                patch.setenv(key, value)
            ensure_topics(started.bootstrap, TOPICS, partitions=PARTITIONS)
        yield started
    finally:
        started.stop()


class Gate:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, metrics_port: int) -> None:
        self.proc = proc
        self.log = log
        self.metrics_port = metrics_port

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            return str(answer.read().decode())

    def alive(self) -> None:
        assert self.proc.poll() is None, f"the gate exited:\n{self.tail()}"


@pytest.fixture(scope="module")
def gate(broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gate]:
    log = tmp_path_factory.mktemp("gate") / "ingress.log"
    port = free_port()
    with ingress_gate(broker, PREFIX, log, metrics_port=port) as proc:
        running = Gate(proc, log, port)

        def serving() -> bool:
            running.alive()
            try:
                return "shaping_ingress_forwarded" in running.metrics()
            except OSError:
                return False

        wait_until(serving, 60, "the gate's metrics endpoint")
        yield running
    assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]


def _events_on(broker: KafkaBroker, topic: str) -> dict[str, Any]:
    """Event id -> record of every decodable event of ``topic`` (read as admin)."""
    found: dict[str, Any] = {}
    for record in read_topic(broker, topic):
        try:
            found[CODEC.decode(record.value).event_id] = record
        except Exception:
            continue
    return found


def _dead_letters(broker: KafkaBroker, source_topic: str) -> list[EventRejected]:
    letters = []
    for record in read_topic(broker, TOPICS.dead_letter):
        event = CODEC.decode(record.value)
        if isinstance(event, EventRejected) and event.source_topic == source_topic:
            letters.append(event)
    return letters


def _send(broker: KafkaBroker, principal: str, topic: str, message: Any) -> Any:
    value = CODEC.encode(message)
    return produce_as(broker, principal, topic, value=value, key=encode_key(message.mouse_id))


def _wait_for_dead_letter(
    broker: KafkaBroker, gate: Gate, source_topic: str, offset: int
) -> EventRejected:
    def found() -> EventRejected | None:
        gate.alive()
        return next(
            (d for d in _dead_letters(broker, source_topic) if d.source_offset == offset), None
        )

    try:
        return wait_until(found, WAIT_S, f"the dead letter of {source_topic}@{offset}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{gate.tail()}") from None


def _wait_for_event(broker: KafkaBroker, gate: Gate, topic: str, event_id: str) -> Any:
    def found() -> Any:
        gate.alive()
        return _events_on(broker, topic).get(event_id)

    try:
        return wait_until(found, WAIT_S, f"{event_id} on {topic}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{gate.tail()}") from None


# --- what Kafka itself refuses -----------------------------------------------------------------


def test_the_script_made_an_ingress_topic_per_rig_and_operator(broker: KafkaBroker) -> None:
    consumer = KafkaConsumer(**principal_options(broker, "admin"), group_id=None)
    try:
        topics = consumer.topics()
        for rig in RIGS:
            assert len(consumer.partitions_for_topic(TOPICS.rig_ingress(rig)) or ()) == 2
        for operator in OPERATORS:
            assert TOPICS.operator_ingress(operator) in topics
    finally:
        consumer.close()
    assert "ingress ingress" in (broker.secrets_dir / "principals").read_text()


@pytest.mark.parametrize(
    "topic",
    [
        pytest.param(TOPICS.events, id="events"),
        pytest.param(TOPICS.rig_ingress("rig-2"), id="another-rigs-topic"),
        pytest.param(TOPICS.commands, id="commands"),
        pytest.param(TOPICS.operator_ingress("ada"), id="an-operators-topic"),
    ],
)
def test_a_rig_may_write_only_its_own_ingress_topic(broker: KafkaBroker, topic: str) -> None:
    assert_refused(lambda: produce_as(broker, "rig-1", topic))


def test_operators_write_only_their_own_ingress_topic(broker: KafkaBroker) -> None:
    for topic in (TOPICS.commands, TOPICS.events, TOPICS.operator_ingress("bob")):
        assert_refused(lambda t=topic: produce_as(broker, "ada", t))  # type: ignore[misc]
    # The gate reads ingress topics and writes the three it forwards to, nothing else.
    for topic in (TOPICS.assignments, TOPICS.decisions, TOPICS.rig_ingress("rig-1")):
        assert_refused(lambda t=topic: produce_as(broker, "ingress", t))  # type: ignore[misc]


# --- what the gate refuses ----------------------------------------------------------------------


def test_a_rig_speaking_as_another_rig_is_dead_lettered(broker: KafkaBroker, gate: Gate) -> None:
    forged = session("ING-F1", "ING-F1-s1", trials(correct=1))[0]
    forged = forged.model_copy(update={"rig_id": "rig-2"})
    own = session("ING-F1", "ING-F1-s2", trials(correct=1))[0]  # rig-1's, as it should
    topic = TOPICS.rig_ingress("rig-1")
    sent = _send(broker, "rig-1", topic, forged)
    after = _send(broker, "rig-1", topic, own)

    letter = _wait_for_dead_letter(broker, gate, topic, sent.offset)
    assert letter.reason.startswith("rig 'rig-1' may not publish events as rig 'rig-2'"), letter
    assert (letter.source_partition, letter.rejected_by) == (sent.partition, "ingress")
    assert letter.error_kind == "invalid" and letter.rig_id == "rig-1"
    assert letter.causation_id == forged.event_id
    # The same mouse's next event, in order behind it, went through; the forged one never did.
    _wait_for_event(broker, gate, TOPICS.events, own.event_id)
    assert forged.event_id not in _events_on(broker, TOPICS.events)
    assert 'reason="impersonation",source="rig"' in gate.metrics()
    assert after.offset > sent.offset


def test_an_operator_speaking_as_another_is_dead_lettered(broker: KafkaBroker, gate: Gate) -> None:
    command = OverrideStage(
        mouse_id="ING-F2",
        requested_by="bob",
        requested_at=T0,
        to_stage="s2_training",
        reason="not mine to ask",
    )
    topic = TOPICS.operator_ingress("ada")
    sent = _send(broker, "ada", topic, command)
    letter = _wait_for_dead_letter(broker, gate, topic, sent.offset)
    assert letter.reason.startswith("operator 'ada' may not send commands as 'bob'"), letter
    assert letter.causation_id == command.command_id
    keys = {record.key for record in read_topic(broker, TOPICS.commands)}
    assert b"ING-F2" not in keys


def test_malformed_and_huge_records_are_dead_lettered_and_the_gate_goes_on(
    broker: KafkaBroker, gate: Gate
) -> None:
    topic = TOPICS.rig_ingress("rig-2")
    junk = produce_as(broker, "rig-2", topic, value=b"not a shaping message", key=b"ING-J1")
    huge_value = b"\x00" * 900_000
    huge = produce_as(broker, "rig-2", topic, value=huge_value, key=b"ING-J1")
    good = session("ING-J1", "ING-J1-s1", trials(correct=1))[0]
    good = good.model_copy(update={"rig_id": "rig-2"})
    _send(broker, "rig-2", topic, good)

    first = _wait_for_dead_letter(broker, gate, topic, junk.offset)
    assert first.error_kind == "undecodable" and "not accepted" in first.reason
    second = _wait_for_dead_letter(broker, gate, topic, huge.offset)
    assert second.original_size == len(huge_value)
    assert len(second.original_value) == 65_536  # a bounded copy, with the whole one's size
    _wait_for_event(broker, gate, TOPICS.events, good.event_id)
    gate.alive()


def test_a_rig_added_while_the_gate_runs_is_picked_up(broker: KafkaBroker, gate: Gate) -> None:
    added = broker.script(
        "add-principal", "rig-7", "rig", env={"SHAPING_PARTITIONS": "3"}, timeout_s=120
    )
    assert added.returncode == 0, added.stdout + added.stderr
    topic = TOPICS.rig_ingress("rig-7")
    assert f"ingress topics created: {topic}" in added.stdout
    consumer = KafkaConsumer(**principal_options(broker, "rig-7"), group_id=None)
    try:
        # The events topic's partition count, not SHAPING_PARTITIONS (the events topic exists).
        assert len(consumer.partitions_for_topic(topic) or ()) == PARTITIONS
        # The new rig sees its own topic and the two it reads, nothing else.
        assert consumer.topics() == {topic, TOPICS.assignments, TOPICS.decisions}
    finally:
        consumer.close()
    event = session("ING-N1", "ING-N1-s1", trials(correct=1))[0]
    event = event.model_copy(update={"rig_id": "rig-7"})
    _send(broker, "rig-7", topic, event)
    forwarded = _wait_for_event(broker, gate, TOPICS.events, event.event_id)
    assert forwarded.key == b"ING-N1"


# --- the rig and the processor through the gate ------------------------------------------------


def _rig_config(broker: KafkaBroker, folder: Path, mouse: str) -> RigConfig:
    folder.mkdir(parents=True, exist_ok=True)
    path = write_config(folder, mice=[mouse], bootstrap=broker.bootstrap, prefix=PREFIX)
    secrets = broker.secrets_dir
    security = f"""
security_protocol = "SASL_SSL"
sasl_username = "rig-1"
sasl_password_file = "{secrets / "rig-1.password"}"
ssl_cafile = "{secrets / "ca.crt"}"
"""
    path.write_text(path.read_text().replace("[broker]\n", f"[broker]\n{security}", 1))
    return load_config(path)


class CrashAfterAck:
    """A fault plan whose process 'dies' (raises) after the broker's N-th acknowledgement,
    before the event is marked sent, like a rig killed at the worst moment."""

    def __init__(self, after: int) -> None:
        self.after = after

    def after_ack(self, count: int) -> None:
        if count >= self.after:
            raise RuntimeError("killed after the acknowledgement")


def test_the_rigs_drainer_reconciles_against_its_own_ingress_topic(
    broker: KafkaBroker, tmp_path: Path
) -> None:
    mouse = "ING-R1"
    config = _rig_config(broker, tmp_path / "rig", mouse)
    assert config.kafka_security.ingress  # the default with SASL_SSL
    topic = TOPICS.rig_ingress("rig-1")
    store = RigStore(config.store_path, CODEC)
    try:
        transport = OutboxTransport(
            store, config.link, TOPICS, config.mice, client_id="rig-1-test", codec=CODEC
        )
        assert transport.events_topic == topic
        events = session(mouse, f"{mouse}-s1", trials(correct=3))
        transport.publish(events)  # into the outbox, for the rig's own topic
        crashing = OutboxDrainer(
            store,
            config.link,
            "rig-1-test",
            codec=CODEC,
            faults=CrashAfterAck(2),  # type: ignore[arg-type]
        )
        with pytest.raises(RuntimeError, match="killed"):
            crashing.drain_once()
        crashing.close()
        assert store.unsent_count() == len(events)  # acknowledged, but not marked
        drainer = OutboxDrainer(store, config.link, "rig-1-test", codec=CODEC)
        try:
            assert drainer.drain(60), drainer.status.last_error
        finally:
            drainer.close()
        # The rig read its own topic back and found what had arrived: nothing sent twice.
        assert drainer.status.reconciled == len(events)
        on_topic = [CODEC.decode(r.value).event_id for r in read_topic(broker, topic, "rig-1")]
        assert sorted(on_topic.count(e.event_id) for e in events) == [1] * len(events)
    finally:
        store.close()


def test_a_session_through_the_rigs_ingress_topic_is_answered_by_the_processor(
    broker: KafkaBroker, gate: Gate, tmp_path: Path
) -> None:
    """An operator enrols a mouse through its ingress topic, the faust processor (as its
    principal) answers; rig-1's session goes through rig-1's ingress topic and the gate, and
    the processor answers it with the next assignment."""
    mouse = "ING-M1"
    common = {
        "SHAPING_TOPIC_PREFIX": PREFIX,
        "SHAPING_PROCESSOR_ID": PROCESSOR_ID,
        "SHAPING_PARTITIONS": str(PARTITIONS),
        "SHAPING_DATA_DIR": str(tmp_path / "data"),
    }
    log = tmp_path / "processor.log"
    with shaping_process(["processor"], log, {**common, **broker.credentials("processor")}):
        enrolment = subprocess.run(
            [
                sys.executable,
                "-m",
                "shaping.services.cli",
                "enroll",
                mouse,
                "--curriculum",
                "basic-shaping",
                "--by",
                "ada",
                "--wait",
                str(WAIT_S),
            ],
            env={**os.environ, **common, **broker.credentials("ada")},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert enrolment.returncode == 0, (
            enrolment.stdout + enrolment.stderr + gate.tail() + log.read_text(errors="replace")
        )
        assert f"enrolled {mouse} on basic-shaping" in enrolment.stdout

        config = _rig_config(broker, tmp_path / "rig", mouse)
        store = RigStore(config.store_path, CODEC)
        try:
            transport = OutboxTransport(
                store, config.link, TOPICS, config.mice, client_id="rig-1-s", codec=CODEC
            )
            events: list[Event] = session(mouse, f"{mouse}-s1", trials(correct=100, incorrect=20))
            with transport.connect(False, 30, lambda _: None):
                transport.publish(events)
                answer = transport.latest_assignment(mouse, 2, timeout_s=2 * WAIT_S)
            assert answer is not None and answer.session_number == 2, (
                f"no second assignment\n{gate.tail()}\n{log.read_text(errors='replace')[-3000:]}"
            )
            assert isinstance(answer, AssignmentIssued)
            assert answer.stage == "s2_training"
        finally:
            store.close()
    # Every event of the session reached the events topic through the gate, once each.
    on_events = _events_on(broker, TOPICS.events)
    assert {e.event_id for e in events} <= set(on_events)
    assert 'source="rig"' in gate.metrics()
    # The operator's command went through its own topic too.
    commands = read_topic(broker, TOPICS.operator_ingress("ada"))
    assert any(r.key == mouse.encode() for r in commands)
