"""The operator's commands of ``shaping``: status, history, plot and enroll (``export`` is in
:mod:`shaping.services.cli.export`).

:func:`register` adds them to the ``shaping`` app. Only typer is imported here; each command
imports what it needs (SQLAlchemy, pandas, rich, matplotlib, kafka-python) when it runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shaping.services.cli.options import (
    Bootstrap,
    DbUrl,
    Mouse,
    Prefix,
    check_curriculum,
    check_rig,
    check_stage,
    fail,
    requester,
    settings_with,
)

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console
    from sqlalchemy import Engine

    from shaping.services.operator.queries import MouseAttention
    from shaping.services.operator.terminal import Kind


def _console() -> Console:
    from rich.console import Console

    return Console(highlight=False)


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


Wide = Annotated[
    bool,
    typer.Option("--wide", help="Show every column in full, however wide the lines get (less -S)."),
]

STATUS_COLUMNS_SHOWN: tuple[tuple[str, str, int | None, bool, Kind], ...] = (
    # (column, header, drop order (None: never), folds, kind)
    ("mouse_id", "mouse", None, False, "text"),
    ("curriculum_name", "curriculum", 2, True, "text"),
    ("stage", "stage", None, True, "text"),
    ("sessions_at_stage", "on stage", 8, False, "count"),
    ("sessions_completed", "sessions", 6, False, "count"),
    ("last_decision", "last decision", 7, False, "text"),
    ("last_reason", "reason", 4, True, "text"),  # of the assignment: progress, override, ...
    ("last_accuracy", "accuracy", 5, False, "ratio"),
    ("last_rig_id", "rig", 3, False, "text"),
    ("last_decision_at", "decided at", 1, True, "time"),
)
"""The columns of ``shaping status``; on a narrow terminal they go in the drop order."""

FOLD_MIN = {"stage": 16, "next_stage": 16, "curriculum_name": 14}
"""The narrowest a folding column gets before columns are dropped (10 for the others): stage
and curriculum names stay whole as long as they fit in these."""


def print_status(console: Console, frame: pd.DataFrame, wide: bool = False) -> None:
    """Prints the status frame as a table that fits ``console`` (see the ``status`` help)."""
    from shaping.services.operator.terminal import Col, cell_text, print_table

    columns = [
        Col(
            name,
            header,
            drop,
            fold,
            fold_min=FOLD_MIN.get(name, 10),  # a time wraps after its date
            justify="right" if kind in ("count", "ratio") else "left",
        )
        for name, header, drop, fold, kind in STATUS_COLUMNS_SHOWN
    ]
    rows = [
        {name: cell_text(record.get(name), kind) for name, _, _, _, kind in STATUS_COLUMNS_SHOWN}
        for record in frame.to_dict("records")
    ]
    print_table(console, columns, rows, wide=wide, title=f"{len(frame)} mice")


def print_attention(console: Console, found: list[MouseAttention], wide: bool = False) -> None:
    """Prints the mice that need a person, most urgent first, each reason on a line."""
    from shaping.services.operator.terminal import Col, cell_text, print_table

    columns = [
        Col("rank", "#", None),
        Col("mouse_id", "mouse", None),
        Col("stage", "stage", 1, fold=True, fold_min=16),
        Col("reasons", "needs a person because", None, fold=True, fold_min=20),
    ]
    rows = [
        {
            "rank": str(number),
            "mouse_id": cell_text(item.mouse_id),
            "stage": cell_text(item.stage),
            "reasons": "\n".join(cell_text(reason.text) for reason in item.reasons),
        }
        for number, item in enumerate(found, start=1)
    ]
    title = f"{len(found)} mice need a person, most urgent first"
    print_table(console, columns, rows, wide=wide, title=title, show_lines=True)


def status(
    stage: Annotated[
        str | None,
        typer.Option(help="Only mice whose next session is on this stage.", callback=check_stage),
    ] = None,
    rig: Annotated[
        str | None, typer.Option(help="Only mice whose most recent session ran on this rig.")
    ] = None,
    wide: Wide = False,
    attention: Annotated[
        bool,
        typer.Option(
            "--attention",
            help="Only the mice that need a person, most urgent first, with the reasons.",
        ),
    ] = False,
    stalled_after: Annotated[
        int,
        typer.Option(min=1, help="--attention: sessions at one stage that count as stalled."),
    ] = 10,
    recent: Annotated[
        int,
        typer.Option(min=1, help="--attention: last sessions whose rollbacks and warnings count."),
    ] = 3,
    rejected_hours: Annotated[
        float,
        typer.Option(min=0, help="--attention: hours back that rejected events count."),
    ] = 24.0,
    db_url: DbUrl = None,
) -> None:
    """Show every mouse's current stage and last decision (query mice by status).

    The mouse id is always shown in full. On a narrow terminal the curriculum, stage and
    reason wrap over lines, then columns are left out in this order: decided at, curriculum,
    rig, reason, accuracy, sessions, last decision, on stage (mouse and stage always stay).
    --wide shows every column whatever the width. Counts are whole numbers.

    --attention lists only the mice that need a person, each with its reasons: events of
    it rejected in the last --rejected-hours; enrolled without an assignment, or an
    assignment behind the sessions done; a rollback among its last --recent sessions; a
    training warning with those sessions (untrainable or unbiasable risk, ...) or an
    untrainable/unbiasable stage; --stalled-after sessions or more at one stage (not at a
    curriculum's last stage). Ranking: the most urgent reason first, in that order (rejected
    events, assignment, regression, warning, stall); then more reasons; then the larger count
    (events rejected, sessions behind or stalled); then the mouse id. Ejected mice only for
    rejected events.
    """
    import difflib

    from shaping.services.operator.errors import OperatorError
    from shaping.services.operator.queries import known_values, status_frame

    if attention and (stage is not None or rig is not None):
        fail(OperatorError("--attention looks at every mouse; drop --stage and --rig"), code=2)
    engine = _engine(db_url)
    if attention:
        from shaping.services import bootstrap as wiring
        from shaping.services.curricula.errors import CurriculumInvalid
        from shaping.services.operator.queries import attention as needs_attention
        from shaping.services.operator.queries import terminal_stage_check

        try:
            catalog = wiring.catalog()
        except (CurriculumInvalid, OSError):  # no curricula here: every stall is reported
            catalog = None
        try:
            found = needs_attention(
                engine,
                stalled_after=stalled_after,
                recent_sessions=recent,
                rejected_hours=rejected_hours,
                is_terminal=terminal_stage_check(catalog),
            )
        except OperatorError as exc:
            fail(exc, code=1)
        finally:
            engine.dispose()
        if not found:
            typer.echo("no mouse needs a person")
            return
        print_attention(_console(), found, wide=wide)
        return
    try:
        frame = status_frame(engine, stage=stage, rig=rig)
        if frame.empty:
            for option, value, column in (("--stage", stage, "stage"), ("--rig", rig, "rig")):
                known = known_values(engine, column)
                if value is not None and value not in known:
                    close = difflib.get_close_matches(value, known, n=3, cutoff=0.5)
                    hint = f"did you mean {' or '.join(close)}?" if close else f"known: {known}"
                    fail(OperatorError(f"no {column} {value!r} ({option}); {hint}"), code=2)
            typer.echo("no mice match")
            return
    except OperatorError as exc:
        fail(exc, code=1)
    finally:
        engine.dispose()
    print_status(_console(), frame, wide=wide)


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


HISTORY_COLUMNS_SHOWN: tuple[tuple[str, str, int | None, bool, Kind], ...] = (
    # (column, header, drop order (None: never), folds, kind)
    ("number", "#", None, False, "count"),
    ("started_at", "started", 2, True, "time"),
    ("rig_id", "rig", 1, False, "text"),
    ("stage", "stage", None, True, "text"),
    ("n_trials", "trials", 4, False, "count"),
    ("accuracy", "accuracy", 5, False, "ratio"),
    ("decision", "decision", None, False, "text"),
    ("next_stage", "next stage", 3, True, "text"),
)
"""The columns of ``shaping history``'s sessions table, and their drop order."""


