"""The stream processor on Kafka: a faust app that runs :class:`ProcessorStep` per event.

One agent consumes the ``events`` and ``commands`` topics. For every message it loads the
mouse's state from the changelog-backed tables ``mouse_state`` and ``mouse_sessions`` (see
"State records" below), calls :meth:`ProcessorStep.process` (decoding, the training core and
the encoding of what follows all happen there), publishes the outputs to the ``decisions``,
``assignments`` or ``dead-letter`` topic, and stores the new state. The agent computes nothing
itself, so this path and the embedded runner cannot disagree.

A message of the ``commands`` topic goes to :meth:`ProcessorStep.process_command` instead: it
stores nothing, and its one output is either the past-tense event that honours the command,
appended to the ``events`` topic (keyed by the mouse, so on the mouse's partition, after
whatever the mouse had there already), or the refusal on the dead-letter topic. The state
changes only when the agent reads that event back from the events topic, like any other, so
the events topic stays the one ordered log (replay folds it unchanged). The two topics have
the same partition count and one agent reads both, so faust assigns partition *n* of each,
and of the state tables' changelogs, to the same worker: a command is judged where its
mouse's state is.

Delivery is at least once, and it is safe because the domain is idempotent: a re-processed input
yields the same outputs with the same (deterministic) event ids, and consumers drop ids they
have seen. The order of the steps for one message is what makes a crash at any point harmless:

1. The outputs are sent in order and the agent waits until the broker acknowledged them.
2. Only then is the new state written to the table. Faust sends the changelog record through
   its producer buffer; the agent waits until that buffer has handed it to the Kafka producer.
3. Only then is the input message acknowledged (acks are manual, see ``noack`` below). The
   agent handles one message at a time, so acknowledgements follow the offsets; faust commits
   an offset only once every earlier offset of the partition is acknowledged, and it flushes
   the producer right before every commit, so a committed input always has its outputs and
   its state record on the broker.

A crash before step 2 leaves the old state: the input comes again and its outputs are sent
again, unchanged. A crash between 2 and 3 leaves the new state with an uncommitted input: the
core treats the redelivery as a duplicate (trials by index, other events by id; a redelivered
SessionEnded re-sends the decision it already made). An input is never lost, and the state never
runs ahead of the outputs it caused (which would lose e.g. the first assignment of an enrolment).

State records: a mouse's state is stored as two records, so that a trial does not rewrite the
whole state (50-60 KB for an IBL mouse, whose history keeps per-trial statistics). The
``mouse_state`` table holds the whole :class:`MouseState` as it was after the last message that
changed anything but the open sessions (session starts and ends, decisions, enrolments,
interventions). The ``mouse_sessions`` table holds, after a trial (which changes only
``open_session`` and ``parked_sessions``), those two fields and the digest of the
``mouse_state`` record they extend (:class:`~services.processor.state_store.OpenSessions`,
zlib compressed: ~2 KB). The stored state is ``mouse_state`` with the open sessions of
``mouse_sessions`` when its digest matches, else ``mouse_state`` alone
(:func:`~services.processor.state_store.join_sessions`). Every message writes at most one
record, to one table or the other, so a crash never leaves half a write: the reasoning above
holds as it is. The two changelog topics are not ordered with each other, though, and the
open sessions of a trial must never reach the broker without the ``mouse_state`` record they
extend (with that record lost, the join would fall back to an older one and lose trials whose
inputs were already committed). So a ``mouse_state`` write waits until the broker has
acknowledged it before the input is acknowledged (a round trip a few times per session, not
per trial). A ``mouse_sessions`` record left behind by a later ``mouse_state`` record is stale
by the digest and ignored; so is one left behind by replay's hand-over, which writes whole
states to the ``mouse_state`` changelog. The table names, changelog topics and the bytes of
both records (with their format number) are :mod:`~services.processor.state_store`'s.

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

Bad input never stops the stream: :class:`ProcessorStep` turns it into one EventRejected on
the dead-letter topic and never raises. A failure around it (a bug, a producer that refuses an
output) is retried a few times with a pause and then parked on the dead-letter topic as
``failed`` (counted in ``shaping_processing_retries_total``), so no message loops the worker.
Only when the broker takes not even that small dead letter does the worker crash
(``CrashingSupervisor``) and, restarted, resume from the last committed offset.

A redelivered input (the worker died between its state write and its offset commit) is
recognised by its offset, which the mouse's state records, and dropped silently.

Faust 0.15 itself can lose input when a worker starts or rebalances with a backlog waiting:
:class:`_RecoveryResumingSafely` closes that gap (the recovery test in
``tests/integration/test_processor_kafka.py`` fails about every other run without it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import faust
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import AppT, EventT, StreamT, TableT, TopicT
from mode import CrashingSupervisor

from shaping.schemas.codec import EventCodec, encode_key
from shaping.schemas.events import EventRejected, StageTransitioned
from shaping.schemas.headers import headers_for
from shaping.schemas.topics import TopicKind
from shaping.services.adapters.curricula_topic import CurriculaFollower, FollowingCatalog
from shaping.services.adapters.metrics import ServiceMetrics, attach_faust_sensors
from shaping.services.adapters.settings import Settings
from shaping.services.domain import CurriculumCatalog, MouseState, TrainingCore
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


class _TableManager(TableManager):
    """Faust's table manager with :class:`_RecoveryResumingSafely` as its recovery."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = _RecoveryResumingSafely(
                self.app, self, beacon=self.beacon, loop=self.loop
            )
        return self._recovery


