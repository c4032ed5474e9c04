"""The fold split by partition across processes.

A mouse's events share one partition of the events topic (the key is the mouse id), so the
partitions can be folded apart: each worker process takes a group of partitions, reads them
one after the other in offset order (streamed, never the whole log in memory), folds every
message through the processor's own step and core, keeps each mouse's state in memory, and
projects the outputs with the projector's own store into an in-memory SQLite database. At the
end it hands back the states (written once, by the hand-over), the rows of its tables (written
once into the fresh tables, in bulk: :func:`~.tables.write_rows`), and what it found to publish
(spilled to a file, published after the switch-over).

One order is not kept when the partitions are folded apart: a ``CurriculumPublished`` on the
events topic (older releases put them there) is seen by the mice of its own partition only. A
worker that accepts one says so, and the run folds the whole log again in one process, the
partitions merged by broker timestamp, as the live processor saw them
(:func:`fold_merged`).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import pickle
import resource
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select

from shaping.schemas.codec import EventCodec
from shaping.schemas.topics import TopicKind, TopicNames
from shaping.services.domain import CurriculumCatalog, MouseState
from shaping.services.domain.welfare import WelfarePolicy
from shaping.services.operator.replay.errors import ReplayError
from shaping.services.operator.replay.fold import Rebuild
from shaping.services.operator.replay.log import SourceRecord
from shaping.services.operator.replay.pins import EnrolmentPins, PinnedCore
from shaping.services.operator.replay.reconcile import LiveOutputs, Reconciler
from shaping.services.processor.step import ClockWindow, ProcessorStep
from shaping.services.projector.store import SqlProjectionStore
from shaping.services.projector.tables import metadata, projector_offsets

Rows = dict[str, list[dict[str, Any]]]
"""Rows of the projector's tables (bar its offsets), by table name, as SQLAlchemy reads them."""

ReadPartition = Callable[[int], Iterator[SourceRecord]]
"""Reads one partition of the events topic up to the snapshot, in offset order."""

TICK = 1000
"""Events a worker folds between two reports of its progress."""


@dataclass(frozen=True)
class Publication:
    """A message replay publishes (what the publisher needs of an ``Outgoing``)."""

    topic_kind: TopicKind
    key: bytes
    value: bytes


@dataclass
class FoldResult:
    """What folding a group of partitions gave."""

    states: dict[str, MouseState] = field(default_factory=dict)
    partition_of: dict[str, int] = field(default_factory=dict)
    rows: Rows = field(default_factory=dict)
    spill: Path | None = None
    to_publish: int = 0
    corrections: int = 0
    unfixable: list[str] = field(default_factory=list)
    processed: int = 0
    parked: int = 0
    curriculum_published: bool = False
    peak_rss_mb: float = 0.0


@dataclass
class FoldInputs:
    """What every worker folds with (made once by the parent; a forked worker inherits it)."""

    codec: EventCodec
    topics: TopicNames
    catalog: CurriculumCatalog
    live: LiveOutputs
    pins: EnrolmentPins
    clock: ClockWindow | None
    spill_dir: Path | None
    """Where a worker spills what it publishes (None: nothing will be published, count only)."""
    welfare: WelfarePolicy | None = None
    """The lab's welfare policy the processor runs with (None: the built-in default)."""


def peak_rss_mb(status: Path = Path("/proc/self/status")) -> float:
    """The peak resident memory of this process, in MB.

    Linux's ``VmHWM`` (the high-water mark of this address space) where there is one:
    ``getrusage``'s ``ru_maxrss`` survives ``exec``, so a replay started by a large process
    (a benchmark holding a generated history) reported that process's peak as its own.
    Elsewhere ``ru_maxrss`` (kilobytes on Linux, bytes on macOS; only Linux has VmHWM).
    """
    try:
        for line in status.read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


def _table_rows(store: SqlProjectionStore) -> Rows:
    rows: Rows = {}
    with store.engine.connect() as conn:
        for table in metadata.sorted_tables:
            if table.name == projector_offsets.name:
                continue
            found = [dict(row) for row in conn.execute(select(table)).mappings()]
            if found:
                rows[table.name] = found
    return rows


def fold_partitions(
    inputs: FoldInputs,
    records: Iterable[SourceRecord],
    *,
    name: str,
    tick: Callable[[int], None] | None = None,
    store: SqlProjectionStore | None = None,
    partition: int = 0,
) -> FoldResult:
    """Folds ``records`` (whole partitions, each in offset order) through the processor's step.

    Args:
        inputs: what the fold uses.
        records: the messages, one partition after another (or merged by timestamp).
        name: names the spill file.
        tick: called with the number of events folded since the last call.
        store: where to project (None: a fresh in-memory SQLite database, whose rows are
            handed back in :attr:`FoldResult.rows`).
        partition: the partition the projected outputs are numbered in (see :class:`Rebuild`).
    """
    pins = inputs.pins
    reconciler = Reconciler(inputs.live, inputs.codec)
    step = ProcessorStep(
        PinnedCore(inputs.catalog, pins), inputs.codec, clock=inputs.clock, welfare=inputs.welfare
    )
    own_store = store is None
    projection = store or SqlProjectionStore("sqlite://", codec=inputs.codec)
    rebuild = Rebuild(
        step, inputs.topics, reconciler, projection, batch_size=5000, partition=partition
    )
    result = FoldResult()
    done = 0
    try:
        for record in pins.read(records):
            if rebuild.feed(record):
                result.curriculum_published = True
            done += 1
            if tick is not None and done % TICK == 0:
                tick(TICK)
        if tick is not None:
            tick(done % TICK)
        rebuild.finish()
        if own_store:
            result.rows = _table_rows(projection)
    finally:
        if own_store:
            projection.close()
    result.states = rebuild.states
    result.partition_of = rebuild.partition_of
    result.processed = rebuild.processed
    result.parked = rebuild.parked
    result.corrections = reconciler.corrections
    result.unfixable = reconciler.unfixable
    result.to_publish = len(reconciler.to_publish)
    if inputs.spill_dir is not None and reconciler.to_publish:
        result.spill = inputs.spill_dir / f"{name}.publish"
        with result.spill.open("wb") as out:
            for message in reconciler.to_publish:
                pickle.dump((message.topic_kind, message.key, message.value), out)
    result.peak_rss_mb = peak_rss_mb()
    return result


