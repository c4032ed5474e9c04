"""Who hears of which alert, and when: the routing file and the notifier's bookkeeping. Pure.

The routing file (YAML, checked with the line at fault; an example in docs/alerts.md)::

    smtp:                              # how email leaves (optional: no email without it)
      host: smtp.lab.org
      port: 587
      starttls: true
      username: shaping                # optional; the password from a 0600 file
      password_file: /etc/shaping/smtp.password
      sender: shaping@lab.org
    people:
      ada: {email: ada@lab.org, webhook: {url: "https://chat.example/hook/1", style: slack}}
      bob: {email: bob@lab.org}
      ops: {webhook: {url: "https://api.telegram.example/bot1/sendMessage",
                      style: telegram, chat_id: "-100123"}}
    subscriptions:                     # who hears first
      - people: [ada]
        labs: [lab-a]                  # each filter is optional: none means all
        scopes: [mouse, rig]
        rules: [stuck_at_stage, weight]
        min_severity: attention
      - {people: [ops], scopes: [service]}
    escalation:                        # unacknowledged this long after it was raised
      - {after_minutes: 30, people: [bob], min_severity: warning}
      - {after_minutes: 120, people: [ops]}

:class:`Notices` keeps, per alert, who was told what: one message per alert per person until
the alert changes (a raise, an update that changes severity or message, the resolution), and
an escalation level once per episode, unless someone acknowledged it. Times are the log's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from shaping.schemas.alerts import (
    SCOPES,
    SEVERITIES,
    AlertAcknowledged,
    AlertEvent,
    AlertRaised,
    AlertResolved,
    severity_rank,
)
from shaping.services.alerts.checks import Checker, FileInvalid, read_yaml

WHAT = "routing file"
WEBHOOK_STYLES = ("slack", "teams", "telegram", "json")

NoticeKind = Literal["raised", "updated", "resolved", "escalated"]


@dataclass(frozen=True)
class Webhook:
    url: str
    style: str = "json"
    chat_id: str | None = None


@dataclass(frozen=True)
class Person:
    name: str
    email: str | None = None
    webhook: Webhook | None = None


@dataclass(frozen=True)
class Filter:
    """Which alerts a subscription or an escalation level takes (empty: any)."""

    labs: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    min_severity: str = "info"

    def takes(self, alert: AlertEvent) -> bool:
        return (
            (not self.labs or alert.lab in self.labs)
            and (not self.scopes or alert.scope in self.scopes)
            and (not self.rules or alert.rule in self.rules)
            and severity_rank(alert.severity) >= severity_rank(self.min_severity)
        )


@dataclass(frozen=True)
class Subscription:
    people: tuple[str, ...]
    filter: Filter = Filter()


@dataclass(frozen=True)
class Escalation:
    after: timedelta
    people: tuple[str, ...]
    filter: Filter = Filter()


@dataclass(frozen=True)
class Smtp:
    host: str
    port: int = 25
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    sender: str = "shaping@localhost"


@dataclass(frozen=True)
class Routing:
    """A checked routing file (see the module)."""

    people: Mapping[str, Person]
    subscriptions: tuple[Subscription, ...] = ()
    escalation: tuple[Escalation, ...] = ()
    smtp: Smtp | None = None

    def first(self, alert: AlertEvent) -> list[str]:
        """Who hears of ``alert`` first, in the file's order, each once."""
        names: dict[str, None] = {}
        for sub in self.subscriptions:
            if sub.filter.takes(alert):
                names.update(dict.fromkeys(sub.people))
        return list(names)

    def levels(self, alert: AlertEvent) -> list[tuple[int, Escalation]]:
        """The escalation levels that apply to ``alert`` (their index in the file)."""
        return [(i, level) for i, level in enumerate(self.escalation) if level.filter.takes(alert)]


# -- reading the file -------------------------------------------------------------------------


def parse_routing(text: str, file: str = "<routing>") -> Routing:
    """Parses and checks a routing document.

    Raises:
        FileInvalid: with every problem and its line.
    """
    data, c = read_yaml(None, text, file, WHAT)
    return _check(data, c, Path.cwd())


def load_routing(path: Path) -> Routing:
    """Reads and checks a routing file (see :func:`parse_routing`)."""
    data, c = read_yaml(path, None, str(path), WHAT)
    return _check(data, c, path.parent)


