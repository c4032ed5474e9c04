"""``shaping weigh``, ``water``, ``restrict start|end``, ``note``, ``release`` and ``welfare``:
husbandry on the log.

Each record is a command the processor judges (the use cases are in
:mod:`shaping.services.operator.husbandry`): on Kafka (the default), or in an embedded install
with ``--embedded DIR`` (the folder of ``shaping demo``: its event log and status tables).
``shaping welfare`` shows each mouse's day: weight, percent of expected, status, water given,
required and still due, and the suggested supplement, by the lab's welfare policy (``--policy``
or $SHAPING_WELFARE_POLICY; the default policy otherwise). A request that cannot work exits
with 2; a command that did not reach the log or that the processor refused exits with 1.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shaping.services.cli.options import (
    Bootstrap,
    DbUrl,
    Mouse,
    Prefix,
    check_mouse,
    fail,
    requester,
    settings_with,
)

if TYPE_CHECKING:
    from shaping.schemas.commands import Command
    from shaping.services.domain.welfare import WelfarePolicy

By = Annotated[
    str | None,
    typer.Option(
        "--by",
        help="Who records it. On a secured broker it is the principal you log in as and --by "
        "may only repeat it; on a plaintext one (default: $SHAPING_OPERATOR, else your user "
        "name) it is a claim.",
    ),
]
Wait = Annotated[
    float,
    typer.Option(
        "--wait", min=0, help="Seconds to wait for the processor's answer (0: do not wait)."
    ),
]
Embedded = Annotated[
    Path | None,
    typer.Option(
        "--embedded",
        help="An embedded install (the folder of `shaping demo`: events.jsonl and "
        "shaping.sqlite) instead of Kafka.",
        file_okay=False,
    ),
]
Policy = Annotated[
    str | None,
    typer.Option(
        "--policy",
        envvar="SHAPING_WELFARE_POLICY",
        help="The lab's welfare policy file (YAML; policies/ has examples). Default: the "
        "built-in policy.",
    ),
]

restrict_app = typer.Typer(help="Start or end a mouse's water restriction.", no_args_is_help=True)


def _policy(path: str | None) -> WelfarePolicy:
    from shaping.services.operator.husbandry import HusbandryError, welfare_policy

    try:
        return welfare_policy(path)
    except HusbandryError as exc:
        fail(exc, code=2)


def _send(
    build: Callable[[str], Command],
    by: str | None,
    wait: float,
    bootstrap: str | None,
    prefix: str | None,
    db_url: str | None,
    embedded: Path | None,
    policy: str | None,
) -> None:
    """Builds the command (``build`` gets who sends it), sends it to Kafka or the embedded
    install, prints the answer; its errors end the command."""
    from shaping.services import bootstrap as wiring
    from shaping.services.operator.husbandry import (
        EmbeddedLab,
        HusbandryError,
        HusbandryRefused,
        kafka_sender,
        known_from_tables,
        submit,
    )

    settings = settings_with(bootstrap, prefix, db_url)
    who = requester(settings, by)
    try:
        command = build(who)
    except HusbandryError as exc:
        fail(exc, code=2)
    try:
        if embedded is not None:
            with EmbeddedLab(
                embedded, catalog=wiring.catalog(), codec=wiring.codec(), policy=_policy(policy)
            ) as lab:
                recorded = submit(command, lab.sender(), lab.known())
        else:
            known = known_from_tables(settings.db_url)
            recorded = submit(command, kafka_sender(settings, wiring.codec(), wait), known)
    except HusbandryRefused as exc:
        fail(exc, code=1)
    except HusbandryError as exc:
        fail(exc, code=2 if "no mouse" in str(exc) or "embedded" in str(exc) else 1)
    typer.echo(recorded.report())


def weigh(
    mouse: Mouse,
    grams: Annotated[float, typer.Argument(help="The weight in grams.", show_default=False)],
    confirm: Annotated[
        bool,
        typer.Option(
            "--confirm", help="Confirm a weight far from the last one (the policy's jump)."
        ),
    ] = False,
    scale: Annotated[str | None, typer.Option("--scale", help="The scale's id.")] = None,
    by: By = None,
    wait: Wait = 20.0,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    db_url: DbUrl = None,
    embedded: Embedded = None,
    policy: Policy = None,
) -> None:
    """Record a mouse's weight: sends a RecordWeight command.

    Refused: a weight the policy finds implausible, or one further from the last weight than
    the policy allows unless --confirm is given.
    """
    from shaping.services.operator.husbandry import build_weight

    _send(
        lambda who: build_weight(mouse, grams, who, confirmed=confirm, scale_id=scale),
        by,
        wait,
        bootstrap,
        prefix,
        db_url,
        embedded,
        policy,
    )


def water(
    mouse: Mouse,
    ml: Annotated[float, typer.Argument(help="The volume in mL.", show_default=False)],
    kind: Annotated[
        str, typer.Option("--kind", help="earned, supplement or free_access.")
    ] = "supplement",
    water_type: Annotated[
        str, typer.Option("--type", help="water, sucrose, citric_acid_water or hydrogel.")
    ] = "water",
    session: Annotated[
        str | None, typer.Option("--session", help="The session earned water came from.")
    ] = None,
    by: By = None,
    wait: Wait = 20.0,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    db_url: DbUrl = None,
    embedded: Embedded = None,
    policy: Policy = None,
) -> None:
    """Record water given to a mouse: sends a GiveWater command."""
    from shaping.services.operator.husbandry import build_water

    _send(
        lambda who: build_water(
            mouse, ml, who, kind=kind, water_type=water_type, session_id=session
        ),
        by,
        wait,
        bootstrap,
        prefix,
        db_url,
        embedded,
        policy,
    )


@restrict_app.command("start")
def restrict_start(
    mouse: Mouse,
    reference: Annotated[
        float | None,
        typer.Option(
            "--reference",
            help="The reference weight in grams (default: the mouse's latest weight).",
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            help="How the reference was set: measured, entered or weight_on_date (default: "
            "entered with --reference, else measured).",
        ),
    ] = None,
    implant: Annotated[
        float, typer.Option("--implant", help="Implant (head plate) weight in grams.")
    ] = 0.0,
    born: Annotated[
        str | None, typer.Option("--born", help="Birth date, YYYY-MM-DD (growth-curve policies).")
    ] = None,
    sex: Annotated[str | None, typer.Option("--sex", help="F, M or U.")] = None,
    by: By = None,
    wait: Wait = 20.0,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    db_url: DbUrl = None,
    embedded: Embedded = None,
    policy: Policy = None,
) -> None:
    """Put a mouse on water restriction: sends a StartRestriction command."""
    from shaping.services.operator.husbandry import (
        HusbandryError,
        build_restriction_start,
        latest_weight,
    )

    grams = reference
    chosen = method or ("entered" if reference is not None else "measured")
    if grams is None:
        url = (
            f"sqlite:///{embedded / 'shaping.sqlite'}"
            if embedded is not None
            else settings_with(bootstrap, prefix, db_url).db_url
        )
        grams = latest_weight(url, mouse)
        if grams is None:
            fail(
                HusbandryError(
                    f"no weight of {mouse} in the status tables: weigh it first or give "
                    "--reference GRAMS"
                ),
                code=2,
            )
    reference_grams = grams
    _send(
        lambda who: build_restriction_start(
            mouse,
            reference_grams,
            who,
            reference_method=chosen,
            implant_grams=implant,
            birth_date=born,
            sex=sex,
        ),
        by,
        wait,
        bootstrap,
        prefix,
        db_url,
        embedded,
        policy,
    )


@restrict_app.command("end")
def restrict_end(
    mouse: Mouse,
    reason: Annotated[str, typer.Option("--reason", help="Why (optional).")] = "",
    by: By = None,
    wait: Wait = 20.0,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    db_url: DbUrl = None,
    embedded: Embedded = None,
    policy: Policy = None,
) -> None:
    """End a mouse's water restriction: sends an EndRestriction command."""
    from shaping.services.operator.husbandry import build_restriction_end

    _send(
        lambda who: build_restriction_end(mouse, who, reason),
        by,
        wait,
        bootstrap,
        prefix,
        db_url,
        embedded,
        policy,
    )


