"""``python -m bench.replay_scale [--mice N --sessions N --trials N] [--workers N]``: replay of a
large history from Kafka, beside its baselines, in one run.

It starts the benchmark broker (:class:`bench.kafka_env.KafkaEnv`), publishes a generated
history (the benchmark workload: simulated mice on the rig runtime) to a fresh events topic, and
measures, each on the same topic:

1. the readers alone: kafka-python's consumer and confluent-kafka's, every partition assigned,
   the records only counted; then replay's own partition reader (:func:`read_partition`, a
   ``SourceRecord`` per message) with each client;
2. the work per message alone, in one process, no Kafka: decoding, the core on decoded events,
   the processor's step (decode + core), on the first ``--step-sample`` messages;
3. ``shaping replay`` (a process of its own) on the topic into fresh SQLite tables and a fresh
   processor group, with each reader (``--reader``) and ``--workers`` processes: seconds (the
   whole command: snapshot, fold, tables, publishing, hand-over), trial events per second,
   peak memory of its largest process; and the projection to 10^7 and 10^8 trial events.

Prints the figures; ``--json`` writes them too. With ``SHAPING_BENCH_LOCK=/tmp/shaping-kafka.lock``
the broker's part waits for that lock (the history is generated before).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, cast

from bench.kafka_env import KafkaEnv
from bench.workload import build_workload, encode
from shaping.schemas.codec import default_codec
from shaping.schemas.events import TrialCompleted
from shaping.services.adapters.kafka import KafkaConnection, confluent_options
from shaping.services.curricula.catalog import default_catalog
from shaping.services.domain import TrainingCore, initial_state
from shaping.services.operator.replay.log import (
    READERS,
    Reader,
    kafka_offsets,
    read_partition,
)
from shaping.services.processor.step import ProcessorStep
from shaping.services.projector.store import SqlProjectionStore


def publish(bootstrap: str, topic: str, keys: list[bytes], values: list[bytes]) -> float:
    """Publishes the messages (confluent-kafka's producer, the Java client's partitioner, so a
    mouse lands where kafka-python and faust would put it); returns the seconds it took."""
    from confluent_kafka import Producer

    producer = Producer(
        {
            **confluent_options(KafkaConnection.of(bootstrap), "bench-replay-producer"),
            "partitioner": "murmur2_random",
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 500_000,
            "enable.idempotence": True,
        }
    )
    started = time.perf_counter()
    for key, value in zip(keys, values, strict=True):
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"{left} messages not delivered")
    return time.perf_counter() - started


def raw_kafka_python(bootstrap: str, topic: str, total: int) -> float:
    """kafka-python's consumer, every partition assigned, records counted: messages/s."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=10_000,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        seen = 0
        started = time.perf_counter()
        while seen < total:
            for records in consumer.poll(timeout_ms=500).values():
                seen += len(records)
        return total / (time.perf_counter() - started)
    finally:
        consumer.close()


