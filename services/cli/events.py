"""``shaping events show`` and ``shaping events tail``: the options, and printing.

The reading itself (which topics and partitions, the filters, decoding any bytes, escaping,
the table and JSON renderings) is the use case in :mod:`shaping.services.operator.events`;
these commands parse the options, call it, write its lines to stdout and turn its
:class:`~shaping.services.operator.events.EventsError` into ``error: ...`` and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from contextlib import closing
from datetime import datetime
from typing import Annotated

import typer

from shaping.services.cli.options import Bootstrap, Prefix, fail, settings_with
from shaping.services.operator.events import (
    DEFAULT_MAX_BYTES,
    EventsError,
    OutputFormat,
    Reading,
    TopicKind,
    parse_time,
    plan_reading,
    show_records,
    tail_records,
)

app = typer.Typer(
    help="Read Shaping's topics as text: decoded events, dead letters, undecodable records.",
    no_args_is_help=True,
)

Topics = Annotated[
    list[TopicKind] | None,
    typer.Option(
        "--topic",
        "-t",
        help="Topic kind (repeatable): events, accepted, decisions, assignments, dead-letter,"
        " curricula, commands, or all. The name is <prefix>.<kind>. Default: events.",
        show_default=False,
    ),
]
Mice = Annotated[
    list[str] | None,
    typer.Option(
        "--mouse",
        "-m",
        help="Only records about this mouse (repeatable): its key, its event's mouse_id, or a"
        " dead letter's original. Reads only the mouse's partition unless --partition is given.",
        show_default=False,
    ),
]
Types = Annotated[
    list[str] | None,
    typer.Option(
        "--type",
        help="Only events (or commands) of this type (repeatable), e.g. TrialCompleted.",
        show_default=False,
    ),
]
Partitions = Annotated[
    list[int] | None,
    typer.Option("--partition", "-p", min=0, help="Only this partition (repeatable)."),
]
Output = Annotated[
    OutputFormat,
    typer.Option("--format", "-o", help="table: one line per record; json: JSON lines."),
]
ShowHeaders = Annotated[
    bool, typer.Option("--headers", help="In a table, print each record's Kafka headers.")
]
MaxBytes = Annotated[
    int,
    typer.Option(
        "--max-bytes",
        min=0,
        help="Bytes a hexdump shows (undecodable values, dead letters' originals); 0: all.",
    ),
]
Since = Annotated[
    str | None,
    typer.Option(
        "--since",
        help="From this time: 2026-03-02, 2026-03-02T10:00:00Z, or an age (90s, 15m, 2h, 3d).",
        show_default=False,
    ),
]


def _warn(message: str) -> None:
    """A reading's warning: a yellow line on stderr."""
    typer.secho(message, fg=typer.colors.YELLOW, err=True)


def _reading(
    bootstrap: str | None,
    prefix: str | None,
    topic: list[TopicKind] | None,
    mouse: list[str] | None,
    event_type: list[str] | None,
    partition: list[int] | None,
    output: OutputFormat,
    headers: bool,
    max_bytes: int,
) -> Reading:
    from shaping.services import bootstrap as wiring

    settings = settings_with(bootstrap, prefix)
    try:
        return plan_reading(
            settings,
            wiring.codec(),
            kinds=topic or [],
            mice=mouse or [],
            types=event_type or [],
            partitions=partition or [],
            output=output,
            show_headers=headers,
            max_bytes=max_bytes,
        )
    except EventsError as exc:
        fail(str(exc))


def _time_or_fail(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as exc:
        fail(f"{option}: {exc}")


def _emit(rendered: Iterable[list[str]]) -> None:
    """Writes each record's lines to stdout as soon as it is rendered."""
    for lines in rendered:
        for line in lines:
            try:
                sys.stdout.write(line + "\n")
            except UnicodeEncodeError:  # a terminal that is not UTF-8: escape what it cannot show
                encoding = getattr(sys.stdout, "encoding", None) or "ascii"
                sys.stdout.write(line.encode(encoding, "backslashreplace").decode(encoding) + "\n")
        sys.stdout.flush()


@app.command("show")
def show(
    topic: Topics = None,
    mouse: Mice = None,
    event_type: Types = None,
    partition: Partitions = None,
    from_offset: Annotated[
        int | None,
        typer.Option("--from-offset", min=0, help="First offset, in each partition read."),
    ] = None,
    to_offset: Annotated[
        int | None,
        typer.Option("--to-offset", min=0, help="Last offset (inclusive), in each partition."),
    ] = None,
    since: Since = None,
    until: Annotated[
        str | None,
        typer.Option("--until", help="Up to (not including) this time; as --since."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", min=1, help="Print at most this many.")
    ] = None,
    output: Output = OutputFormat.table,
    headers: ShowHeaders = False,
    max_bytes: MaxBytes = DEFAULT_MAX_BYTES,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Print the records of a range of offsets or of time, oldest first, then stop.

    Without a range, everything on the topics now. Records of several partitions or topics
    are merged by timestamp.
    """
    reading = _reading(
        bootstrap, prefix, topic, mouse, event_type, partition, output, headers, max_bytes
    )
    start_time = _time_or_fail(since, "--since")
    end_time = _time_or_fail(until, "--until")
    try:
        records = show_records(
            reading, from_offset, to_offset, start_time, end_time, limit, warn=_warn
        )
    except EventsError as exc:
        fail(str(exc))
    try:
        _emit(reading.render(records))
    except BrokenPipeError:  # piped into head
        sys.stderr.close()


@app.command("tail")
def tail(
    topic: Topics = None,
    mouse: Mice = None,
    event_type: Types = None,
    partition: Partitions = None,
    last: Annotated[
        int, typer.Option("--last", "-n", min=0, help="Print the last N records first.")
    ] = 10,
    since: Since = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing records as they arrive.")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=0,
            help="With --follow: stop after this many seconds (default: until Ctrl-C).",
        ),
    ] = None,
    output: Output = OutputFormat.table,
    headers: ShowHeaders = False,
    max_bytes: MaxBytes = DEFAULT_MAX_BYTES,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Print the last records, then, with --follow, every new one as it arrives.

    --last N picks the last N (of those the filters keep, merged by timestamp); --since prints
    everything since a time instead.
    """
    reading = _reading(
        bootstrap, prefix, topic, mouse, event_type, partition, output, headers, max_bytes
    )
    start_time = _time_or_fail(since, "--since")
    try:
        records = tail_records(reading, last, start_time, follow, timeout, warn=_warn)
        with closing(records):  # the scanner closes however the printing stops
            _emit(reading.render(records))
    except EventsError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        sys.stderr.close()