class FaustProcessor:
    """Applies :class:`ProcessorStep` to one faust event: the body of the processor's agent.

    Args:
        app: the faust app (its producer carries the table's changelog records).
        step: the processing step (decoding, training core, encoding).
        table: per-mouse state, keyed by the mouse id in UTF-8, values from
            :func:`~services.processor.state_store.encode_state`.
        outputs: the topic for each kind of output message.
        metrics: where to count what happened (None: not measured).
        sessions: per-mouse open sessions on top of ``table``, same keys, values from
            :func:`~services.processor.state_store.encode_sessions` (see "State records" in
            the module docstring).
        catch_up: reads the curricula topic to its end (see :func:`build_app`).
        commands: the name of the commands topic: its messages are judged as commands
            (:meth:`ProcessorStep.process_command`). None: every message is an event.
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
    ) -> None:
        self.app = app
        self.step = step
        self.table = table
        self.outputs = outputs
        self.metrics = metrics
        self.sessions = sessions
        self.catch_up = catch_up
        self.commands = commands

    async def handle(self, event: EventT) -> StepResult:
        """Processes one message of the events or commands topic; returns what the step decided.

        Must run inside the agent's stream iteration: faust writes a table's changelog record
        to the partition of the event being processed.

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
                return await self._handle_once(event)
            except StateFormatError as exc:
                log.critical(
                    "%s/%d@%d: cannot read the stored state of mouse %r: %s. The processor "
                    "stops; the message stays unprocessed",
                    message.topic,
                    message.partition,
                    message.offset,
                    (event.key or b"").decode("utf-8", "replace"),
                    exc,
                )
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
                    await self.publish(parked)
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

    async def _handle_once(self, event: EventT) -> StepResult:
        message = event.message
        key: bytes | None = event.key
        started = time.perf_counter()
        stored = self.load(key)
        broker_time = _broker_time(message.timestamp)
        args = (stored, key, event.value, message.topic, message.partition, message.offset)
        # A command is judged (its answer goes to the events topic); anything else is folded.
        is_command = message.topic == self.commands

        def process() -> StepResult:
            if is_command:
                return self.step.process_command(*args, broker_time, now=datetime.now(UTC))
            return self.step.process(*args, broker_time)

        result = process()
        catalog = self.step.core.catalog
        if self.catch_up is not None and isinstance(catalog, FollowingCatalog):
            missed = catalog.take_missed()
            if missed:
                # A version published a moment ago may not have reached the following thread:
                # read the curricula topic to its end off the event loop, then decide again
                # (nothing was published or stored yet, and the step is a function of values).
                log.info("curriculum version(s) %s not known yet: reading the topic", missed)
                await asyncio.get_running_loop().run_in_executor(None, self.catch_up)
                result = process()
                catalog.take_missed()
        await self.publish(result)
        if result.state is not None:
            await self.store(stored, result.state)
        if self.metrics is not None:
            self._measure(message, result, time.perf_counter() - started)
            if result.event is not None and result.event.rig_id and broker_time is not None:
                skew = (result.event.occurred_at - broker_time).total_seconds()
                if result.outcome == "accepted":
                    self.metrics.set_event_offset(result.event.rig_id, skew)
        return result

    def _measure(self, message: Any, result: StepResult, seconds: float) -> None:
        """Counts the input, its outputs, rejections and decisions; records latency and lag."""
        metrics = cast(ServiceMetrics, self.metrics)
        command = result.command.command_type if result.command is not None else None
        metrics.count_consumed(message.topic, result.event.event_type if result.event else command)
        if result.outcome == "duplicate":
            metrics.count_duplicate()
        for out in result.outputs:
            metrics.count_produced(
                self.outputs[out.topic_kind].get_topic_name(), out.event.event_type
            )
            if isinstance(out.event, EventRejected):
                metrics.count_rejected(out.event.error_kind)
            elif isinstance(out.event, StageTransitioned):
                metrics.count_decision(
                    out.event.curriculum_name, out.event.from_stage, out.event.decision
                )
        metrics.observe_processing("message", seconds)
        if message.timestamp is not None:
            metrics.observe_age(time.time() - message.timestamp)
        highwater = self.app.consumer.highwater(message.tp)
        if highwater is not None:
            metrics.set_lag(message.topic, message.partition, highwater - message.offset - 1)

    def load(self, key: bytes | None) -> MouseState | None:
        """The stored state of the mouse with this Kafka key, None if there is none.

        Raises:
            StateFormatError: the stored records are of another format.
            ValueError: they are damaged.
        """
        if key is None:
            return None
        stored = self.table.get(key)
        if stored is None:
            return None
        sessions = self.sessions.get(key) if self.sessions is not None else None
        return join_sessions(stored, sessions)

    async def store(self, before: MouseState | None, after: MouseState) -> None:
        """Stores the new state (one record, see "State records" in the module docstring);
        returns once the record is in the Kafka producer (a ``mouse_state`` record: once the
        broker has acknowledged it)."""
        key = encode_key(after.mouse_id)
        # Assign a new value (never mutate one in place): only assignment logs the change to
        # the changelog topic.
        if self.sessions is None:
            self.table[key] = encode_state(after)
            await self._hand_changelog_to_producer()
            return
        record, sessions = records_to_store(self.table.get(key), before, after)
        if sessions is not None:
            self.sessions[key] = sessions
            await self._hand_changelog_to_producer()
            return
        self.table[key] = record
        await self._hand_changelog_to_producer()
        # Open sessions written on this record must not reach the broker without it (the two
        # changelogs are not ordered with each other): wait for the broker's acknowledgement.
        await self.app.producer.flush()

    async def publish(self, result: StepResult) -> None:
        """Sends the outputs in order and waits until the broker has acknowledged them all.

        Waiting costs a round trip only for inputs that have outputs (enrolments, session ends,
        rejections), not for trials.
        """
        pending = []
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

    async def _hand_changelog_to_producer(self) -> None:
        # A table write only queues its changelog record in faust's producer buffer, and
        # faust's pre-commit flush gives up on that buffer after 0.1 s without progress. Wait
        # until the buffer is empty, so the Kafka producer holds the record before the input
        # is acknowledged and the pre-commit flush of the Kafka producer covers it.
        buffer = self.app.producer.buffer
        while buffer.size:
            await buffer.flush()


