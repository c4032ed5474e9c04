"""``shaping digest``: the daily digest of a lab day, per lab or per trainer, as text (and HTML);
``shaping digest send``: one email per trainer through the notifier's SMTP server.

:func:`register` adds them to the ``shaping`` app. Only typer is imported here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shaping.services.cli.options import DbUrl, fail, settings_with

if TYPE_CHECKING:
    from shaping.services.domain.welfare import WelfarePolicy
    from shaping.services.notifier.routing import Routing
    from shaping.services.operator.digest import Lab, People

app = typer.Typer(
    help="The daily digest of a lab day: per mouse its sessions, weight and water, decisions "
    "and why, next assignment and open alerts.",
    invoke_without_command=True,
)

Day = Annotated[
    str | None,
    typer.Option("--day", help="The lab day to digest, YYYY-MM-DD (default: yesterday, lab time)."),
]
LabName = Annotated[str | None, typer.Option("--lab", help="The lab (a lab of the people file).")]
PeopleFile = Annotated[
    Path | None,
    typer.Option(
        "--people",
        envvar="SHAPING_PEOPLE_FILE",
        help="The people file: labs (their mice and welfare policy) and trainers (their labs "
        "or mice); docs/husbandry.md. Default: every mouse as one lab, no trainers.",
        dir_okay=False,
    ),
]
Policy = Annotated[
    str | None,
    typer.Option(
        "--policy",
        envvar="SHAPING_WELFARE_POLICY",
        help="The welfare policy file for labs whose entry names none (default: built in).",
    ),
]


def _people(path: Path | None) -> People:
    from shaping.services.operator.digest import EVERYONE, DigestError, load_people

    if path is None:
        return EVERYONE
    try:
        return load_people(path)
    except DigestError as exc:
        fail(exc, code=2)


def _policy_for(default: str | None) -> Callable[[Lab], WelfarePolicy]:
    from shaping.services.operator.husbandry import HusbandryError, welfare_policy

    try:
        fallback = welfare_policy(default)
    except HusbandryError as exc:
        fail(exc, code=2)

    def policy(lab: Lab) -> WelfarePolicy:
        if lab.policy is None:
            return fallback
        try:
            return welfare_policy(lab.policy)
        except HusbandryError as exc:
            fail(f"lab {lab.name}: {exc}", code=2)

    return policy


def _day(day: str | None, policy: WelfarePolicy) -> date:
    if day is None:
        return policy.day_of(datetime.now(UTC)) - timedelta(days=1)
    try:
        return date.fromisoformat(day)
    except ValueError:
        fail(f"--day must be a date like 2026-03-02, not {day!r}", code=2)


@app.callback()
def digest(
    ctx: typer.Context,
    day: Day = None,
    lab: LabName = None,
    trainer: Annotated[
        str | None, typer.Option("--trainer", help="Only this trainer's mice (people file).")
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html", help="Also write the digest as an HTML page to this file.", dir_okay=False
        ),
    ] = None,
    people: PeopleFile = None,
    policy: Policy = None,
    db_url: DbUrl = None,
) -> None:
    """Print the digest of a lab day (yesterday by default) for a lab or one trainer."""
    if ctx.invoked_subcommand is not None:
        return
    from shaping.services.operator.digest import DigestError, build_digest, render_html
    from shaping.services.operator.digest import render_text as text_of
    from shaping.services.operator.errors import OperatorError
    from shaping.services.operator.queries import open_database

    chosen = _people(people)
    policy_for = _policy_for(policy)
    if trainer is not None and not chosen.trainers:
        fail("--trainer needs a people file that names trainers (--people)", code=2)
    try:
        the_lab = chosen.lab(lab)
    except DigestError as exc:
        fail(exc, code=2)
    lab_policy = policy_for(the_lab)
    the_day = _day(day, lab_policy)
    try:
        engine = open_database(settings_with(db_url=db_url).db_url)
    except OperatorError as exc:
        fail(exc, code=1)
    try:
        found = build_digest(engine, the_day, lab_policy, chosen, the_lab.name, trainer)
    except DigestError as exc:
        fail(exc, code=2)
    except OperatorError as exc:
        fail(exc, code=1)
    finally:
        engine.dispose()
    if html is not None:
        try:
            html.write_text(render_html(found), encoding="utf-8")
        except OSError as exc:
            fail(f"cannot write {html}: {exc.strerror}", code=1)
    typer.echo(text_of(found), nl=False)


@app.command("send")
def send(
    routing: Annotated[
        Path,
        typer.Option(
            "--routing",
            envvar=["SHAPING_ALERT_ROUTING", "SHAPING_ROUTING_FILE"],
            help="The notifier's routing file: its smtp server and each trainer's email.",
            dir_okay=False,
            show_default=False,
        ),
    ],
    people: Annotated[
        Path,
        typer.Option(
            "--people",
            envvar="SHAPING_PEOPLE_FILE",
            help="The people file: labs and trainers (docs/husbandry.md).",
            dir_okay=False,
            show_default=False,
        ),
    ],
    day: Day = None,
    lab: LabName = None,
    policy: Policy = None,
    db_url: DbUrl = None,
    daily_at: Annotated[
        str | None,
        typer.Option(
            "--daily-at",
            envvar="SHAPING_DIGEST_AT",
            help="Keep running and send each lab's digest of yesterday every day once the "
            "lab's clock (its policy's zone) passes this hour, HH:MM; the days sent are kept in "
            "--sent-file, so a restart sends nothing twice.",
            show_default=False,
        ),
    ] = None,
    sent_file: Annotated[
        Path,
        typer.Option(
            "--sent-file",
            envvar="SHAPING_DIGEST_SENT_FILE",
            help="With --daily-at: where the day each lab's digest was last sent is kept.",
            dir_okay=False,
        ),
    ] = Path("digest-sent.json"),
) -> None:
    """Email each trainer the digest of their mice (text and HTML), one message per trainer
    and lab, through the routing file's SMTP server. Once (yesterday's, or --day's), or every
    day at the lab's hour with --daily-at (a service: it runs until SIGTERM)."""
    from shaping.services.alerts.checks import FileInvalid
    from shaping.services.notifier.routing import load_routing
    from shaping.services.operator.digest import DigestError, send_digests, trainer_digests
    from shaping.services.operator.errors import OperatorError
    from shaping.services.operator.queries import open_database

    chosen = _people(people)
    if not chosen.trainers:
        fail(f"{people} names no trainers: nobody to send a digest to", code=2)
    try:
        routes = load_routing(routing)
    except FileInvalid as exc:
        fail(exc, code=2)
    policy_for = _policy_for(policy)
    if lab is not None:
        try:
            chosen.lab(lab)
        except DigestError as exc:
            fail(exc, code=2)
    if daily_at is not None:
        if day is not None:
            fail("--day and --daily-at do not go together: --daily-at sends yesterday's", code=2)
        _send_daily(daily_at, sent_file, routes, chosen, policy_for, lab, db_url)
        return
    first = chosen.lab(lab) if lab is not None else next(iter(chosen.labs.values()))
    the_day = _day(day, policy_for(first))
    try:
        engine = open_database(settings_with(db_url=db_url).db_url)
    except OperatorError as exc:
        fail(exc, code=1)
    try:
        digests = trainer_digests(engine, the_day, policy_for, chosen, lab)
        sent = send_digests(digests, routes, datetime.now(UTC))
    except DigestError as exc:
        fail(exc, code=1)
    except OperatorError as exc:
        fail(exc, code=1)
    finally:
        engine.dispose()
    for item in sent:
        typer.echo(f"sent to {item.trainer} <{item.to}>: {item.subject} ({item.mice} mice)")
    if not sent:
        typer.echo(f"no trainer has mice in the tables on {the_day.isoformat()}: nothing sent")