def note(
    mouse: Mouse,
    text: Annotated[str, typer.Argument(help="The note.", show_default=False)],
    by: By = None,
    wait: Wait = 20.0,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    db_url: DbUrl = None,
    embedded: Embedded = None,
) -> None:
    """Note something about a mouse's welfare: sends an AddNote command."""
    from shaping.services.operator.husbandry import build_note

    _send(
        lambda who: build_note(mouse, text, who),
        by,
        wait,
        bootstrap,
        prefix,
        db_url,
        embedded,
        None,
    )


def release(
    mouse: Mouse,
    reason: Annotated[
        str, typer.Option("--reason", help="Why the mouse may train today (required).")
    ],
    by: By = None,
    wait: Wait = 20.0,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    db_url: DbUrl = None,
    embedded: Embedded = None,
    policy: Policy = None,
) -> None:
    """Release a held (or not yet weighed) mouse on water restriction for today: sends a
    ReleaseHold command, audited like an override (`shaping interventions`).

    The processor re-issues the mouse's assignment cleared for the lab day; refused for a
    mouse that is not on water restriction.
    """
    from shaping.services.operator.husbandry import build_release

    _send(
        lambda who: build_release(mouse, who, reason),
        by,
        wait,
        bootstrap,
        prefix,
        db_url,
        embedded,
        policy,
    )


