"""``shaping notifier``: route alerts to people by email and chat webhooks (docs/alerts.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shaping.services.cli.options import (
    Bootstrap,
    MetricsHost,
    Prefix,
    checked_file,
    settings_with,
)

app = typer.Typer(help="Tells people of alerts: email and chat webhooks.", no_args_is_help=True)

RoutingFile = Annotated[
    Path,
    typer.Option("--routing", envvar="SHAPING_ALERT_ROUTING", help="The routing file (YAML)."),
]


def _routing(path: Path):  # type: ignore[no-untyped-def]
    from shaping.services.notifier.routing import load_routing

    return checked_file(load_routing, path)


@app.command("check")
def check(path: Annotated[Path, typer.Argument(help="A routing file.")]) -> None:
    """Check a routing file; print its problems with their lines."""
    routing = _routing(path)
    typer.echo(
        f"{path}: {len(routing.people)} people, {len(routing.subscriptions)} subscriptions, "
        f"{len(routing.escalation)} escalation levels, "
        f"email {'via ' + routing.smtp.host if routing.smtp else 'off'}"
    )


@app.command("run")
def run(
    routing_file: RoutingFile,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            envvar="SHAPING_NOTIFIER_METRICS_PORT",
            help="Serve Prometheus metrics on this port (/metrics).",
        ),
    ] = None,
    metrics_host: MetricsHost = "0.0.0.0",
) -> None:
    """Read the alerts topic and tell people (runs until SIGTERM or Ctrl-C)."""
    from shaping.services import bootstrap as wiring

    routing = _routing(routing_file)
    settings = settings_with(bootstrap, prefix)
    status = wiring.run_notifier_service(
        settings, routing, wiring.until_signalled(), metrics_port, metrics_host
    )
    typer.echo(
        f"notifier stopped: {status.sent} sent, {status.failed} failed tries, "
        f"{status.unrouted} unrouted"
    )


def register(parent: typer.Typer) -> None:
    """Mounts ``shaping notifier ...``."""
    parent.add_typer(app, name="notifier")
