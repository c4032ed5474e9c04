"""Record headers and ``shaping events`` on the real broker.

Every kafka-python producer of the project (enroll, interventions, curriculum publish, the rig's
transport and its outbox drainer) attaches the headers of schemas/headers.py; a plain consumer
reads them without decoding anything. ``shaping events show|tail`` reads the topics back as
text and JSON, dead letters and garbage included.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from typer.testing import CliRunner

from shaping.rig.link.drain import OutboxDrainer
from shaping.rig.link.kafka import KafkaRigTransport
from shaping.rig.link.store import RigStore
from shaping.schemas.codec import default_codec, encode_key
from shaping.schemas.commands import Command, EjectMouse
from shaping.schemas.events import Event, EventRejected
from shaping.schemas.headers import CONTENT_TYPE, header_text, headers_for
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.curricula_topic import publish_version
from shaping.services.adapters.settings import Settings
from shaping.services.adapters.topics import wait_for_partitions
from shaping.services.cli import app
from shaping.services.curricula.catalog import default_catalog
from shaping.services.curricula.migrate import published_event
from shaping.services.operator.enroll import build_enrollment
from shaping.services.operator.interventions import send_command
from tests.support.story import enrolled, session, trials

pytestmark = pytest.mark.kafka


def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[Any]:
    """Every record of a topic, as a kcat-like plain consumer sees it (no decoding)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        partitions = wait_for_partitions(consumer, [topic]) or []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def assert_described(record: Any) -> None:
    """The headers name the record's type and schema, as decoding the value says."""
    message = default_codec().decode_message(record.value)
    name = message.command_type if isinstance(message, Command) else message.event_type
    newest = default_codec().newest(name)
    assert header_text(record.headers) == {
        "content-type": CONTENT_TYPE,
        "shaping-event-type": name,
        "shaping-schema-version": str(newest.version),
        "shaping-schema-fingerprint": newest.fingerprint.hex(),
    }, record


