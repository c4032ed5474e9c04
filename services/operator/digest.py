"""The daily digest (issue 15, item 4): per mouse, a lab day's sessions, trials and accuracy, its
weight and percent of expected, water given and required, its stage, each decision and why, the
assignment it runs next (held or not), and its open alerts; per trainer and per lab.

Built from the status tables (:func:`build_digest`: reads only, no clock of its own: the day is
given), rendered as text and as HTML by Jinja2 templates (``templates/digest.txt`` and
``digest.html``, the HTML autoescaped), and sent by email, one message per trainer
(:func:`send_digests`), through the SMTP server of the notifier's routing file.

Who reads which mice is the *people file* (YAML, checked with the line at fault, as the
notifier's routing file is)::

    labs:
      lab-a:
        mice: ["M00*", M010]             # mouse ids or shell-style patterns
        policy: ../policies/lab-85.yaml  # optional: the lab's welfare policy
    trainers:
      ada: {labs: [lab-a]}               # every mouse of lab-a
      bob: {mice: [M003, M004]}          # these mice (ids or patterns)

A trainer's email address is the ``email`` of the person of the same name in the routing file.
Without a people file the digest covers every mouse in the tables as one lab, ``lab``.

The figures of the day (:class:`MouseDigest`) come from the tables as they stood at the end of
that lab day: the newest weight recorded by then, the restriction in force then, the water given
that day (earned in sessions and supplements); the mouse's stage and next assignment are its
current ones (a digest is read the morning after its day).
"""

from __future__ import annotations

import fnmatch
import json
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shaping.services.operator.errors import OperatorError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from shaping.services.domain.welfare import WelfarePolicy, WelfareStatus
    from shaping.services.notifier.routing import Routing, Smtp

TEMPLATES = Path(__file__).parent / "templates"
"""The digest's templates (package data)."""

DEFAULT_LAB = "lab"
"""The lab's name when no people file names one."""

PEOPLE_FILE = "people file"

NO_ALERTS_TABLE = (
    "alerts are not in the status tables here: `shaping alerts list` shows the open ones"
)
"""What the alerts section says when the tables hold no alerts."""


class DigestError(OperatorError):
    """A digest cannot be built or sent as asked (the message says why)."""


# -- the people file ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lab:
    """A lab of the people file: its mice (ids or patterns) and its welfare policy file."""

    name: str
    mice: tuple[str, ...] = ("*",)
    policy: Path | None = None


@dataclass(frozen=True)
class Trainer:
    """A trainer of the people file: the labs and mice (ids or patterns) they look after."""

    name: str
    labs: tuple[str, ...] = ()
    mice: tuple[str, ...] = ()


@dataclass(frozen=True)
class People:
    """Who reads which mice (see the module's doc)."""

    labs: Mapping[str, Lab]
    trainers: Mapping[str, Trainer] = field(default_factory=dict)

    def lab(self, name: str | None) -> Lab:
        """The lab named (the only one when None).

        Raises:
            DigestError: an unknown lab, or None with several labs.
        """
        if name is None:
            if len(self.labs) == 1:
                return next(iter(self.labs.values()))
            raise DigestError(f"say which lab (--lab): {', '.join(sorted(self.labs))}")
        if name not in self.labs:
            raise DigestError(f"no lab {name!r} in the people file (known: {_names(self.labs)})")
        return self.labs[name]

    def trainer(self, name: str) -> Trainer:
        """The trainer named.

        Raises:
            DigestError: an unknown trainer.
        """
        if name not in self.trainers:
            raise DigestError(
                f"no trainer {name!r} in the people file (known: {_names(self.trainers)})"
            )
        return self.trainers[name]

    def mice_of(self, lab: Lab, trainer: Trainer | None, known: Sequence[str]) -> list[str]:
        """The known mice of ``lab`` (and of ``trainer``, when given), sorted."""
        found = [m for m in known if _matches(m, lab.mice)]
        if trainer is not None:
            found = [m for m in found if lab.name in trainer.labs or _matches(m, trainer.mice)]
        return sorted(found)


