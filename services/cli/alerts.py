"""``shaping alerts``: run the alerts service, check a rules file, list and acknowledge alerts
(docs/alerts.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shaping.services.cli.options import (
    Bootstrap,
    MetricsHost,
    Prefix,
    checked_file,
    fail,
    settings_with,
)

app = typer.Typer(
    help="Alerts for people: raised by rules over the log, acknowledged by people.",
    no_args_is_help=True,
)

RulesFile = Annotated[
    Path | None,
    typer.Option(
        "--rules",
        envvar="SHAPING_ALERT_RULES",
        help="The lab's alert-rules file (YAML). Default: the built-in rules (docs/alerts.md) "
        "with the welfare policy of --policy.",
    ),
]


def _rules(path: Path):  # type: ignore[no-untyped-def]
    from shaping.services.alerts.config import load_rules

    return checked_file(load_rules, path)


@app.command("check")
def check(path: Annotated[Path, typer.Argument(help="An alert-rules file.")]) -> None:
    """Check an alert-rules file; print its problems with their lines."""
    typer.echo(f"{path}: {_rules_on(_rules(path))}")


def _rules_on(rules) -> str:  # type: ignore[no-untyped-def]
    from shaping.services.alerts.config import RULES

    on = [name for name in RULES if getattr(rules, name)]
    return f"lab {rules.lab}, rules on: {', '.join(on) or 'none'}"


@app.command("run")
def run(
    rules_file: RulesFile = None,
    policy: Annotated[
        str | None,
        typer.Option(
            "--policy",
            envvar="SHAPING_WELFARE_POLICY",
            help="The welfare policy of the built-in rules (a rules file names its own).",
        ),
    ] = None,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            envvar="SHAPING_ALERTS_METRICS_PORT",
            help="Serve Prometheus metrics on this port (/metrics).",
        ),
    ] = None,
    metrics_host: MetricsHost = "0.0.0.0",
) -> None:
    """Raise, update and resolve alerts from the log (runs until SIGTERM or Ctrl-C)."""
    from shaping.services import bootstrap as wiring
    from shaping.services.curricula.policy import PolicyInvalid

    if rules_file is not None:
        rules = _rules(rules_file)
    else:
        try:
            rules = wiring.alert_rules(None, policy)
        except PolicyInvalid as exc:
            fail(exc)
    typer.echo(f"alerts service: {rules_file or 'the built-in rules'}: {_rules_on(rules)}")
    settings = settings_with(bootstrap, prefix)
    status = wiring.run_alerts_service(
        settings, rules, wiring.until_signalled(), metrics_port, metrics_host
    )
    typer.echo(
        f"alerts service stopped: {status.raised} raised, {status.updated} updated, "
        f"{status.resolved} resolved"
    )


@app.command("list")
def list_alerts(
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    all_: Annotated[bool, typer.Option("--all", help="Resolved alerts too.")] = False,
    embedded: Annotated[
        Path | None,
        typer.Option(
            "--embedded",
            help="An embedded install (the folder of `shaping demo`): read its status tables "
            "instead of Kafka.",
            file_okay=False,
        ),
    ] = None,
    db_url: Annotated[
        str | None,
        typer.Option(
            "--db-url",
            help="Read the status tables' alerts table at this SQLAlchemy URL instead of Kafka.",
        ),
    ] = None,
) -> None:
    """The alerts: open ones (or all), newest state each; from the alerts topic, or from the
    status tables with --embedded or --db-url."""
    if embedded is not None and db_url is not None:
        fail("give --embedded or --db-url, not both")
    if embedded is not None or db_url is not None:
        _list_from_tables(embedded, db_url, all_)
        return
    from kafka.errors import KafkaError

    from shaping.schemas.text import printable
    from shaping.services import bootstrap as wiring
    from shaping.services.alerts.log import AlertNotFound, alert_views, read_alerts

    settings = settings_with(bootstrap, prefix)
    try:
        views = alert_views(
            read_alerts(settings.kafka, settings.topics, wiring.codec(), "shaping-alerts-list")
        )
    except (KafkaError, AlertNotFound) as exc:
        fail(f"cannot read {settings.topics.alerts}: {exc}", code=1)
    shown = [v for v in views.values() if all_ or v.open]
    if not shown:
        typer.echo("no open alerts" if not all_ else "no alerts")
        return
    for view in sorted(shown, key=lambda v: v.latest.raised_at):
        a = view.latest
        state = "open" if view.open else "resolved"
        if view.acknowledged_by:
            state += f", acknowledged by {view.acknowledged_by}"
        typer.echo(
            f"{a.alert_id}  {a.severity:<9} {a.rule:<18} {a.scope} {a.scope_key}  "
            f"raised {a.raised_at:%Y-%m-%d %H:%M}Z  [{state}]  {printable(a.message)}"
        )


def _list_from_tables(embedded: Path | None, db_url: str | None, all_: bool) -> None:
    """``shaping alerts list`` on the status tables' ``alerts`` table."""
    from shaping.schemas.text import printable
    from shaping.services.operator.errors import OperatorError
    from shaping.services.operator.husbandry import EMBEDDED_DB
    from shaping.services.operator.queries import open_database
    from shaping.services.projector.alert_rows import alert_rows
    from shaping.services.projector.errors import ProjectorError

    if embedded is not None:
        if not (embedded / EMBEDDED_DB).is_file():
            fail(
                f"no status tables at {printable(str(embedded / EMBEDDED_DB))} (run `shaping "
                f"demo --out {printable(str(embedded))}` to make an embedded install)",
                code=1,
            )
        url = f"sqlite:///{embedded / EMBEDDED_DB}"
    else:
        assert db_url is not None
        url = settings_with(db_url=db_url).db_url
    try:
        engine = open_database(url)
    except OperatorError as exc:
        fail(exc, code=1)
    try:
        rows = alert_rows(engine, include_resolved=all_)
    except ProjectorError as exc:
        fail(exc, code=1)
    finally:
        engine.dispose()
    if rows is None:
        fail(
            "these status tables have no alerts table (made by an older Shaping: the projector "
            "adds it when it starts)",
            code=1,
        )
    if not rows:
        typer.echo("no open alerts" if not all_ else "no alerts")
        return
    for a in rows:
        state = "open" if a.open else f"resolved {a.resolved_at:%Y-%m-%d %H:%M}Z"
        if a.acknowledged_by:
            state += f", acknowledged by {a.acknowledged_by}"
        typer.echo(
            f"{a.alert_id}  {a.severity:<9} {a.rule:<18} {a.scope} {a.scope_key}  "
            f"raised {a.raised_at:%Y-%m-%d %H:%M}Z  [{state}]  {printable(a.message)}"
        )


