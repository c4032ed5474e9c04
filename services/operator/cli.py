"""The operator's commands of ``shaping``: status, history, export, plot and enroll.

:func:`register` adds them to the ``shaping`` app. Only typer is imported here; each command
imports what it needs (SQLAlchemy, pandas, rich, matplotlib, kafka-python) when it runs.
"""

from __future__ import annotations

import getpass
import json
import os
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from services.common.cli_options import Bootstrap, DbUrl, Prefix

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console
    from rich.text import Text
    from sqlalchemy import Engine

Mouse = Annotated[str, typer.Argument(help="The mouse id, e.g. M001.", show_default=False)]


class ExportFormat(StrEnum):
    """File formats of ``shaping export``."""

    csv = "csv"
    parquet = "parquet"


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


def _fail(exc: Exception, code: int = 1) -> NoReturn:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=code) from exc


def _engine(db_url: str | None) -> Engine:
    from services.common.settings import Settings
    from services.operator.errors import OperatorError
    from services.operator.queries import open_database

    try:
        return open_database(db_url if db_url is not None else Settings().db_url)
    except OperatorError as exc:
        _fail(exc)


def _text(value: Any, digits: int = 2) -> Text:
    """A cell: empty for missing values, rounded floats, timestamps to the minute.

    A rich Text, never markup: ids and rule names are shown as they are, brackets included.
    """
    import pandas as pd
    from rich.text import Text

    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return Text("")
    if isinstance(value, float):
        return Text(f"{value:.{digits}f}")
    if isinstance(value, pd.Timestamp):
        return Text(value.strftime("%Y-%m-%d %H:%M"))
    return Text(str(value))


def status(
    stage: Annotated[
        str | None, typer.Option(help="Only mice whose next session is on this stage.")
    ] = None,
    rig: Annotated[
        str | None, typer.Option(help="Only mice whose most recent session ran on this rig.")
    ] = None,
    db_url: DbUrl = None,
) -> None:
    """Show every mouse's current stage and last decision (query mice by status)."""
    import difflib

    from rich.table import Table

    from services.operator.errors import OperatorError
    from services.operator.queries import known_values, status_frame

    engine = _engine(db_url)
    try:
        frame = status_frame(engine, stage=stage, rig=rig)
        if frame.empty:
            for option, value, column in (("--stage", stage, "stage"), ("--rig", rig, "rig")):
                known = known_values(engine, column)
                if value is not None and value not in known:
                    close = difflib.get_close_matches(value, known, n=3, cutoff=0.5)
                    hint = f"did you mean {' or '.join(close)}?" if close else f"known: {known}"
                    _fail(OperatorError(f"no {column} {value!r} ({option}); {hint}"), code=2)
            typer.echo("no mice match")
            return
    except OperatorError as exc:
        _fail(exc)
    finally:
        engine.dispose()
    table = Table(title=f"{len(frame)} mice", title_justify="left")
    columns = {
        "mouse_id": "mouse",
        "curriculum_name": "curriculum",
        "stage": "stage",
        "sessions_at_stage": "on stage",
        "sessions_completed": "sessions",
        "last_decision": "last decision",
        "last_reason": "reason",  # of the assignment: progress, override, ejected, ...
        "last_accuracy": "last accuracy",
        "last_rig_id": "last rig",
        "last_decision_at": "decided at",
    }
    for title in columns.values():
        table.add_column(title, no_wrap=True)
    for row in frame.itertuples(index=False):
        table.add_row(*(_text(getattr(row, name)) for name in columns))
    _console().print(table)


