"""The ``shaping`` command line: one entry point, a subcommand per job.

Heavy dependencies (faust, SQLAlchemy) are imported inside the commands that need them, so the
rig commands work on a Raspberry Pi that installed only the light ``shaping[rig]`` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shaping.rig import cli as rig_cli
from shaping.services.cli import curricula as curricula_cli
from shaping.services.cli import events as events_cli
from shaping.services.cli import interventions as interventions_cli
from shaping.services.cli import operator as operator_cli
from shaping.services.cli import replay as replay_cli
from shaping.services.cli.options import Bootstrap, DbUrl, Prefix, fail, settings_with

if TYPE_CHECKING:
    from shaping.services.adapters.settings import Settings

app = typer.Typer(
    name="shaping",
    help="Shaping: automatic, event-sourced training of laboratory mice.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
topics_app = typer.Typer(help="Kafka topics of a deployment.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(rig_cli.app, name="rig")
app.add_typer(curricula_cli.app, name="curriculum")
app.add_typer(events_cli.app, name="events")  # tail, show: the topics as text
app.command("evaluate")(curricula_cli.evaluate)
app.command("migrate")(curricula_cli.migrate)

MetricsHost = Annotated[
    str,
    typer.Option(
        "--metrics-host",
        envvar="SHAPING_METRICS_HOST",
        help="Address the metrics endpoint binds to.",
    ),
]


def _settings(
    bootstrap: str | None = None,
    prefix: str | None = None,
    db_url: str | None = None,
    partitions: int | None = None,
) -> Settings:
    """Settings from the environment, overridden by the options given on the command line."""
    from dataclasses import replace

    settings = settings_with(bootstrap, prefix, db_url)
    if partitions is not None:
        settings = replace(settings, partitions=partitions)
    return settings


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the SQLite database and event log.")] = Path(
        "demo-output"
    ),
    mice: Annotated[int, typer.Option(min=1, help="Number of simulated mice.")] = 8,
    rigs: Annotated[int, typer.Option(min=1, help="Number of rigs.")] = 4,
    days: Annotated[int, typer.Option(min=1, help="Training days to simulate.")] = 10,
    seed: Annotated[
        int, typer.Option(help="Random seed; the same seed gives the same output.")
    ] = 7,
) -> None:
    """Simulate a small lab in one process: no Kafka, no Java.

    Simulated rigs run simulated mice through the processor's core and the projector on
    SQLite, then the status table and each mouse's stage path are printed.
    """
    from shaping.rig.sim.lab import LabPlan
    from shaping.services.embedded.demo import render_report, run_demo

    result = run_demo(out, LabPlan(n_mice=mice, n_rigs=rigs, n_days=days, seed=seed))
    typer.echo(render_report(result))


@app.command()
def processor(
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    partitions: Annotated[int | None, typer.Option(help="Partitions per topic.")] = None,
    web_port: Annotated[
        int | None, typer.Option(help="Serve faust's web endpoints on this port.")
    ] = None,
    loglevel: Annotated[str, typer.Option(help="crit, error, warn, info or debug.")] = "warn",
    metrics_port: Annotated[
        int | None,
        typer.Option(
            envvar="SHAPING_PROCESSOR_METRICS_PORT",
            help="Serve Prometheus metrics on this port (/metrics).",
        ),
    ] = None,
    metrics_host: MetricsHost = "0.0.0.0",
) -> None:
    """Run the stream processor (a faust worker): per-mouse state, decisions, assignments."""
    from shaping.services.processor.app import run_processor

    run_processor(
        _settings(bootstrap, prefix, partitions=partitions),
        web_port=web_port,
        loglevel=loglevel,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )


@app.command()
def projector(
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    db_url: DbUrl = None,
    idle_exit: Annotated[
        float | None, typer.Option(help="Exit after this many seconds without messages.")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            envvar="SHAPING_PROJECTOR_METRICS_PORT",
            help="Serve Prometheus metrics on this port (/metrics).",
        ),
    ] = None,
    metrics_host: MetricsHost = "0.0.0.0",
) -> None:
    """Run the projector: keep the SQL status tables from what the processor wrote (accepted
    facts, decisions, assignments, dead letters)."""
    import signal
    import threading

    from shaping.services.projector.runner import run_projector
    from shaping.services.projector.store import SqlProjectionStore

    settings = _settings(bootstrap, prefix, db_url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    store = SqlProjectionStore(settings.db_url)
    metrics, server = None, None
    if metrics_port is not None:
        from shaping.services.adapters.metrics import ServiceMetrics
        from shaping.services.operator.queries import mice_per_stage

        metrics = ServiceMetrics("projector")
        metrics.mice_per_stage(lambda: mice_per_stage(store.engine))
        server = metrics.serve(metrics_port, metrics_host)
    try:
        count = run_projector(
            settings.bootstrap,
            settings.topics,
            store,
            consumer=settings.projector_id,
            stop=stop,
            idle_exit_s=idle_exit,
            metrics=metrics,
        )
    except KeyboardInterrupt:
        count = -1
    finally:
        if server is not None:
            server.close()
        store.close()
    if count >= 0:
        typer.echo(f"projector stopped after {count} messages")


@topics_app.command("create")
def topics_create(
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    partitions: Annotated[int | None, typer.Option(help="Partitions per topic.")] = None,
) -> None:
    """Create the deployment's topics (idempotent; checks existing ones)."""
    from shaping.services.adapters.errors import InfraError
    from shaping.services.adapters.topics import ensure_topics

    settings = _settings(bootstrap, prefix, partitions=partitions)
    try:
        ensure_topics(settings.bootstrap, settings.topics, partitions=settings.partitions)
    except InfraError as exc:
        fail(str(exc))
    for name in settings.topics.all():
        typer.echo(name)


# status, history, export, plot, enroll
operator_cli.register(app)
interventions_cli.register(app)  # override, eject, adjust
replay_cli.register(app)  # replay, whatif


def main() -> None:
    """Console entry point."""
    app()
