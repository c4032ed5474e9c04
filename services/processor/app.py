"""The stream processor on Kafka: a faust app that runs :class:`ProcessorStep` per message, in
batches.

One agent consumes the ``events`` and ``commands`` topics, a batch of messages at a time
(:func:`batches`: :data:`BATCH_MAX` at most, collected for at most :data:`BATCH_WITHIN_S`, and
closed early once no message came for :data:`BATCH_IDLE_S`, so a message on a quiet stream is
not held back, or once it holds a message other than a trial, :func:`decides`, so a
SessionEnded does not wait out the collection time of a busy stream). Each mouse's decoded
:class:`MouseState` stays live in memory for the partitions this worker owns (see "State in
memory" below). For every message of
a batch, in order, the agent calls :meth:`ProcessorStep.process` on the mouse's state as the
batch has left it so far (decoding, the training core and the encoding of what follows all
happen there; the step is a function of values: it takes the state and returns the new one).
Then it publishes every output of the batch, in order, to the ``decisions``, ``assignments``,
``accepted``, ``events`` or ``dead-letter`` topic, and stores each touched mouse's state once.
The agent computes nothing itself, so this path and the embedded runner cannot disagree.

Runs of trials: the step is split in two halves (:meth:`ProcessorStep.admit`, the checks before
the core, and :meth:`ProcessorStep.process_admitted`). A trial that passes the first half joins
its mouse's run in the batch; the run is folded at once (:meth:`ProcessorStep.fold_trials`: one
copy of the state for the run, not one per trial) before any other message of that mouse, any
curriculum version, and the end of the batch. A run the core would not fold quietly (a trial
counted already, another session, a rule read after every trial) goes one trial at a time, as
before, so every message gets the result :meth:`ProcessorStep.process` would give it, and every
output keeps its place in input order (tests/property/test_processor_runs.py holds the batches to
the step one message at a time).

A message of the ``commands`` topic goes to :meth:`ProcessorStep.process_command` instead: it
changes no state, and its one output is either the past-tense event that honours the command,
appended to the ``events`` topic (keyed by the mouse, so on the mouse's partition, after
whatever the mouse had there already), or the refusal on the dead-letter topic. The state
changes only when the agent reads that event back from the events topic, like any other (in a
later batch), so the events topic stays the one ordered log (replay folds it unchanged). The
two topics have the same partition count and one agent reads both, so faust assigns partition
*n* of each, and of the state tables' changelogs, to the same worker: a command is judged where
its mouse's state is.

Delivery is at least once, and it is safe because the domain is idempotent: a re-processed input
yields the same outputs with the same (deterministic) event ids, and consumers drop ids they
have seen; and the state records, per input partition, the offset of the last input it folded,
so the step drops a redelivered input it has already folded. The order of the steps for one
batch is what makes a crash at any point harmless:

1. Every message is processed against the state in memory; nothing leaves the process.
2. Once the batch before this one has its state records on the broker (step 4 of that batch),
   the outputs of the whole batch are sent in input order (so each output partition gets them
   in order) and the agent waits until the broker acknowledged every one.
3. Only then is each mouse the batch changed written once to its table: one changelog record
   per mouse per batch, sent straight to the Kafka producer with the partition of the mouse's
   inputs. The state in memory becomes the batch's, and the agent goes on to the next batch
   without waiting for these records: the next batch is collected and processed (step 1)
   while they travel, and it sends nothing before they are acknowledged (step 2).
4. When the broker has acknowledged every record of the batch (noticed as the
   acknowledgements arrive, whether or not another batch came), the tables' in-memory copies
   take the records and the inputs are acknowledged, in the order they were read (acks are
   manual). Faust commits an offset only once every earlier offset of the partition is
   acknowledged, so a committed input always has its outputs and its state record on the
   broker.

A crash in step 1 or 2 leaves the stored state as it was before the batch, and no input of the
batch committed: every input comes again, is processed against the same state, and sends the
same outputs again (the ones already sent are duplicates by id). A crash in step 3 or before
its records are all acknowledged leaves some mice with their new state and some with their old
one, and no input committed: a mouse whose new state is stored has the batch's offsets in it,
so its redelivered inputs are dropped as duplicates (a redelivered SessionEnded re-sends the
decision it already made, same ids); a mouse whose old state is stored processes them again as
in step 2. The next batch has sent nothing yet then, so a crash never finds two batches' writes
on the broker at once, nor a record of one batch without every record of the batch before it. A
crash in step 4 (between acknowledging and faust's commit) is the same case as step 3 with
every state stored. An input is never lost, and the state never runs ahead of the outputs it
caused (which would lose e.g. the first assignment of an enrolment).

Deferred writes: a mouse whose state changed in a batch only in its open sessions (it gained
trials) is not written in step 3. Its newer state waits in memory (:attr:`FaustProcessor.
deferred`; the next batch builds on it) together with the inputs folded into it, which are not
acknowledged. It is written, and those inputs acknowledged with the batch that writes it (step
4), by the first batch that changes more of it (a session end: its whole state, which holds the
trials), by the first batch once it has waited ``defer_s`` (``SHAPING_PROCESSOR_DEFER_S``,
default 1 s; whoever that batch is of), or by
the empty batch an idle stream gets every :data:`FLUSH_IDLE_S` (:func:`batches`' ``tick``; it
also writes everything during a rebalance or a shutdown, which wait for every input read to be
acknowledged). The argument above holds unchanged, because an input is still acknowledged only
once its mouse's record is on the broker: a crash loses the deferred states and none of their
inputs (uncommitted, they come again and are folded on the stored state, like step 3's old
states). Faust commits a partition only up to its first unacknowledged offset, so a deferred
mouse holds back its partition's commit (about ``defer_s`` at most) and a restart reads a little
more again. Why: under load a batch touches dozens of mice, a trial or two each, and writing
each one's open-sessions record after every batch was most of the batch cycle that a
SessionEnded arriving meanwhile waits for (bench/REPORT.md, (c)); deferred, a mouse is written
about once a second however many batches it is in.

Why step 3 does not wait: a batch's state records take a round trip to the broker (10-15 ms
under load), and the next batch's collection and processing take as long again; waiting for one
before starting the other made a SessionEnded that arrived meanwhile wait for both. With the
overlap the unloaded p99 from SessionEnded to the assignment fell from 28-58 ms to 24-31 ms; the
p99 under load did not fall (bench/REPORT.md, (c), says what it is made of).

Failures: when anything in a batch fails (a damaged stored state, a producer that refuses a record,
a bug), nothing of it counts: the in-memory state is not updated and no input is acknowledged. The
deferred mice go back to their stored states, and their waiting inputs join the batch's. The
agent then processes these messages one at a time, each as a batch of one written at once, the
deferred mice's first (a mouse's in the order read), then the batch's in order: a message
that still fails is retried :data:`ATTEMPTS` times with a pause and then parked on the dead-letter
topic as ``failed`` (counted in ``shaping_processing_retries_total``), and the messages after it (of
its mouse and of others) are processed after it, in order. When the broker refuses a batch's state
record (found when the next batch, or the next empty batch of an idle stream, is about to send,
step 2), nothing of that batch counts either: its mice get back in memory the states they had
before it, and its messages, with the deferred mice's, are processed again one at a time as above
(those of a partition revoked meanwhile are left to its new owner, unacknowledged), and then the
next batch's messages, on the states that left. No message loops the worker, none is lost, and a
mouse's messages are never reordered. Only when the broker takes not even that small dead letter
does the worker crash (``CrashingSupervisor``) and, restarted, resume from the last committed
offset. Bad input itself never fails: :class:`ProcessorStep` turns it into one EventRejected on the
dead-letter topic and never raises.

State in memory: the processor keeps, for each mouse of the partitions it owns, its state as
stored (the decoded :class:`MouseState` and the state record it was built on). A mouse's entry
is loaded from the changelog-backed tables the first time one of its messages arrives after an
assignment (faust has rebuilt the tables from their changelogs by then: the streams resume only
after recovery), and replaced after every batch that wrote it (a deferred mouse's newer state
waits beside it: "Deferred writes"). On a revocation the entries of the revoked partitions are
dropped, deferred ones too (faust calls that after every input read was acknowledged), and
after every table recovery the whole cache is dropped, so an entry never outlives the table
contents it was read from. So no message parses the stored JSON again: a state is decoded once
per mouse per assignment and encoded at most once per mouse per batch.

State records: a mouse's state is stored as two records, so that a batch that adds trials does
not rewrite the whole state (50-60 KB for an IBL mouse, whose history keeps per-trial
statistics). The ``mouse_state`` table holds the whole :class:`MouseState` as it was after the
last batch that changed anything but the open sessions (session starts and ends, decisions,
enrolments, interventions). The ``mouse_sessions`` table holds, after a batch that changed only
``open_session``, ``parked_sessions`` and the input offsets (trials), those fields and the
digest of the ``mouse_state`` record they extend
(:class:`~services.processor.state_store.OpenSessions`, zlib compressed: ~2 KB). The stored
state is ``mouse_state`` with the open sessions of ``mouse_sessions`` when its digest matches,
else ``mouse_state`` alone (:func:`~services.processor.state_store.join_sessions`). Each mouse
gets at most one record per batch, to one table or the other, so a crash never leaves half of a
mouse's write. The two changelog topics are not ordered with each other, though, and the open
sessions of a trial must never reach the broker without the ``mouse_state`` record they extend
(with that record lost, the join would fall back to an older one and lose trials whose inputs
were already committed): every record of a batch is acknowledged by the broker before the
batch's inputs are acknowledged and before the next batch sends anything, so a
``mouse_sessions`` record is only ever written on a ``mouse_state`` record already on the
broker. A
``mouse_sessions`` record left behind by a later ``mouse_state`` record is stale by the digest
and ignored; so is one left behind by replay's hand-over, which writes whole states to the
``mouse_state`` changelog. The table names, changelog topics and the bytes of both records
(with their format number) are :mod:`~services.processor.state_store`'s. Why two records still,
with the state in memory: on a live lab a batch holds about one trial of a mouse, and writing
the whole state instead would be 14 times the bytes per trial on the benchmark's workload, more
for IBL mice (bench/BATCHING.md).

Scale-out: workers started with the same processor id form one consumer group and split the
partitions (each owns some of the events and commands partitions, with the same partitions of
the state changelogs); a mouse is on one partition, so one worker decides on it at a time. A
worker that joins, stops (SIGTERM: it finishes the batch in flight, commits and leaves the group
at once) or dies (SIGKILL: the broker hands its partitions on after :data:`SESSION_TIMEOUT_S`)
causes a rebalance, and the new owner of a partition resumes from its last committed offset on
the state rebuilt from the changelog. That is the crash case above seen from another process: a
committed input has its state record on the broker (step 4), so the rebuilt state
has folded every committed input, and the inputs redelivered after the commit boundary are
either already in it (their offsets, dropped as duplicates) or folded on exactly the state they
first met. A valid input could only be dead-lettered after a rebalance if it met a state that
lacks inputs before it (a trial whose session start is missing: "never started"), and that needs
an input committed before its state is on the broker: writing through faust's table buffer
allowed it (its pre-commit flush gives up after 0.1 s), which is why
:meth:`FaustProcessor._put` bypasses that buffer and an input is acknowledged only once the
broker has its records (:meth:`FaustProcessor.settle`). So a group decides as one worker does
on the same log.

The workers keep no standby replicas (``table_standby_replicas=0``). With faust's default of one,
each worker also follows the other's changelog partitions, and when the other was killed its
partitions went from standby to active in the survivor: in one run of the scale-out test that
recovery never received a record of the promoted changelog partitions (faust logged "No event
received for active tp ... since recovery start" for two minutes) and the survivor decided
nothing more. Without standbys a dead worker's partitions are assigned to the survivor like any
new partition, read from the changelog's start (what faust does for a promoted standby with the
in-memory store anyway). The test of all this (two
workers splitting the partitions, one joining mid-stream, one stopped, one killed) is
``tests/processor/test_scaleout_kafka.py``; ``bench/scaleout.py`` measures two workers' rate
beside one's (bench/SCALEOUT.md).

A stored state of another format (written by another version of Shaping, or holding a field
this version does not know) is no bad input and no bug: the processor logs it once and stops
(the input stays uncommitted), rather than parking every message of the mouse on the
dead-letter topic. ``shaping replay`` rebuilds the state in this version's format. Damaged
state bytes are handled like any other failure (retried, then parked).

Curricula: the catalog holds the shipped versions, a lab's folder (``SHAPING_CURRICULA_DIR``)
and every version published on the compacted ``<prefix>.curricula`` topic, read in full before
the worker starts and followed afterwards (:mod:`services.adapters.curricula_topic`), so a restarted
processor still knows the versions its mice are on. A CurriculumPublished on the events topic
(how earlier releases published) is still accepted and adds its version while the process runs.

Faust 0.15 itself can lose input when a worker starts or rebalances with a backlog waiting:
:class:`_RecoveryResumingSafely` closes that gap (the recovery test in
``tests/integration/test_processor_kafka.py`` fails about every other run without it).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import faust
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP, AppT, EventT, StreamT, TableT, TopicT
from mode import CrashingSupervisor, Service

from shaping.schemas.codec import HEADER_LEN, MAGIC, EventCodec, load_schema_versions
from shaping.schemas.events import (
    CurriculumPublished,
    Event,
    EventRejected,
    StageTransitioned,
    TrialCompleted,
)
from shaping.schemas.headers import headers_for
from shaping.schemas.topics import TopicKind
from shaping.services.adapters.curricula_topic import CurriculaFollower, FollowingCatalog
from shaping.services.adapters.metrics import ServiceMetrics, attach_faust_sensors
from shaping.services.adapters.settings import Settings
from shaping.services.domain import CurriculumCatalog, MouseState, TrainingCore
from shaping.services.domain.state import only_sessions_changed
from shaping.services.domain.welfare import WelfarePolicy
from shaping.services.processor.fetching import use_fetch_wait
from shaping.services.processor.state_store import (
    CHANGELOG_REPLICATION_FACTOR,
    SESSIONS_TABLE,
    STATE_TABLE,
    StateFormatError,
    encode_state,
    join_sessions,
    records_to_store,
)
from shaping.services.processor.step import ClockWindow, ProcessorStep, StepResult

log = logging.getLogger(__name__)

COMMIT_INTERVAL_S = 1.0
"""Seconds between offset commits. Shorter than faust's 2.8 s so that a restarted processor
re-reads little; re-reading is harmless (idempotent), only wasted work."""

COMMIT_EVERY = 1000
"""Also commit after this many acknowledged messages (faust's default is 10,000), which bounds
the re-read work during a fast replay."""

ATTEMPTS = 3
"""Tries of one message before it is parked on the dead-letter topic as ``failed``."""

RETRY_PAUSE_S = 0.5
"""Pause after a failed try, times the number of tries so far."""

SESSION_TIMEOUT_S = 6.0
"""How long the broker waits for a silent worker before it hands its partitions to another
(a restarted one). Kafka's smallest allowed value by default (group.min.session.timeout.ms):
after a ``kill -9`` the first decision comes within seconds, not a minute (faust's 60 s)."""

HEARTBEAT_S = 1.5
"""Heartbeat interval: well under a third of :data:`SESSION_TIMEOUT_S`."""

BATCH_MAX = 500
"""Messages in one batch at most: bounds the work done before a batch's outputs leave."""

BATCH_WITHIN_S = 0.02
"""How long a batch collects messages at most, from its first message on."""

BATCH_IDLE_S = 0.001
"""A batch ends early when no message came for this long: on an idle stream a message waits
no longer than this before it is processed."""


DUE_SHARE = 8
"""A batch writes at most this share of the deferred mice (plus one), of those that have waited
long enough, oldest first (see "Deferred writes" in the module docstring)."""

FLUSH_IDLE_S = 0.25
"""A stream idle this long gets an empty batch, on which every deferred mouse is written."""

STALLED_AFTER_S = 10.0
"""A changelog partition with records left that gave none for this long during table recovery
is read again (:func:`stalled_partitions`)."""

STALL_CHECK_S = 2.0
"""How often table recovery is checked for a stalled partition."""

DEFAULT_WEB_PORT = 6066
"""Faust's own default, passed on (unused) when the web server is disabled."""


def _broker_time(timestamp: float | None) -> datetime | None:
    """Faust gives the broker timestamp in seconds since the epoch."""
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)


class _RecoveryResumingSafely(Recovery):
    """Faust's table recovery, without losing input fetched while it resumes the streams.

    When recovery completes (at every start and rebalance), faust resumes the input partitions,
    seeks them to the committed offsets, and only then resumes its flow control, which clears
    the in-memory queues between the consumer and the agents. With a backlog, records fetched
    in between reach a queue and are cleared: the agent never sees them, but the consumer
    counts them as read (faust-streaming issue #596). Stopping the consumer's flow first makes
    the fetcher drop and re-seek anything it fetches in that window instead; faust resumes the
    flow itself at the end of the same step.
    """

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        self.app.consumer.stop_flow()
        await super().on_recovery_completed(generation_id)

    @Service.task
    async def _watch_for_stalls(self) -> None:
        """Reads a changelog partition again when its recovery stalled (see
        :func:`stalled_partitions`); faust itself only logs "No event received" forever."""
        kicked_at: dict[TP, float] = {}
        async for _ in self.itertimer(STALL_CHECK_S, name="Recovery.stall-watch"):
            if not self.in_recovery:
                kicked_at.clear()
                continue
            now = time.monotonic()
            stalled = stalled_partitions(
                set(self.active_stats()),
                self._active_events_received_at,
                self._recovery_started_at,
                kicked_at,
                now,
            )
            if stalled:
                kicked_at.update(dict.fromkeys(stalled, now))
                try:
                    await self._read_again(stalled)
                except Exception as exc:  # e.g. a rebalance took the partitions meanwhile
                    log.warning("could not read the stalled partitions again: %s", exc)

    async def _read_again(self, tps: set[TP]) -> None:
        """Seeks ``tps`` to the record after the last one recovery applied, resumes them and
        the consumer's flow, and makes sure the fetcher runs."""
        consumer = self.app.consumer
        offsets = {tp: max(self.active_offsets.get(tp, -1) + 1, 0) for tp in tps}
        log.warning(
            "table recovery received nothing from %s for %.0f s: reading again from %s",
            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps)),
            STALLED_AFTER_S,
            offsets,
        )
        consumer.resume_partitions(tps)
        await consumer.seek_wait(offsets)
        self.app.flow_control.resume()
        consumer.resume_flow()
        await cast(Any, self.app)._fetcher.maybe_start()


