"""``shaping override``, ``eject`` and ``adjust``: a trainer's interventions.

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
    check_stage,
    fail,
    settings_with,
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
    typer.Option("--by", help="Who decides (default: $SHAPING_OPERATOR, else your user name)."),
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
    _run(
        lambda: request_override(
            settings,
            mouse,
            stage,
            reason,
            by,
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
    _run(
        lambda: request_ejection(
            settings, mouse, reason, by, wait_s=wait, warn=_warn, codec=wiring.codec()
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
    _run(
        lambda: request_adjustment(
            settings,
            mouse,
            set_ or [],
            clear or [],
            reason,
            by,
            wait_s=wait,
            warn=_warn,
            codec=wiring.codec(),
            catalog=load_catalog(wiring.catalog, _warn),
        )
    )


def register(app: typer.Typer) -> None:
    """Adds ``override``, ``eject`` and ``adjust`` to the ``shaping`` app."""
    app.command()(override)
    app.command()(eject)
    app.command()(adjust)
