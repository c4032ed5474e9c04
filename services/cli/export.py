"""``shaping export``: the status tables as CSV or parquet, and with ``--welfare`` the welfare
record for inspections as CSV files and one printable HTML report.

:func:`register` adds it to the ``shaping`` app. Only typer is imported here; the command
imports what it needs (SQLAlchemy, pandas, rich, Jinja2) when it runs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shaping.services.cli.options import DbUrl, fail, settings_with

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy import Engine


class ExportFormat(StrEnum):
    """File formats of ``shaping export``."""

    csv = "csv"
    parquet = "parquet"
    html = "html"


def _engine(db_url: str | None) -> Engine:
    from shaping.services.operator.errors import OperatorError
    from shaping.services.operator.queries import open_database

    # The settings add the password of SHAPING_DB_PASSWORD_FILE (or a credentials file) to a
    # URL without one, and a bad setting ends the command with its reason.
    url = settings_with(db_url=db_url).db_url
    try:
        return open_database(url)
    except OperatorError as exc:
        fail(exc, code=1)


def _print_written(out: Path, written: list[tuple[Path, int]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from shaping.services.operator.terminal import printable

    table = Table(title=f"exported to {printable(str(out))}", title_justify="left")
    table.add_column("file", no_wrap=True)
    table.add_column("rows", justify="right")
    for path, rows in written:
        table.add_row(Text(printable(path.name)), Text(str(rows)))
    Console(highlight=False).print(table)


def export(
    format: Annotated[
        ExportFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="File format: csv or parquet for the tables (default csv); csv or html for "
            "--welfare (default: both).",
            case_sensitive=False,
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for the files.")] = Path("export"),
    welfare: Annotated[
        bool,
        typer.Option(
            "--welfare",
            help="Export the welfare record for inspections instead: each mouse's weights, "
            "water, restrictions, holds, releases, notes and manual changes, with who and why.",
        ),
    ] = False,
    db_url: DbUrl = None,
) -> None:
    """Export the sessions, decisions and status tables as CSV or parquet (pandas DataFrames);
    with --welfare, the welfare record as CSV files and a printable HTML report.

    The tables' columns are documented in the README ("Exported data"), the welfare files' in
    docs/husbandry.md.
    """
    if welfare:
        _export_welfare(format, out, db_url)
        return
    if format is ExportFormat.html:
        fail("--format html is for --welfare; the tables export as csv or parquet", code=2)
    _export_tables(format or ExportFormat.csv, out, db_url)


def _export_tables(format: ExportFormat, out: Path, db_url: str | None) -> None:
    from shaping.services.operator.errors import OperatorError
    from shaping.services.operator.queries import decisions_frame, sessions_frame, status_frame

    engine = _engine(db_url)
    try:
        frames: dict[str, pd.DataFrame] = {
            "sessions": sessions_frame(engine),
            "decisions": decisions_frame(engine),
            "status": status_frame(engine),
        }
    except OperatorError as exc:
        fail(exc, code=1)
    finally:
        engine.dispose()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(OperatorError(f"cannot create {out}: {exc.strerror}"), code=1)
    written = []
    for name, frame in frames.items():
        path = out / f"{name}.{format.value}"
        try:
            if format is ExportFormat.csv:
                frame.to_csv(path, index=False)
            else:
                frame.to_parquet(path, index=False)
        except (OSError, ImportError) as exc:
            fail(OperatorError(f"cannot write {path}: {exc}"), code=1)
        written.append((path, len(frame)))
    _print_written(out, written)


def _export_welfare(format: ExportFormat | None, out: Path, db_url: str | None) -> None:
    from shaping.services.operator.errors import OperatorError
    from shaping.services.operator.export import welfare_records, write_csv, write_html

    if format is ExportFormat.parquet:
        fail("--welfare exports as csv or html (default: both), not parquet", code=2)
    engine = _engine(db_url)
    try:
        records = welfare_records(engine)
    except OperatorError as exc:
        fail(exc, code=1)
    finally:
        engine.dispose()
    written = []
    try:
        if format in (None, ExportFormat.csv):
            written += [(w.path, w.rows) for w in write_csv(records, out)]
        if format in (None, ExportFormat.html):
            report = write_html(records, out, datetime.now(UTC))
            written.append((report.path, report.rows))
    except OperatorError as exc:
        fail(exc, code=1)
    _print_written(out, written)


def register(app: typer.Typer) -> None:
    """Adds ``export`` to the ``shaping`` app."""
    app.command()(export)
