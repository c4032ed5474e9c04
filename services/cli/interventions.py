"""``shaping override``, ``eject`` and ``adjust``: a trainer's interventions; and
``shaping interventions``, their audit trail.

The checks, the publishing and the wait for the processor's answer are the use case in
:mod:`shaping.services.operator.interventions`. These commands parse the options, call it and
print what it reports. Its errors end the command with ``error: ...``: a request that cannot
work exits with 2, a command that did not reach Kafka or that the processor refused with 1.
Its warnings (checks that could not be made here) go to stderr. The codec and the curricula
come from the composition root (:mod:`shaping.services.bootstrap`).

:func:`register` adds the commands to the ``shaping`` app. Only typer and the light use-case
module are imported here; the use case imports Kafka, SQLAlchemy and the curricula when it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from shaping.services.cli.options import (
    Bootstrap,
    Mouse,
    Prefix,
    check_mouse,
    check_stage,
    fail,
    requester,
    settings_with,
)
from shaping.services.cli.options import (
    DbUrl as TablesUrl,
)
from shaping.services.operator.interventions import (
    DEFAULT_WAIT_S,
    Delivery,
    DeliveryError,
    InterventionError,
    InterventionRefused,
    load_catalog,
    request_adjustment,
    request_ejection,
    request_override,
)

Reason = Annotated[
    str,
    typer.Option("--reason", help="Why (kept in the audit; required).", show_default=False),
]
By = Annotated[
    str | None,
    typer.Option(
        "--by",
        help="Who decides. On a secured broker it is the principal you log in as "
        "(SHAPING_KAFKA_SASL_USERNAME) and --by may only repeat it; on a plaintext one "
        "(default: $SHAPING_OPERATOR, else your user name) it is a claim.",
    ),
]
DbUrl = Annotated[
    str | None,
    typer.Option(
        "--db-url",
        help="Status tables used to check the mouse, stage and parameters (default: "
        "$SHAPING_DB_URL).",
    ),
]
Wait = Annotated[
    float,
    typer.Option(
        "--wait", min=0, help="Seconds to wait for the processor's answer (0: do not wait)."
    ),
]


def _warn(message: str) -> None:
    """A check that could not be made here: a plain line on stderr."""
    typer.secho(message, err=True)


def _run(request: Callable[[], Delivery]) -> None:
    """Runs one intervention and prints its report; its errors end the command."""
    try:
        delivery = request()
    except (DeliveryError, InterventionRefused) as exc:
        fail(str(exc), code=1)
    except InterventionError as exc:
        fail(str(exc))
    for line in delivery.report():
        typer.echo(line)


def override(
    mouse: Mouse,
    stage: Annotated[
        str,
        typer.Option(
            "--stage", help="The stage the mouse's next session runs.", callback=check_stage
        ),
    ],
    reason: Reason,
    by: By = None,
    from_stage: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="The stage you saw the mouse at; refused if it has moved since (default: the "
            "stage in the status tables).",
            callback=check_stage,
        ),
    ] = None,
    wait: Wait = DEFAULT_WAIT_S,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    db_url: DbUrl = None,
) -> None:
    """Move a mouse to a stage by hand (audited): sends an OverrideStage command.

    The next session runs that stage and is judged by its rules. Refused while the mouse is in
    a session, and if it is no longer at --from.
    """
    from shaping.services import bootstrap as wiring

    settings = settings_with(bootstrap, prefix, db_url)
    who = requester(settings, by)
    _run(
        lambda: request_override(
            settings,
            mouse,
            stage,
            reason,
            who,
            from_stage,
            wait_s=wait,
            warn=_warn,
            codec=wiring.codec(),
            catalog=load_catalog(wiring.catalog, _warn),
        )
    )


def eject(
    mouse: Mouse,
    reason: Reason,
    by: By = None,
    wait: Wait = DEFAULT_WAIT_S,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    db_url: DbUrl = None,
) -> None:
    """Take a mouse out of training: sends an EjectMouse command.

    It gets no more assignments (rigs refuse to run it) and its new sessions are refused.
    Enrolling it again starts it over.
    """
    from shaping.services import bootstrap as wiring

    settings = settings_with(bootstrap, prefix, db_url)
    who = requester(settings, by)
    _run(
        lambda: request_ejection(
            settings, mouse, reason, who, wait_s=wait, warn=_warn, codec=wiring.codec()
        )
    )


def adjust(
    mouse: Mouse,
    reason: Reason,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="NAME=VALUE, e.g. max_trials=300 (repeat the option).",
            metavar="NAME=VALUE",
        ),
    ] = None,
    clear: Annotated[
        list[str] | None,
        typer.Option(
            "--clear",
            help="Clear an adjustment: back to the stage's value (repeat).",
            metavar="NAME",
        ),
    ] = None,
    by: By = None,
    wait: Wait = DEFAULT_WAIT_S,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    db_url: DbUrl = None,
) -> None:
    """Adjust some of a mouse's parameters within what its curriculum allows.

    Sends an AdjustParameters command; the adjustments apply on top of every later
    assignment, at every stage that allows them, until cleared.
    """
    from shaping.services import bootstrap as wiring

    settings = settings_with(bootstrap, prefix, db_url)
    who = requester(settings, by)
    _run(
        lambda: request_adjustment(
            settings,
            mouse,
            set_ or [],
            clear or [],
            reason,
            who,
            wait_s=wait,
            warn=_warn,
            codec=wiring.codec(),
            catalog=load_catalog(wiring.catalog, _warn),
        )
    )


def interventions(
    mouse: Annotated[
        str | None,
        typer.Option("--mouse", help="Only this mouse's.", callback=check_mouse),
    ] = None,
    by: Annotated[
        str | None,
        typer.Option("--by", help="Only those asked for by this operator (exact name)."),
    ] = None,
    wide: Annotated[
        bool,
        typer.Option("--wide", help="Show every column in full, however wide the lines get."),
    ] = False,
    db_url: TablesUrl = None,
) -> None:
    """The operators' audit trail, oldest first: who asked for what, when, why, what became
    of it, and the command it answered.

    Every override, ejection and adjustment, and each mouse's newest enrolment, from the
    status tables. "by" is the name the command carried: on a secured broker the principal
    the operator logged in as; on a plaintext broker a name the operator claimed (--by),
    which nothing checked (docs/security.md, "Operators' identity"). "command" is the id of
    the operator's command the event answered (empty for enrolments and for events sent
    without a command). On a narrow terminal why, then outcome are left out (--wide shows
    them).
    """
    from rich.console import Console

    from shaping.services.operator.errors import OperatorError
    from shaping.services.operator.queries import intervention_log, open_database
    from shaping.services.operator.terminal import Col, cell_text, print_table

    settings = settings_with(db_url=db_url)
    try:
        engine = open_database(settings.db_url)
    except OperatorError as exc:
        fail(exc, code=1)
    try:
        rows = intervention_log(engine, mouse, by)
    except OperatorError as exc:
        fail(exc, code=1)
    finally:
        engine.dispose()
    if not rows:
        typer.echo("no interventions" + (" match" if mouse is not None or by is not None else ""))
        return
    columns = [
        Col("at", "when", None, fold=True),
        Col("mouse", "mouse", None),
        Col("what", "what", None, fold=True, fold_min=14),
        Col("by", "by", None, fold=True, fold_min=8),
        Col("why", "why", 1, fold=True, fold_min=14),
        Col("outcome", "outcome", 2, fold=True, fold_min=14),
        Col("command", "command", None, fold=True, fold_min=12),
    ]
    shown = [
        {col.key: cell_text(row[col.key], "time" if col.key == "at" else "text") for col in columns}
        for row in rows
    ]
    print_table(
        Console(highlight=False),
        columns,
        shown,
        wide=wide,
        title=f"{len(rows)} interventions, oldest first",
        show_lines=True,
    )


def register(app: typer.Typer) -> None:
    """Adds ``override``, ``eject``, ``adjust`` and ``interventions`` to the ``shaping``
    app."""
    app.command()(override)
    app.command()(eject)
    app.command()(adjust)
    app.command()(interventions)