def print_history(
    console: Console,
    mouse: str,
    sessions: pd.DataFrame,
    decisions: pd.DataFrame,
    stages: pd.DataFrame,
    timeline: list[dict[str, Any]],
    wide: bool = False,
) -> None:
    """Prints a mouse's history fitted to ``console`` (see the ``history`` help)."""
    from shaping.services.operator.terminal import Col, cell_text, print_table, printable, text

    path = " -> ".join(stages["stage"]) if not stages.empty else "(none yet)"
    console.print(text(f"{mouse}: {len(sessions)} sessions; stages {path}"))
    columns = [
        Col(
            name,
            header,
            drop,
            fold,
            fold_min=FOLD_MIN.get(name, 10),
            justify="right" if kind in ("count", "ratio") else "left",
        )
        for name, header, drop, fold, kind in HISTORY_COLUMNS_SHOWN
    ]
    rows = [
        {
            name: cell_text(number if name == "number" else record.get(name), kind)
            for name, _, _, _, kind in HISTORY_COLUMNS_SHOWN
        }
        for number, record in enumerate(sessions.to_dict("records"), start=1)
    ]
    print_table(console, columns, rows, wide=wide, title="sessions")
    evidence_rows = []
    for row in decisions.to_dict("records"):
        decided = f"{row['from_stage']} -> {row['to_stage']}: {row['decision']}"
        if isinstance(row["rule"], str) and row["rule"]:
            decided += f" ({row['rule']})"
        if isinstance(row["superseded_by"], str) and row["superseded_by"]:
            decided += " [superseded after a late session]"
        evidence_rows.append(
            {
                "session": cell_text(row["session_total"], "count"),
                "decision": printable(decided),
                "evidence": "\n".join(
                    printable(line) for line in _evidence_lines(row["evidence_json"])
                ),
            }
        )
    evidence_columns = [
        Col("session", "session", None, justify="right"),
        Col("decision", "decision", None, fold=True, fold_min=16),
        Col("evidence", "evidence (each rule evaluated, in order)", None, fold=True, fold_min=24),
    ]
    print_table(
        console,
        evidence_columns,
        evidence_rows,
        wide=wide,
        title="decisions and evidence",
        show_lines=True,
    )
    if timeline:  # overrides, ejections, adjustments, warnings
        timeline_rows = [
            {
                "at": cell_text(item["at"], "time"),
                "what": cell_text(item["what"]),
                "by": cell_text(item["by"]),
                "why": cell_text(item["why"]),
                "outcome": cell_text(item["outcome"]),
                "command": cell_text(item.get("command")),
            }
            for item in timeline
        ]
        timeline_columns = [
            Col("at", "when", None, fold=True),
            Col("what", "what", None, fold=True, fold_min=14),
            Col("by", "by", None, fold=True, fold_min=8),
            Col("why", "why", None, fold=True, fold_min=14),
            Col("outcome", "outcome", None, fold=True, fold_min=14),
            Col("command", "command", 1, fold=True, fold_min=12),
        ]
        print_table(
            console,
            timeline_columns,
            timeline_rows,
            wide=wide,
            title="interventions and warnings",
            show_lines=True,
        )