def _check(data: Any, c: Checker, base: Path) -> Routing:
    top = c.mapping(data, (), ("smtp", "people", "subscriptions", "escalation"))
    smtp = _smtp(c, top["smtp"], base) if "smtp" in top else None
    people: dict[str, Person] = {}
    for name, spec in c.mapping(top.get("people"), ("people",)).items():
        path: tuple[Any, ...] = ("people", name)
        fields = c.mapping(spec, path, ("email", "webhook"))
        email = c.text(fields, path, "email")
        if email is not None and ("@" not in email or any(ch in email for ch in " <>,\n")):
            c.fail((*path, "email"), f"{email!r} is not an email address")
        webhook = None
        if "webhook" in fields:
            hook = c.mapping(fields["webhook"], (*path, "webhook"), ("url", "style", "chat_id"))
            url = c.text(hook, (*path, "webhook"), "url")
            if url is not None and not url.startswith(("http://", "https://")):
                c.fail((*path, "webhook", "url"), f"webhook url must be http(s), not {url!r}")
            style = c.choice(hook, (*path, "webhook"), "style", "json", WEBHOOK_STYLES)
            chat = hook.get("chat_id")
            if style == "telegram" and chat is None:
                c.fail((*path, "webhook"), "a telegram webhook needs chat_id")
            if url is not None:
                webhook = Webhook(url, style, None if chat is None else str(chat))
        if email is None and webhook is None:
            c.fail(path, f"{name} has neither email nor webhook: nothing can reach them")
        people[str(name)] = Person(str(name), email, webhook)
    if not people:
        c.fail(("people",), "name at least one person under `people:`")
    email_needed = [p.name for p in people.values() if p.email]
    if email_needed and smtp is None:
        c.fail(("people",), f"{', '.join(email_needed)} get email: give the `smtp:` server")
    subscriptions = []
    for i, spec in enumerate(_items(c, top.get("subscriptions"), ("subscriptions",))):
        path = ("subscriptions", i)
        fields = c.mapping(spec, path, ("people", "labs", "scopes", "rules", "min_severity"))
        subscriptions.append(
            Subscription(_people(c, fields, path, people), _filter(c, fields, path))
        )
    if not subscriptions:
        c.fail(("subscriptions",), "give at least one subscription (who hears of what)")
    escalation = []
    previous = 0.0
    for i, spec in enumerate(_items(c, top.get("escalation"), ("escalation",))):
        path = ("escalation", i)
        keys = ("after_minutes", "people", "labs", "scopes", "rules", "min_severity")
        fields = c.mapping(spec, path, keys)
        if "after_minutes" not in fields:
            c.fail(path, "each escalation level needs after_minutes")
        after = c.number(fields, path, "after_minutes", 0, low=0.1, high=7 * 24 * 60)
        if after and after <= previous:
            c.fail((*path, "after_minutes"), "escalation levels must come later and later")
        previous = after or previous
        escalation.append(
            Escalation(
                timedelta(minutes=after), _people(c, fields, path, people), _filter(c, fields, path)
            )
        )
    c.raise_if_any(WHAT)
    return Routing(people, tuple(subscriptions), tuple(escalation), smtp)


def _items(c: Checker, value: Any, path: tuple[Any, ...]) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        c.fail(path, f"{c.where(path)} must be a list")
        return []
    return value


def _people(
    c: Checker, fields: Mapping[str, Any], path: tuple[Any, ...], people: Mapping[str, Person]
) -> tuple[str, ...]:
    names = c.texts(fields.get("people"), (*path, "people")) if "people" in fields else []
    if not names:
        c.fail(path, f"{c.where(path)} needs people")
    for name in names:
        if name not in people:
            c.fail((*path, "people"), f"unknown person {name!r} (known: {', '.join(people)})")
    return tuple(names)


def _filter(c: Checker, fields: Mapping[str, Any], path: tuple[Any, ...]) -> Filter:
    scopes = c.texts(fields["scopes"], (*path, "scopes")) if "scopes" in fields else []
    for scope in scopes:
        if scope not in SCOPES:
            c.fail((*path, "scopes"), f"unknown scope {scope!r} (known: {', '.join(SCOPES)})")
    return Filter(
        tuple(c.texts(fields["labs"], (*path, "labs")) if "labs" in fields else []),
        tuple(scopes),
        tuple(c.texts(fields["rules"], (*path, "rules")) if "rules" in fields else []),
        c.choice(fields, path, "min_severity", "info", SEVERITIES),
    )


