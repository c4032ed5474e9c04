"""The whole run: snapshot, fold, project, reconcile, diff, switch over, hand over (the steps
are described in :mod:`shaping.services.operator.replay`)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from shaping.schemas.codec import EventCodec
from shaping.services.domain import MouseState
from shaping.services.domain.welfare import WelfarePolicy
from shaping.services.operator.replay.diff import MouseChange, TableChange, diff_tables
from shaping.services.operator.replay.errors import ReplayError
from shaping.services.operator.replay.handover import ProcessorHandover
from shaping.services.operator.replay.log import decoded
from shaping.services.operator.replay.parallel import (
    FoldInputs,
    FoldResult,
    default_workers,
    fold_parallel,
    fold_partitions,
    partition_groups,
    peak_rss_mb,
    spill_dir,
    spilled,
)
from shaping.services.operator.replay.pins import EnrolmentPins
from shaping.services.operator.replay.reconcile import LiveOutputs
from shaping.services.operator.replay.sources import KafkaSource, Source
from shaping.services.operator.replay.swap import FreshTables
from shaping.services.operator.replay.tables import (
    OffsetRow,
    TableRows,
    live_offsets,
    open_live,
    read_live,
    table_rows,
    write_rows,
)
from shaping.services.processor.step import ClockWindow
from shaping.services.projector.errors import ProjectorError
from shaping.services.projector.store import SqlProjectionStore

ProgressFn = Callable[[int], None]
"""Called with the number of events folded since the last call."""


@dataclass
class ReplaySummary:
    """What a replay found and did."""

    events: int = 0
    mice: int = 0
    mouse_changes: list[MouseChange] = field(default_factory=list)
    table_changes: dict[str, TableChange] = field(default_factory=dict)
    published: int = 0
    corrections: int = 0
    unfixable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    states_written: int = 0
    offsets_moved: int = 0
    switched: bool = False
    kept_old: str | None = None
    dry_run: bool = False
    workers: int = 1
    peak_rss_mb: float = 0.0
    """The largest peak resident memory of the replay's processes (the parent, each worker)."""
    merged_again: bool = False
    """Whether the log was folded a second time in one process, merged by timestamp (a
    curriculum published on the events topic; see :mod:`.parallel`)."""

    @property
    def no_change(self) -> bool:
        """Whether the replay found nothing to change anywhere."""
        return not (
            self.mouse_changes
            or self.table_changes
            or self.published
            or self.states_written
            or self.offsets_moved
        )


