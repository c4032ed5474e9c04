"""On a real broker (plaintext), the projector writes the ``alerts`` table from the alerts topic:
the alerts service raises an alert from the decisions, a person acknowledges it, a later
decision resolves it, and a second projector run from its committed offsets adds the rest."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaProducer

from shaping.schemas.alerts import alert_id
from shaping.schemas.codec import default_codec
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.kafka import KafkaConnection
from shaping.services.alerts.config import parse_rules
from shaping.services.alerts.log import acknowledge, alert_views, read_alerts
from shaping.services.alerts.rules import AlertEngine
from shaping.services.alerts.runner import run_alerts
from shaping.services.projector.alert_rows import alert_rows
from shaping.services.projector.runner import run_projector
from tests.support.alert_inputs import decision
from tests.support.wiring import sql_store

pytestmark = pytest.mark.kafka

CODEC = default_codec()
RULES = "lab: lab-a\nrules:\n  stuck_at_stage: {sessions: 3, severity: warning}\n"
STUCK = alert_id("stuck_at_stage", "mouse", "M1")


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_projector_writes_the_alerts_table_from_the_alerts_topic(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
) -> None:
    connection = KafkaConnection.of(kafka_bootstrap)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    stop = threading.Event()
    service = threading.Thread(
        target=run_alerts,
        args=(connection, kafka_topics, lambda: AlertEngine(parse_rules(RULES)), CODEC, stop),
        kwargs={"poll_timeout_ms": 200},
        daemon=True,
    )
    service.start()
    store = sql_store(f"sqlite:///{tmp_path / 'tables.sqlite'}")

    def views() -> dict[str, object]:
        return alert_views(read_alerts(connection, kafka_topics, CODEC, "test-reader"))

    def project() -> int:
        return run_projector(connection, kafka_topics, store, CODEC, idle_exit_s=2.0)

    try:
        for n in (1, 2, 3):
            event = decision(n)
            producer.send(kafka_topics.decisions, key=b"M1", value=CODEC.encode(event)).get(30)
        wait_for("the stuck alert on the alerts topic", lambda: STUCK in views())
        acknowledge(connection, kafka_topics, CODEC, STUCK, "ada", "on it")
        assert project() > 0
        [row] = alert_rows(store.engine) or []
        assert (row.alert_id, row.rule, row.severity, row.mouse_id) == (
            STUCK,
            "stuck_at_stage",
            "warning",
            "M1",
        )
        assert row.open and row.acknowledged_by == "ada" and row.lab == "lab-a"
        assert row.evidence["sessions_at_stage"] == "3"
        assert row.raised_at.tzinfo is not None and row.acknowledged_at is not None

        # the mouse moves on: the alert resolves, and the projector adds it from its offsets
        producer.send(
            kafka_topics.decisions,
            key=b"M1",
            value=CODEC.encode(decision(4, "progress", "s3")),
        ).get(30)
        wait_for(
            "the resolution",
            lambda: not views()[STUCK].open,  # type: ignore[attr-defined]
        )
        project()
        assert alert_rows(store.engine) == []
        [closed] = alert_rows(store.engine, include_resolved=True) or []
        assert closed.resolved_at is not None and closed.resolution
        assert closed.message == row.message and closed.acknowledged_by == "ada"
        offsets = store.committed_offsets("projector")
        assert any(topic == kafka_topics.alerts for topic, _ in offsets)
    finally:
        stop.set()
        service.join(timeout=30)
        producer.close()
        store.close()
