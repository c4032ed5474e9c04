"""``shaping ingress run``: the ingress gate (docs/security.md), as the ``ingress`` principal."""

from __future__ import annotations

from typing import Annotated

import typer

from shaping.services.cli.options import Bootstrap, MetricsHost, Prefix, fail, settings_with

app = typer.Typer(
    help="The ingress gate: forwards what rigs and operators say as themselves.",
    no_args_is_help=True,
)


@app.command("run")
def run(
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            envvar="SHAPING_INGRESS_METRICS_PORT",
            help="Serve Prometheus metrics on this port (/metrics).",
        ),
    ] = None,
    metrics_host: MetricsHost = "0.0.0.0",
) -> None:
    """Read every rig's and operator's ingress topic and forward to the events and commands
    topics what each says as itself; dead-letter the rest (runs until SIGTERM or Ctrl-C)."""

    from kafka.errors import KafkaError

    from shaping.services import bootstrap as wiring

    settings = settings_with(bootstrap, prefix)
    try:
        status = wiring.run_ingress(settings, wiring.until_signalled(), metrics_port, metrics_host)
    except KafkaError as exc:
        fail(f"the ingress gate cannot reach Kafka at {settings.bootstrap}: {exc}", code=1)
    typer.echo(
        f"ingress gate stopped: {status.forwarded} forwarded, {status.rejected} dead-lettered"
    )


def register(parent: typer.Typer) -> None:
    """Mounts ``shaping ingress ...``."""
    parent.add_typer(app, name="ingress")