@app.command("ack")
def ack(
    alert_id: Annotated[str, typer.Argument(help="The alert's id (shaping alerts list).")],
    by: Annotated[str, typer.Option("--by", help="Who acknowledges it.")],
    note: Annotated[str, typer.Option("--note", help="What you are doing about it.")] = "",
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Acknowledge an open alert: its escalation stops (it stays open until it clears)."""
    from kafka.errors import KafkaError

    from shaping.services import bootstrap as wiring
    from shaping.services.alerts.log import AlertNotFound, acknowledge

    if not by.strip():
        fail("--by must name who acknowledges the alert")
    settings = settings_with(bootstrap, prefix)
    try:
        done = acknowledge(
            settings.kafka, settings.topics, wiring.codec(), alert_id, by.strip(), note
        )
    except AlertNotFound as exc:
        fail(exc)
    except KafkaError as exc:
        fail(f"cannot reach Kafka at {settings.bootstrap}: {exc}", code=1)
    typer.echo(
        f"acknowledged {done.alert_id} ({done.rule} about {done.scope} {done.scope_key}, "
        f"episode {done.episode}) as {done.acknowledged_by}"
    )


def register(parent: typer.Typer) -> None:
    """Mounts ``shaping alerts ...``."""
    parent.add_typer(app, name="alerts")