def _names(items: Mapping[str, Any]) -> str:
    return ", ".join(sorted(items)) or "none"


def _matches(mouse_id: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(mouse_id, p) for p in patterns)


EVERYONE = People({DEFAULT_LAB: Lab(DEFAULT_LAB)})
"""The people of a lab without a people file: one lab, every mouse, no trainers."""


def parse_people(text: str, file: str = "<people>", base: Path | None = None) -> People:
    """Parses and checks a people file (see the module's doc).

    Raises:
        DigestError: every problem with its line.
    """
    from shaping.services.alerts.checks import FileInvalid, read_yaml

    try:
        data, c = read_yaml(None, text, file, PEOPLE_FILE)
    except FileInvalid as exc:
        raise DigestError(str(exc)) from exc
    return _check_people(data, c, base or Path.cwd())


def load_people(path: Path) -> People:
    """Reads and checks a people file (see :func:`parse_people`).

    Raises:
        DigestError: the file cannot be read, or every problem with its line.
    """
    from shaping.services.alerts.checks import FileInvalid, read_yaml

    try:
        data, c = read_yaml(path, None, str(path), PEOPLE_FILE)
    except FileInvalid as exc:
        raise DigestError(str(exc)) from exc
    return _check_people(data, c, path.parent)


def _check_people(data: Any, c: Any, base: Path) -> People:
    from shaping.schemas.identifiers import is_id
    from shaping.services.alerts.checks import FileInvalid

    top = c.mapping(data, (), ("labs", "trainers"))
    labs: dict[str, Lab] = {}
    for name, spec in c.mapping(top.get("labs"), ("labs",)).items():
        path: tuple[Any, ...] = ("labs", name)
        if not is_id(str(name)):
            c.fail(path, f"{name!r} is not a lab name (letters, digits, '-', '_', '.')")
        fields = c.mapping(spec, path, ("mice", "policy"))
        mice = c.texts(fields["mice"], (*path, "mice")) if "mice" in fields else ["*"]
        policy = c.text(fields, path, "policy")
        labs[str(name)] = Lab(str(name), tuple(mice), None if policy is None else base / policy)
    if not labs:
        c.fail(("labs",), "name at least one lab under `labs:` (its mice: ids or patterns)")
    trainers: dict[str, Trainer] = {}
    for name, spec in c.mapping(top.get("trainers"), ("trainers",)).items():
        path = ("trainers", name)
        fields = c.mapping(spec, path, ("labs", "mice"))
        in_labs = c.texts(fields["labs"], (*path, "labs")) if "labs" in fields else []
        for lab in in_labs:
            if lab not in labs:
                c.fail((*path, "labs"), f"unknown lab {lab!r} (known: {_names(labs)})")
        mice = c.texts(fields["mice"], (*path, "mice")) if "mice" in fields else []
        if not in_labs and not mice:
            c.fail(path, f"{name} looks after no lab and no mouse: give labs or mice")
        trainers[str(name)] = Trainer(str(name), tuple(in_labs), tuple(mice))
    try:
        c.raise_if_any(PEOPLE_FILE)
    except FileInvalid as exc:
        raise DigestError(str(exc)) from exc
    return People(labs, trainers)


# -- the digest's values --------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionLine:
    """One session of the day."""

    session_id: str
    rig_id: str | None
    started_at: datetime | None
    stage: str | None
    trials: int | None
    accuracy: float | None
    decision: str | None


@dataclass(frozen=True)
class DecisionLine:
    """One decision of the day and why (its evidence, concisely)."""

    at: datetime
    session_total: int
    from_stage: str
    to_stage: str
    decision: str
    rule: str | None
    why: str


