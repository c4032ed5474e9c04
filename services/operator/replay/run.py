"""The whole run: snapshot, fold, project, reconcile, diff, switch over, hand over (the steps
are described in :mod:`shaping.services.operator.replay`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError

from shaping.schemas.codec import EventCodec
from shaping.services.operator.replay.diff import MouseChange, TableChange, diff_tables
from shaping.services.operator.replay.errors import ReplayError
from shaping.services.operator.replay.fold import Rebuild
from shaping.services.operator.replay.handover import ProcessorHandover
from shaping.services.operator.replay.log import decoded
from shaping.services.operator.replay.pins import EnrolmentPins, PinnedCore
from shaping.services.operator.replay.reconcile import LiveOutputs, Reconciler
from shaping.services.operator.replay.sources import KafkaSource, Source
from shaping.services.operator.replay.swap import FreshTables
from shaping.services.operator.replay.tables import (
    OffsetRow,
    TableRows,
    live_offsets,
    open_live,
    read_live,
    table_rows,
)
from shaping.services.processor.step import ClockWindow, ProcessorStep
from shaping.services.projector.errors import ProjectorError

ProgressFn = Callable[[int], None]
"""Called with the number of events folded since the last call."""

_TICK = 200
"""Events folded between two calls of the progress function."""


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

    Raises:
        ReplayError: when the processor is running (not for a dry run), the log or tables
            cannot be read, or the projector wrote during the replay (then nothing was
            switched).
    """
    running = _check_processor(handover, dry_run)
    before_offsets, before = _read_before(db_url, codec, dry_run)
    total = source.snapshot()
    reconciler, pins = _reconciler_and_pins(source, codec, before)
    try:
        fresh = FreshTables(db_url, codec, scratch=dry_run)
    except (ProjectorError, SQLAlchemyError) as exc:
        raise ReplayError(f"cannot make the fresh tables: {exc}") from exc
    summary = ReplaySummary(events=total, dry_run=dry_run)
    try:
        step = ProcessorStep(PinnedCore(source.catalog(), pins), codec, clock=clock)
        rebuild = Rebuild(step, source.topics, reconciler, fresh.store)
        _fold(rebuild, pins, source, total, progress)
        after = _fresh_rows(fresh, dry_run)
        summary.mice = len(rebuild.states)
        summary.mouse_changes, summary.table_changes = diff_tables(before, after)
        summary.unfixable = reconciler.unfixable
        wanted_offsets = source.projector_offsets()
        if dry_run:
            summary.published = len(reconciler.to_publish)
            summary.corrections = reconciler.corrections
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
        source.publish(reconciler.to_publish)
        summary.published = len(reconciler.to_publish)
        summary.corrections = reconciler.corrections
        if handover is not None and isinstance(source, KafkaSource):
            _hand_over(handover, source, rebuild, summary)
        return summary
    finally:
        if not summary.switched:
            fresh.discard()


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


def _reconciler_and_pins(
    source: Source, codec: EventCodec, before: TableRows
) -> tuple[Reconciler, EnrolmentPins]:
    """What the live outputs say: the reconciler that compares with them, and the versions
    the enrolments were accepted on."""
    outputs = source.live_outputs()
    accepted_topic = source.topics.accepted
    produced = list(decoded(codec, (r for r in outputs if r.topic != accepted_topic)))
    accepted = (
        e.event_id for e in decoded(codec, (r for r in outputs if r.topic == accepted_topic))
    )
    reconciler = Reconciler(LiveOutputs(produced, accepted), codec)
    return reconciler, EnrolmentPins(produced, before, codec=codec)


def _fold(
    rebuild: Rebuild,
    pins: EnrolmentPins,
    source: Source,
    total: int,
    progress: Callable[[int], ProgressFn] | None,
) -> None:
    """Feeds every input message to the rebuild (through ``pins``, which may read ahead),
    ticking the progress bar, and finishes it."""
    tick = progress(total) if progress is not None else None
    done = 0
    for record in pins.read(source.inputs()):
        rebuild.feed(record)
        done += 1
        if tick is not None and done % _TICK == 0:
            tick(_TICK)
    if tick is not None:
        tick(done % _TICK)
    rebuild.finish()


def _fresh_rows(fresh: FreshTables, dry_run: bool) -> TableRows:
    """The rebuilt tables, to compare with the live ones."""
    if dry_run:  # read as the live tables were, row for row
        with fresh.store.engine.connect() as conn:
            return table_rows(conn)
    return fresh.store.snapshot()


def _hand_over(
    handover: ProcessorHandover, source: KafkaSource, rebuild: Rebuild, summary: ReplaySummary
) -> None:
    """Writes the rebuilt states to the processor's changelog and moves its offsets on the
    events topic to the snapshot."""
    partitions = len(source.input_bounds)
    summary.states_written = handover.write_states(rebuild.states, rebuild.partition_of, partitions)
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