def spilled(path: Path | None) -> Iterator[Publication]:
    """The messages a worker spilled, in its order."""
    if path is None:
        return
    with path.open("rb") as spill:
        yield from _unpickled(spill)


def _unpickled(spill: BinaryIO) -> Iterator[Publication]:
    while True:
        try:
            kind, key, value = pickle.load(spill)
        except EOFError:
            return
        yield Publication(kind, key, value)


def partition_groups(partitions: list[tuple[int, int]], workers: int) -> list[list[int]]:
    """Partitions shared out to at most ``workers`` groups of about equal size (in messages):
    ``partitions`` is ``[(partition, messages)]``; empty partitions are left out."""
    groups: list[list[int]] = [[] for _ in range(max(1, workers))]
    sizes = [0] * len(groups)
    for partition, size in sorted(partitions, key=lambda p: (-p[1], p[0])):
        if size <= 0:
            continue
        smallest = sizes.index(min(sizes))
        groups[smallest].append(partition)
        sizes[smallest] += size
    return [sorted(group) for group in groups if group]


def _worker(
    inputs: FoldInputs,
    read: ReadPartition,
    partitions: list[int],
    name: str,
    numbering: int,
    counter: Any,
    conn: Any,
) -> None:
    """A worker process: folds its partitions and sends the result (or the error) back."""

    def tick(n: int) -> None:
        with counter.get_lock():
            counter.value += n

    try:
        records = (record for p in partitions for record in read(p))
        result = fold_partitions(inputs, records, name=name, tick=tick, partition=numbering)
        conn.send(("ok", result))
    except ReplayError as exc:
        conn.send(("error", str(exc)))
    except BaseException as exc:  # a bug: report it whole rather than hang the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def fold_parallel(
    inputs: FoldInputs,
    read: ReadPartition,
    groups: list[list[int]],
    started: Callable[[], Callable[[int], None] | None] | None = None,
    poll_s: float = 0.2,
) -> list[FoldResult]:
    """Folds each group of partitions in a process of its own (forked: the workers inherit
    ``inputs``), reporting their progress to the function ``started`` returns (called once
    the workers run, so no thread of the caller's, a progress bar's, is running at the fork).

    Raises:
        ReplayError: when a worker fails (the others are stopped).
    """
    context = multiprocessing.get_context("fork")
    counter = context.Value("q", 0)
    workers = []
    for index, group in enumerate(groups):
        receive, send = context.Pipe(duplex=False)
        process = context.Process(
            target=_worker,
            # One group numbers its outputs in partition 0, as one process would; several
            # number them in their first partition, so no two workers' rows collide.
            args=(
                inputs,
                read,
                group,
                f"worker-{index}",
                group[0] if len(groups) > 1 else 0,
                counter,
                send,
            ),
            name=f"shaping-replay-{index}",
            daemon=True,
        )
        process.start()
        send.close()
        workers.append((process, receive))
    tick = started() if started is not None else None
    results: list[FoldResult | None] = [None] * len(workers)
    reported = 0
    try:
        pending = set(range(len(workers)))
        while pending:
            ready = multiprocessing.connection.wait([workers[i][1] for i in pending], poll_s)
            for index in list(pending):
                process, receive = workers[index]
                if receive not in ready:
                    continue
                try:
                    status, payload = receive.recv()
                except EOFError:
                    process.join(5)
                    raise ReplayError(
                        f"replay worker {index} died (exit code {process.exitcode})"
                    ) from None
                if status != "ok":
                    raise ReplayError(f"replay worker {index} failed: {payload}")
                results[index] = payload
                pending.discard(index)
            if tick is not None:
                now = int(counter.value)
                if now > reported:
                    tick(now - reported)
                    reported = now
    finally:
        for process, receive in workers:
            receive.close()
            if process.is_alive():
                process.terminate()
            process.join(10)
    return [r for r in results if r is not None]


def spill_dir() -> Path:
    """A private folder for the workers' spill files."""
    return Path(tempfile.mkdtemp(prefix="shaping-replay-spill-"))


def default_workers() -> int:
    """One worker per CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


__all__ = [
    "FoldInputs",
    "FoldResult",
    "Publication",
    "ReadPartition",
    "Rows",
    "default_workers",
    "fold_parallel",
    "fold_partitions",
    "partition_groups",
    "peak_rss_mb",
    "spill_dir",
    "spilled",
]
