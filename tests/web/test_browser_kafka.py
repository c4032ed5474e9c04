"""A trainer's morning in a real headless Chromium against the real stack (issue 15, item 6):
a plaintext Kafka broker, the faust processor in its own process, the projector on a real
PostgreSQL, and ``shaping web`` in its own process sending commands to Kafka and reading the
status tables in PostgreSQL.

The alerts service runs too (its weight rule, in a thread), and the projector writes its
alerts into the ``alerts`` table the page reads.

A keeper weighs a restricted mouse below its minimum (refused until the jump is confirmed),
sees it held with its critical weight alert and gives water; a trainer releases it with a
reason and sees it cleared. Then the events on Kafka (the commands, their answers, the
AssignmentHeld, the re-issued assignments and the AlertRaised) and the rows in PostgreSQL are
checked. Screenshots ``kafka-morning-*.png`` under .cache/screenshots/web/.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from shaping.schemas.alerts import AlertRaised, alert_id
from shaping.schemas.codec import default_codec
from shaping.schemas.commands import GiveWater, RecordWeight, ReleaseHold
from shaping.schemas.events import (
    AssignmentHeld,
    AssignmentIssued,
    HoldReleased,
    WaterGiven,
    WeightRecorded,
)
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.kafka import KafkaConnection
from shaping.services.alerts.config import parse_rules
from shaping.services.alerts.rules import AlertEngine
from shaping.services.alerts.runner import run_alerts
from shaping.services.web.users import UsersFile
from tests.support.kafka_io import TopicReader
from tests.support.processes import wait_until
from tests.support.processor_stack import Stack, fresh_database
from tests.support.story import enrolled
from tests.web.browsing import morning, serving
from tests.web.conftest import PASSWORDS, ROLES

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

WAIT_S = 120.0
MOUSE = "W1"
WEIGHT_ALERT = alert_id("weight", "mouse", MOUSE)


RULES = "lab: lab\nrules:\n  weight: {attention: attention, warning: critical}\n"
"""The alerts service's rules: the weight rule (the default welfare policy, as the processor's)."""


@pytest.fixture
def stack(
    kafka_bootstrap: str, kafka_topics: TopicNames, postgres_url: str, tmp_path: Path
) -> Iterator[Stack]:
    running = Stack(kafka_bootstrap, kafka_topics, fresh_database(postgres_url), tmp_path)
    stop = threading.Event()
    alerts = threading.Thread(
        target=run_alerts,
        args=(
            KafkaConnection.of(kafka_bootstrap),
            kafka_topics,
            lambda: AlertEngine(parse_rules(RULES)),
            default_codec(),
            stop,
        ),
        kwargs={"poll_timeout_ms": 200},
        daemon=True,
    )
    alerts.start()
    try:
        yield running
    finally:
        stop.set()
        alerts.join(60)
        running.close()


def _gate(stack: Stack) -> dict[str, object] | None:
    rows = [r for r in stack.tables()["welfare_gate"] if r["mouse_id"] == MOUSE]
    return rows[0] if rows else None


def test_a_trainers_morning_on_kafka_and_postgresql(
    stack: Stack, browser: WebDriver, tmp_path: Path
) -> None:
    stack.publish([enrolled(MOUSE)])
    stack.wait_for_status(MOUSE, last_reason="enrolled")
    code, out = stack.shaping("restrict", "start", MOUSE, "--reference", "25")
    assert code == 0, out + stack.tail()
    code, out = stack.shaping("weigh", MOUSE, "24")
    assert code == 0, out + stack.tail()
    wait_until(
        lambda: (gate := _gate(stack)) is not None and gate["cleared_on"],
        WAIT_S,
        "the cleared gate of W1 in PostgreSQL",
    )

    users = UsersFile(tmp_path / "users.json")
    for name, role in ROLES.items():
        users.put(name, role, PASSWORDS[name])
    args = [
        "--db-url",
        stack.db_url,
        "--bootstrap",
        stack.bootstrap,
        "--prefix",
        stack.prefix,
        "--users-file",
        str(tmp_path / "users.json"),
        "--secret-file",
        str(tmp_path / "key"),
        "--wait",
        "60",
    ]
    log = tmp_path / "web.log"
    with serving(args, log) as url:
        try:
            morning(browser, url, MOUSE, "kafka-morning")
        except Exception:
            print(log.read_text(errors="replace"), stack.tail())
            raise

    # On Kafka: the page's commands, asked for by web/<user>, and the processor's answers.
    topics = stack.topics
    with TopicReader(
        stack.bootstrap, [topics.commands, topics.events, topics.assignments, topics.alerts]
    ) as reader:
        reader.wait_for(
            lambda _: [
                e
                for e in reader.events(topics.assignments, AssignmentIssued)
                if e.mouse_id == MOUSE and e.reason == "released"
            ],
            WAIT_S,
            "the assignment re-issued by the release",
        )
        sent = [
            reader.codec.decode_command(r.value)
            for r in reader.records
            if r.topic == topics.commands
        ]
        commands = [
            (type(c).__name__, c.requested_by)
            for c in sent
            if isinstance(c, RecordWeight | GiveWater | ReleaseHold)
            and c.requested_by.startswith("web/")
        ]
        assert commands == [
            ("RecordWeight", "web/hugo"),
            ("GiveWater", "web/hugo"),
            ("ReleaseHold", "web/alice"),
        ]
        weights = [
            (e.grams, e.confirmed, e.recorded_by)
            for e in reader.events(topics.events, WeightRecorded)
        ]
        assert weights[-1] == (19.5, True, "web/hugo")
        [water] = reader.events(topics.events, WaterGiven)
        assert (water.ml, water.kind, water.given_by) == (1.0, "supplement", "web/hugo")
        [released] = reader.events(topics.events, HoldReleased)
        assert released.released_by == "web/alice"
        assert released.reason == "vet checked: bright and active"
        [held] = reader.events(topics.assignments, AssignmentHeld)
        assert held.reason.startswith("19.5 g is 78.0 % of expected 25.0 g (minimum 80 %)")
        reasons = [
            a.reason
            for a in reader.events(topics.assignments, AssignmentIssued)
            if a.mouse_id == MOUSE
        ]
        assert reasons[-2:] == ["held", "released"]
        raised = [
            a for a in reader.events(topics.alerts, AlertRaised) if a.alert_id == WEIGHT_ALERT
        ]
        assert [(a.rule, a.severity, a.scope_key) for a in raised] == [
            ("weight", "critical", MOUSE)
        ]

    # In PostgreSQL: the weight, the water, the release audited, the gate cleared.
    tables = stack.tables()
    [weighed] = [r for r in tables["husbandry_weights"] if r["recorded_by"] == "web/hugo"]
    assert (weighed["grams"], weighed["confirmed"]) == (19.5, True)
    [given] = [r for r in tables["husbandry_water"] if r["given_by"] == "web/hugo"]
    assert (given["ml"], given["kind"]) == (1.0, "supplement")
    [audit] = [r for r in tables["interventions"] if r["kind"] == "release"]
    assert (audit["requested_by"], audit["reason"]) == (
        "web/alice",
        "vet checked: bright and active",
    )
    assert audit["assignment_id"]
    gate = _gate(stack)
    assert gate is not None and gate["restricted"] and not gate["held"] and gate["cleared_on"]
    [alert] = [r for r in tables["alerts"] if r["alert_id"] == WEIGHT_ALERT]
    assert (alert["severity"], alert["resolved_at"]) == ("critical", None)
    # the refused jump was refused by the page: nothing of it reached the dead letters
    assert not [r for r in tables["rejected_events"] if "RecordWeight" in str(r["reason"])]