@dataclass(frozen=True)
class NextAssignment:
    """What the mouse runs next: its current assignment, and whether it is held."""

    stage: str | None
    session_number: int | None
    parameters: Mapping[str, Any]
    reason: str | None
    held: str | None = None
    cleared_on: str | None = None
    restricted: bool = False

    def gate(self, day: date) -> str:
        """The welfare gate in words."""
        if self.held is not None:
            return f"HELD: {self.held}"
        if not self.restricted:
            return "not on water restriction"
        if self.cleared_on is not None and self.cleared_on > day.isoformat():
            return f"cleared to train on {self.cleared_on}"
        return "weigh it before its next session (not cleared yet)"


@dataclass(frozen=True)
class AlertLine:
    """An open alert about the mouse (or the lab)."""

    severity: str
    rule: str
    message: str
    raised_at: datetime | None


@dataclass(frozen=True)
class ActionLine:
    """Something a person did that day: an intervention or a release, a note."""

    at: datetime
    what: str
    by: str | None
    why: str | None


@dataclass(frozen=True)
class MouseDigest:
    """One mouse's day (see the module's doc)."""

    mouse_id: str
    stage: str | None
    sessions_at_stage: int | None
    sessions: tuple[SessionLine, ...]
    welfare: WelfareStatus
    decisions: tuple[DecisionLine, ...]
    next: NextAssignment
    actions: tuple[ActionLine, ...] = ()
    alerts: tuple[AlertLine, ...] = ()

    @property
    def trials(self) -> int:
        """Trials of the day's sessions."""
        return sum(s.trials or 0 for s in self.sessions)

    @property
    def accuracy(self) -> float | None:
        """Correct over judged trials of the day's sessions (None: no trials)."""
        judged = [(s.accuracy, s.trials) for s in self.sessions if s.accuracy is not None]
        total = sum(t or 0 for _, t in judged)
        if total == 0:
            return None
        return sum((a or 0.0) * (t or 0) for a, t in judged) / total


@dataclass(frozen=True)
class Digest:
    """A lab day's digest for a lab, or for one trainer of it."""

    day: date
    lab: str
    trainer: str | None
    policy: str
    mice: tuple[MouseDigest, ...]
    alerts_note: str | None = None

    @property
    def title(self) -> str:
        """The digest's title (an email's subject)."""
        who = f" for {self.trainer}" if self.trainer else ""
        return f"Shaping digest of {self.day.isoformat()}, {self.lab}{who}"

    @property
    def attention(self) -> list[MouseDigest]:
        """The mice that need a person first: held, at or near the minimum, not weighed, water
        still due, or with open alerts."""
        return [
            m
            for m in self.mice
            if m.next.held is not None
            or m.welfare.status in ("warning", "attention", "not_weighed_today")
            or (m.welfare.still_required_ml or 0) > 0
            or m.alerts
        ]


# -- building it from the status tables ----------------------------------------------------------


