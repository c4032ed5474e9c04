"""Options and helpers the ``shaping`` command groups share: where Kafka and the status tables
are, who sends a command, and how a command fails. Light: typer and the settings only, so
importing it keeps the command quick to start."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from shaping.services.adapters.settings import Settings

Bootstrap = Annotated[
    str | None,
    typer.Option("--bootstrap", help="Kafka bootstrap servers (default: $SHAPING_BOOTSTRAP)."),
]
Prefix = Annotated[
    str | None,
    typer.Option("--prefix", help="Topic name prefix (default: $SHAPING_TOPIC_PREFIX)."),
]
DbUrl = Annotated[
    str | None,
    typer.Option(
        "--db-url", help="SQLAlchemy URL of the status tables (default: $SHAPING_DB_URL)."
    ),
]


def _checked(check: Callable[[object, str], str], what: str) -> Callable[[str | None], str | None]:
    """A typer callback that holds a value to the identifier grammar (schemas/identifiers.py),
    so a hostile id (control characters, ``../``, quotes, 100,000 characters) is refused with
    the rule before anything is sent or read."""

    def callback(value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check(value, what)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None

    return callback


def _id(value: object, what: str) -> str:
    from shaping.schemas.identifiers import check_id

    return check_id(value, what)


def _name(value: object, what: str) -> str:
    from shaping.schemas.identifiers import check_name

    return check_name(value, what)


check_mouse = _checked(_id, "mouse id")
check_rig = _checked(_id, "rig id")
check_stage = _checked(_name, "stage")
check_curriculum = _checked(_name, "curriculum name")

Mouse = Annotated[
    str,
    typer.Argument(help="The mouse id, e.g. M001.", show_default=False, callback=check_mouse),
]


def fail(problem: str | BaseException, code: int = 2) -> NoReturn:
    """Ends the command: ``error: <problem>`` in red on stderr, then exit status ``code``
    (no traceback). Every command of ``shaping`` fails through here.

    Args:
        problem: a message the command wrote, printed as it is; or an exception, whose text
            can carry data (ids, reasons, paths) and is printed escaped
            (:func:`shaping.schemas.text.printable`), and which becomes the exit's cause.
        code: the exit status; 2 (the default) for a request that cannot work as given, 1
            for work that failed (the commands' docs say which).
    """
    if isinstance(problem, BaseException):
        from shaping.schemas.text import printable

        typer.secho(f"error: {printable(problem)}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=code) from problem
    typer.secho(f"error: {problem}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


def settings_with(
    bootstrap: str | None = None,
    prefix: str | None = None,
    db_url: str | None = None,
    partitions: int | None = None,
) -> Settings:
    """The settings every command uses: the environment's (``SHAPING_*``) with the options the
    user gave on top, validated (:func:`shaping.services.bootstrap.settings`). A bad value ends
    the command with its one-line reason (naming the variable or the option) and status 2."""
    from shaping.services import bootstrap as wiring
    from shaping.services.adapters.settings import SettingsError

    try:
        return wiring.settings(
            bootstrap=bootstrap, topic_prefix=prefix, db_url=db_url, partitions=partitions
        )
    except SettingsError as exc:
        fail(exc, code=2)  # escaped: the value may hold control characters


def requester(settings: Settings, by: str | None) -> str:
    """Who a command is sent by (``requested_by``): on a secured connection the principal the
    broker authenticates (``--by`` may only repeat it), on a plaintext one ``--by``, else
    $SHAPING_OPERATOR, else the login name
    (:func:`shaping.services.operator.identity.operator_identity`). A ``--by`` that names
    someone else ends the command with the reason and status 2, before anything is sent."""
    from shaping.services.operator.identity import IdentityError, operator_identity

    try:
        return operator_identity(settings, by).name
    except IdentityError as exc:
        fail(str(exc), code=2)  # the names in it are escaped already


MetricsHost = Annotated[
    str,
    typer.Option(
        "--metrics-host",
        envvar="SHAPING_METRICS_HOST",
        help="Address the metrics endpoint binds to.",
    ),
]


_T = TypeVar("_T")


def checked_file(load: Callable[[Path], _T], path: Path) -> _T:
    """``load(path)`` for a file checked line by line (alert rules, routing): when it is
    refused, each problem with its line in red on stderr, then ``error: <path>: rejected``
    and exit status 2."""
    from shaping.schemas.text import printable
    from shaping.services.alerts.checks import FileInvalid

    try:
        return load(path)
    except FileInvalid as exc:
        for problem in exc.problems:
            typer.secho(printable(str(problem)), fg=typer.colors.RED, err=True)
        fail(f"{printable(str(path))}: rejected")
