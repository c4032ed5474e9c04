"""The ``shaping replay`` and ``shaping whatif`` commands.

Only typer is imported here (the ``shaping`` entry point stays light); the commands import the
engines (:mod:`shaping.services.operator.replay`, :mod:`shaping.services.operator.whatif`)
when they run, and hand them the codec and the curricula.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from shaping.services.cli.options import Bootstrap, Prefix, fail, settings_with
from shaping.services.operator.terminal import printable

if TYPE_CHECKING:
    from rich.console import Console

    from shaping.schemas.codec import EventCodec
    from shaping.services.adapters.settings import Settings
    from shaping.services.operator.replay.log import Reader
    from shaping.services.operator.replay.run import ReplaySummary
    from shaping.services.operator.replay.sources import JsonlSource
    from shaping.services.processor.step import ClockWindow

EventsLog = Annotated[
    Path | None,
    typer.Option(
        "--events-log",
        help="Embedded mode: the event log of `shaping demo` (events.jsonl) instead of Kafka.",
    ),
]


_settings = settings_with


@contextmanager
def _errors() -> Iterator[None]:
    """One red line for what an operator can fix, never a traceback."""
    from kafka.errors import KafkaError

    from shaping.services.curricula.errors import CurriculumInvalid
    from shaping.services.domain.errors import DomainError
    from shaping.services.operator.errors import OperatorError

    try:
        yield
    except OperatorError as exc:
        fail(str(exc))
    except CurriculumInvalid as exc:
        fail(f"invalid curriculum: {exc}")
    except DomainError as exc:
        fail(str(exc))
    except KafkaError as exc:
        from shaping.services.adapters.kafka import KafkaConnection, refusal_in_words

        try:
            connection: KafkaConnection | None = KafkaConnection()
        except ValueError:  # settings already refused before anything connected
            connection = None
        refused = refusal_in_words(exc, connection)
        if refused is not None:
            fail(
                f"{refused}. Replay reads every topic and hands state over to the processor's "
                "changelogs and consumer group: run it with the admin's credentials",
                code=1,
            )
        fail(f"Kafka: {exc}", code=1)


def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _progress(
    console: Console,
) -> tuple[Callable[[int], Callable[[int], None]], Callable[[], None]]:
    """A rich progress bar (events/s, time left): the factory replay calls, and a closer."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-- events/s" if speed is None else f"{speed:,.0f} events/s")

    progress = Progress(
        TextColumn("folding the log"),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )

    def start(total: int) -> Callable[[int], None]:
        progress.start()
        task = progress.add_task("replay", total=total)
        return lambda n: progress.advance(task, n)

    return start, progress.stop