def history(mouse: Mouse, wide: Wide = False, db_url: DbUrl = None) -> None:
    """Show every session of a mouse, the decision after it and the evidence behind it.

    Then the mouse's enrolment, the trainers' interventions and the training warnings, in
    order: who asked (on a secured broker the principal they logged in as; on a plaintext one
    the name they claimed), when, what, why, the outcome and the command it answered (left
    out first on a narrow terminal). On a narrow
    terminal the stage, next stage, start time and evidence wrap over lines, then the
    sessions table leaves out columns in this order: rig, started, next stage, trials,
    accuracy (#, stage and decision always stay). --wide shows every column whatever the
    width. Counts are whole numbers.
    """
    from datetime import UTC, datetime

    from shaping.services.operator.errors import OperatorError, UnknownMouseError
    from shaping.services.operator.interventions import timeline
    from shaping.services.operator.queries import (
        decisions_frame,
        enrolment_rows,
        require_mouse,
        sessions_frame,
        stage_history_frame,
    )
    from shaping.services.operator.terminal import printable

    engine = _engine(db_url)
    try:
        require_mouse(engine, mouse)
        sessions = sessions_frame(engine, mouse)
        decisions = decisions_frame(engine, mouse)
        stages = stage_history_frame(engine, mouse)
        try:
            events = enrolment_rows(engine, mouse) + timeline(engine, mouse)
            events.sort(key=lambda row: row["at"] or datetime.min.replace(tzinfo=UTC))
        except Exception as exc:  # the tables are older than interventions: show the rest
            typer.secho(f"warning: no interventions shown: {printable(exc)}", err=True)
            events = []
    except UnknownMouseError as exc:
        fail(exc, code=2)
    except OperatorError as exc:
        fail(exc, code=1)
    finally:
        engine.dispose()
    print_history(_console(), mouse, sessions, decisions, stages, events, wide=wide)