def _evidence_lines(evidence_json: str) -> list[str]:
    lines = []
    for rule in json.loads(evidence_json or "[]"):
        verdict = "fired" if rule.get("verdict") else "not met"
        checks = []
        for obs in rule.get("observations", []):
            observed = obs.get("observed")
            shown = "n/a" if observed is None else f"{observed:.3g}"
            mark = "ok" if obs.get("passed") else "no"
            checks.append(
                f"{obs.get('metric')}={shown} {obs.get('comparator')} {obs.get('threshold'):g}"
                f" [{mark}]"
            )
        lines.append(
            f"{rule.get('rule')} -> {rule.get('decision')} {rule.get('to_stage')}: {verdict}"
            + (f" ({'; '.join(checks)})" if checks else "")
        )
    return lines


def history(mouse: Mouse, db_url: DbUrl = None) -> None:
    """Show every session of a mouse, the decision after it and the evidence behind it."""
    from rich.table import Table

    from services.operator.errors import OperatorError, UnknownMouseError
    from services.operator.queries import (
        decisions_frame,
        require_mouse,
        sessions_frame,
        stage_history_frame,
    )

    engine = _engine(db_url)
    try:
        require_mouse(engine, mouse)
        sessions = sessions_frame(engine, mouse)
        decisions = decisions_frame(engine, mouse)
        stages = stage_history_frame(engine, mouse)
    except UnknownMouseError as exc:
        _fail(exc, code=2)
    except OperatorError as exc:
        _fail(exc)
    finally:
        engine.dispose()
    console = _console()
    path = " -> ".join(stages["stage"]) if not stages.empty else "(none yet)"
    console.print(_text(f"{mouse}: {len(sessions)} sessions; stages {path}"))
    table = Table(title="sessions", title_justify="left")
    for title in ("#", "started", "rig", "stage", "trials", "accuracy", "decision", "next stage"):
        table.add_column(title, no_wrap=True)
    for number, row in enumerate(sessions.itertuples(index=False), start=1):
        table.add_row(
            _text(number),
            _text(row.started_at),
            _text(row.rig_id),
            _text(row.stage),
            _text(row.n_trials),
            _text(row.accuracy),
            _text(row.decision),
            _text(row.next_stage),
        )
    console.print(table)
    evidence = Table(title="decisions and evidence", title_justify="left", show_lines=True)
    for title in ("session", "decision", "evidence (each rule evaluated, in order)"):
        evidence.add_column(title)
    for row in decisions.itertuples(index=False):
        decided = f"{row.from_stage} -> {row.to_stage}: {row.decision}"
        if isinstance(row.rule, str) and row.rule:
            decided += f" ({row.rule})"
        if isinstance(row.superseded_by, str) and row.superseded_by:
            decided += " [superseded after a late session]"
        evidence.add_row(
            _text(row.session_total),
            _text(decided),
            _text("\n".join(_evidence_lines(row.evidence_json))),
        )
    console.print(evidence)
    from services.operator.interventions import show_timeline

    show_timeline(console, db_url, mouse)  # overrides, ejections, adjustments, warnings


def export(
    format: Annotated[
        ExportFormat, typer.Option("--format", "-f", help="File format.", case_sensitive=False)
    ] = ExportFormat.csv,
    out: Annotated[Path, typer.Option(help="Folder for sessions, decisions and status.")] = Path(
        "export"
    ),
    db_url: DbUrl = None,
) -> None:
    """Export the sessions, decisions and status tables as CSV or parquet (pandas DataFrames).

    The columns are documented in the README ("Exported data").
    """
    from rich.table import Table

    from services.operator.errors import OperatorError
    from services.operator.queries import decisions_frame, sessions_frame, status_frame

    engine = _engine(db_url)
    try:
        frames: dict[str, pd.DataFrame] = {
            "sessions": sessions_frame(engine),
            "decisions": decisions_frame(engine),
            "status": status_frame(engine),
        }
    except OperatorError as exc:
        _fail(exc)
    finally:
        engine.dispose()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(OperatorError(f"cannot create {out}: {exc.strerror}"))
    table = Table(title=f"exported to {out}", title_justify="left")
    table.add_column("file", no_wrap=True)
    table.add_column("rows", justify="right")
    for name, frame in frames.items():
        path = out / f"{name}.{format.value}"
        try:
            if format is ExportFormat.csv:
                frame.to_csv(path, index=False)
            else:
                frame.to_parquet(path, index=False)
        except (OSError, ImportError) as exc:
            _fail(OperatorError(f"cannot write {path}: {exc}"))
        table.add_row(_text(str(path)), _text(len(frame)))
    _console().print(table)


