"""The notifier (services/notifier): the routing file, who hears what and when (pure), and the
channels against a REAL local SMTP server (aiosmtpd) and a REAL local HTTP receiver."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shaping.schemas.alerts import AlertAcknowledged, AlertRaised, AlertResolved, AlertUpdated
from shaping.services.alerts.checks import FileInvalid
from shaping.services.notifier.channels import render
from shaping.services.notifier.metrics import FAILED, SENT, NotifierMetrics
from shaping.services.notifier.routing import Notices, parse_routing
from shaping.services.notifier.runner import Dispatcher
from tests.support.examples import example_alerts
from tests.support.receivers import Inbox, Mailbox, free_port

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def routing_text(smtp_port: int, hook_url: str, style: str = "slack") -> str:
    return f"""\
smtp: {{host: 127.0.0.1, port: {smtp_port}, sender: shaping@lab.test}}
people:
  ada: {{email: ada@lab.test}}
  chat: {{webhook: {{url: "{hook_url}/hook", style: {style}}}}}
  bob: {{email: bob@lab.test}}
subscriptions:
  - {{people: [ada, chat], labs: [lab-a], min_severity: attention}}
escalation:
  - {{after_minutes: 30, people: [bob], min_severity: warning}}
"""


def alert(kind: type = AlertRaised, **changes: Any) -> Any:
    fields = example_alerts()["AlertUpdated"].model_dump(
        exclude={"event_id", "event_type", "schema_version"}
    )
    fields.update(revision=0, episode=1, raised_at=T0, occurred_at=T0)
    fields.update(changes)
    return kind(**fields)


# -- the routing file ---------------------------------------------------------------------------


def test_a_routing_file_is_read() -> None:
    routing = parse_routing(routing_text(25, "http://h"))
    assert set(routing.people) == {"ada", "chat", "bob"}
    assert routing.first(alert()) == ["ada", "chat"]
    assert routing.first(alert(lab="lab-b")) == []
    assert routing.first(alert(severity="info")) == []
    assert routing.smtp is not None and routing.smtp.sender == "shaping@lab.test"


def test_a_bad_routing_file_is_refused_with_each_line_at_fault() -> None:
    text = """\
people:
  ada: {email: not-an-address}
  bob: {}
subscriptions:
  - {people: [carol], scopes: [moon]}
escalation:
  - {after_minutes: 0, people: [ada]}