def _smtp(c: Checker, value: Any, base: Path) -> Smtp | None:
    path = ("smtp",)
    keys = ("host", "port", "starttls", "username", "password_file", "sender")
    fields = c.mapping(value, path, keys)
    host = c.text(fields, path, "host")
    if host is None:
        c.fail(path, "smtp needs host")
        return None
    port = int(c.number(fields, path, "port", 25, low=1, high=65535, whole=True))
    starttls = fields.get("starttls", False)
    if not isinstance(starttls, bool):
        c.fail((*path, "starttls"), "smtp.starttls must be true or false")
        starttls = False
    password = None
    password_file = c.text(fields, path, "password_file")
    if password_file is not None:
        file = base / password_file
        try:
            if file.stat().st_mode & 0o077:
                c.fail((*path, "password_file"), f"{file} is readable by others: chmod 600 it")
            else:
                password = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            c.fail((*path, "password_file"), f"cannot read {file}: {exc.strerror}")
    return Smtp(
        host,
        port,
        starttls,
        c.text(fields, path, "username"),
        password,
        c.text(fields, path, "sender") or "shaping@localhost",
    )


# -- bookkeeping ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Notice:
    """One message to one person about one alert."""

    person: str
    kind: NoticeKind
    alert: AlertEvent
    at: datetime
    level: int | None = None

    @property
    def key(self) -> tuple[str, int, str, str]:
        """Unique per alert episode, change and person: what deduplication goes by."""
        change = (
            f"escalated:{self.level}"
            if self.kind == "escalated"
            else f"{self.kind}:{self.alert.revision}"
        )
        return (self.alert.alert_id, self.alert.episode, change, self.person)


@dataclass
class _Open:
    latest: AlertEvent
    raised_at: datetime
    told: dict[str, None] = field(default_factory=dict)
    acknowledged_by: str | None = None
    escalated: set[int] = field(default_factory=set)
    last_change: tuple[str, str] = ("", "")


class Notices:
    """What the notifier told whom (see the module); :meth:`on_alert` and :meth:`tick` return
    the messages to send now, each once."""

    def __init__(self, routing: Routing) -> None:
        self.routing = routing
        self.open: dict[str, _Open] = {}
        self.sent: set[tuple[str, int, str, str]] = set()
        self.unrouted = 0

    def on_alert(self, event: AlertEvent, at: datetime) -> list[Notice]:
        """One record of the alerts topic, at its broker time ``at``."""
        current = self.open.get(event.alert_id)
        if isinstance(event, AlertAcknowledged):
            if current is not None and current.latest.episode == event.episode:
                current.acknowledged_by = event.acknowledged_by
            return []
        if (
            isinstance(event, AlertRaised)
            or current is None
            or (event.episode > current.latest.episode)
        ):
            if isinstance(event, AlertResolved):
                return []  # resolved before we ever heard of it
            people = self.routing.first(event)
            current = self.open[event.alert_id] = _Open(event, event.raised_at)
            current.last_change = (event.severity, event.message)
            if not people:
                self.unrouted += 1
                return []
            return self._tell(current, people, "raised", event, at)
        if event.episode < current.latest.episode:
            return []
        current.latest = event
        if isinstance(event, AlertResolved):
            del self.open[event.alert_id]
            return self._tell(current, list(current.told), "resolved", event, at)
        change = (event.severity, event.message)
        if change == current.last_change:
            return []
        current.last_change = change
        people = list(dict.fromkeys([*current.told, *self.routing.first(event)]))
        return self._tell(current, people, "updated", event, at)

    def tick(self, now: datetime) -> list[Notice]:
        """Escalates every open, unacknowledged alert whose level is due at ``now``."""
        out: list[Notice] = []
        for current in self.open.values():
            if current.acknowledged_by is not None:
                continue
            for index, level in self.routing.levels(current.latest):
                if index in current.escalated or now - current.raised_at < level.after:
                    continue
                current.escalated.add(index)
                out += self._tell(
                    current, list(level.people), "escalated", current.latest, now, index
                )
        return out

    def _tell(
        self,
        current: _Open,
        people: Sequence[str],
        kind: NoticeKind,
        event: AlertEvent,
        at: datetime,
        level: int | None = None,
    ) -> list[Notice]:
        out = []
        for person in people:
            notice = Notice(person, kind, event, at, level)
            if notice.key in self.sent:
                continue
            self.sent.add(notice.key)
            current.told[person] = None
            out.append(notice)
        return out


__all__ = [
    "WEBHOOK_STYLES",
    "Escalation",
    "FileInvalid",
    "Filter",
    "Notice",
    "Notices",
    "Person",
    "Routing",
    "Smtp",
    "Subscription",
    "Webhook",
    "load_routing",
    "parse_routing",
]
