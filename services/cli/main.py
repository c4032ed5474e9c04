"""The ``shaping`` command line: one entry point, a subcommand per job.

Heavy dependencies (faust, SQLAlchemy) are imported inside the commands that need them, so the
rig commands work on a Raspberry Pi that installed only the light ``shaping[rig]`` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shaping.rig import cli as rig_cli
from shaping.services.cli import alerts as alerts_cli
from shaping.services.cli import curricula as curricula_cli
from shaping.services.cli import digest as digest_cli
from shaping.services.cli import events as events_cli
from shaping.services.cli import export as export_cli
from shaping.services.cli import husbandry as husbandry_cli
from shaping.services.cli import ingress as ingress_cli
from shaping.services.cli import interventions as interventions_cli
from shaping.services.cli import notifier as notifier_cli
from shaping.services.cli import operator as operator_cli
from shaping.services.cli import replay as replay_cli
from shaping.services.cli import rigs as rigs_cli
from shaping.services.cli import web as web_cli
from shaping.services.cli.options import (
    Bootstrap,
    DbUrl,
    MetricsHost,
    Prefix,
    fail,
    settings_with,
)

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
    husbandry: Annotated[
        bool,
        typer.Option(
            "--husbandry/--no-husbandry",
            help="Simulate weights and water: every mouse on water restriction, weighed each "
            "morning, one held and released; the digest of the last day is printed.",
        ),
    ] = True,
    web: Annotated[
        bool,
        typer.Option(
            "--web",
            help="Then serve the trainers' page on the demo's tables and log (a demo login "
            "with a new one-time password is printed); stop it with Ctrl-C.",
        ),
    ] = False,
    web_port: Annotated[
        int, typer.Option(min=0, max=65535, help="The page's port (with --web).")
    ] = 8080,
    web_host: Annotated[str, typer.Option(help="The page's address (with --web).")] = "127.0.0.1",
) -> None:
    """Simulate a small lab in one process: no Kafka, no Java.

    Simulated rigs run simulated mice through the processor's core and the projector on
    SQLite, then the status table and each mouse's stage path are printed. With --web the
    trainers' page is then served on the demo's output, as `shaping web --db-url
    sqlite:///OUT/shaping.sqlite --embedded-log OUT/events.jsonl` would.
    """
    from shaping.rig.sim.lab import LabPlan
    from shaping.services.embedded.demo import render_report, run_demo

    plan = LabPlan(n_mice=mice, n_rigs=rigs, n_days=days, seed=seed, husbandry=husbandry)
    result = run_demo(out, plan)
    typer.echo(render_report(result))
    if web:
        _serve_demo(result.out_dir, result.db_path, result.log_path, web_host, web_port)


DEMO_USER = "demo"
"""The demo's login for ``shaping demo --web`` (a lab manager; demo only)."""


def _serve_demo(folder: Path, db_path: Path, log_path: Path, host: str, port: int) -> None:
    """Serves the page on a demo's output with a demo login whose password is new each run
    (the users file and the session key are kept in the demo's folder, mode 0600)."""
    import secrets

    from shaping.services.cli.web import serve_page
    from shaping.services.web.users import UsersError, UsersFile

    users_file = folder / "web-users.json"
    password = secrets.token_urlsafe(12)
    users_file.unlink(missing_ok=True)  # only this run's demo login may log in
    try:
        UsersFile(users_file).put(DEMO_USER, "manager", password)
    except UsersError as exc:
        fail(exc)
    serve_page(
        settings_with(prefix="shaping", db_url=f"sqlite:///{db_path}"),
        users_file=users_file,
        secret_file=folder / "web-session.key",
        embedded_log=log_path,
        host=host,
        port=port,
        banner=(
            f"\nDEMO ONLY: log in as {DEMO_USER} (a lab manager) with the one-time password "
            f"{password}\n(valid until the next `shaping demo --web`; users file {users_file})\n"
            "The page shows today's lab day: every restricted mouse waits to be weighed; the "
            "simulated days are in each mouse's charts, records and timeline."
        ),
    )


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
    from shaping.services import bootstrap as wiring
    from shaping.services.adapters.settings import SettingsError
    from shaping.services.processor.app import run_processor

    settings = settings_with(bootstrap, prefix, partitions=partitions)
    try:
        welfare = wiring.welfare_policy(settings)
    except SettingsError as exc:
        fail(exc, code=2)
    wiring.ensure_topics(settings)
    codec = wiring.codec()
    catalog, follower = wiring.following_catalog(settings, codec)
    run_processor(
        settings,
        codec,
        catalog,
        follower,
        metrics=wiring.service_metrics("processor") if metrics_port is not None else None,
        web_port=web_port,
        loglevel=loglevel,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        welfare=welfare,
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

    from shaping.services import bootstrap as wiring
    from shaping.services.projector.runner import run_projector

    settings = settings_with(bootstrap, prefix, db_url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    codec = wiring.codec()
    store = wiring.projection_store(settings, codec)
    metrics, server = None, None
    if metrics_port is not None:
        from shaping.services.operator.queries import mice_per_stage

        metrics = wiring.service_metrics("projector")
        metrics.mice_per_stage(lambda: mice_per_stage(store.engine))
        server = metrics.serve(metrics_port, metrics_host)
    try:
        count = run_projector(
            settings.kafka,
            settings.topics,
            store,
            codec,
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
    from shaping.services import bootstrap as wiring
    from shaping.services.adapters.errors import InfraError

    settings = settings_with(bootstrap, prefix, partitions=partitions)
    try:
        wiring.ensure_topics(settings)
    except InfraError as exc:
        fail(str(exc))
    for name in settings.topics.all():
        typer.echo(name)


# status, history, plot, enroll
operator_cli.register(app)
export_cli.register(app)  # export, export --welfare
digest_cli.register(app)  # digest, digest send
interventions_cli.register(app)  # override, eject, adjust
replay_cli.register(app)  # replay, whatif
rigs_cli.register(app)  # rigs allow
husbandry_cli.register(app)  # weigh, water, restrict, note, welfare
ingress_cli.register(app)  # ingress run
web_cli.register(app)  # web, web add-user
alerts_cli.register(app)  # alerts run, check, list, ack
notifier_cli.register(app)  # notifier run, check


def main() -> None:
    """Console entry point."""
    app()