def run_replay(
    source: Source,
    db_url: str,
    *,
    codec: EventCodec,
    handover: ProcessorHandover | None = None,
    projector_id: str = "projector",
    dry_run: bool = False,
    progress: Callable[[int], ProgressFn] | None = None,
    clock: ClockWindow | None = None,
    workers: int | None = None,
    welfare: WelfarePolicy | None = None,
) -> ReplaySummary:
    """Rebuilds state and tables from the log and switches over (see the package docstring).

    A dry run is read-only and may run while the services run: it reads the live tables on a
    read-only connection, the topics with throwaway consumers (no group, nothing committed),
    builds the fresh tables in a temporary SQLite file away from the live database, and
    publishes nothing, writes no changelog and moves no offset.

    Args:
        source: where the log is (Kafka or an embedded log file).
        db_url: the live status tables.
        codec: decodes the log and encodes what replay publishes.
        handover: the live processor on Kafka (None in embedded mode).
        projector_id: the projector's name in its offsets table.
        dry_run: stop after the diff; change nothing.
        progress: called with the number of input messages; returns the function to call as
            they are folded.
        clock: the processor's window of accepted dates (its settings; None: the default).
        workers: processes that fold the partitions (None: one per CPU); each takes a group of
            partitions (see :mod:`.parallel`).
        welfare: the lab's welfare policy, as the processor runs with it (None: the built-in
            default policy).

    Raises:
        ReplayError: when the processor is running (not for a dry run), the log or tables
            cannot be read, or the projector wrote during the replay (then nothing was
            switched).
    """
    if workers is not None and workers < 1:
        raise ReplayError(f"--workers must be at least 1, not {workers}")
    running = _check_processor(handover, dry_run)
    before_offsets, before = _read_before(db_url, codec, dry_run)
    total = source.snapshot()
    try:
        fresh = FreshTables(db_url, codec, scratch=dry_run)
    except (ProjectorError, SQLAlchemyError) as exc:
        raise ReplayError(f"cannot make the fresh tables: {exc}") from exc
    summary = ReplaySummary(events=total, dry_run=dry_run)
    spill = None if dry_run else spill_dir()
    try:
        folded = _fold(
            source,
            codec,
            before,
            clock,
            spill,
            total,
            progress,
            workers or default_workers(),
            welfare,
        )
        summary.workers = folded.workers
        summary.merged_again = folded.merged_again
        write_rows(fresh.store, (r.rows for r in folded.results))
        _carry_alerts(source, codec, fresh.store)
        after = _fresh_rows(fresh, dry_run)
        summary.mice = len(folded.states)
        summary.mouse_changes, summary.table_changes = diff_tables(before, after)
        summary.unfixable = [note for r in folded.results for note in r.unfixable]
        summary.published = sum(r.to_publish for r in folded.results)
        summary.corrections = sum(r.corrections for r in folded.results)
        summary.peak_rss_mb = max([peak_rss_mb(), *(r.peak_rss_mb for r in folded.results)])
        wanted_offsets = source.projector_offsets()
        if dry_run:
            summary.notes = _running_notes(source, handover, running, before_offsets, projector_id)
            return summary
        fresh.set_offsets(projector_id, wanted_offsets)
        # Identical tables stay: the live projector goes on from its own offsets (it drops the
        # corrections published below as events it has projected or will supersede).
        if summary.table_changes:
            if handover is not None:
                handover.check_inactive()
            summary.kept_old = fresh.swap(before_offsets)
            summary.switched = True
        source.publish(chain.from_iterable(spilled(r.spill) for r in folded.results))
        if handover is not None and isinstance(source, KafkaSource):
            _hand_over(handover, source, folded, summary)
        return summary
    finally:
        if not summary.switched:
            fresh.discard()
        if spill is not None:
            shutil.rmtree(spill, ignore_errors=True)


def _carry_alerts(source: Source, codec: EventCodec, store: SqlProjectionStore) -> None:
    """Projects the alerts topic into the fresh tables as it stands: alerts are the alerts
    service's facts, which a replay recomputes none of (the projector's position on the topic
    goes with them, :meth:`Source.projector_offsets`)."""
    from shaping.schemas.errors import SerializationError
    from shaping.services.projector.store import ProjectedMessage

    topic = source.topics.alerts
    messages = []
    for record in source.live_outputs():
        if record.topic != topic:
            continue
        try:
            event = codec.decode(record.value)
        except SerializationError:
            event = None
        messages.append(
            ProjectedMessage(record.topic, record.partition, record.offset, event, "alerts")
        )
    if messages:
        try:
            store.apply_batch("replay-alerts", messages)
        except ProjectorError as exc:
            raise ReplayError(f"cannot write the alerts to the fresh tables: {exc}") from exc


def _check_processor(handover: ProcessorHandover | None, dry_run: bool) -> bool:
    """Whether the processor runs (a dry run only notes it; a replay refuses to run beside
    it). False in embedded mode."""
    running = False
    if handover is not None:
        if dry_run:
            running = handover.running()
        else:
            handover.check_inactive()
    return running


def _read_before(
    db_url: str, codec: EventCodec, dry_run: bool
) -> tuple[list[OffsetRow], TableRows]:
    """The projector's offsets and the live tables before the replay (read only for a dry
    run)."""
    if dry_run:
        return read_live(db_url)
    live_store = open_live(db_url, codec)
    try:
        return live_offsets(live_store), live_store.snapshot()
    finally:
        live_store.close()


def _live_and_pins(
    source: Source, codec: EventCodec, before: TableRows
) -> tuple[LiveOutputs, EnrolmentPins]:
    """What the live outputs say: what the reconcilers compare with, and the versions the
    enrolments were accepted on."""
    outputs = source.live_outputs()
    accepted_topic = source.topics.accepted
    produced = list(decoded(codec, (r for r in outputs if r.topic != accepted_topic)))
    accepted = (
        e.event_id for e in decoded(codec, (r for r in outputs if r.topic == accepted_topic))
    )
    return LiveOutputs(produced, accepted), EnrolmentPins(produced, before, codec=codec)