def welfare(
    mouse: Annotated[
        str | None,
        typer.Argument(help="One mouse (default: every mouse).", callback=check_mouse),
    ] = None,
    day: Annotated[
        str | None,
        typer.Option("--day", help="The lab day, YYYY-MM-DD (default: today, lab time)."),
    ] = None,
    db_url: DbUrl = None,
    embedded: Embedded = None,
    policy: Policy = None,
) -> None:
    """Today's welfare: weight, % of expected, status, water given, required and still due,
    the suggested supplement, by the lab's policy, and the gate: held (why), cleared to train
    today, or not cleared."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from shaping.services import bootstrap as wiring
    from shaping.services.operator.errors import OperatorError
    from shaping.services.operator.husbandry import (
        EmbeddedLab,
        lab_day,
        welfare_from_states,
        welfare_from_tables,
        welfare_rows,
    )
    from shaping.services.operator.queries import open_database
    from shaping.services.operator.terminal import printable

    chosen = _policy(policy)
    now = datetime.now(UTC)
    try:
        the_day = date.fromisoformat(day) if day is not None else lab_day(chosen, now)
    except ValueError:
        fail(f"--day must be a date like 2026-03-02, not {day!r}", code=2)
    try:
        if embedded is not None:
            with EmbeddedLab(embedded, catalog=wiring.catalog(), codec=wiring.codec()) as lab:
                found = welfare_from_states(lab.runtime.states, chosen, the_day, now, mouse)
        else:
            engine = open_database(settings_with(db_url=db_url).db_url)
            try:
                found = welfare_from_tables(engine, chosen, the_day, now, mouse)
            finally:
                engine.dispose()
    except OperatorError as exc:
        fail(exc, code=2)
    rows = welfare_rows(found)
    table = Table(
        title=f"welfare on {the_day.isoformat()} (policy {chosen.name})", title_justify="left"
    )
    headers = list(rows[0]) if rows else ["mouse", "status"]
    for header in headers:
        table.add_column(header)
    for row in rows:
        table.add_row(*(Text(printable(row[h])) for h in headers))
    Console(width=200).print(table)


def register(parent: typer.Typer) -> None:
    """Adds ``weigh``, ``water``, ``restrict start|end``, ``note``, ``release`` and ``welfare``."""
    parent.command("weigh")(weigh)
    parent.command("water")(water)
    parent.add_typer(restrict_app, name="restrict")
    parent.command("note")(note)
    parent.command("release")(release)
    parent.command("welfare")(welfare)