def stalled_partitions(
    remaining: set[TP],
    received_at: Mapping[TP, float],
    started_at: float | None,
    kicked_at: Mapping[TP, float],
    now: float,
) -> set[TP]:
    """The changelog partitions whose recovery stalled: records left to read, and nothing
    received for :data:`STALLED_AFTER_S` (since the recovery started, the partition's last
    record, or the last time it was read again, whichever is latest).

    Seen on the scale-out test's rebalances (about one run in ten): a worker that keeps a
    partition through a rebalance seeks its changelog to the start and never receives a record
    of it, so the worker decides nothing more. Reading the partition again is harmless when it
    was merely slow: recovery skips records at or below the offset it already applied."""
    if started_at is None:
        return set()
    stalled = set()
    for tp in remaining:
        last = max(started_at, received_at.get(tp, started_at), kicked_at.get(tp, started_at))
        if now - last >= STALLED_AFTER_S:
            stalled.add(tp)
    return stalled


class _TableManager(TableManager):
    """Faust's table manager with :class:`_RecoveryResumingSafely` as its recovery."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = _RecoveryResumingSafely(
                self.app, self, beacon=self.beacon, loop=self.loop
            )
        return self._recovery


def settle_heap() -> None:
    """Collects what garbage there is, then freezes every object alive into the collector's
    permanent generation (:func:`gc.freeze`), so its later passes walk only what the batches
    make.

    A worker holds a large, lasting heap once it runs (faust, aiokafka, the codec's schemas,
    the curricula, the tables' recovered records) and allocates a few hundred short-lived
    objects a message. Every pass of the oldest generation walked all of the lasting heap: a
    replay ran 24 % faster with it frozen (bench/REPORT.md, (b)). Frozen objects are still
    freed by reference counting; only a reference cycle among them, dropped later, would stay
    (none of the processor's own objects form one).
    """
    gc.collect()
    gc.freeze()


def _trial_fingerprints() -> frozenset[bytes]:
    """The single-object headers (marker and fingerprint) of every TrialCompleted schema."""
    return frozenset(
        MAGIC + version.fingerprint
        for version in load_schema_versions()
        if version.event_type == TrialCompleted.__name__
    )


_TRIALS = _trial_fingerprints()


def decides(event: EventT) -> bool:
    """Whether a message may lead to a decision or an assignment at once: anything but a trial
    (told by its first bytes, the schema fingerprint, without decoding it). A batch holding
    one closes at once (:func:`batches`' ``closes``): a SessionEnded does not wait for the
    rest of a batch's collection time. Bytes that only pretend to be something cost at most
    a smaller batch; what a message is, is decided by decoding it."""
    value = event.value
    return not isinstance(value, bytes) or value[:HEADER_LEN] not in _TRIALS


async def batches(
    stream: StreamT[Any],
    max_: int,
    within: float,
    idle: float,
    tick: float | None = None,
    closes: Callable[[EventT], bool] | None = None,
) -> AsyncIterator[list[EventT]]:
    """The stream's events in batches, in the order read, none of them acknowledged.

    A batch ends when it holds ``max_`` events, when ``within`` seconds have passed since its
    first event, or when no event came for ``idle`` seconds (the stream is idle: a lone message
    is not held back). A task reads the stream meanwhile, up to one batch ahead, so the next
    batch fills while the current one waits for the broker. Waits always end (there is no
    wait for "one more" event without a bound), so a rebalance, which waits until every event
    read is acknowledged, never waits for a batch that cannot end.

    The events read ahead wait in a plain deque, and the batch takes all that are there at
    once. While a batch fills it looks again every ``idle`` seconds, not at every event: an
    asyncio queue woke it, with a timeout, once per message, which cost more than a tenth of
    the processor's time.

    With ``tick``, a stream that gave no event for ``tick`` seconds yields an empty batch (and
    another every ``tick`` seconds while it stays idle): the processor writes what it deferred
    then (see "Deferred writes" in the module docstring), also during a rebalance or a
    shutdown, which wait for every input read to be acknowledged.

    With ``closes``, a batch also ends as soon as it holds an event for which ``closes`` is
    true (:func:`decides`: one whose answer a rig is waiting for).

    Raises:
        Exception: whatever reading the stream raised, once every event read before it was
            handed out.
    """
    ahead: deque[EventT] = deque()
    failed: list[BaseException] = []
    read_so_far = 0
    arrived = asyncio.Event()  # set when ``ahead`` gained an event, or reading failed
    room = asyncio.Event()  # set while ``ahead`` holds fewer than a batch
    room.set()

    async def read() -> None:
        nonlocal read_so_far
        try:
            async for event in stream.events():
                ahead.append(event)
                read_so_far += 1
                arrived.set()
                if len(ahead) >= max_:
                    room.clear()
                    await room.wait()
        except Exception as exc:  # hand it to the batching loop, which raises it
            failed.append(exc)
            arrived.set()

    loop = asyncio.get_running_loop()
    reader = loop.create_task(read())
    try:
        while True:
            if not ahead and not failed:
                arrived.clear()
                if tick is None:
                    await arrived.wait()
                else:
                    try:
                        await asyncio.wait_for(arrived.wait(), tick)
                    except TimeoutError:
                        yield []
                        continue
            batch: list[EventT] = []
            deadline = loop.time() + within
            urgent = False
            while True:
                while ahead and len(batch) < max_:
                    event = ahead.popleft()
                    batch.append(event)
                    if closes is not None and not urgent and closes(event):
                        urgent = True
                if len(ahead) < max_:
                    room.set()
                if failed and not ahead:
                    raise failed[0]
                if len(batch) >= max_ or urgent:
                    break
                left = deadline - loop.time()
                if left <= 0:
                    break
                before = read_so_far
                await asyncio.sleep(min(idle, left))
                if read_so_far == before and not failed:
                    break  # nothing came for ``idle`` seconds
            yield batch
    finally:
        reader.cancel()


@dataclass(frozen=True)
class StoredState:
    """A mouse's state as the tables hold it, live in memory.

    Attributes:
        state: the stored state (the state record joined with its open-sessions record).
        record: the state record ``state`` is built on (the base of the next open-sessions
            record: :func:`~services.processor.state_store.records_to_store`).
        partition: the partition of the mouse's inputs (and of its changelog records).
    """

    state: MouseState
    record: bytes
    partition: int


@dataclass
class _Batch:
    """What a batch led to so far: each message's result and processing time, by its place in
    the batch (a run of trials gets its results when it is folded), and each touched mouse's
    state."""

    results: list[StepResult | None]
    seconds: list[float]
    states: dict[bytes, tuple[MouseState, int]] = field(default_factory=dict)
    runs: dict[bytes, _Run] = field(default_factory=dict)

    @classmethod
    def of(cls, size: int) -> _Batch:
        return cls([None] * size, [0.0] * size)


@dataclass
class _Run:
    """A mouse's trials in a batch, admitted (:meth:`ProcessorStep.admit`) from one partition at
    rising offsets and not folded yet: their places in the batch, messages and events."""

    places: list[int]
    events: list[EventT]
    trials: list[TrialCompleted]

    def takes(self, event: EventT) -> bool:
        """Whether ``event`` continues the run (same topic and partition, a later offset)."""
        last, message = self.events[-1].message, event.message
        return (
            message.partition == last.partition
            and message.topic == last.topic
            and message.offset > last.offset
        )


_Record = tuple[TableT, bytes, bytes]
"""A changelog record sent: its table, key and value."""


@dataclass
class _InFlight:
    """A batch whose outputs are on the broker and whose state records were sent: its inputs,
    the states its mice had in memory before it (None: none), its records, and the broker's
    acknowledgement of them all (None: there was nothing to send)."""

    events: Sequence[EventT]
    before: dict[bytes, StoredState | None]
    records: list[_Record]
    landed: asyncio.Future[Any] | None = None
    landing: asyncio.Future[None] | None = None
    finished: bool = False


@dataclass
class _Deferred:
    """A mouse whose state changed only in its open sessions (trials) since it was last written:
    its state now, its partition, the inputs folded into it since (acknowledged once it is
    written), and when it was first deferred (:attr:`FaustProcessor.clock`)."""

    state: MouseState
    partition: int
    events: list[EventT]
    since: float


def _read_order(event: EventT) -> tuple[str, int, int]:
    """Where a message was read: a partition's messages sort in the order they were read."""
    message = event.message
    return message.topic, message.partition, message.offset


class _Redone(Exception):
    """The batch before had its state records refused, and was done again."""


class FaustProcessor:
    """Applies :class:`ProcessorStep` to batches of faust events: the body of the processor's
    agent.

    Args:
        app: the faust app (its producer carries the outputs and the changelog records).
        step: the processing step (decoding, training core, encoding).
        table: per-mouse state, keyed by the mouse id in UTF-8, values from
            :func:`~services.processor.state_store.encode_state`. A faust table (its changelog
            gets the records) or a plain mapping (tests).
        outputs: the topic for each kind of output message.
        metrics: where to count what happened (None: not measured).
        sessions: per-mouse open sessions on top of ``table``, same keys, values from
            :func:`~services.processor.state_store.encode_sessions` (see "State records" in
            the module docstring). None: every write is a whole state record.
        catch_up: reads the curricula topic to its end (see :func:`build_app`).
        commands: the name of the commands topic: its messages are judged as commands
            (:meth:`ProcessorStep.process_command`). None: every message is an event.
        settle_heap: before the first batch, and before the first after every table recovery,
            take every object then alive out of the cycle collector's passes
            (:func:`settle_heap`). For the processor's own process only: it changes the whole
            process's collector. False: the collector is left alone (tests, embedded uses).
        defer_s: keep a mouse that only gained trials in memory, unwritten, for up to this many
            seconds (see "Deferred writes" in the module docstring); 0: every touched mouse is
            written after every batch. Needs ``sessions``.

    Attributes:
        live: the stored state of every mouse loaded since the last assignment, by key (as the
            tables hold it, or will once the records in flight land).
        deferred: the mice whose newer state waits to be written, by key.
        clock: the monotonic clock :attr:`deferred` is timed with.
        owned: the partitions this worker owns, as faust last said (None: not told; all).
        after_publish: called with the batch's results once its outputs are acknowledged and
            before its state is written (the crash tests kill the worker there); None: nothing.
        acknowledge: acknowledges one input (the agent's stream's ``ack``), called for a
            batch's inputs once its outputs and state records are on the broker; None: inputs
            are not acknowledged (tests).
    """

    def __init__(
        self,
        app: AppT,
        step: ProcessorStep,
        table: TableT,
        outputs: dict[TopicKind, TopicT],
        metrics: ServiceMetrics | None = None,
        sessions: TableT | None = None,
        catch_up: Callable[[], None] | None = None,
        commands: str | None = None,
        settle_heap: bool = False,
        defer_s: float = 0.0,
    ) -> None:
        self.app = app
        self.step = step
        self.table = table
        self.outputs = outputs
        self.metrics = metrics
        self.sessions = sessions
        self.catch_up = catch_up
        self.commands = commands
        self.live: dict[bytes, StoredState] = {}
        self.after_publish: Callable[[list[StepResult]], None] | None = None
        self.acknowledge: Callable[[EventT], Awaitable[Any]] | None = None
        self._in_flight: _InFlight | None = None
        self.owned: set[int] | None = None
        self.settle_heap = settle_heap
        self._heap_to_settle = settle_heap
        self.defer_s = defer_s if sessions is not None else 0.0
        self.deferred: dict[bytes, _Deferred] = {}
        self.clock: Callable[[], float] = time.monotonic
        self._deferring = True  # off while messages go again one at a time

    # -- batches ---------------------------------------------------------------------------------

    async def handle_batch(self, events: Sequence[EventT]) -> list[StepResult]:
        """Processes a batch of messages of the events and commands topics, in order; returns
        what the step decided for each. On return every output of the batch is acknowledged
        by the broker and its state records are sent; its inputs are acknowledged
        (:attr:`acknowledge`) once the broker has taken those records too (:meth:`settle`).

        When anything fails, nothing of the batch counts and its messages are processed one at
        a time (:meth:`handle`: retried, then parked), so one failing message costs neither
        the rest of the batch nor the order of a mouse's messages.

        Raises:
            StateFormatError: a mouse's stored state is of another format. Logged once and
                raised at once (no retry, no dead letter): the agent's crash stops the worker.
        """
        if self._heap_to_settle:
            self._heap_to_settle = False
            settle_heap()
        if not events:
            await self.flush()
            return []
        if len(events) == 1 and not self.deferred:
            return [await self.handle(events[0])]
        try:
            return await self._run(events)
        except StateFormatError:
            raise
        except Exception as exc:
            first = events[0].message
            log.warning(
                "a batch of %d message(s) from %s/%d@%d failed (%s: %s); processing them one "
                "at a time",
                len(events),
                first.topic,
                first.partition,
                first.offset,
                type(exc).__name__,
                exc,
            )
            return await self._again(events)

    async def flush(self) -> None:
        """Writes every deferred mouse (the stream is idle). When that fails, the deferred
        mice go back to their stored states and their inputs are processed again, one at a
        time, each written at once (:meth:`_again`)."""
        if not self.deferred and self._in_flight is None:
            return
        try:
            await self._run([])
        except StateFormatError:
            raise
        except Exception as exc:
            log.warning(
                "writing %d deferred mouse state(s) failed (%s: %s); processing their inputs "
                "again one at a time",
                len(self.deferred),
                type(exc).__name__,
                exc,
            )
            await self._again([])

    async def _again(self, events: Sequence[EventT]) -> list[StepResult]:
        """Processes ``events`` one at a time (:meth:`handle`), each written at once, and before
        them, in the order read, the inputs of the deferred mice, whose states go back to the
        stored ones: nothing that is not on the broker counts. Returns the results of
        ``events``."""
        waiting = [event for entry in self.deferred.values() for event in entry.events]
        self.deferred = {}
        results: dict[int, StepResult] = {}
        mine = {id(event) for event in events}
        self._deferring = False
        try:
            for event in [*sorted(waiting, key=_read_order), *events]:
                if id(event) in results:
                    continue  # waiting and in ``events`` both (a batch that failed late)
                if id(event) in mine or self.owned is None or event.message.partition in self.owned:
                    results[id(event)] = await self.handle(event)
        finally:
            self._deferring = True
        return [results[id(event)] for event in events]

    async def handle(self, event: EventT) -> StepResult:
        """Processes one message as a batch of its own; returns what the step decided.

        The step itself never raises (bad input becomes a dead letter). What can still fail is
        the I/O around it, or a bug: a failed attempt is retried :data:`ATTEMPTS` times with a
        growing pause, then the message is parked on the dead-letter topic (kind ``failed``)
        and the stream goes on, so no message can loop the processor.

        Raises:
            StateFormatError: the mouse's stored state is of another format. Logged once and
                raised at once (no retry, no dead letter): the agent's crash stops the worker.
        """
        message = event.message
        for attempt in range(1, ATTEMPTS + 1):
            try:
                [result] = await self._run([event])
                return result
            except StateFormatError:
                raise
            except Exception as exc:
                if attempt == ATTEMPTS:
                    log.exception(
                        "%s/%d@%d failed %d times; parking it on the dead-letter topic",
                        message.topic,
                        message.partition,
                        message.offset,
                        attempt,
                    )
                    if self.metrics is not None:
                        self.metrics.count_retry("parked")
                    parked = self.step.park(
                        event.key,
                        event.value,
                        message.topic,
                        message.partition,
                        message.offset,
                        exc,
                        _broker_time(message.timestamp),
                    )
                    # If even this fails, the broker cannot take a small message: crash and
                    # let the restart resume from the committed offset.
                    await self._send([event], [parked], {})
                    return parked
                log.warning(
                    "%s/%d@%d failed (attempt %d of %d): %s",
                    message.topic,
                    message.partition,
                    message.offset,
                    attempt,
                    ATTEMPTS,
                    exc,
                )
                if self.metrics is not None:
                    self.metrics.count_retry("retried")
                await asyncio.sleep(RETRY_PAUSE_S * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run(self, events: Sequence[EventT]) -> list[StepResult]:
        """One try of a batch: process, then send (:meth:`_send`). When the batch before it
        turns out to have had its state records refused, that batch was done again and this
        one is processed again on the states it left."""
        try:
            return await self._try(events)
        except _Redone:
            return await self._try(events)

    async def _try(self, events: Sequence[EventT]) -> list[StepResult]:
        started = time.perf_counter()
        batch = _Batch.of(len(events))
        for place, event in enumerate(events):
            await self._process(place, event, batch)
        await self._fold_runs(batch)
        results = [result for result in batch.results if result is not None]
        assert len(results) == len(events)  # every message has its result
        await self._send(events, results, batch.states)
        if self.metrics is not None and events:
            # Each message's own processing, plus its share of the batch's round trips.
            shared = (time.perf_counter() - started - sum(batch.seconds)) / len(events)
            self._measure(events, results, [seconds + shared for seconds in batch.seconds])
        return results

    async def _send(
        self,
        events: Sequence[EventT],
        results: Sequence[StepResult],
        states: dict[bytes, tuple[MouseState, int]],
    ) -> None:
        """Steps 2 and 3 of "Delivery" in the module docstring: once the batch before is on
        the broker (:meth:`settle`), publish the outputs and wait for the broker, then send
        each touched mouse's state record and keep the new states in memory. The records are
        not waited for: the batch stays in flight until the broker has taken them, and then
        its inputs are acknowledged (:meth:`_land`).

        Raises:
            _Redone: the batch before had its state records refused; it was done again.
        """
        await self.settle()
        await self.publish(results)
        if self.after_publish is not None:
            self.after_publish(list(results))
        write, deferred, released = self._plan(events, states)
        before = {key: self.live.get(key) for key in write}
        stored, records, deliveries = await self.store(write)
        self.live.update(stored)
        self.deferred = deferred
        flight = _InFlight(released, before, records)
        self._in_flight = flight
        if not deliveries:
            await self._land(flight)
            return
        landed = asyncio.gather(*deliveries)
        flight.landed = landed

        def on_landed(done: asyncio.Future[Any]) -> None:
            if done.cancelled() or done.exception() is not None:
                return  # the next batch finds it (:meth:`settle`)
            flight.landing = asyncio.ensure_future(self._land(flight))

        landed.add_done_callback(on_landed)

    def _plan(
        self, events: Sequence[EventT], states: dict[bytes, tuple[MouseState, int]]
    ) -> tuple[dict[bytes, tuple[MouseState, int]], dict[bytes, _Deferred], list[EventT]]:
        """What a batch writes now (see "Deferred writes" in the module docstring): the states
        to write, the deferred mice after it, and the inputs to acknowledge once its records
        land (those of the deferred mice written now, which came in earlier batches, first; a
        mouse's inputs in the order read). Changes nothing: the caller keeps the plan once the
        records are sent. An empty batch (an idle stream) writes every deferred mouse."""
        now = self.clock()
        deferred = dict(self.deferred)
        write: dict[bytes, tuple[MouseState, int]] = {}
        held: set[bytes] = set()
        for key, (state, partition) in states.items():
            stored = self.live.get(key)
            if (
                self.defer_s > 0
                and self._deferring
                and stored is not None
                and only_sessions_changed(stored.state, state)
            ):
                before = deferred.get(key)
                waiting = [] if before is None else list(before.events)
                since = now if before is None else before.since
                deferred[key] = _Deferred(state, partition, waiting, since)
                held.add(key)
            else:
                write[key] = (state, partition)
        own: list[EventT] = []
        for event in events:
            mouse: bytes | None = event.key
            if mouse in held and event.message.topic != self.commands:
                deferred[mouse].events.append(event)
            else:
                own.append(event)
        # Mice deferred together come due together; a batch takes the oldest share of them, so
        # their writes spread over the next batches instead of stalling one.
        due = sorted(
            (entry.since, key)
            for key, entry in deferred.items()
            if key not in write and now - entry.since >= self.defer_s
        )
        taken = {key for _, key in due[: len(deferred) // DUE_SHARE + 1]}
        earlier: list[EventT] = []
        for key, entry in list(deferred.items()):
            if key in write or not events or key in taken:
                if key not in write:
                    write[key] = (entry.state, entry.partition)
                earlier.extend(entry.events)
                del deferred[key]
        return write, deferred, [*sorted(earlier, key=_read_order), *own]

    async def settle(self) -> None:
        """Waits until the batch in flight, if any, has its state records on the broker and
        its inputs acknowledged.

        When the broker refused one of its records, nothing of that batch counts: its mice
        get back in memory the states they had before it, and its messages are processed
        again one at a time (:meth:`handle`: retried, then parked, like any failure).

        Raises:
            _Redone: the batch in flight was refused and done again (what the caller
                processed on the states it had left must be processed again).
        """
        flight, self._in_flight = self._in_flight, None
        if flight is None:
            return
        if flight.landed is not None:
            try:
                # Shielded: a cancelled agent must not cancel the producer's own futures.
                await asyncio.shield(flight.landed)
            except Exception as exc:
                await self._redo(flight, exc)
                raise _Redone from exc
        await self._land(flight)

    async def _land(self, flight: _InFlight) -> None:
        """The broker has every record of ``flight``: the tables take them and the inputs
        are acknowledged, in the order read (once, whoever gets here first)."""
        if flight.finished:
            return
        flight.finished = True
        for table, key, value in flight.records:
            table.data[key] = value
        if self.acknowledge is not None:
            for event in flight.events:
                await self.acknowledge(event)

    async def _redo(self, flight: _InFlight, exc: Exception) -> None:
        """Undoes a batch whose state records the broker refused, and processes its messages
        again one at a time."""
        first = flight.events[0].message
        log.warning(
            "the broker refused a state record of a batch of %d message(s) from %s/%d@%d "
            "(%s: %s); processing them again one at a time",
            len(flight.events),
            first.topic,
            first.partition,
            first.offset,
            type(exc).__name__,
            exc,
        )
        for key, before in flight.before.items():
            if key not in self.live:
                continue  # its partition was revoked meanwhile
            if before is None:
                del self.live[key]
            else:
                self.live[key] = before
        # The messages of a partition revoked meanwhile are left to the new owner, which reads
        # them again from the last commit (they were never acknowledged).
        owned = [
            event
            for event in flight.events
            if self.owned is None or event.message.partition in self.owned
        ]
        await self._again(owned)

    async def _process(self, place: int, event: EventT, batch: _Batch) -> None:
        """Runs the step on one message against the state the batch has left so far.

        A trial that passes the step's checks (:meth:`ProcessorStep.admit`) joins its mouse's
        run instead, folded with the rest of the run (:meth:`_fold_runs`) before anything else
        of the mouse, or of the catalog, is processed: a mouse's messages still meet its state
        in their order, and outputs are published in the order of the inputs that led to them.
        """
        started = time.perf_counter()
        message = event.message
        key: bytes | None = event.key
        if key is None or message.topic == self.commands:
            batch.results[place] = await self._step(event, self._current(key, event, batch))
        else:
            stored = self._current(key, event, batch)
            broker_time = _broker_time(message.timestamp)
            admitted = self.step.admit(
                stored,
                key,
                event.value,
                message.topic,
                message.partition,
                message.offset,
                broker_time,
            )
            if isinstance(admitted, StepResult):  # refused, or a duplicate: no state changes
                batch.results[place] = admitted
            elif isinstance(admitted, TrialCompleted):
                run = batch.runs.get(key)
                if run is not None and not run.takes(event):
                    await self._fold_runs(batch, key)
                    run = None
                if run is None:
                    batch.runs[key] = _Run([place], [event], [admitted])
                else:
                    run.places.append(place)
                    run.events.append(event)
                    run.trials.append(admitted)
            else:
                # A curriculum version changes the catalog every mouse is judged with.
                await self._fold_runs(
                    batch, None if isinstance(admitted, CurriculumPublished) else key
                )
                batch.results[place] = await self._step(
                    event, self._current(key, event, batch), admitted
                )
        result = batch.results[place]
        if result is not None and result.state is not None and key is not None:
            batch.states[key] = (result.state, message.partition)
        batch.seconds[place] += time.perf_counter() - started

    async def _fold_runs(self, batch: _Batch, key: bytes | None = None) -> None:
        """Folds the runs of trials waiting in ``batch``: the run of the mouse with this key
        (None: every run). A run the core folds at once, quietly (:meth:`ProcessorStep.
        fold_trials`), costs one state copy; any other is processed one trial at a time."""
        keys = list(batch.runs) if key is None else [key] if key in batch.runs else []
        for mouse in keys:
            run = batch.runs.pop(mouse)
            started = time.perf_counter()
            first, last = run.events[0].message, run.events[-1].message
            position = f"{first.topic}/{first.partition}"
            stored = self._current(mouse, run.events[0], batch)
            folded = self.step.fold_trials(stored, position, last.offset, run.trials)
            if folded is not None and self._catalog_missed():
                folded = None  # a curriculum version not known yet: one by one, catching up
            if folded is not None:
                batch.states[mouse] = (folded, first.partition)
                for place, trial in zip(run.places, run.trials, strict=True):
                    batch.results[place] = StepResult(trial, None, [], "accepted")
            else:
                for place, event, trial in zip(run.places, run.events, run.trials, strict=True):
                    result = await self._step(event, self._current(mouse, event, batch), trial)
                    batch.results[place] = result
                    if result.state is not None:
                        batch.states[mouse] = (result.state, first.partition)
            share = (time.perf_counter() - started) / len(run.places)
            for place in run.places:
                batch.seconds[place] += share

    def _current(self, key: bytes | None, event: EventT, batch: _Batch) -> MouseState | None:
        """The state the message's mouse has reached in the batch so far."""
        if key is not None:
            if key in batch.states:
                return batch.states[key][0]
            waiting = self.deferred.get(key)
            if waiting is not None:
                return waiting.state
        return self._stored_state(key, event)

    def _catalog_missed(self) -> set[tuple[str, str]]:
        """The curriculum versions the step asked the following catalog for and it lacks, since
        the last call (empty when the processor does not catch up)."""
        catalog = self.step.core.catalog
        if self.catch_up is None or not isinstance(catalog, FollowingCatalog):
            return set()
        return catalog.take_missed()

    async def _step(
        self, event: EventT, stored: MouseState | None, admitted: Event | None = None
    ) -> StepResult:
        """The step's result for one message: a command judged, an event processed (or the
        second half of it, for an event :meth:`ProcessorStep.admit` gave)."""
        message = event.message
        key: bytes | None = event.key
        broker_time = _broker_time(message.timestamp)
        args = (stored, key, event.value, message.topic, message.partition, message.offset)
        # A command is judged (its answer goes to the events topic); anything else is folded.
        is_command = message.topic == self.commands

        def process() -> StepResult:
            if is_command:
                return self.step.process_command(*args, broker_time, now=datetime.now(UTC))
            if admitted is not None and key is not None:
                return self.step.process_admitted(stored, key, *args[2:], broker_time, admitted)
            return self.step.process(*args, broker_time)

        result = process()
        missed = self._catalog_missed()
        if missed:
            # A version published a moment ago may not have reached the following thread:
            # read the curricula topic to its end off the event loop, then decide again
            # (nothing of this message was published or stored yet, and the step is a
            # function of values).
            log.info("curriculum version(s) %s not known yet: reading the topic", missed)
            await asyncio.get_running_loop().run_in_executor(None, cast(Any, self.catch_up))
            result = process()
            self._catalog_missed()
        return result

    def _stored_state(self, key: bytes | None, event: EventT) -> MouseState | None:
        """The stored state of the message's mouse (loaded into :attr:`live` if need be).

        Raises:
            StateFormatError: the stored records are of another format (logged here, once).
            ValueError: they are damaged.
        """
        try:
            found = self.load(key, event.message.partition)
        except StateFormatError as exc:
            message = event.message
            log.critical(
                "%s/%d@%d: cannot read the stored state of mouse %r: %s. The processor "
                "stops; the message stays unprocessed",
                message.topic,
                message.partition,
                message.offset,
                (key or b"").decode("utf-8", "replace"),
                exc,
            )
            raise
        return None if found is None else found.state

    def _measure(
        self, events: Sequence[EventT], results: list[StepResult], seconds: list[float]
    ) -> None:
        """Counts a batch's inputs, their outputs, rejections and decisions; records each
        message's latency and age, each partition's lag and each rig's clock offset. Counts
        and gauges are set once per batch (a labelled update costs about 1.3 µs, and a trial
        made six of them)."""
        metrics = cast(ServiceMetrics, self.metrics)
        consumed: Counter[tuple[str, str | None]] = Counter()
        produced: Counter[tuple[str, str]] = Counter()
        duplicates = 0
        last_offset: dict[Any, int] = {}
        latest: dict[str, tuple[datetime, float]] = {}  # each rig's last accepted event
        ages: list[float] = []
        now = time.time()
        for event, result in zip(events, results, strict=True):
            message = event.message
            command = result.command.command_type if result.command is not None else None
            consumed[message.topic, result.event.event_type if result.event else command] += 1
            duplicates += result.outcome == "duplicate"
            for out in result.outputs:
                produced[self.outputs[out.topic_kind].get_topic_name(), out.event.event_type] += 1
                if isinstance(out.event, EventRejected):
                    metrics.count_rejected(out.event.error_kind)
                elif isinstance(out.event, StageTransitioned):
                    metrics.count_decision(
                        out.event.curriculum_name, out.event.from_stage, out.event.decision
                    )
            if message.timestamp is not None:
                ages.append(now - message.timestamp)
            last_offset[message.tp] = message.offset
            if (
                result.outcome == "accepted"
                and result.event is not None
                and result.event.rig_id
                and message.timestamp is not None
            ):
                latest[result.event.rig_id] = (result.event.occurred_at, message.timestamp)
        for (topic, event_type), n in consumed.items():
            metrics.count_consumed(topic, event_type, n)
        for (topic, event_type), n in produced.items():
            metrics.count_produced(topic, event_type, n)
        if duplicates:
            metrics.count_duplicate(duplicates)
        metrics.observe_processing("message", *seconds)
        metrics.observe_age(*ages)
        for tp, offset in last_offset.items():
            highwater = self.app.consumer.highwater(tp)
            if highwater is not None:
                metrics.set_lag(tp.topic, tp.partition, highwater - offset - 1)
        for rig, (occurred_at, timestamp) in latest.items():
            skew = (occurred_at - cast(datetime, _broker_time(timestamp))).total_seconds()
            metrics.set_event_offset(rig, skew)

    # -- the state -------------------------------------------------------------------------------

    def load(self, key: bytes | None, partition: int = 0) -> StoredState | None:
        """The stored state of the mouse with this Kafka key, None if there is none: from
        memory, else read from the tables (and kept in memory).

        Raises:
            StateFormatError: the stored records are of another format.
            ValueError: they are damaged.
        """
        if key is None:
            return None
        found = self.live.get(key)
        if found is not None:
            return found
        record = self.table.get(key)
        if record is None:
            return None
        sessions = self.sessions.get(key) if self.sessions is not None else None
        found = StoredState(join_sessions(record, sessions), record, partition)
        self.live[key] = found
        return found

    async def store(
        self, states: dict[bytes, tuple[MouseState, int]]
    ) -> tuple[dict[bytes, StoredState], list[_Record], list[Awaitable[Any]]]:
        """Sends each mouse's new state, one record per mouse (see "State records" in the
        module docstring); returns what the tables hold for these mice once the broker has
        the records, the records (for the tables' in-memory copies), and what to await for
        the broker's acknowledgements."""
        pending: list[Awaitable[Any]] = []
        records: list[_Record] = []
        stored: dict[bytes, StoredState] = {}
        for key, (after, partition) in states.items():
            before = self.live.get(key)
            whole, sessions = (
                (encode_state(after), None)
                if self.sessions is None or before is None
                else records_to_store(before.record, before.state, after)
            )
            if whole is not None:
                pending.extend(await self._put(self.table, key, whole, partition, records))
                stored[key] = StoredState(after, whole, partition)
            elif sessions is not None and self.sessions is not None and before is not None:
                pending.extend(await self._put(self.sessions, key, sessions, partition, records))
                stored[key] = StoredState(after, before.record, partition)
        return stored, records, pending

    async def _put(
        self, table: TableT, key: bytes, value: bytes, partition: int, records: list[_Record]
    ) -> list[Awaitable[Any]]:
        """Sends a table's changelog record to the Kafka producer, on the partition of the
        mouse's inputs, and adds it to ``records`` (the table's in-memory copy takes it once
        the broker has it); returns what to await for the broker's ack."""
        changelog = getattr(table, "changelog_topic", None)
        if changelog is None:  # a plain mapping (tests): nothing to send
            cast(Any, table)[key] = value
            return []
        # What faust's Table.__setitem__ does, with the partition given (faust would take the
        # partition of "the current event", which a batch does not have), without faust's
        # producer buffer (whose pre-commit flush gives up after 0.1 s without progress), and
        # straight to the app's producer: the record is raw bytes, and faust's topic send
        # (serialisers, callbacks, sensors) cost about four times the producer's own work, a
        # batch under load writing one record per mouse it touched (bench/REPORT.md, (c)).
        delivered = await self.app.producer.send(
            changelog.get_topic_name(), key, value, partition, None, None
        )
        records.append((table, key, value))
        return [delivered]

    def forget(self, partitions: set[int] | None = None) -> int:
        """Drops the states in memory of these partitions (None: all), deferred ones too (their
        inputs stay unacknowledged: whoever owns the partition next reads them again); returns
        how many mice were dropped."""
        if partitions is None:
            dropped = len(self.live)
            self.live.clear()
            self.deferred.clear()
            return dropped
        keys = [k for k, stored in self.live.items() if stored.partition in partitions]
        for key in keys:
            del self.live[key]
            self.deferred.pop(key, None)
        return len(keys)

    async def on_partitions_revoked(self, sender: Any, revoked: set[Any], **_: Any) -> None:
        """Faust's signal after the batch in flight was acknowledged: forget what is revoked."""
        partitions = {tp.partition for tp in revoked}
        if self.owned is not None:
            self.owned -= partitions
        dropped = self.forget(partitions)
        log.debug("partitions revoked: %d mouse state(s) dropped from memory", dropped)

    async def on_partitions_assigned(self, sender: Any, assigned: set[Any], **_: Any) -> None:
        """Faust's signal on a new assignment: forget every partition not in it."""
        kept = self.owned = {tp.partition for tp in assigned}
        stale = {stored.partition for stored in self.live.values()} - kept
        self.forget(stale)

    async def on_recovered(self) -> None:
        """After faust rebuilt the tables from their changelogs: read them afresh (and settle
        the heap again before the next batch, when asked to)."""
        self.forget()
        self._heap_to_settle = self.settle_heap

    # -- outputs ---------------------------------------------------------------------------------

    async def publish(self, results: Sequence[StepResult]) -> None:
        """Sends every output of ``results`` in order and waits until the broker has
        acknowledged them all (one round trip per batch; none for a batch of trials)."""
        pending = []
        for result in results:
            for out in result.outputs:
                # ``send`` returns once the record is queued in the Kafka producer, so awaiting
                # each one in turn keeps the queue (and so each partition) in output order.
                pending.append(
                    await self.outputs[out.topic_kind].send(
                        key=out.key, value=out.value, headers=headers_for(out.value)
                    )
                )
        for delivered in pending:
            await delivered


def build_app(
    settings: Settings,
    codec: EventCodec,
    catalog: CurriculumCatalog,
    web_port: int | None = None,
    metrics: ServiceMetrics | None = None,
    catch_up: Callable[[], None] | None = None,
    welfare: WelfarePolicy | None = None,
    settle_heap: bool = False,
) -> faust.App:
    """Builds the processor's faust app (nothing connects until a worker starts it).

    Args:
        settings: the Kafka connection, topic names, partition count, processor id, data
            directory.
        codec: decodes the inputs and encodes the outputs
            (:func:`shaping.services.bootstrap.codec`).
        catalog: the curricula (in production the following catalog of
            :func:`shaping.services.bootstrap.following_catalog`).
        web_port: port of faust's web server; None disables the web server.
        metrics: the processor's metrics, with faust's own sensors added to its registry
            (None: nothing is measured).
        catch_up: reads the curricula topic to its end (blocking; run in an executor when a
            message names a curriculum version the catalog lacks). None: no catching up.
        welfare: the lab's welfare policy (:func:`shaping.services.bootstrap.welfare_policy`);
            None: the built-in default policy.
        settle_heap: as :class:`FaustProcessor` (True in the processor's own process only).

    Returns:
        The app, with the ``mouse_state`` and ``mouse_sessions`` tables and the
        ``process_events`` agent.
    """
    # Faust's data directory defaults to one relative to the working directory (which could be
    # the repository); keep it under the configured data directory. Faust creates it without
    # its parents, so they must exist.
    datadir = Path(settings.data_dir).absolute() / "processor" / settings.processor_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.processor_id,  # also the consumer group and the changelog topic's prefix
        # The brokers and, on a secured cluster, the credentials: the one Kafka adapter's.
        **settings.kafka.faust_options(),
        datadir=str(datadir),
        # Table state lives in memory and is rebuilt from its changelog topic at start.
        store="memory://",
        # A fresh processor (new group) reads the event log from offset 0: state is a fold
        # over the whole log.
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        broker_commit_interval=COMMIT_INTERVAL_S,
        broker_commit_every=COMMIT_EVERY,
        # Wait for the in-flight message before a rebalance or shutdown commits.
        stream_wait_empty=True,
        producer_acks=-1,  # every in-sync replica has an output before it counts as sent
        broker_session_timeout=SESSION_TIMEOUT_S,
        broker_heartbeat_interval=HEARTBEAT_S,
        # Faust creates only the topics it owns (the table's changelog), with the partition
        # count of our topics: a table partition must match its input partition. Our own
        # topics are created by ensure_topics; faust never declares non-internal topics.
        topic_allow_declare=True,
        topic_partitions=settings.partitions,
        topic_replication_factor=CHANGELOG_REPLICATION_FACTOR,
        # No leader election topic: nothing here runs "on the leader only".
        topic_disable_leader=True,
        # No standby replicas (faust's default is one): with the in-memory store they buy
        # nothing (a partition that becomes active is read from its changelog's start all the
        # same, and the store drops what is not active after every recovery), and promoting a
        # standby partition to active when another worker dies could hang the recovery (see
        # "Scale-out" in the module docstring).
        table_standby_replicas=0,
        TableManager=_TableManager,
        web_enabled=web_port is not None,
        web_port=web_port if web_port is not None else DEFAULT_WEB_PORT,
    )
    # Before the first topic: a SessionEnded must not wait out faust's 1.5 s fetch wait.
    use_fetch_wait(app, settings.processor_fetch_wait_ms)
    if metrics is not None:
        attach_faust_sensors(app, metrics.registry)
    topics = settings.topics

    def raw_topic(*names: str) -> TopicT:
        # Bytes in, bytes out: the codec lives in ProcessorStep, not in faust.
        return app.topic(
            *names, key_serializer="raw", value_serializer="raw", partitions=settings.partitions
        )

    table = app.Table(
        STATE_TABLE,
        partitions=settings.partitions,
        # bytes -> faust's "raw" serializer on the changelog (the records are state_store's).
        key_type=bytes,
        value_type=bytes,
        help="Per-mouse training state (state_store.encode_state), keyed by mouse id.",
    )
    sessions = app.Table(
        SESSIONS_TABLE,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        help="Per-mouse open sessions on top of mouse_state (state_store.encode_sessions).",
    )
    outputs: dict[TopicKind, TopicT] = {
        # The answers to the commands it honours: appended to the one ordered log.
        "events": raw_topic(topics.events),
        "accepted": raw_topic(topics.accepted),
        "decisions": raw_topic(topics.decisions),
        "assignments": raw_topic(topics.assignments),
        "dead_letter": raw_topic(topics.dead_letter),
    }
    clock = ClockWindow(
        max_ahead=timedelta(seconds=settings.clock_max_ahead_s),
        max_behind=timedelta(days=settings.clock_max_behind_days),
        command_max_age=timedelta(seconds=settings.command_max_age_s),
    )
    step = ProcessorStep(TrainingCore(catalog), codec, clock=clock, welfare=welfare)
    processor = FaustProcessor(
        app,
        step,
        table,
        outputs,
        metrics,
        sessions,
        catch_up,
        commands=topics.commands,
        settle_heap=settle_heap,
        defer_s=settings.processor_defer_s,
    )

    # The state in memory follows the assignment (see "State in memory").
    # (mode's signal types want the receiver's signature as ``*args``; these take one set.)
    app.on_partitions_revoked.connect(cast(Any, processor.on_partitions_revoked))
    app.on_partitions_assigned.connect(cast(Any, processor.on_partitions_assigned))
    table.on_recover(processor.on_recovered)

    @app.agent(
        raw_topic(topics.events, topics.commands),
        name="process_events",
        # One batch at a time: per-mouse order, and acks (so commits) in offset order.
        concurrency=1,
        supervisor_strategy=CrashingSupervisor,
    )
    async def process_events(stream: StreamT[Any]) -> None:
        """Runs the processing step over the events and commands topics, a batch at a time."""
        # Manual acks: an input counts as done only after its outputs and state are on the
        # broker. (noack is on faust's Stream, not on its StreamT interface.)
        manual = cast("faust.Stream[Any]", stream).noack()
        processor.acknowledge = manual.ack
        async for events in batches(
            manual, BATCH_MAX, BATCH_WITHIN_S, BATCH_IDLE_S, tick=FLUSH_IDLE_S, closes=decides
        ):
            await processor.handle_batch(events)

    return app


def run_processor(
    settings: Settings,
    codec: EventCodec,
    catalog: FollowingCatalog,
    follower: CurriculaFollower,
    metrics: ServiceMetrics | None = None,
    web_port: int | None = None,
    loglevel: str = "warn",
    metrics_port: int | None = None,
    metrics_host: str = "0.0.0.0",
    welfare: WelfarePolicy | None = None,
) -> None:
    """Runs the processor in this process until SIGTERM or SIGINT.

    The entry point builds what it runs on with :mod:`shaping.services.bootstrap` (after
    :func:`~shaping.services.bootstrap.ensure_topics`): the codec, the following catalog and
    its follower (not loaded yet), and the metrics. This reads every published curriculum
    version from the curricula topic (:mod:`services.adapters.curricula_topic`), then starts a
    faust worker while a thread follows that topic. On a signal the worker finishes the
    message in flight, commits and stops; the follower is stopped in any case.

    Args:
        settings: where Kafka is and how topics and the processor are named.
        codec: the event codec.
        catalog: the curricula, fed by ``follower``.
        follower: reads the curricula topic into ``catalog``.
        metrics: the processor's metrics (None: nothing is measured).
        web_port: serve faust's web endpoints on this port (None: no web server).
        loglevel: faust/Python log level (``debug``, ``info``, ``warn``, ``error``).
        metrics_port: serve ``metrics`` to Prometheus (``/metrics``) on this port (None: not
            served).
        metrics_host: address the metrics endpoint binds to.
        welfare: the lab's welfare policy (None: the built-in default policy).

    Raises:
        SystemExit: with a non-zero code when the worker crashed.
    """
    try:
        # Every published curriculum version is in the catalog before the worker sees an
        # event; then the follower keeps adding new ones (and reads the topic on a miss).
        loaded = follower.load()
        log.info("read %d record(s) of %s", loaded, settings.topics.curricula)
        follower.start()
        app = build_app(
            settings,
            codec,
            catalog,
            web_port=web_port,
            metrics=metrics,
            catch_up=follower.catch_up,
            welfare=welfare,
            settle_heap=True,
        )
        if metrics is not None and metrics_port is not None:
            metrics.serve(metrics_port, metrics_host)
        worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
        # The start-up spinner writes terminal control codes to stdout; a service's log is
        # no tty.
        worker.spinner = None
        try:
            worker.execute_from_commandline()  # always ends in SystemExit
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise
    finally:
        follower.stop()
