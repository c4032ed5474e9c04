"""``shaping web``: serve the trainers' page; ``shaping web add-user``: who may log in.

The page (:mod:`shaping.services.web`) reads the status tables at ``--db-url`` and sends the
trainers' actions as commands: to Kafka (``--bootstrap``; on a secured broker as the service's
principal, ``<principal>/<user>`` in each command), or, with ``--embedded-log``, through the
embedded runtime into a demo's log and SQLite tables (no Kafka). This module wires the
collaborators (:mod:`shaping.services.bootstrap`) and starts uvicorn.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shaping.services.cli.options import Bootstrap, DbUrl, MetricsHost, Prefix, fail, settings_with

if TYPE_CHECKING:
    from shaping.schemas.codec import EventCodec
    from shaping.services.adapters.settings import Settings
    from shaping.services.domain import CurriculumCatalog
    from shaping.services.domain.welfare import WelfarePolicy
    from shaping.services.web.commands import Sender

_CONFIG = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "shaping"

UsersOption = Annotated[
    Path,
    typer.Option(
        "--users-file",
        envvar="SHAPING_WEB_USERS",
        help="The users file (JSON, mode 0600; made by `shaping web add-user`).",
    ),
]

web_app = typer.Typer(
    help="The trainers' web page over the status tables (every action sent as a command).",
    no_args_is_help=False,
    invoke_without_command=True,
)


@web_app.callback()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8080,
    db_url: DbUrl = None,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    embedded_log: Annotated[
        Path | None,
        typer.Option(
            "--embedded-log",
            help="Send commands through the embedded runtime into this log (a demo's "
            "events.jsonl) and the SQLite tables at --db-url, instead of Kafka.",
        ),
    ] = None,
    users_file: UsersOption = _CONFIG / "web-users.json",
    secret_file: Annotated[
        Path,
        typer.Option(
            "--secret-file",
            envvar="SHAPING_WEB_SECRET",
            help="The key signing the session cookies (made, mode 0600, on the first start).",
        ),
    ] = _CONFIG / "web-session.key",
    https_only: Annotated[
        bool, typer.Option(help="Send the session cookie over HTTPS only (behind TLS).")
    ] = False,
    wait: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for the processor's answer (Kafka).")
    ] = 20.0,
    policy: Annotated[
        str | None,
        typer.Option(
            "--policy",
            envvar="SHAPING_WELFARE_POLICY",
            help="The lab's welfare policy file (YAML; policies/ has examples). Default: the "
            "built-in policy.",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            envvar="SHAPING_WEB_METRICS_PORT",
            help="Serve Prometheus metrics on this port (/metrics).",
        ),
    ] = None,
    metrics_host: MetricsHost = "0.0.0.0",
    first_manager: Annotated[
        str | None,
        typer.Option(
            "--first-manager",
            envvar="SHAPING_WEB_FIRST_MANAGER",
            help="When the users file has nobody, make this user a lab manager with a random "
            "password written to <users file's folder>/<NAME>.initial-password (mode 0600).",
        ),
    ] = None,
) -> None:
    """Serve the trainers' page (log in, the lab at a glance, each mouse, and the forms to
    override, adjust and eject with a reason).

    It reads the status tables at --db-url and writes only commands: to Kafka, or with
    --embedded-log into a demo's log, e.g.
    `shaping web --db-url sqlite:///demo-output/shaping.sqlite --embedded-log
    demo-output/events.jsonl`.
    """
    if ctx.invoked_subcommand is not None:
        return
    settings = settings_with(bootstrap, prefix, db_url)
    serve_page(
        settings,
        users_file=users_file,
        secret_file=secret_file,
        embedded_log=embedded_log,
        host=host,
        port=port,
        https_only=https_only,
        wait=wait,
        policy_file=policy,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        first_manager=first_manager,
    )


def serve_page(
    settings: Settings,
    *,
    users_file: Path,
    secret_file: Path,
    embedded_log: Path | None,
    host: str = "127.0.0.1",
    port: int = 8080,
    https_only: bool = False,
    wait: float = 20.0,
    policy_file: str | None = None,
    banner: str = "",
    metrics_port: int | None = None,
    metrics_host: str = "0.0.0.0",
    first_manager: str | None = None,
) -> None:
    """Serves the page until interrupted (``shaping web``, and ``shaping demo --web``);
    a users file without users, a bad secret or policy, unreadable tables end the command."""
    import uvicorn

    from shaping.services import bootstrap as wiring
    from shaping.services.operator.errors import OperatorError
    from shaping.services.operator.husbandry import HusbandryError, welfare_policy
    from shaping.services.operator.identity import principal
    from shaping.services.operator.interventions import InterventionError
    from shaping.services.web.app import WebConfig, create_app
    from shaping.services.web.commands import Interventions
    from shaping.services.web.metrics import WebMetrics
    from shaping.services.web.users import UsersError, UsersFile, session_secret

    users = UsersFile(users_file)
    try:
        made = users.first_manager(first_manager) if first_manager else None
        if made is not None:
            typer.echo(
                f"the users file {users_file} had nobody: {first_manager} (a lab manager) may "
                f"log in with the password in {made} (mode 0600); change it with `shaping web "
                f"add-user {first_manager} --role manager --users-file {users_file}`, then "
                "delete that file"
            )
        if users.check() == 0:
            fail(
                f"no users in {users_file}: add one with `shaping web add-user NAME --role "
                "manager` (or point --users-file / SHAPING_WEB_USERS at the file)"
            )
        secret = session_secret(secret_file)
    except UsersError as exc:
        fail(exc)
    try:
        policy = welfare_policy(policy_file)
    except HusbandryError as exc:
        fail(exc)
    codec = wiring.codec()
    catalog = _catalog()
    try:
        engine = wiring.database(settings)
    except OperatorError as exc:
        fail(exc)
    try:
        sender = _sender(settings, codec, catalog, embedded_log, wait, policy)
    except InterventionError as exc:
        fail(exc)
    config = WebConfig(
        engine=engine,
        users=users,
        secret=secret,
        interventions=Interventions(
            settings.db_url,
            sender,
            catalog,
            principal=(principal(settings.kafka) if embedded_log is None else None) or "web",
            policy=policy,
        ),
        catalog=catalog,
        https_only=https_only,
        where=sender.where,
        policy=policy,
        metrics=WebMetrics(wiring.metric_registry()),
    )
    server = None
    if metrics_port is not None and config.metrics is not None:
        server = config.metrics.serve(metrics_port, metrics_host)
    if banner:
        typer.echo(banner)
    typer.echo(f"shaping web: http://{host}:{port}/ (commands go to {sender.where})")
    try:
        uvicorn.run(create_app(config), host=host, port=port, log_level="warning")
    finally:
        if server is not None:
            server.close()
        sender.close()
        engine.dispose()


def _catalog() -> CurriculumCatalog | None:
    from shaping.services import bootstrap as wiring

    try:
        return wiring.catalog()
    except Exception as exc:  # the forms then take any stage; the processor judges
        typer.secho(f"warning: cannot load the curricula here: {exc}", err=True)
        return None


def _sender(
    settings: Settings,
    codec: EventCodec,
    catalog: CurriculumCatalog | None,
    embedded_log: Path | None,
    wait: float,
    policy: WelfarePolicy | None = None,
) -> Sender:
    from shaping.services.web.commands import EmbeddedSender, KafkaSender

    if embedded_log is None:
        return KafkaSender(settings, codec, wait)
    if catalog is None:
        fail("the embedded runtime needs the curricula, which cannot be loaded here")
    from shaping.services import bootstrap as wiring
    from shaping.services.alerts.config import default_rules
    from shaping.services.domain.welfare import DEFAULT_POLICY
    from shaping.services.embedded.log import InProcessLog
    from shaping.services.embedded.runtime import EmbeddedRuntime

    curricula = catalog
    # The built-in alert rules with the page's policy, as the demo runs them: a weight the page
    # records below the minimum raises its alert in the embedded log and the alerts table.
    rules = default_rules(welfare=policy or DEFAULT_POLICY)

    def runtime(path: Path) -> EmbeddedRuntime:
        return EmbeddedRuntime.resume(
            InProcessLog.load_jsonl(path),
            wiring.projection_store(settings, codec),
            catalog=curricula,
            codec=codec,
            topics=settings.topics,
            welfare=policy,
            alerts=rules,
        )

    return EmbeddedSender(runtime, embedded_log)


@web_app.command("add-user")
def add_user(
    name: Annotated[str, typer.Argument(help="The user name (letters, digits, . _ -).")],
    role: Annotated[
        str, typer.Option("--role", help="trainer, husbandry or manager.", show_default=False)
    ],
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            help="Asked for when not given (never pass it on a shared machine).",
        ),
    ],
    users_file: UsersOption = _CONFIG / "web-users.json",
) -> None:
    """Add a user who may log in to the page, or change a user's role and password."""
    from shaping.services.web.users import UsersError, UsersFile

    try:
        new = UsersFile(users_file).put(name, role, password)
    except UsersError as exc:
        fail(exc)
    typer.echo(f"{'added' if new else 'updated'} {name} ({role}) in {users_file}")


def register(app: typer.Typer) -> None:
    """Adds ``web`` (serve) and ``web add-user`` to the ``shaping`` app."""
    app.add_typer(web_app, name="web")
