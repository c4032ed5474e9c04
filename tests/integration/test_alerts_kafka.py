"""Alerts on a real broker: the alerts service reads the decisions and the dead letters, the
notifier emails a person through a REAL local SMTP server and posts to a REAL local HTTP
receiver; a repeat sends nothing, an acknowledgement stops the escalation, and the resolution
sends a "resolved" message."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from kafka import KafkaProducer

from shaping.schemas.alerts import AlertEvent, alert_id
from shaping.schemas.codec import default_codec
from shaping.schemas.events import Event
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.kafka import KafkaConnection
from shaping.services.alerts.config import parse_rules
from shaping.services.alerts.log import acknowledge, alert_views, read_alerts
from shaping.services.alerts.metrics import EVENTS, AlertsMetrics
from shaping.services.alerts.rules import AlertEngine
from shaping.services.alerts.runner import run_alerts
from shaping.services.notifier.metrics import SENT, NotifierMetrics
from shaping.services.notifier.routing import parse_routing
from shaping.services.notifier.runner import run_notifier
from tests.support.alert_inputs import dead_letter, decision
from tests.support.receivers import Inbox, Mailbox

pytestmark = pytest.mark.kafka

CODEC = default_codec()
RULES = """\
lab: lab-a
rules:
  stuck_at_stage: {sessions: 3, severity: warning}
  dead_letters: {count: 3, minutes: 10, severity: warning}
"""


def routing(smtp_port: int, url: str) -> str:
    return f"""\
smtp: {{host: 127.0.0.1, port: {smtp_port}, sender: shaping@lab.test}}
people:
  ada: {{email: ada@lab.test}}
  chat: {{webhook: {{url: "{url}/slack", style: slack}}}}
  bob: {{email: bob@lab.test}}
subscriptions:
  - {{people: [ada, chat], labs: [lab-a]}}
escalation:
  - {{after_minutes: 0.25, people: [bob], min_severity: warning}}
"""


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def send(kafka_bootstrap: str) -> Iterator[Callable[[str, Event], None]]:
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")

    def publish(topic: str, event: Event) -> None:
        producer.send(topic, key=event.mouse_id.encode(), value=CODEC.encode(event)).get(30)

    yield publish
    producer.close()


def mails_to(mailbox: Mailbox, address: str) -> list[Any]:
    with mailbox.lock:
        return [m for m in mailbox.messages if m["To"] == address]


def test_storm_and_stuck_mouse_reach_people_once_ack_stops_escalation(
    kafka_bootstrap: str,
    kafka_topics: TopicNames,
    send: Callable[[str, Event], None],
    smtp_server: tuple[int, Mailbox],
    http_receiver: tuple[str, Inbox],
) -> None:
    port, mailbox = smtp_server
    url, inbox = http_receiver
    connection = KafkaConnection.of(kafka_bootstrap)
    rules = parse_rules(RULES)
    alerts_metrics, notifier_metrics = AlertsMetrics(), NotifierMetrics()
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=run_alerts,
            args=(connection, kafka_topics, lambda: AlertEngine(rules), CODEC, stop),
            kwargs={"metrics": alerts_metrics, "poll_timeout_ms": 200},
            daemon=True,
        ),
        threading.Thread(
            target=run_notifier,
            args=(connection, kafka_topics, parse_routing(routing(port, url)), CODEC, stop),
            kwargs={"metrics": notifier_metrics, "poll_timeout_ms": 200},
            daemon=True,
        ),
    ]
    for thread in threads:
        thread.start()
    try:
        stuck = alert_id("stuck_at_stage", "mouse", "M1")
        storm = alert_id("dead_letters", "service", "dead-letter")
        for n in (1, 2, 3):
            send(kafka_topics.decisions, decision(n))
        for n in range(5):
            send(kafka_topics.dead_letter, dead_letter(n))

        wait_for("ada's two emails", lambda: len(mails_to(mailbox, "ada@lab.test")) == 2)
        wait_for("two chat posts", lambda: len(inbox.posts) == 2)
        subjects = sorted(m["Subject"] for m in mails_to(mailbox, "ada@lab.test"))
        assert "dead_letters" in subjects[0] and "stuck_at_stage" in subjects[1]
        assert all(m["Date"] for m in mails_to(mailbox, "ada@lab.test"))
        assert all("raised at:" in p["json"]["text"] for p in inbox.posts)

        ack = acknowledge(connection, kafka_topics, CODEC, stuck, "ada", "on it")
        assert ack.episode == 1 and ack.rule == "stuck_at_stage"
        send(kafka_topics.decisions, decision(4))  # a repeat: still stuck, nothing new
        wait_for(
            "bob's escalation of the storm",
            lambda: len(mails_to(mailbox, "bob@lab.test")) == 1,
            timeout_s=60,
        )
        bob = mails_to(mailbox, "bob@lab.test")[0]
        assert "ESCALATED" in bob["Subject"] and "dead_letters" in bob["Subject"]
        time.sleep(2)
        assert len(mails_to(mailbox, "ada@lab.test")) == 2  # the repeat sent nothing
        assert len(mails_to(mailbox, "bob@lab.test")) == 1  # the acknowledged one did not

        send(kafka_topics.decisions, decision(5, "progress", "s3"))
        wait_for("ada's resolved email", lambda: len(mails_to(mailbox, "ada@lab.test")) == 3)
        wait_for("the resolved post", lambda: len(inbox.posts) == 3)
        resolved = mails_to(mailbox, "ada@lab.test")[2]
        assert "RESOLVED" in resolved["Subject"] and "stuck_at_stage" in resolved["Subject"]
        assert "RESOLVED" in inbox.posts[2]["json"]["text"]

        views = alert_views(read_alerts(connection, kafka_topics, CODEC, "test-reader"))
        assert not views[stuck].open and views[storm].open
        events = read_alerts(connection, kafka_topics, CODEC, "test-reader-2")
        assert [type(e).__name__ for e in events if e.alert_id == stuck] == [
            "AlertRaised",
            "AlertAcknowledged",
            "AlertResolved",
        ]
        assert all(isinstance(e, AlertEvent) for e in events)
        assert (
            alerts_metrics.value(EVENTS, event="raised", rule="stuck_at_stage", severity="warning")
            == 1
        )
        assert notifier_metrics.value(SENT, channel="email", notice="escalated") == 1
        assert notifier_metrics.value(SENT, channel="webhook", notice="resolved") == 1
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert datetime.now(UTC) > ack.occurred_at
