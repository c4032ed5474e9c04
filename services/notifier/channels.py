"""How a notice reaches a person: email over SMTP (text and HTML), or a chat webhook.

:func:`render` turns a notice into words with its timestamps (when the alert was raised, by
the log's time, and when the message was written); :class:`EmailChannel` sends it with
:mod:`smtplib` (STARTTLS and login when the routing file asks); :class:`WebhookChannel` posts
it as JSON in the shape a chat expects (Slack's ``text``, a Teams message card, Telegram's
``sendMessage``, or the whole alert as ``json``). A channel raises :class:`DeliveryFailed` on
any failure; the notifier retries it.
"""

from __future__ import annotations

import html
import json
import smtplib
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from shaping.schemas.text import printable
from shaping.services.notifier.routing import Notice, Smtp, Webhook

TIMEOUT_S = 10.0


class DeliveryFailed(Exception):
    """A message could not be delivered (the notifier retries it)."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str
    fields: dict[str, Any]


_HEADLINES = {
    "raised": "ALERT",
    "updated": "ALERT UPDATED",
    "resolved": "RESOLVED",
    "escalated": "ESCALATED (unacknowledged)",
}


def _stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def render(notice: Notice, written_at: datetime) -> Rendered:
    """The words of a notice (every value escaped for its medium)."""
    alert = notice.alert
    head = _HEADLINES[notice.kind]
    subject = printable(
        f"[Shaping {head}] {alert.severity.upper()} {alert.rule}: {alert.scope} {alert.scope_key}"
    )[:200]
    lines = [
        printable(alert.message),
        "",
        f"severity: {alert.severity}",
        f"rule: {alert.rule}",
        f"about: {alert.scope} {alert.scope_key}" + (f" (lab {alert.lab})" if alert.lab else ""),
        f"raised at: {_stamp(alert.raised_at)}",
        f"this {notice.kind} at: {_stamp(notice.at)}",
        f"message written at: {_stamp(written_at)}",
        f"alert: {alert.alert_id} (episode {alert.episode}, revision {alert.revision})",
    ]
    if alert.evidence:
        lines += ["", "evidence:"] + [
            f"  {printable(k)}: {printable(v)}" for k, v in sorted(alert.evidence.items())
        ]
    if notice.kind != "resolved":
        lines += ["", f"acknowledge: shaping alerts ack {alert.alert_id} --by {notice.person}"]
    text = "\n".join(lines) + "\n"
    rows = "".join(
        f"<tr><th align=left>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
        for k, v in [
            ("severity", alert.severity),
            ("rule", alert.rule),
            ("about", f"{alert.scope} {alert.scope_key}"),
            ("lab", alert.lab),
            ("raised at", _stamp(alert.raised_at)),
            (f"this {notice.kind} at", _stamp(notice.at)),
            ("message written at", _stamp(written_at)),
            ("alert", f"{alert.alert_id} (episode {alert.episode})"),
            *sorted(alert.evidence.items()),
        ]
    )
    body = (
        f"<html><body><h2>{html.escape(head)}: {html.escape(alert.message)}</h2>"
        f"<table>{rows}</table>"
        + (
            f"<p>Acknowledge: <code>shaping alerts ack {html.escape(alert.alert_id)}</code></p>"
            if notice.kind != "resolved"
            else ""
        )
        + "</body></html>"
    )
    fields = {
        "notice": notice.kind,
        "person": notice.person,
        "written_at": written_at.isoformat(),
        "notice_at": notice.at.isoformat(),
        "escalation_level": notice.level,
        "alert": json.loads(alert.model_dump_json()),
    }
    return Rendered(subject, text, body, fields)


class EmailChannel:
    """Email through one SMTP server (see :class:`~shaping.services.notifier.routing.Smtp`)."""

    name = "email"

    def __init__(self, smtp: Smtp) -> None:
        self.smtp = smtp

    def send(self, to: str, rendered: Rendered, notice: Notice, written_at: datetime) -> None:
        message = EmailMessage()
        message["Subject"] = rendered.subject
        message["From"] = self.smtp.sender
        message["To"] = to
        message["Date"] = format_datetime(written_at)
        message["Message-ID"] = make_msgid("shaping-alert")
        message["X-Shaping-Alert"] = f"{notice.alert.alert_id}/{notice.alert.episode}"
        message.set_content(rendered.text)
        message.add_alternative(rendered.html, subtype="html")
        try:
            with smtplib.SMTP(self.smtp.host, self.smtp.port, timeout=TIMEOUT_S) as server:
                if self.smtp.starttls:
                    server.starttls(context=ssl.create_default_context())
                if self.smtp.username and self.smtp.password:
                    server.login(self.smtp.username, self.smtp.password)
                server.send_message(message)
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryFailed(f"email to {to} via {self.smtp.host}: {exc}") from exc


def webhook_payload(hook: Webhook, rendered: Rendered) -> dict[str, Any]:
    """The JSON body a chat of ``hook.style`` expects."""
    if hook.style == "slack":
        return {"text": f"*{rendered.subject}*\n{rendered.text}"}
    if hook.style == "teams":
        return {
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": rendered.subject,
            "title": rendered.subject,
            "text": rendered.text.replace("\n", "  \n"),
        }
    if hook.style == "telegram":
        return {"chat_id": hook.chat_id, "text": f"{rendered.subject}\n\n{rendered.text}"}
    return {"subject": rendered.subject, "text": rendered.text, **rendered.fields}


class WebhookChannel:
    """An HTTP POST of JSON to a chat's incoming webhook."""

    name = "webhook"

    def send(self, hook: Webhook, rendered: Rendered) -> None:
        body = json.dumps(webhook_payload(hook, rendered)).encode("utf-8")
        request = urllib.request.Request(
            hook.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "shaping-notifier"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                if response.status >= 300:
                    raise DeliveryFailed(f"webhook {hook.url}: HTTP {response.status}")
        except urllib.error.HTTPError as exc:
            raise DeliveryFailed(f"webhook {hook.url}: HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise DeliveryFailed(f"webhook {hook.url}: {exc}") from exc


__all__ = [
    "DeliveryFailed",
    "EmailChannel",
    "Rendered",
    "WebhookChannel",
    "render",
    "webhook_payload",
]