def raw_confluent(bootstrap: str, topic: str, total: int) -> float:
    """confluent-kafka's consumer, every partition assigned, records counted: messages/s."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            **confluent_options(KafkaConnection.of(bootstrap), "bench-replay-raw"),
            "group.id": f"bench-unused-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=30)
        consumer.assign([TopicPartition(topic, p, 0) for p in metadata.topics[topic].partitions])
        seen = 0
        started = time.perf_counter()
        while seen < total:
            seen += sum(1 for m in consumer.consume(10_000, 0.5) if m.error() is None)
        return total / (time.perf_counter() - started)
    finally:
        consumer.close()


def partition_reader(bootstrap: str, topic: str, reader: Reader) -> float:
    """Replay's reader (:func:`read_partition`), the partitions one after the other:
    messages/s."""
    bounds = kafka_offsets(bootstrap, [topic])
    seen = 0
    started = time.perf_counter()
    for (name, partition), (begin, end) in sorted(bounds.items()):
        for _ in read_partition(
            bootstrap, name, partition, begin, end, "bench-replay-reader", reader=reader
        ):
            seen += 1
    return seen / (time.perf_counter() - started)


def in_process(keys: list[bytes], values: list[bytes]) -> dict[str, float]:
    """Decoding, the core, and the step alone, on these messages: trial events/s of each."""
    codec = default_codec()
    trials = 0
    gc.collect()
    started = time.perf_counter()
    events = [codec.decode(v) for v in values]
    decode_s = time.perf_counter() - started
    trials = sum(isinstance(e, TrialCompleted) for e in events)
    core = TrainingCore(default_catalog())
    states: dict[str, Any] = {}
    started = time.perf_counter()
    for event in events:
        state = states.get(event.mouse_id) or initial_state(event.mouse_id)
        states[event.mouse_id], _ = core.handle(state, event)
    core_s = time.perf_counter() - started
    step = ProcessorStep(TrainingCore(default_catalog()), codec)
    by_key: dict[bytes, Any] = {}
    started = time.perf_counter()
    for offset, (key, value) in enumerate(zip(keys, values, strict=True)):
        result = step.process(by_key.get(key), key, value, "bench.events", 0, offset)
        if result.state is not None:
            by_key[key] = result.state
    step_s = time.perf_counter() - started
    return {
        "decode": trials / decode_s,
        "core": trials / core_s,
        "step": trials / step_s,
    }


def replay_once(
    bootstrap: str, prefix: str, reader: Reader, workers: int, trials: int
) -> dict[str, Any]:
    """``shaping replay`` in a process of its own (so its peak memory is its own) on the topic,
    into fresh SQLite tables and a fresh processor group."""
    folder = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    db_url = f"sqlite:///{folder / 'shaping.sqlite'}"
    SqlProjectionStore(db_url, codec=default_codec()).close()
    argv = [
        sys.executable,
        "-m",
        "shaping.services.cli",
        "replay",
        "--bootstrap",
        bootstrap,
        "--prefix",
        prefix,
        "--db-url",
        db_url,
        "--processor-id",
        f"bench-replay-{uuid.uuid4().hex[:8]}",
        "--workers",
        str(workers),
        "--reader",
        reader,
    ]
    started = time.perf_counter()
    env = {**os.environ, "COLUMNS": "250"}  # the summary on one line
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=3600, env=env)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"shaping replay failed ({done.returncode}):\n{done.stderr[-3000:]}")
    found = re.search(r"peak\s+memory\s+([\d,]+)\s+MB", done.stdout)
    return {
        "seconds": seconds,
        "trials_per_s": trials / seconds,
        "peak_rss_mb": float(found.group(1).replace(",", "")) if found else None,
        "summary": done.stdout.strip().splitlines()[0] if done.stdout.strip() else "",
    }


def _generated(
    mice: int, sessions: int, trials: int, tag: str
) -> tuple[list[bytes], list[bytes], int]:
    """One history's keys, values and trial count (run in a worker process)."""
    encoded = encode(build_workload(mice, sessions, trials, tag=tag).events())
    return encoded.keys, encoded.values, encoded.n_trials