@dataclass
class Folded:
    """The fold's results, one per group of partitions."""

    results: list[FoldResult]
    workers: int
    merged_again: bool = False
    states: dict[str, MouseState] = field(default_factory=dict)
    partition_of: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for result in self.results:
            self.states.update(result.states)
            self.partition_of.update(result.partition_of)


def _fold(
    source: Source,
    codec: EventCodec,
    before: TableRows,
    clock: ClockWindow | None,
    spill: Path | None,
    total: int,
    progress: Callable[[int], ProgressFn] | None,
    workers: int,
    welfare: WelfarePolicy | None = None,
) -> Folded:
    """Folds every input message: the partitions shared out to ``workers`` processes (one
    group in this process), each partition streamed in offset order.

    When a worker accepted a CurriculumPublished on the events topic and the log has more than
    one partition, the partitions' mice may have needed it in the order the live processor saw
    it: the whole log is folded again in this process, the partitions merged by broker
    timestamp (as replay always did before it was split by partition).
    """
    live, pins = _live_and_pins(source, codec, before)
    inputs = FoldInputs(
        codec, source.topics, source.catalog(), live, pins, clock, spill, welfare=welfare
    )
    groups = partition_groups(source.partitions(), workers)

    def started() -> ProgressFn | None:
        return progress(total) if progress is not None else None

    if len(groups) <= 1:
        tick = started()
        records = (r for p in (groups[0] if groups else []) for r in source.read_partition(p))
        results = [fold_partitions(inputs, records, name="worker-0", tick=tick)]
    else:
        results = fold_parallel(inputs, source.read_partition, groups, started)
    spread = sum(1 for _, size in source.partitions() if size > 0) > 1
    if not (spread and any(r.curriculum_published for r in results)):
        return Folded(results, max(1, len(groups)))
    for result in results:
        if result.spill is not None:
            result.spill.unlink(missing_ok=True)
    live, pins = _live_and_pins(source, codec, before)
    inputs = FoldInputs(
        codec, source.topics, source.catalog(), live, pins, clock, spill, welfare=welfare
    )
    merged = fold_partitions(inputs, source.inputs(), name="merged", tick=started())
    return Folded([merged], 1, merged_again=True)


def _fresh_rows(fresh: FreshTables, dry_run: bool) -> TableRows:
    """The rebuilt tables, to compare with the live ones."""
    if dry_run:  # read as the live tables were, row for row
        with fresh.store.engine.connect() as conn:
            return table_rows(conn)
    return fresh.store.snapshot()


def _hand_over(
    handover: ProcessorHandover, source: KafkaSource, folded: Folded, summary: ReplaySummary
) -> None:
    """Writes the rebuilt states to the processor's changelog and moves its offsets on the
    events topic to the snapshot."""
    partitions = len(source.input_bounds)
    summary.states_written = handover.write_states(folded.states, folded.partition_of, partitions)
    bounds = {p: b for (_, p), b in source.input_bounds.items()}
    summary.offsets_moved = handover.move_offsets(source.topics.events, bounds)


def _running_notes(
    source: Source,
    handover: ProcessorHandover | None,
    running: bool,
    offsets: list[OffsetRow],
    projector_id: str,
) -> list[str]:
    """What a dry run says about services that ran while it read: how far each was behind the
    snapshot (what it had yet to do shows as changes)."""
    if not isinstance(source, KafkaSource):
        return []
    notes = []
    if handover is not None and running:
        committed = handover.committed(source.topics.events)
        behind = sum(
            max(0, end - committed.get(p, first))
            for (_, p), (first, end) in source.input_bounds.items()
        )
        notes.append(
            f"the processor (group {handover.group!r}) is running"
            + (
                f"; {behind} events of the snapshot were not yet committed by it: what it had "
                "not processed shows as changes"
                if behind
                else "; it had processed the whole snapshot"
            )
        )
    read = {(t, p): n for c, t, p, n in offsets if c == projector_id}
    behind = sum(
        max(0, end - read.get(tp, first)) for tp, (first, end) in source.output_bounds.items()
    )
    if behind:
        notes.append(
            f"the projector ({projector_id!r}) had {behind} messages of the output topics left "
            "to project: the live tables were behind, and what they lacked shows as changes"
        )
    return notes


__all__ = ["ProgressFn", "ReplaySummary", "run_replay"]
