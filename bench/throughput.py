"""(b) Trial events per second through Kafka and the processor, and the raw Kafka rates.

Per repeat, on fresh topics (4 partitions) with a fresh processor process:

1. enrol the mice and wait for their first assignments (the processor is up and warm);
2. **live**: publish every session's events with a rig-like kafka-python producer (acks=all,
   idempotent) as fast as it goes, and time from the first send until the decision
   (StageTransitioned) on the last session of every mouse is on the decisions topic. The
   producer runs in this process while the processor works, on the same two cores;
3. **replay**: stop that processor and start a new one (a new consumer group, an empty state
   table) on the same topics: it reads the whole event log from offset 0, as after a reset.
   Timed from its first output to the last decision, by the broker timestamps its producer set,
   so nothing else runs while it works.

Raw Kafka on the same broker, for comparison: the same producer settings sending the same keys
and values (the encoded events) to a plain 4-partition topic, and a kafka-python consumer
without a group reading them back from the beginning. And a minimal faust app (no table, no
decoding, automatic acks, the processor's commit settings) reading that topic from offset 0 in
its own process, timed from its first message to its last: the ceiling of any faust agent on
this machine (``python -m bench.throughput minimal-faust ...`` runs it).

The replaying processor's state changelogs are read back at the end of each repeat: records
and bytes per trial event (issue 14, item 7: at most one record per mouse per batch).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from bench.kafka_env import (
    BenchError,
    KafkaEnv,
    Service,
    rig_producer,
    topic_reader,
    wait_until,
)
from bench.stats import Figure, Results
from bench.workload import Encoded, Workload, build_workload, encode
from shaping.schemas.codec import default_codec
from shaping.schemas.errors import SerializationError
from shaping.schemas.events import AssignmentIssued, EventRejected, StageTransitioned
from shaping.schemas.topics import TopicNames
from shaping.services.processor.state_store import Changelogs

STARTUP_TIMEOUT_S = 180.0


class OutputWatch:
    """Follows a processor's decisions, assignments and dead letters.

    Args:
        from_end: start after what the topics hold now (to watch a second processor's outputs
            only); otherwise from the beginning.
    """

    def __init__(self, bootstrap: str, topics: TopicNames, from_end: bool = False) -> None:
        self.topics = topics
        self.codec = default_codec()
        self.consumer: KafkaConsumer = topic_reader(
            bootstrap, [topics.decisions, topics.assignments, topics.dead_letter], "bench-watch"
        )
        if from_end:
            partitions = list(self.consumer.assignment())
            self.consumer.seek_to_end(*partitions)
            for tp in partitions:  # resolve the positions now, not at the first poll
                self.consumer.position(tp)
        self.assigned: set[str] = set()
        self.decided: dict[str, dict[str, int]] = {}  # mouse -> session -> broker time (ms)
        self.first_output_ms: int | None = None

    def poll(self, timeout_s: float = 0.2) -> None:
        batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000))
        for records in batches.values():
            for record in records:
                self._take(record)

    def _take(self, record: object) -> None:
        topic, value, ms = record.topic, record.value, record.timestamp  # type: ignore[attr-defined]
        if self.first_output_ms is None or ms < self.first_output_ms:
            self.first_output_ms = ms
        try:
            event = self.codec.decode(value)
        except SerializationError as exc:
            raise BenchError(f"undecodable output on {topic}: {exc}") from exc
        if isinstance(event, EventRejected):
            raise BenchError(
                f"the processor rejected an input ({event.error_kind}): {event.reason}; "
                "the benchmark's workload must be valid, so its figures would be wrong"
            )
        if isinstance(event, AssignmentIssued):
            self.assigned.add(event.mouse_id)
        elif isinstance(event, StageTransitioned):
            sessions = self.decided.setdefault(event.mouse_id, {})
            sessions.setdefault(event.session_id or "", ms)

    def wait(
        self, done: Callable[[], bool], timeout_s: float, what: str, processor: Service
    ) -> None:
        """Polls until ``done()`` holds; BenchError after ``timeout_s`` or if the processor dies."""
        deadline = time.monotonic() + timeout_s
        while not done():
            processor.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"no {what} within {timeout_s:g} s\n{processor.log_tail()}")
            self.poll()

    def all_decided(self, last_session: dict[str, str]) -> bool:
        return all(s in self.decided.get(m, {}) for m, s in last_session.items())

    def last_decision_ms(self, last_session: dict[str, str]) -> int:
        return max(self.decided[m][s] for m, s in last_session.items())

    def close(self) -> None:
        self.consumer.close()


def send_all(producer: KafkaProducer, topic: str, encoded: Encoded) -> None:
    for key, value in zip(encoded.keys, encoded.values, strict=True):
        producer.send(topic, key=key, value=value)
    producer.flush()


def processing_timeout(n_events: int) -> float:
    """A bound for a whole run: generous (the machine is shared), but finite."""
    return 120.0 + n_events / 100


def run_through_processor(
    env: KafkaEnv, workload: Workload, enrolments: Encoded, sessions: Encoded
) -> tuple[float, float, float, float, float, tuple[int, int]]:
    """One repeat; returns (live seconds, seconds until the producer had sent, replay seconds,
    the CPU time per wall-clock second of the replaying processor, and of the broker, and the
    replaying processor's changelog records and bytes)."""
    topics = env.fresh_topics()
    processor = env.start_processor(topics)
    producer = rig_producer(env.bootstrap, "bench-rigs")
    watch = OutputWatch(env.bootstrap, topics)
    try:
        send_all(producer, topics.events, enrolments)
        watch.wait(
            lambda: watch.assigned >= set(workload.mice),
            STARTUP_TIMEOUT_S,
            "first assignment for every enrolled mouse (processor start-up)",
            processor,
        )
        start_ms = time.time() * 1000
        start = time.perf_counter()
        send_all(producer, topics.events, sessions)
        sent_s = time.perf_counter() - start
        watch.wait(
            lambda: watch.all_decided(workload.last_session),
            processing_timeout(len(sessions)),
            "decision on the last session of every mouse",
            processor,
        )
        live_s = (watch.last_decision_ms(workload.last_session) - start_ms) / 1000
    finally:
        watch.close()
        producer.close()
        env.stop_service(processor)

    # Replay: a new processor (new group, empty table) reads the whole log on its own.
    replay_watch = OutputWatch(env.bootstrap, topics, from_end=True)
    replayer = env.start_processor(topics)
    try:
        replay_watch.wait(
            lambda: replay_watch.first_output_ms is not None,
            STARTUP_TIMEOUT_S,
            "first output from the replaying processor",
            replayer,
        )
        cpu_start, wall_start = replayer.cpu_seconds(), time.perf_counter()
        broker_start = env.broker_cpu_seconds()
        replay_watch.wait(
            lambda: replay_watch.all_decided(workload.last_session),
            processing_timeout(len(sessions)),
            "decision on the last session of every mouse from the replaying processor",
            replayer,
        )
        wall = time.perf_counter() - wall_start
        cpu_share = (replayer.cpu_seconds() - cpu_start) / wall
        broker_share = (env.broker_cpu_seconds() - broker_start) / wall
        first_ms = replay_watch.first_output_ms or 0
        replay_s = (replay_watch.last_decision_ms(workload.last_session) - first_ms) / 1000
    finally:
        replay_watch.close()
        env.stop_service(replayer)
    written = changelog_size(env, replayer.name)
    return live_s, sent_s, replay_s, cpu_share, broker_share, written


def changelog_size(env: KafkaEnv, processor_id: str) -> tuple[int, int]:
    """Records and bytes (keys and values) on a processor's state changelogs."""
    topics = Changelogs.of(processor_id).all()
    consumer = topic_reader(env.bootstrap, topics, "bench-changelogs")
    try:
        ends = consumer.end_offsets(list(consumer.assignment()))
        records = size = 0

        def at_end() -> bool:
            return all(consumer.position(tp) >= end for tp, end in ends.items())

        deadline = time.monotonic() + 120
        while not at_end():
            if time.monotonic() > deadline:
                raise BenchError(f"could not read the changelogs {topics} to their end")
            for batch in consumer.poll(timeout_ms=200).values():
                for record in batch:
                    records += 1
                    size += len(record.key or b"") + len(record.value or b"")
        return records, size
    finally:
        consumer.close()


def raw_produce(env: KafkaEnv, encoded: Encoded) -> tuple[str, float]:
    """Sends the messages to a new plain topic; returns (topic, seconds until all acked)."""
    topic = env.raw_topic()
    producer = rig_producer(env.bootstrap, "bench-raw-producer")
    try:
        producer.send(topic, key=b"warm-up", value=b"warm-up").get(timeout=30)
        start = time.perf_counter()
        send_all(producer, topic, encoded)
        return topic, time.perf_counter() - start
    finally:
        producer.close()


def raw_consume(env: KafkaEnv, topic: str, expected: int) -> float:
    """Reads ``expected`` messages (after the warm-up one) from the beginning of ``topic``."""
    consumer = topic_reader(env.bootstrap, [topic], "bench-raw-consumer")
    try:
        seen = 0
        deadline = time.monotonic() + processing_timeout(expected)
        start = time.perf_counter()
        while seen < expected + 1:
            if time.monotonic() > deadline:
                raise BenchError(f"read only {seen} of {expected + 1} messages back from {topic}")
            for records in consumer.poll(timeout_ms=200).values():
                seen += len(records)
        return time.perf_counter() - start
    finally:
        consumer.close()


def measure(
    results: Results,
    env: KafkaEnv,
    repeats: int,
    n_mice: int = 10,
    sessions_per_mouse: int = 6,
    trials_per_session: int = 500,
) -> None:
    print(f"(b) kafka: building {n_mice} mice x {sessions_per_mouse} sessions ...", flush=True)
    workload = build_workload(n_mice, sessions_per_mouse, trials_per_session, tag="K")
    enrolments = encode(list(workload.enrolments))
    sessions = encode(workload.session_events())
    n_trials, n_msgs = sessions.n_trials, len(sessions)
    results.detail(f"(b) workload: {workload.describe()}.")

    live, sent, replay, cpu, broker_cpu, written = [], [], [], [], [], []
    produced, consumed, minimal, reading = [], [], [], []
    for repeat in range(repeats):
        # The raw baselines run right after the processor in each repeat, so that a ratio
        # "in the same repeat" compares two runs minutes apart at most on this shared machine.
        print(f"  processor run {repeat + 1}/{repeats} ...", flush=True)
        live_s, sent_s, replay_s, cpu_share, broker_share, size = run_through_processor(
            env, workload, enrolments, sessions
        )
        written.append(size)
        cpu.append(cpu_share * 100)
        broker_cpu.append(broker_share * 100)
        live.append(live_s)
        sent.append(sent_s)
        replay.append(replay_s)
        env.drop_topics()
        print(f"  raw Kafka run {repeat + 1}/{repeats} ...", flush=True)
        topic, produce_s = raw_produce(env, sessions)
        produced.append(produce_s)
        consumed.append(raw_consume(env, topic, n_msgs))
        minimal.append(minimal_faust(env, topic, n_msgs + 1))
        reading.append(minimal_faust(env, topic, n_msgs + 1, batched=True))
        env.drop_topics()
    results.add(
        Figure(
            "kafka",
            "live: rig producer -> Kafka -> processor -> decisions topic",
            "trial events/s",
            tuple(n_trials / s for s in live),
            f"{n_trials:,} trials published at full speed; first send to last decision",
        )
    )
    results.add(
        Figure(
            "kafka",
            "replay: processor alone catching up on the stored log",
            "trial events/s",
            tuple(n_trials / s for s in replay),
            "new consumer group from offset 0; first to last output (broker time)",
        )
    )
    results.add(
        Figure(
            "kafka",
            "replay: processor's CPU use meanwhile",
            "% of one core",
            tuple(cpu),
            "user + system time of the processor process / wall time (100 = one core busy)",
        )
    )
    results.add(
        Figure(
            "kafka",
            "replay: broker's CPU use meanwhile",
            "% of one core",
            tuple(broker_cpu),
            "the Kafka JVM, same measure (the machine has 2 cores in all)",
        )
    )
    results.add(
        Figure(
            "kafka",
            "replay: state changelog records per 1,000 trial events",
            "records",
            tuple(records * 1000 / n_trials for records, _ in written),
            f"both changelogs of the replaying processor ({len(workload.mice)} mice)",
        )
    )
    results.add(
        Figure(
            "kafka",
            "replay: state changelog bytes per trial event",
            "B",
            tuple(size / n_trials for _, size in written),
            "keys and values of every changelog record, before compaction",
        )
    )
    results.add(
        Figure(
            "kafka",
            "live run's producer alone (send + flush, processor busy meanwhile)",
            "msgs/s",
            tuple(n_msgs / s for s in sent),
            f"{n_msgs:,} messages (trials, starts, ends)",
        )
    )

    results.add(
        Figure(
            "kafka",
            "raw kafka-python producer (acks=all, idempotent)",
            "msgs/s",
            tuple(n_msgs / s for s in produced),
            f"same {n_msgs:,} keys and values ({sessions.mean_value_bytes:.0f} B mean), "
            "4 partitions",
            baseline=True,
        )
    )
    results.add(
        Figure(
            "kafka",
            "raw kafka-python consumer (no group, from offset 0)",
            "msgs/s",
            tuple(n_msgs / s for s in consumed),
            "reads the same messages back, no decoding",
            baseline=True,
        )
    )
    results.add(
        Figure(
            "kafka",
            "minimal faust app, no table (from offset 0)",
            "msgs/s",
            tuple(n_msgs / s for s in minimal),
            "one agent counting the same messages, automatic acks, the processor's commit "
            "settings; first to last message",
            baseline=True,
        )
    )
    results.add(
        Figure(
            "kafka",
            "minimal faust app reading as the processor does, no step (from offset 0)",
            "msgs/s",
            tuple(n_msgs / s for s in reading),
            "manual acks, the processor's batches (500 messages or 20 ms), each message "
            "acknowledged after its batch; nothing decoded, no state, nothing published",
            baseline=True,
        )
    )
    rates = [n_trials / s for s in replay]
    results.add(
        Figure(
            "kafka",
            "replay rate / minimal faust app (same repeat)",
            "%",
            tuple(100 * r / (n_msgs / m) for r, m in zip(rates, minimal, strict=True)),
            "trial events/s of the processor over msgs/s of the minimal app (target >= 70 %)",
        )
    )
    results.add(
        Figure(
            "kafka",
            "replay rate / raw kafka-python consumer (same repeat)",
            "%",
            tuple(100 * r / (n_msgs / c) for r, c in zip(rates, consumed, strict=True)),
            "target >= 30 %",
        )
    )
    results.add(
        Figure(
            "kafka",
            "replay rate / minimal faust app reading as the processor (same repeat)",
            "%",
            tuple(100 * r / (n_msgs / m) for r, m in zip(rates, reading, strict=True)),
            "what the step and the state cost on top of the processor's reading path",
        )
    )


# -- the minimal faust app --------------------------------------------------------------------

MINIMAL_DONE = "minimal-faust: read"


def minimal_faust(env: KafkaEnv, topic: str, expected: int, batched: bool = False) -> float:
    """Runs the minimal faust app (``batched``: reading as the processor does) on ``topic``
    until it has read ``expected`` messages; returns its seconds from the first message to the
    last."""
    app_id = f"bench-minimal-{time.time_ns() % 10**8}"
    argv = ["-m", "bench.throughput", "minimal-faust", "--bootstrap", env.bootstrap]
    argv += ["--topic", topic, "--expected", str(expected), "--app-id", app_id]
    argv += ["--datadir", str(env.workdir / "data" / app_id)]
    argv += ["--batched"] if batched else []
    service = env.start_service("minimal-faust", argv)
    try:

        def finished() -> str | None:
            service.check_alive()
            text = service.log.read_text(errors="replace")
            return next((line for line in text.splitlines() if MINIMAL_DONE in line), None)

        line = wait_until(
            finished, processing_timeout(expected), "minimal faust app's last message", 0.2
        )
        return float(str(line).split()[-2])
    finally:
        env.stop_service(service)


def run_minimal_faust(
    bootstrap: str, topic: str, expected: int, app_id: str, datadir: str, batched: bool = False
) -> None:
    """The minimal faust app: counts the messages of ``topic`` from offset 0 and prints the
    seconds from the first to the ``expected``-th; runs until stopped.

    ``batched``: it reads as the processor does, and does nothing else: manual acks
    (``noack``), the processor's ``batches`` with its bounds, each message acknowledged after
    its batch. The processor's ceiling on this reading path: its step comes on top."""
    import faust

    from shaping.services.processor.app import (
        BATCH_IDLE_S,
        BATCH_MAX,
        BATCH_WITHIN_S,
        COMMIT_EVERY,
        COMMIT_INTERVAL_S,
        batches,
    )

    Path(datadir).parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        datadir=datadir,
        store="memory://",
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        broker_commit_interval=COMMIT_INTERVAL_S,
        broker_commit_every=COMMIT_EVERY,
        topic_disable_leader=True,
        web_enabled=False,
    )
    source = app.topic(topic, key_serializer="raw", value_serializer="raw")
    seen = 0
    first = 0.0

    def counted(n: int) -> None:
        nonlocal seen, first
        if not seen:
            first = time.perf_counter()
        before, seen = seen, seen + n
        if before < expected <= seen:
            seconds = time.perf_counter() - first
            print(f"{MINIMAL_DONE} {seen} messages in {seconds:.6f} s", flush=True)

    @app.agent(source, concurrency=1)
    async def count(stream: Any) -> None:
        if not batched:
            async for _ in stream:
                counted(1)
            return
        manual = stream.noack()
        async for events in batches(manual, BATCH_MAX, BATCH_WITHIN_S, BATCH_IDLE_S):
            counted(len(events))
            for event in events:
                await manual.ack(event)

    worker = faust.Worker(app, loglevel="warn", quiet=True, redirect_stdouts=False)
    worker.spinner = None
    worker.execute_from_commandline()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput")
    commands = parser.add_subparsers(dest="command", required=True)
    minimal = commands.add_parser("minimal-faust", help="the minimal faust app (a baseline)")
    minimal.add_argument("--bootstrap", required=True)
    minimal.add_argument("--topic", required=True)
    minimal.add_argument("--expected", type=int, required=True)
    minimal.add_argument("--app-id", required=True)
    minimal.add_argument("--datadir", required=True)
    minimal.add_argument("--batched", action="store_true", help="read as the processor does")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    run_minimal_faust(
        args.bootstrap, args.topic, args.expected, args.app_id, args.datadir, args.batched
    )


if __name__ == "__main__":
    main()