def _send_daily(
    at: str,
    sent_file: Path,
    routes: Routing,
    people: People,
    policy_for: Callable[[Lab], WelfarePolicy],
    lab: str | None,
    db_url: str | None,
) -> None:
    from dataclasses import replace

    from shaping.services import bootstrap
    from shaping.services.operator.digest import DigestError
    from shaping.services.operator.digest_schedule import DailyDigests, parse_hour, read_sent
    from shaping.services.operator.errors import OperatorError
    from shaping.services.operator.queries import open_database

    try:
        hour = parse_hour(at)
        read_sent(sent_file)  # an unreadable record stops it now, not at the first send
    except DigestError as exc:
        fail(exc, code=2)
    if lab is not None:
        people = replace(people, labs={lab: people.lab(lab)})
    try:
        engine = open_database(settings_with(db_url=db_url).db_url)
    except OperatorError as exc:
        fail(exc, code=1)
    stop = bootstrap.until_signalled()
    labs = ", ".join(people.labs)
    typer.echo(f"sending the digest of each lab ({labs}) daily at {at} lab time; Ctrl-C stops")
    daily = DailyDigests(engine, people, policy_for, routes, hour, sent_file, typer.echo)
    try:
        daily.run(stop, lambda: datetime.now(UTC), check_every_s=_check_every())
    except DigestError as exc:
        fail(exc, code=1)
    finally:
        engine.dispose()


def _check_every() -> float:
    """Seconds between looks at the clock (``SHAPING_DIGEST_CHECK_S``; default 30)."""
    import os

    try:
        return max(float(os.environ.get("SHAPING_DIGEST_CHECK_S", "30")), 0.05)
    except ValueError:
        fail("SHAPING_DIGEST_CHECK_S must be a number of seconds", code=2)


def register(parent: typer.Typer) -> None:
    """Adds ``digest`` and ``digest send``."""
    parent.add_typer(app, name="digest")