def _day_bounds(policy: WelfarePolicy, day: date) -> tuple[datetime, datetime]:
    """The UTC start and end of a lab day in the policy's time zone."""
    start = datetime.combine(day, time(), tzinfo=policy.zone)
    end = datetime.combine(day + timedelta(days=1), time(), tzinfo=policy.zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def summarize_evidence(evidence_json: str | None, decision: str) -> str:
    """A decision's evidence in one line: the rule that fired and its observations, or, for a
    mouse that stays, what each rule lacked."""
    try:
        rules = json.loads(evidence_json or "[]")
    except ValueError:
        return "evidence unreadable"

    def checks(rule: Mapping[str, Any], only_failed: bool) -> str:
        parts = []
        for obs in rule.get("observations", []):
            if only_failed and obs.get("passed"):
                continue
            observed = obs.get("observed")
            shown = "n/a" if observed is None else f"{observed:.3g}"
            threshold = obs.get("threshold")
            limit = "?" if threshold is None else f"{threshold:g}"
            parts.append(f"{obs.get('metric')} {shown} {obs.get('comparator')} {limit}")
        return ", ".join(parts)

    fired = [r for r in rules if r.get("verdict")]
    if fired:
        rule = fired[0]
        detail = checks(rule, only_failed=False)
        return f"{rule.get('rule')}: " + (detail or "fired")
    if not rules:
        return "no rule evaluated" if decision != "stay" else "no rule applies at this stage"
    lacking = [f"{r.get('rule')} not met ({checks(r, True) or 'no check failed'})" for r in rules]
    return "; ".join(lacking)


def _welfare_of_day(conn: Any, mouse_id: str, policy: WelfarePolicy, day: date) -> WelfareStatus:
    from shaping.services.domain.welfare import welfare_status
    from shaping.services.operator.husbandry import husbandry_of

    start, end = _day_bounds(policy, day)
    husbandry = husbandry_of(conn, mouse_id, start, end, as_of=end)
    return welfare_status(husbandry, policy, day, end - timedelta(seconds=1))


def _sessions(conn: Any, mouse_id: str, start: datetime, end: datetime) -> list[SessionLine]:
    from sqlalchemy import select

    from shaping.services.projector.tables import session_summaries as s

    rows = conn.execute(
        select(s)
        .where(s.c.mouse_id == mouse_id)
        .where(s.c.started_at >= start)
        .where(s.c.started_at < end)
        .order_by(s.c.started_at, s.c.session_id)
    ).mappings()
    return [
        SessionLine(
            r["session_id"],
            r["rig_id"],
            r["started_at"],
            r["stage"],
            r["n_trials"] if r["n_trials"] is not None else r["n_trials_reported"],
            r["accuracy"],
            r["decision"],
        )
        for r in rows
    ]


def _decisions(conn: Any, mouse_id: str, start: datetime, end: datetime) -> list[DecisionLine]:
    from sqlalchemy import select

    from shaping.services.projector.tables import decision_log as d

    rows = conn.execute(
        select(d)
        .where(d.c.mouse_id == mouse_id)
        .where(d.c.occurred_at >= start)
        .where(d.c.occurred_at < end)
        .where(d.c.superseded_by.is_(None))
        .order_by(d.c.occurred_at, d.c.session_total, d.c.event_id)
    ).mappings()
    return [
        DecisionLine(
            r["occurred_at"],
            r["session_total"],
            r["from_stage"],
            r["to_stage"],
            r["decision"],
            r["rule"],
            summarize_evidence(r["evidence_json"], r["decision"]),
        )
        for r in rows
    ]


_ACTION_WORDS = {
    "override": "stage overridden",
    "eject": "ejected",
    "adjust": "parameters adjusted",
    "allow-rigs": "rigs allowed",
    "release": "released from a hold",
}


def _actions(conn: Any, mouse_id: str, start: datetime, end: datetime) -> list[ActionLine]:
    from sqlalchemy import select

    from shaping.services.projector.tables import husbandry_notes as n
    from shaping.services.projector.tables import interventions as i

    found = []
    rows = conn.execute(
        select(i)
        .where(i.c.mouse_id == mouse_id)
        .where(i.c.requested_at >= start)
        .where(i.c.requested_at < end)
    ).mappings()
    for r in rows:
        what = _ACTION_WORDS.get(r["kind"] or "", r["kind"] or "request")
        if r["kind"] == "override" and r["to_stage"]:
            what += f" to {r['to_stage']}"
        if r["refused_reason"]:
            what += f" (refused: {r['refused_reason']})"
        found.append(ActionLine(r["requested_at"], what, r["requested_by"], r["reason"]))
    rows = conn.execute(
        select(n)
        .where(n.c.mouse_id == mouse_id)
        .where(n.c.noted_at >= start)
        .where(n.c.noted_at < end)
    ).mappings()
    found += [ActionLine(r["noted_at"], "note", r["noted_by"], r["text"]) for r in rows]
    return sorted(found, key=lambda a: (a.at, a.what))


def _next(conn: Any, mouse_id: str) -> tuple[NextAssignment, Mapping[str, Any] | None]:
    from sqlalchemy import select

    from shaping.services.projector.tables import mouse_status, welfare_gate

    status = conn.execute(select(mouse_status).where(mouse_status.c.mouse_id == mouse_id))
    row = status.mappings().first()
    gate = (
        conn.execute(select(welfare_gate).where(welfare_gate.c.mouse_id == mouse_id))
        .mappings()
        .first()
    )
    parameters: dict[str, Any] = {}
    if row is not None and row["parameters_json"]:
        try:
            parameters = json.loads(row["parameters_json"])
        except ValueError:
            parameters = {}
    restricted = bool(gate is not None and gate["restricted"])
    return (
        NextAssignment(
            None if row is None else row["stage"],
            None if row is None else row["next_session_number"],
            parameters,
            None if row is None else row["last_reason"],
            gate["hold_reason"] if gate is not None and gate["held"] else None,
            gate["cleared_on"] if gate is not None else None,
            restricted,
        ),
        row,
    )


def open_alerts(engine: Engine) -> dict[str, list[AlertLine]] | None:
    """The open alerts in the status tables' ``alerts`` table, by subject: the mouse id of a
    mouse alert, ``rig:<id>``, ``lab:<name>``, ``service:<name>`` for the others; None when
    the tables hold no alerts table (made by an older Shaping).

    Raises:
        OperatorError: the table cannot be read.
    """
    from shaping.services.projector.alert_rows import alert_rows
    from shaping.services.projector.errors import ProjectorError

    try:
        rows = alert_rows(engine)
    except ProjectorError as exc:
        raise OperatorError(str(exc)) from exc
    if rows is None:
        return None
    found: dict[str, list[AlertLine]] = {}
    for row in rows:
        found.setdefault(row.subject, []).append(
            AlertLine(row.severity, row.rule, row.message, row.raised_at)
        )
    for lines in found.values():
        lines.sort(key=lambda a: (a.raised_at or datetime.min.replace(tzinfo=UTC), a.rule))
    return found


def build_digest(
    engine: Engine,
    day: date,
    policy: WelfarePolicy,
    people: People = EVERYONE,
    lab: str | None = None,
    trainer: str | None = None,
) -> Digest:
    """The digest of lab day ``day`` for a lab (or one trainer of it), from the status tables.

    Raises:
        DigestError: an unknown lab or trainer; OperatorError: the tables cannot be read.
    """
    from shaping.services.operator.queries import mouse_ids

    chosen_lab = people.lab(lab)
    chosen_trainer = people.trainer(trainer) if trainer is not None else None
    known = list(mouse_ids(engine))
    mice = people.mice_of(chosen_lab, chosen_trainer, known)
    start, end = _day_bounds(policy, day)
    alerts = open_alerts(engine)
    found = []
    with engine.connect() as conn:
        for mouse in mice:
            next_assignment, status = _next(conn, mouse)
            found.append(
                MouseDigest(
                    mouse,
                    next_assignment.stage,
                    None if status is None else status["sessions_at_stage"],
                    tuple(_sessions(conn, mouse, start, end)),
                    _welfare_of_day(conn, mouse, policy, day),
                    tuple(_decisions(conn, mouse, start, end)),
                    next_assignment,
                    tuple(_actions(conn, mouse, start, end)),
                    tuple((alerts or {}).get(mouse, ())),
                )
            )
    return Digest(
        day,
        chosen_lab.name,
        None if chosen_trainer is None else chosen_trainer.name,
        policy.name,
        tuple(found),
        NO_ALERTS_TABLE if alerts is None else None,
    )


# -- rendering ------------------------------------------------------------------------------------


def _number(value: float | None, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{unit}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _hour(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%H:%M")


def _parameters(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items())) or "-"


def _water(status: WelfareStatus) -> str:
    parts = ", ".join(
        f"{kind.replace('_', ' ')} {ml:.2f}" for kind, ml in sorted(status.water_ml.items())
    )
    return f"{status.given_ml:.2f} mL" + (f" ({parts})" if parts else "")


def _environment(html: bool) -> Any:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    from shaping.schemas.text import printable

    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=html,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        number=_number,
        percent=_percent,
        when=_when,
        hour=_hour,
        parameters=_parameters,
        water=_water,
        # Text for a terminal or a mail reader: control characters shown, never obeyed.
        p=lambda value: printable("" if value is None else str(value)),
    )
    return env


def render_text(digest: Digest) -> str:
    """The digest as plain text (control characters in the data are shown escaped)."""
    return str(_environment(html=False).get_template("digest.txt").render(d=digest))


def render_html(digest: Digest) -> str:
    """The digest as one HTML page (every value autoescaped)."""
    return str(_environment(html=True).get_template("digest.html").render(d=digest))


# -- sending --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One digest emailed."""

    trainer: str
    to: str
    subject: str
    mice: int


def trainer_digests(
    engine: Engine,
    day: date,
    policy_for: Any,
    people: People,
    lab: str | None = None,
) -> list[Digest]:
    """One digest per trainer of the lab (or of every lab when ``lab`` is None): each
    trainer's mice of that lab; ``policy_for(lab)`` gives a lab's welfare policy."""
    labs = [people.lab(lab)] if lab is not None else list(people.labs.values())
    found = []
    for chosen in labs:
        for trainer in sorted(people.trainers.values(), key=lambda t: t.name):
            digest = build_digest(
                engine, day, policy_for(chosen), people, chosen.name, trainer.name
            )
            if digest.mice:
                found.append(digest)
    return found


def email_message(digest: Digest, sender: str, to: str, written_at: datetime) -> EmailMessage:
    """The digest as one email: text, with the HTML as its alternative."""
    message = EmailMessage()
    message["Subject"] = digest.title
    message["From"] = sender
    message["To"] = to
    message["Date"] = format_datetime(written_at)
    message["Message-ID"] = make_msgid("shaping-digest")
    message["X-Shaping-Digest"] = f"{digest.lab}/{digest.day.isoformat()}/{digest.trainer or ''}"
    message.set_content(render_text(digest))
    message.add_alternative(render_html(digest), subtype="html")
    return message


def send_digests(digests: Sequence[Digest], routing: Routing, written_at: datetime) -> list[Sent]:
    """Emails each trainer's digest to the address the routing file gives the person of the
    same name, through its SMTP server (one connection).

    Raises:
        DigestError: no SMTP server in the routing file, a trainer without an email address
            there (nothing is sent then), or the server refused.
    """
    smtp = routing.smtp
    if smtp is None:
        raise DigestError("the routing file has no `smtp:` server: digests cannot be emailed")
    missing = [
        d.trainer
        for d in digests
        if d.trainer is None
        or d.trainer not in routing.people
        or not routing.people[d.trainer].email
    ]
    if missing:
        raise DigestError(
            "no email address in the routing file for "
            + ", ".join(str(m) for m in missing)
            + ": add them under `people:` with an `email:`"
        )
    messages = []
    for digest in digests:
        assert digest.trainer is not None
        to = str(routing.people[digest.trainer].email)
        messages.append((digest, to, email_message(digest, smtp.sender, to, written_at)))
    _deliver(smtp, [m for _, _, m in messages])
    return [Sent(str(d.trainer), to, d.title, len(d.mice)) for d, to, _ in messages]


def _deliver(smtp: Smtp, messages: Sequence[EmailMessage]) -> None:
    if not messages:
        return
    try:
        with smtplib.SMTP(smtp.host, smtp.port, timeout=10.0) as server:
            if smtp.starttls:
                server.starttls(context=ssl.create_default_context())
            if smtp.username and smtp.password:
                server.login(smtp.username, smtp.password)
            for message in messages:
                server.send_message(message)
    except (smtplib.SMTPException, OSError) as exc:
        raise DigestError(f"cannot send the digests via {smtp.host}:{smtp.port}: {exc}") from exc


__all__ = [
    "EVERYONE",
    "Digest",
    "DigestError",
    "MouseDigest",
    "People",
    "build_digest",
    "load_people",
    "parse_people",
    "render_html",
    "render_text",
    "send_digests",
    "summarize_evidence",
    "trainer_digests",
]
