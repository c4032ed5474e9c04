"""``shaping rig ...``: commands for the person at a behaviour rig.

Only light dependencies here (no faust, SQLAlchemy or pandas), so they work on a Raspberry Pi.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import typer

from services.common.settings import Settings

app = typer.Typer(help="Commands for a behaviour rig.", no_args_is_help=True)

Bootstrap = Annotated[
    str | None,
    typer.Option("--bootstrap", help="Kafka bootstrap servers (default: $SHAPING_BOOTSTRAP)."),
]
Prefix = Annotated[
    str | None,
    typer.Option("--prefix", help="Topic name prefix (default: $SHAPING_TOPIC_PREFIX)."),
]


@app.command("simulate")
def rig_simulate(
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    mice: Annotated[int, typer.Option(min=1, help="Number of simulated mice.")] = 3,
    rigs: Annotated[int, typer.Option(min=1, help="Number of rigs.")] = 3,
    days: Annotated[int, typer.Option(min=1, help="Sessions per mouse.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for each new assignment before a session.")
    ] = 60.0,
) -> None:
    """Run simulated rigs with simulated mice against Kafka.

    Before each session a rig reads the mouse's latest assignment from the compacted
    assignments topic and runs exactly those parameters.
    """
    from rig.kafka_transport import KafkaRigTransport
    from rig.lab import LabPlan, run_lab

    settings = Settings()
    if bootstrap:
        settings = replace(settings, bootstrap=bootstrap)
    if prefix:
        settings = replace(settings, topic_prefix=prefix)
    transport = KafkaRigTransport(
        settings.bootstrap,
        settings.topics.events,
        settings.topics.assignments,
        client_id="sim-rigs",
    )
    try:
        run = run_lab(LabPlan(n_mice=mice, n_rigs=rigs, n_days=days, seed=seed), transport, wait)
    finally:
        transport.close()
    for record in run.sessions:
        flag = " (stale assignment)" if record.stale_assignment else ""
        typer.echo(
            f"day {record.day + 1} {record.rig_id} {record.mouse_id} "
            f"session {record.assignment.session_number}: {record.started.stage}{flag}"
        )
