"""Options and helpers the ``shaping`` command groups share: where Kafka and the status tables
are, and how a command fails. Light: typer and the settings only, so importing it keeps the
command quick to start."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:
    from services.common.settings import Settings

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


def fail(message: str, code: int = 2) -> NoReturn:
    """Prints ``error: message`` in red on stderr and exits with ``code`` (no traceback)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code)


def settings_with(
    bootstrap: str | None = None, prefix: str | None = None, db_url: str | None = None
) -> Settings:
    """The environment's settings (``SHAPING_*``) with the options the user gave on top."""
    from services.common.settings import Settings  # imports kafka-python: only when used

    settings = Settings()
    if bootstrap is not None:
        settings = replace(settings, bootstrap=bootstrap)
    if prefix is not None:
        settings = replace(settings, topic_prefix=prefix)
    if db_url is not None:
        settings = replace(settings, db_url=db_url)
    return settings