def plot(
    mouse: Mouse,
    out: Annotated[
        Path | None, typer.Option(help="PNG file to write (default: MOUSE.png).")
    ] = None,
    db_url: DbUrl = None,
) -> None:
    """Draw a mouse's learning curve and stage timeline as a PNG."""
    from services.operator.errors import OperatorError, UnknownMouseError
    from services.operator.queries import require_mouse, sessions_frame, stage_history_frame

    engine = _engine(db_url)
    try:
        require_mouse(engine, mouse)
        sessions = sessions_frame(engine, mouse)
        stages = stage_history_frame(engine, mouse)
    except UnknownMouseError as exc:
        _fail(exc, code=2)
    except OperatorError as exc:
        _fail(exc)
    finally:
        engine.dispose()
    from services.operator.plot import plot_mouse

    target = out if out is not None else Path(f"{mouse}.png")
    if target.suffix.lower() != ".png":
        _fail(OperatorError(f"{target}: the plot is a PNG; name the file *.png"), code=2)
    try:
        written = plot_mouse(mouse, sessions, stages, target)
    except OperatorError as exc:
        _fail(exc)
    except OSError as exc:
        _fail(OperatorError(f"cannot write {target}: {exc.strerror}"))
    typer.echo(f"wrote {written}")


def enroll(
    mouse: Mouse,
    curriculum: Annotated[
        str, typer.Option(help="Curriculum to train the mouse on.", show_default=False)
    ],
    start_stage: Annotated[
        str | None, typer.Option(help="Stage to start on (default: the curriculum's first).")
    ] = None,
    by: Annotated[
        str | None, typer.Option(help="Who enrols the mouse (default: your user name).")
    ] = None,
    notes: Annotated[str, typer.Option(help="Free text kept with the enrolment.")] = "",
    rig: Annotated[str | None, typer.Option(help="Rig the mouse trains on, if known.")] = None,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Enrol a mouse on a curriculum: publishes a MouseEnrolled event to the events topic."""
    from dataclasses import replace

    from services.common.settings import Settings
    from services.operator.enroll import build_enrollment, publish_enrollment
    from services.operator.errors import OperatorError

    settings = Settings()
    if bootstrap is not None:
        settings = replace(settings, bootstrap=bootstrap)
    if prefix is not None:
        settings = replace(settings, topic_prefix=prefix)
    who = by or os.environ.get("SHAPING_OPERATOR") or getpass.getuser()
    try:
        event = build_enrollment(
            mouse, curriculum, who, start_stage, notes, rig, known_curricula=_known_curricula()
        )
    except OperatorError as exc:
        _fail(exc, code=2)
    try:
        partition, offset = publish_enrollment(settings.bootstrap, settings.topics.events, event)
    except OperatorError as exc:
        _fail(exc)
    typer.echo(
        f"enrolled {mouse} on {curriculum} (event {event.event_id},"
        f" {settings.topics.events}[{partition}]@{offset})"
    )


def _known_curricula() -> list[str] | None:
    """The curricula the processor loads too (shipped ones plus $SHAPING_CURRICULA_DIR), or
    None when they cannot be read here (then the processor alone judges the name)."""
    try:
        from services.curricula.catalog import default_catalog

        return default_catalog().names()
    except Exception as exc:  # the enrolment still goes out; the processor decides
        typer.secho(f"warning: cannot check the curriculum name here: {exc}", err=True)
        return None


def register(app: typer.Typer) -> None:
    """Adds the operator's commands to the ``shaping`` app."""
    for command in (status, history, export, plot, enroll):
        app.command()(command)