def many_copies(args: argparse.Namespace, reader: Reader) -> int:
    """``--copies N``: N histories (mice ``R0001``.., ``S0001``.., each copy its own letters)
    published to one topic as they are generated, then one replay of the whole topic."""
    from concurrent.futures import ProcessPoolExecutor

    from shaping.schemas.topics import TopicNames
    from shaping.services.adapters.topics import ensure_topics

    tags = [f"R{index}" for index in range(args.copies)]
    figures: dict[str, Any] = {"copies": args.copies, "load_before": os.getloadavg()}
    lock = os.environ.get("SHAPING_BENCH_LOCK")
    if lock:
        import fcntl

        held = Path(lock).open("a")  # noqa: SIM115 - held until the process ends
        print(f"waiting for {lock} ...", flush=True)
        fcntl.flock(held, fcntl.LOCK_EX)
    with KafkaEnv() as env:
        env.start()
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        topics = TopicNames.with_prefix(prefix)
        ensure_topics(env.bootstrap, topics, partitions=4)
        trials = messages = 0
        began = time.perf_counter()
        with ProcessPoolExecutor(max_workers=2) as pool:
            copies = pool.map(
                _generated,
                *zip(*[(args.mice, args.sessions, args.trials, tag) for tag in tags], strict=True),
            )
            for index, (keys, values, n_trials) in enumerate(copies):
                publish(env.bootstrap, topics.events, keys, values)
                trials += n_trials
                messages += len(values)
                print(
                    f"copy {index + 1}/{args.copies} published ({messages:,} messages, "
                    f"{time.perf_counter() - began:.0f} s)",
                    flush=True,
                )
                del keys, values
        figures["history"] = (
            f"{trials:,} trials = {args.copies} x {args.mice} mice x {args.sessions} sessions x "
            f"{args.trials} trials ({messages:,} messages)"
        )
        print(f"history: {figures['history']}", flush=True)
        result = replay_once(env.bootstrap, prefix, reader, args.workers, trials)
        figures["replay"] = {reader: result}
        print(f"run_replay with {reader}, {args.workers} workers: {result}", flush=True)
    figures["load_after"] = os.getloadavg()
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replay_scale", description=__doc__)
    parser.add_argument("--mice", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--trials", type=int, default=250)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--readers", default="confluent,kafka-python")
    parser.add_argument("--step-sample", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--copies",
        type=int,
        default=1,
        help="publish this many histories, each with mice of its own (generated two at a time "
        "and published as they come, so the benchmark never holds more than two); with more "
        "than one, only the replay with the first reader is measured",
    )
    args = parser.parse_args(argv)
    readers = [cast(Reader, r.strip()) for r in args.readers.split(",") if r.strip()]
    if not readers or not set(readers) <= set(READERS):
        parser.error(f"--readers takes some of {', '.join(READERS)}")
    if args.copies < 1:
        parser.error("--copies must be at least 1")
    if args.copies > 1:
        return many_copies(args, readers[0])

    began = time.perf_counter()
    workload = build_workload(args.mice, args.sessions, args.trials, tag="R")
    encoded = encode(workload.events())
    trials = encoded.n_trials
    print(
        f"workload: {workload.describe()}, {encoded.mean_value_bytes:.0f} B per message "
        f"(generated in {time.perf_counter() - began:.0f} s)",
        flush=True,
    )
    figures: dict[str, Any] = {"workload": workload.describe(), "load_before": os.getloadavg()}
    sample = args.step_sample
    figures["in_process"] = in_process(encoded.keys[:sample], encoded.values[:sample])
    print(f"in process (first {sample:,} messages): {figures['in_process']}", flush=True)
    lock = os.environ.get("SHAPING_BENCH_LOCK")
    if lock:  # the broker's part only (generating the history needs no broker)
        import fcntl

        held = Path(lock).open("a")  # noqa: SIM115 - held until the process ends
        print(f"waiting for {lock} ...", flush=True)
        fcntl.flock(held, fcntl.LOCK_EX)
    with KafkaEnv() as env:
        env.start()
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        from shaping.schemas.topics import TopicNames
        from shaping.services.adapters.topics import ensure_topics

        topics = TopicNames.with_prefix(prefix)
        ensure_topics(env.bootstrap, topics, partitions=4)
        figures["publish_s"] = publish(env.bootstrap, topics.events, encoded.keys, encoded.values)
        print(f"published {len(encoded):,} messages in {figures['publish_s']:.1f} s", flush=True)
        total = len(encoded)
        figures["raw"] = {
            "kafka-python": raw_kafka_python(env.bootstrap, topics.events, total),
            "confluent": raw_confluent(env.bootstrap, topics.events, total),
        }
        print(f"raw readers, messages/s: {figures['raw']}", flush=True)
        figures["reader"] = {r: partition_reader(env.bootstrap, topics.events, r) for r in readers}
        print(f"replay's partition reader, messages/s: {figures['reader']}", flush=True)
        figures["replay"] = {}
        for reader in readers:
            # Each replay on a fresh copy of the topics: the first one publishes the accepted
            # inputs and the decisions, which a second would find and keep.
            if reader != readers[0]:
                prefix = f"bench-{uuid.uuid4().hex[:8]}"
                topics = TopicNames.with_prefix(prefix)
                ensure_topics(env.bootstrap, topics, partitions=4)
                publish(env.bootstrap, topics.events, encoded.keys, encoded.values)
            result = replay_once(env.bootstrap, prefix, reader, args.workers, trials)
            figures["replay"][reader] = result
            print(f"run_replay with {reader}, {args.workers} workers: {result}", flush=True)
    figures["load_after"] = os.getloadavg()
    best = max(r["trials_per_s"] for r in figures["replay"].values())
    figures["projection_s"] = {"1e7": 1e7 / best, "1e8": 1e8 / best}
    print(
        f"at {best:,.0f} trial events/s: 10^7 in {1e7 / best / 60:.1f} min, "
        f"10^8 in {1e8 / best / 3600:.1f} h",
        flush=True,
    )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