def build_app(
    settings: Settings,
    codec: EventCodec,
    catalog: CurriculumCatalog,
    web_port: int | None = None,
    metrics: ServiceMetrics | None = None,
    catch_up: Callable[[], None] | None = None,
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
        TableManager=_TableManager,
        web_enabled=web_port is not None,
        web_port=web_port if web_port is not None else DEFAULT_WEB_PORT,
    )
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
    step = ProcessorStep(TrainingCore(catalog), codec, clock=clock)
    processor = FaustProcessor(
        app, step, table, outputs, metrics, sessions, catch_up, commands=topics.commands
    )

    @app.agent(
        raw_topic(topics.events, topics.commands),
        name="process_events",
        # One message at a time: per-mouse order, and acks (so commits) in offset order.
        concurrency=1,
        supervisor_strategy=CrashingSupervisor,
    )
    async def process_events(stream: StreamT[Any]) -> None:
        """Runs the processing step over the events and commands topics, one message at a
        time."""
        # Manual acks: faust acks an event when the loop moves on, even when the body raised;
        # an input must count as done only after its outputs and state are handed over.
        # (noack is on faust's Stream, not on its StreamT interface.)
        manual = cast("faust.Stream[Any]", stream).noack()
        async for event in manual.events():
            await processor.handle(event)
            await manual.ack(event)

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