def plot(
    mouse: Mouse,
    out: Annotated[
        Path | None, typer.Option(help="PNG file to write (default: MOUSE.png).")
    ] = None,
    kind: Annotated[
        str,
        typer.Option(
            help="learning: accuracy per session and the stage timeline (interventions, "
            "migrations, warnings marked); ibl: IBL's training view per date (status, trials, "
            "easy-trial performance, psychometric fits and curves)."
        ),
    ] = "learning",
    events_log: Annotated[
        Path | None,
        typer.Option(
            help="--kind ibl: an embedded install's event log (events.jsonl), for the values "
            "reported with each decision (the psychometric curves) when the tables were projected "
            "before they kept them (decision_log.metrics_json)."
        ),
    ] = None,
    db_url: DbUrl = None,
) -> None:
    """Draw a mouse's training as a PNG: its learning curve and stage timeline, or IBL's
    training view (--kind ibl)."""
    from shaping.services.operator.errors import OperatorError, UnknownMouseError
    from shaping.services.operator.plot import KINDS

    if kind not in KINDS:
        fail(OperatorError(f"--kind {kind}: the kinds are {' or '.join(KINDS)}"), code=2)
    target = out if out is not None else Path(f"{mouse}.png")
    if target.suffix.lower() != ".png":
        fail(OperatorError(f"{target}: the plot is a PNG; name the file *.png"), code=2)
    if events_log is not None and not events_log.is_file():
        fail(OperatorError(f"no event log at {events_log} (events.jsonl)"), code=2)
    from shaping.services import bootstrap as wiring
    from shaping.services.operator.plot import plot_ibl, plot_mouse, read_mouse
    from shaping.services.operator.queries import require_mouse

    engine = _engine(db_url)
    try:
        require_mouse(engine, mouse)
        tables = read_mouse(
            engine, mouse, events_log if kind == "ibl" else None, codec=wiring.codec()
        )
    except UnknownMouseError as exc:
        fail(exc, code=2)
    except OperatorError as exc:
        fail(exc, code=1)
    finally:
        engine.dispose()
    try:
        if kind == "ibl":
            written = plot_ibl(mouse, tables, target)
        else:
            written = plot_mouse(mouse, tables, None, target)
    except OperatorError as exc:
        fail(exc, code=1)
    except OSError as exc:
        fail(OperatorError(f"cannot write {target}: {exc.strerror}"), code=1)
    typer.echo(f"wrote {written}")


def enroll(
    mouse: Mouse,
    curriculum: Annotated[
        str,
        typer.Option(
            help="Curriculum to train the mouse on.", show_default=False, callback=check_curriculum
        ),
    ],
    start_stage: Annotated[
        str | None,
        typer.Option(
            help="Stage to start on (default: the curriculum's first).", callback=check_stage
        ),
    ] = None,
    by: Annotated[
        str | None,
        typer.Option(
            help="Who enrols the mouse. On a secured broker it is the principal you log in as "
            "(SHAPING_KAFKA_SASL_USERNAME) and --by may only repeat it; on a plaintext one "
            "(default: $SHAPING_OPERATOR, else your user name) it is a claim."
        ),
    ] = None,
    notes: Annotated[str, typer.Option(help="Free text kept with the enrolment.")] = "",
    rig: Annotated[
        str | None, typer.Option(help="Rig the mouse trains on, if known.", callback=check_rig)
    ] = None,
    wait: Annotated[
        float,
        typer.Option(
            "--wait", min=0, help="Seconds to wait for the processor's answer (0: do not wait)."
        ),
    ] = 20.0,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Enrol a mouse on a curriculum: sends an EnrolMouse command and waits for the answer.

    The processor answers with the MouseEnrolled it appends to the events topic (and the
    mouse's first assignment), or refuses the enrolment with its reason (exit status 1).
    """
    from shaping.services import bootstrap as wiring
    from shaping.services.operator.enroll import build_enrollment, request_enrollment
    from shaping.services.operator.errors import OperatorError
    from shaping.services.operator.terminal import printable

    settings = settings_with(bootstrap, prefix)
    who = requester(settings, by)
    try:
        command = build_enrollment(
            mouse, curriculum, who, start_stage, notes, rig, known_curricula=_known_curricula()
        )
    except OperatorError as exc:
        fail(exc, code=2)
    try:
        enrolment = request_enrollment(settings, command, wiring.codec(), wait)
    except OperatorError as exc:
        fail(exc, code=1)
    typer.echo(printable(enrolment.report()))


def _known_curricula() -> list[str] | None:
    """The curricula the processor loads too (shipped ones plus $SHAPING_CURRICULA_DIR), or
    None when they cannot be read here (then the processor alone judges the name)."""
    from shaping.services import bootstrap as wiring

    try:
        return wiring.catalog().names()
    except Exception as exc:  # the enrolment still goes out; the processor decides
        from shaping.services.operator.terminal import printable

        typer.secho(f"warning: cannot check the curriculum name here: {printable(exc)}", err=True)
        return None


def register(app: typer.Typer) -> None:
    """Adds the operator's commands to the ``shaping`` app."""
    for command in (status, history, plot, enroll):
        app.command()(command)