"""
    with pytest.raises(FileInvalid) as caught:
        parse_routing(text, "r.yaml")
    shown = str(caught.value)
    assert "r.yaml:2: 'not-an-address' is not an email address" in shown
    assert "r.yaml:3: bob has neither email nor webhook" in shown
    assert "r.yaml:5: unknown person 'carol'" in shown
    assert "r.yaml:5: unknown scope 'moon'" in shown
    assert "r.yaml:7: escalation.0.after_minutes must be between 0.1 and 10080" in shown
    assert "give the `smtp:` server" in shown


# -- who hears what, once -----------------------------------------------------------------------


def test_one_message_per_alert_per_person_until_it_changes() -> None:
    notices = Notices(parse_routing(routing_text(25, "http://h")))
    first = notices.on_alert(alert(), T0)
    assert [(n.person, n.kind) for n in first] == [("ada", "raised"), ("chat", "raised")]
    assert notices.on_alert(alert(), T0) == []  # the same record again
    same = alert(AlertUpdated, revision=1)  # an update that changes nothing people read
    assert notices.on_alert(same, T0) == []
    worse = alert(AlertUpdated, revision=2, severity="critical")
    assert [n.kind for n in notices.on_alert(worse, T0)] == ["updated", "updated"]
    done = notices.on_alert(alert(AlertResolved, revision=3), T0 + timedelta(minutes=5))
    assert [(n.person, n.kind) for n in done] == [("ada", "resolved"), ("chat", "resolved")]


def test_escalation_after_the_delay_unless_acknowledged() -> None:
    routing = parse_routing(routing_text(25, "http://h"))
    notices = Notices(routing)
    notices.on_alert(alert(), T0)
    assert notices.tick(T0 + timedelta(minutes=29)) == []
    escalated = notices.tick(T0 + timedelta(minutes=31))
    assert [(n.person, n.kind, n.level) for n in escalated] == [("bob", "escalated", 0)]
    assert notices.tick(T0 + timedelta(minutes=60)) == []  # once per level
    resolved = notices.on_alert(alert(AlertResolved, revision=1), T0 + timedelta(minutes=61))
    assert sorted(n.person for n in resolved) == ["ada", "bob", "chat"]

    acked = Notices(routing)
    other = alert(episode=2)
    acked.on_alert(other, T0)
    ack = alert(AlertAcknowledged, episode=2, acknowledged_by="ada")
    assert acked.on_alert(ack, T0 + timedelta(minutes=5)) == []
    assert acked.tick(T0 + timedelta(minutes=31)) == []


def test_an_alert_nobody_takes_is_counted() -> None:
    notices = Notices(parse_routing(routing_text(25, "http://h")))
    assert notices.on_alert(alert(lab="lab-z"), T0) == []
    assert notices.unrouted == 1


def test_every_message_is_timestamped() -> None:
    notices = Notices(parse_routing(routing_text(25, "http://h")))
    notice = notices.on_alert(alert(), T0)[0]
    written = T0 + timedelta(seconds=3)
    rendered = render(notice, written)
    assert "raised at: 2026-03-02 09:00:00 UTC" in rendered.text
    assert "message written at: 2026-03-02 09:00:03 UTC" in rendered.text
    assert "shaping alerts ack" in rendered.text
    assert rendered.subject.startswith("[Shaping ALERT] WARNING stuck_at_stage: mouse M042")


# -- the real channels --------------------------------------------------------------------------


def test_email_and_webhook_reach_real_local_servers(
    smtp_server: tuple[int, Mailbox], http_receiver: tuple[str, Inbox]
) -> None:
    port, mailbox = smtp_server
    url, inbox = http_receiver
    routing = parse_routing(routing_text(port, url))
    metrics = NotifierMetrics()
    dispatcher = Dispatcher(routing, metrics)
    for notice in Notices(routing).on_alert(alert(), T0):
        dispatcher.add(notice)
    assert dispatcher.deliver_due() == 2
    assert len(mailbox.messages) == 1
    mail = mailbox.messages[0]
    assert mail["To"] == "ada@lab.test" and mail["From"] == "shaping@lab.test"
    assert "stuck_at_stage" in mail["Subject"] and mail["Date"]
    parts = {part.get_content_type(): part for part in mail.walk()}
    assert {"text/plain", "text/html"} <= set(parts)
    assert (
        "raised at: 2026-03-02 09:00:00 UTC"
        in parts["text/plain"].get_payload(decode=True).decode()
    )
    assert len(inbox.posts) == 1 and inbox.posts[0]["path"] == "/hook"
    assert "stuck_at_stage" in inbox.posts[0]["json"]["text"]  # Slack's shape
    assert metrics.value(SENT, channel="email", notice="raised") == 1
    assert metrics.value(SENT, channel="webhook", notice="raised") == 1


@pytest.mark.parametrize("style", ["teams", "telegram", "json"])
def test_webhook_payload_shapes(http_receiver: tuple[str, Inbox], style: str) -> None:
    url, inbox = http_receiver
    text = routing_text(25, url, style).replace(
        f"style: {style}}}", f"style: {style}, chat_id: '-100'}}"
    )
    routing = parse_routing(text)
    dispatcher = Dispatcher(routing)
    for notice in Notices(routing).on_alert(alert(), T0):
        if notice.person == "chat":
            dispatcher.add(notice)
    assert dispatcher.deliver_due() == 1
    body = inbox.posts[0]["json"]
    if style == "teams":
        assert body["@type"] == "MessageCard" and "stuck_at_stage" in body["title"]
    elif style == "telegram":
        assert body["chat_id"] == "-100" and "stuck_at_stage" in body["text"]
    else:
        assert body["alert"]["rule"] == "stuck_at_stage" and body["notice"] == "raised"


def test_a_failed_delivery_is_retried_with_backoff_and_never_raises(
    http_receiver: tuple[str, Inbox],
) -> None:
    url, inbox = http_receiver
    inbox.fail = 2
    clock = [0.0]
    routing = parse_routing(routing_text(free_port(), url))  # nothing listens for SMTP
    metrics = NotifierMetrics()
    dispatcher = Dispatcher(routing, metrics, monotonic=lambda: clock[0], max_attempts=3)
    for notice in Notices(routing).on_alert(alert(), T0):
        dispatcher.add(notice)
    assert dispatcher.deliver_due() == 0  # both fail: SMTP refused, HTTP 500
    clock[0] = 0.5
    assert dispatcher.deliver_due() == 0  # not due yet (1 s)
    clock[0] = 1.0
    assert dispatcher.deliver_due() == 0  # the second 500; email refused again
    clock[0] = 3.0
    assert dispatcher.deliver_due() == 1  # the webhook gets through; email gives up
    assert len(inbox.posts) == 1 and dispatcher.queue == []
    assert dispatcher.status.given_up == 1
    assert metrics.value(FAILED, channel="email", final="yes") == 1
    assert metrics.value(FAILED, channel="webhook", final="no") == 2