def replay(
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
    db_url: Annotated[
        str | None,
        typer.Option(
            "--db-url", help="SQLAlchemy URL of the live status tables (default: $SHAPING_DB_URL)."
        ),
    ] = None,
    events_log: EventsLog = None,
    processor_id: Annotated[
        str | None,
        typer.Option(
            help="The processor's id: its consumer group (default: $SHAPING_PROCESSOR_ID)."
        ),
    ] = None,
    projector_id: Annotated[
        str | None,
        typer.Option(
            help="The projector's name in its offsets table (default: $SHAPING_PROJECTOR_ID)."
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Show what would change; read-only (publishes and writes nothing, commits no "
            "offset), so it may run while the services run.",
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Processes that fold the log, each a group of partitions (default: one per CPU).",
        ),
    ] = None,
    reader: Annotated[
        str | None,
        typer.Option(
            "--reader",
            help="The Kafka client that reads the events topic: confluent or kafka-python "
            "(default: confluent-kafka when installed).",
        ),
    ] = None,
) -> None:
    """Rebuild the processor's state and the status tables from offset 0, then switch over.

    The processor must be stopped (its state is rebuilt and handed over), and the projector
    too (replay refuses to switch if it wrote meanwhile); --dry-run is read-only and runs
    beside them. Prints what changed per mouse; running it twice changes nothing.
    docs/replay.md explains each step.
    """
    settings = _settings(bootstrap, prefix, db_url)
    if events_log is not None and bootstrap is not None:
        raise typer.BadParameter(
            "give --events-log or --bootstrap, not both", param_hint="--events-log"
        )
    if reader is not None and reader not in ("confluent", "kafka-python"):
        raise typer.BadParameter("confluent or kafka-python", param_hint="--reader")
    console = _stderr()
    start, stop = _progress(console)
    started = time.monotonic()
    with _errors():
        try:
            summary = _run(
                settings, events_log, processor_id, projector_id, dry_run, start, workers, reader
            )
        finally:
            stop()
    _print_summary(summary, time.monotonic() - started)


def _run(
    settings: Settings,
    events_log: Path | None,
    processor_id: str | None,
    projector_id: str | None,
    dry_run: bool,
    start: Callable[[int], Callable[[int], None]],
    workers: int | None = None,
    reader: str | None = None,
) -> ReplaySummary:
    from shaping.services import bootstrap as wiring
    from shaping.services.adapters.settings import SettingsError
    from shaping.services.operator.replay.handover import ProcessorHandover
    from shaping.services.operator.replay.run import run_replay
    from shaping.services.operator.replay.sources import KafkaSource

    try:
        welfare = wiring.welfare_policy(settings)
    except SettingsError as exc:
        fail(exc, code=2)
    codec = wiring.codec()
    if events_log is not None:
        if not events_log.is_file():
            fail(f"no event log at {events_log} (the events.jsonl of `shaping demo`)")
        return run_replay(
            _jsonl_source(events_log, codec),
            settings.db_url,
            codec=codec,
            projector_id=projector_id or "projector",
            dry_run=dry_run,
            progress=start,
            clock=_clock(settings),
            workers=workers,
            welfare=welfare,
        )
    if not dry_run:
        # A deployment from before the accepted topic has none yet: replay reads it and
        # publishes to it, and the projector offsets it writes cover it.
        from shaping.services.adapters.topics import ensure_topics

        ensure_topics(settings.bootstrap, settings.topics, partitions=settings.partitions)
    return run_replay(
        KafkaSource(
            settings.bootstrap,
            settings.topics,
            codec,
            wiring.catalog,
            reader=cast("Reader | None", reader),
        ),
        settings.db_url,
        codec=codec,
        handover=ProcessorHandover(settings.bootstrap, processor_id or settings.processor_id),
        projector_id=projector_id or settings.projector_id,
        dry_run=dry_run,
        progress=start,
        clock=_clock(settings),
        workers=workers,
        welfare=welfare,
    )


def _jsonl_source(events_log: Path, codec: EventCodec) -> JsonlSource:
    """The embedded log of ``shaping demo``: its topics are always ``shaping.*`` (the demo
    writes no other prefix), and the lab's curricula are the only ones."""
    from shaping.schemas.topics import TopicNames
    from shaping.services import bootstrap as wiring
    from shaping.services.operator.replay.sources import JsonlSource

    return JsonlSource(events_log, TopicNames.with_prefix("shaping"), codec, wiring.catalog)


def _clock(settings: Settings) -> ClockWindow:
    """The window of accepted dates the processor runs with (the same settings)."""
    from datetime import timedelta

    from shaping.services.processor.step import ClockWindow

    return ClockWindow(
        max_ahead=timedelta(seconds=settings.clock_max_ahead_s),
        max_behind=timedelta(days=settings.clock_max_behind_days),
    )


def _print_summary(summary: ReplaySummary, seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    rate = summary.events / seconds if seconds > 0 else 0.0
    console.print(
        Text(
            f"replayed {summary.events} events of {summary.mice} mice in {seconds:.1f} s "
            f"({rate:,.0f} events/s, {summary.workers} worker"
            f"{'s' if summary.workers != 1 else ''}; peak memory {summary.peak_rss_mb:,.0f} MB)"
        )
    )
    if summary.merged_again:
        console.print(
            Text(
                "note: a curriculum was published on the events topic, so the log was folded "
                "again in one process, its partitions merged by time"
            )
        )
    if summary.mouse_changes:
        table = Table(title="changes per mouse", title_justify="left", show_lines=True)
        for title in ("mouse", "stage now", "after replay", "added", "removed", "changed"):
            table.add_column(title)
        for change in summary.mouse_changes:
            table.add_row(
                Text(printable(change.mouse_id)),
                Text(printable(change.stage_before)),
                Text(printable(change.stage_after)),
                Text("\n".join(map(printable, change.added)) or "-"),
                Text("\n".join(map(printable, change.removed)) or "-"),
                Text("\n".join(map(printable, change.changed)) or "-"),
            )
        console.print(table)
    for name, rows in summary.table_changes.items():
        console.print(
            Text(
                f"table {name}: {rows.added} added, {rows.removed} removed, {rows.changed} changed"
            )
        )
    for note in [*summary.notes, *summary.unfixable]:
        console.print(Text(f"note: {printable(note)}"))
    verb = "would publish" if summary.dry_run else "published"
    if summary.published:
        console.print(
            Text(
                f"{verb} {summary.published} events ({summary.corrections} corrections "
                "superseding live ones)"
            )
        )
    if summary.states_written or summary.offsets_moved:
        console.print(
            Text(
                f"processor: {summary.states_written} mouse states written to its changelog, "
                f"offsets moved on {summary.offsets_moved} partitions"
            )
        )
    if summary.switched:
        console.print(
            Text(
                f"switched over to the rebuilt tables; the old ones are kept in {summary.kept_old}"
            )
        )
    if summary.no_change:
        console.print(Text("no change: the live state and tables already match the log"))
    elif summary.dry_run:
        console.print(Text("dry run: nothing was changed"))


def register(app: typer.Typer) -> None:
    """Adds ``replay`` (and ``whatif``) to the ``shaping`` app."""
    app.command("replay")(replay)
    app.command("whatif")(whatif)


def whatif(
    curriculum: Annotated[
        str,
        typer.Option(
            "--curriculum",
            help="NEW: a curriculum file (Shaping YAML, AIND JSON, mtrain) or NAME@VERSION.",
            show_default=False,
        ),
    ],
    mice: Annotated[
        str | None, typer.Option(help="Only these mice, comma-separated (M001,M002).")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Switch to NEW at each mouse's first session on or after this date."),
    ] = None,
    out_csv: Annotated[
        Path | None, typer.Option("--out-csv", help="Write one row per session to this CSV.")
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="Draw stage over sessions, both curricula, to this PNG."),
    ] = None,
    events_log: EventsLog = None,
    bootstrap: Bootstrap = None,
    prefix: Prefix = None,
) -> None:
    """Replay the recorded sessions open-loop through another curriculum (or version).

    Reads the event log (Kafka from offset 0 with a throwaway consumer, or --events-log) and
    publishes nothing. Shows per mouse the stage path under its own curriculum and under NEW,
    the first session where they differ, and the sessions it takes to reach each stage.
    """
    if plot is not None and plot.suffix.lower() != ".png":
        raise typer.BadParameter("the plot is a PNG: name the file *.png", param_hint="--plot")
    if events_log is not None and bootstrap is not None:
        raise typer.BadParameter(
            "give --events-log or --bootstrap, not both", param_hint="--events-log"
        )
    settings = _settings(bootstrap, prefix, None)
    with _errors():
        from shaping.services import bootstrap as wiring
        from shaping.services.operator.replay.log import live_events
        from shaping.services.operator.replay.sources import KafkaSource, Source
        from shaping.services.operator.whatif import load_new_curriculum, parse_date, run_whatif

        since_date = parse_date(since) if since is not None else None
        wanted = [m.strip() for m in mice.split(",") if m.strip()] if mice else None
        codec = wiring.codec()
        source: Source
        if events_log is not None:
            if not events_log.is_file():
                fail(f"no event log at {events_log} (the events.jsonl of `shaping demo`)")
            source = _jsonl_source(events_log, codec)
        else:
            source = KafkaSource(settings.bootstrap, settings.topics, codec, wiring.catalog)
        catalog = source.catalog()
        new = load_new_curriculum(curriculum, catalog)
        source.snapshot()
        # The outputs record the version each enrolment was accepted on (read, never written).
        produced = source.live_outputs(skip=[source.topics.accepted])
        result = run_whatif(
            source.inputs(),
            source.topics.events,
            catalog,
            new,
            wanted,
            since_date,
            outputs=live_events(codec, produced),
            clock=_clock(settings),
            codec=codec,
        )
        if not result.mice:
            fail("the event log has no enrolled mouse", code=1)
        _print_whatif(result)
        _write_whatif(result, out_csv, plot)


def _write_whatif(result: Any, out_csv: Path | None, plot: Path | None) -> None:
    """Writes the what-if's CSV and plot, when asked for."""
    from shaping.services.operator.whatif import plot as draw
    from shaping.services.operator.whatif import write_csv

    if out_csv is not None:
        try:
            rows = write_csv(result, out_csv)
        except OSError as exc:
            fail(f"cannot write {out_csv}: {exc.strerror}", code=1)
        typer.echo(f"wrote {rows} rows to {out_csv}")
    if plot is not None:
        try:
            draw(result, plot)
        except OSError as exc:
            fail(f"cannot write {plot}: {exc.strerror}", code=1)
        typer.echo(f"wrote {plot}")


def _print_whatif(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    table = Table(title=f"what if: {result.new_curriculum}", title_justify="left")
    table.add_column("mouse", no_wrap=True)
    for title in ("on", "sessions", "stage now", "under NEW", "first difference"):
        table.add_column(title)
    for mouse in result.mice:
        first = mouse.first_difference
        if first is None:
            where = "none"
        elif first > len(mouse.rows):
            where = "next session"
        else:
            where = f"session {first}"
        live, new = mouse.path("live"), mouse.path("new")
        table.add_row(
            Text(mouse.mouse_id),
            Text(mouse.curriculum_live),
            Text(str(len(mouse.rows))),
            Text(live[-1] if live else "-"),
            Text(new[-1] if new else "-"),
            Text(where),
        )
    console.print(table)
    reach = Table(
        title="sessions finished before reaching each stage (- : not reached)",
        title_justify="left",
    )
    reach.add_column("mouse", no_wrap=True)
    for title in ("stage", "live", "new", "change"):
        reach.add_column(title)
    for mouse in result.mice:
        live, new = mouse.reached("live"), mouse.reached("new")
        for stage in result.stages():
            if stage not in live and stage not in new:
                continue
            a, b = live.get(stage), new.get(stage)
            if a is None or b is None:
                change = (
                    "" if a == b else ("reached only under NEW" if a is None else "not reached")
                )
            else:
                change = "" if a == b else f"{b - a:+d}"
            reach.add_row(
                Text(mouse.mouse_id),
                Text(stage),
                Text("-" if a is None else str(a)),
                Text("-" if b is None else str(b)),
                Text(change),
            )
    console.print(reach)
    for mouse in result.mice:
        for note in mouse.skipped[:5]:
            console.print(
                Text(f"note: {printable(mouse.mouse_id)}: NEW could not take {printable(note)}")
            )