def test_enroll_and_interventions_send_the_headers(
    kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    settings = Settings(
        bootstrap=kafka_bootstrap, topic_prefix=kafka_topics.events.removesuffix(".events")
    )
    codec = default_codec()
    enrol = build_enrollment("M-head", "basic-shaping", enrolled_by="tests")
    send_command(settings, enrol, codec, wait_s=0)
    eject = EjectMouse(
        mouse_id="M-head", requested_by="tests", requested_at=datetime.now(UTC), reason="done"
    )
    send_command(settings, eject, codec, wait_s=0)

    records = read_all(kafka_bootstrap, kafka_topics.commands, 2)
    assert [codec.decode_command(r.value).command_type for r in records] == [
        "EnrolMouse",
        "EjectMouse",
    ]
    for record in records:
        assert_described(record)


def test_the_rig_transport_and_the_outbox_drainer_send_the_headers(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
) -> None:
    events = session("M-rig", "M-rig-s1", trials(correct=2))
    transport = KafkaRigTransport(
        kafka_bootstrap, kafka_topics.events, kafka_topics.assignments, codec=default_codec()
    )
    try:
        transport.publish(events[:2])
    finally:
        transport.producer.close()
        transport.consumer.close()
    store = RigStore(tmp_path / "rig.sqlite", codec=default_codec())
    try:
        for event in events[2:]:
            store.append(event, kafka_topics.events)
        drainer = OutboxDrainer(store, kafka_bootstrap, codec=default_codec())
        try:
            assert drainer.drain(60)
        finally:
            drainer.close()
    finally:
        store.close()

    records = read_all(kafka_bootstrap, kafka_topics.events, len(events))
    assert len(records) == len(events)
    for record in records:
        assert_described(record)
    assert {header_text(r.headers)["shaping-event-type"] for r in records} == {
        "SessionStarted",
        "TrialCompleted",
        "SessionEnded",
    }


def test_a_published_curriculum_carries_the_headers(
    kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    curriculum = default_catalog([]).get("basic-shaping", "0.1.0")
    event = published_event(curriculum, None, datetime.now(UTC))  # type: ignore[arg-type]
    assert publish_version(kafka_bootstrap, kafka_topics.curricula, event, default_codec())
    [record] = read_all(kafka_bootstrap, kafka_topics.curricula, 1)
    assert_described(record)


# -- shaping events -------------------------------------------------------------------------------


def produce(bootstrap: str, records: Sequence[tuple[str, bytes | None, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for topic, key, value in records:
            producer.send(topic, key=key, value=value, headers=headers_for(value))
        producer.flush()
    finally:
        producer.close()


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, ["events", *args])
    assert result.exit_code == 0, result.output
    return result.output


def json_records(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_events_show_and_tail_read_every_topic_kind(
    kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    codec = default_codec()
    prefix = kafka_topics.events.removesuffix(".events")
    target = ["--bootstrap", kafka_bootstrap, "--prefix", prefix]
    story: list[Event] = [enrolled("M-a"), *session("M-a", "M-a-s1", trials(correct=3))]
    other = enrolled("M-b")
    garbage = b"\x1b[2J\x1b]0;owned\x07 garbage"
    rejected = EventRejected(
        mouse_id="M-a",
        occurred_at=datetime.now(UTC),
        reason="undecodable: not an Avro single-object message",
        error_kind="undecodable",
        source_topic=kafka_topics.events,
        source_partition=0,
        source_offset=99,
        original_key=b"M-a",
        original_value=garbage,
        rejected_by="processor",
    )
    produce(
        kafka_bootstrap,
        [(kafka_topics.events, encode_key(e.mouse_id), codec.encode(e)) for e in story]
        + [
            (kafka_topics.events, b"M-b", codec.encode(other)),
            (kafka_topics.events, b"\x1b[31mevil", garbage),
        ],
    )
    time.sleep(0.01)  # the dead letter comes after the story, in time too
    produce(kafka_bootstrap, [(kafka_topics.dead_letter, b"M-a", codec.encode(rejected))])

    everything = json_records(cli("show", "-t", "all", "-o", "json", *target))
    assert len(everything) == len(story) + 3
    types = [r["event_type"] for r in everything]
    assert types.count("TrialCompleted") == 3
    assert None in types  # the garbage, shown, not skipped
    [bad] = [r for r in everything if r["event_type"] is None]
    assert bad["value_hex"] == garbage.hex()
    assert bad["key"] == "\x1b[31mevil"
    [dead] = [r for r in everything if r["event_type"] == "EventRejected"]
    assert dead["topic"] == kafka_topics.dead_letter
    assert dead["original"]["event"] is None
    assert dead["original"]["hexdump"][0].startswith("00000000  1b 5b 32 4a")
    assert dead["headers"]["shaping-event-type"] == "EventRejected"

    # one mouse, every topic: its events and its dead letter, in time order
    mine = json_records(cli("show", "-t", "all", "-m", "M-a", "-o", "json", *target))
    assert [r["event_type"] for r in mine] == [e.event_type for e in story] + ["EventRejected"]

    table = cli("show", "-m", "M-a", "--type", "TrialCompleted", "--headers", *target)
    rows = [line for line in table.splitlines() if "TrialCompleted" in line and "@" in line]
    assert len(rows) == 3
    assert "shaping-event-type=TrialCompleted" in table
    assert "\x1b" not in cli("show", *target)  # the garbage key and value, escaped

    # a partition and offset range
    partition = mine[0]["partition"]
    ranged = json_records(
        cli(
            "show",
            "-p",
            str(partition),
            "--from-offset",
            "1",
            "--to-offset",
            "2",
            "-o",
            "json",
            *target,
        )
    )
    assert [r["offset"] for r in ranged] == [1, 2]
    assert all(r["partition"] == partition for r in ranged)

    # a time range: nothing is from the future, everything from the last hour
    assert json_records(cli("show", "-t", "all", "--since", "1h", "-o", "json", *target))
    assert not json_records(cli("show", "--since", "2999-01-01", "-o", "json", *target))

    missing = CliRunner().invoke(app, ["events", "show", "-p", "99", *target])
    assert missing.exit_code == 2
    assert "no partition 99" in missing.output

    last = json_records(cli("tail", "-n", "2", "-m", "M-a", "-o", "json", *target))
    assert [r["event_type"] for r in last] == ["TrialCompleted", "SessionEnded"]
    dead_table = cli("tail", "-t", "dead-letter", *target)
    assert "reason: undecodable: not an Avro single-object message" in dead_table
    assert "|.[2J.]0;owned. g|" in dead_table
    assert "original does not decode" in dead_table


def test_events_tail_follows_new_records(kafka_bootstrap: str, kafka_topics: TopicNames) -> None:
    codec = default_codec()
    prefix = kafka_topics.events.removesuffix(".events")
    produce(kafka_bootstrap, [(kafka_topics.events, b"M-old", codec.encode(enrolled("M-old")))])
    later = enrolled("M-new")

    def publish_later() -> None:
        time.sleep(2.0)
        produce(kafka_bootstrap, [(kafka_topics.events, b"M-new", codec.encode(later))])

    thread = threading.Thread(target=publish_later)
    thread.start()
    try:
        out = cli(
            "tail",
            "-f",
            "--timeout",
            "6",
            "-n",
            "1",
            "-o",
            "json",
            "--bootstrap",
            kafka_bootstrap,
            "--prefix",
            prefix,
        )
    finally:
        thread.join()
    assert [r["event"]["mouse_id"] for r in json_records(out)] == ["M-old", "M-new"]
