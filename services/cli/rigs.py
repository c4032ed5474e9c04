"""``shaping rigs``: which rigs a mouse may train on.

``shaping rigs allow MOUSE RIG [RIG...]`` sends an AllowRigs command and waits for the
processor's answer (the use case is :mod:`shaping.services.operator.rigs`). The list replaces
the one in force; from then on the processor refuses the mouse's rig facts from any other rig.
A request that cannot work exits with 2; a command that did not reach Kafka or that the
processor refused exits with 1. :func:`register` adds the group to the ``shaping`` app.
"""

from __future__ import annotations

from typing import Annotated

import typer

from shaping.services.cli.options import Bootstrap, Mouse, Prefix, fail, requester, settings_with

app = typer.Typer(help="Which rigs a mouse may train on.", no_args_is_help=True)


def _check_rigs(values: list[str] | None) -> list[str] | None:
    """Holds every rig id to the identifier grammar before anything is sent."""
    from shaping.schemas.identifiers import check_id

    if values is None:
        return None
    try:
        return [check_id(value, "rig id") for value in values]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command("allow")
def allow(
    mouse: Mouse,
    rigs: Annotated[
        list[str],
        typer.Argument(
            help="Every rig the mouse may train on (the list replaces the one in force).",
            show_default=False,
            callback=_check_rigs,
            metavar="RIG",
        ),
    ],
    reason: Annotated[
        str, typer.Option("--reason", help="Why (kept in the audit; optional).")
    ] = "",
    by: Annotated[
        str | None,
        typer.Option(
            "--by",
            help="Who decides. On a secured broker it is the principal you log in as "
            "(SHAPING_KAFKA_SASL_USERNAME) and --by may only repeat it; on a plaintext one "
            "(default: $SHAPING_OPERATOR, else your user name) it is a claim.",
        ),
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
    """Allow a mouse on these rigs only: sends an AllowRigs command and waits for the answer.

    From then on the processor refuses the mouse's sessions, trials and movements from any
    other rig (each one a dead letter with the reason). Name every rig the mouse may use: the
    list replaces the one in force. Refused for a mouse the processor has not enrolled.
    """
    from shaping.services import bootstrap as wiring
    from shaping.services.operator.errors import OperatorError
    from shaping.services.operator.rigs import build_allowed_rigs, request_allowed_rigs
    from shaping.services.operator.terminal import printable

    settings = settings_with(bootstrap, prefix)
    who = requester(settings, by)
    try:
        command = build_allowed_rigs(mouse, rigs, who, reason)
    except OperatorError as exc:
        fail(exc, code=2)
    try:
        allowance = request_allowed_rigs(settings, command, wiring.codec(), wait)
    except OperatorError as exc:
        fail(exc, code=1)
    typer.echo(printable(allowance.report()))


def register(parent: typer.Typer) -> None:
    """Adds ``shaping rigs`` (``allow``) to the ``shaping`` app."""
    parent.add_typer(app, name="rigs")
