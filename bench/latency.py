"""(c) Milliseconds from SessionEnded published to the next AssignmentIssued seen by the rig.

Per repeat, on fresh topics with a fresh processor process, the mice are enrolled and then
the rig runtime (:class:`~shaping.rig.agent.RigAgent` with the scripted task, as in the demo,
over :class:`KafkaRigTransport`, the real rig adapter) runs short simulated sessions one after
another, round robin over the mice. The agent hands a session to its transport in one batch;
:class:`TimedRig` publishes SessionStarted and the trials, then starts the clock and publishes
SessionEnded (``publish`` returns once the broker acknowledged it). The bench then waits in
``latest_assignment`` until the assignment with the next session number arrives. The first
session of every mouse is a warm-up and is not counted.

Raw Kafka on the same broker, for comparison, one message at a time with the same producer
settings and a consumer already polling:

* one hop: produce, flush, consume;
* two hops: produce to a topic that a minimal kafka-python relay process (``bench.relay``)
  copies to another, consume there. That is the processor's path (rig -> events -> processor
  -> assignments -> rig) without decoding, domain work, state table or faust;
* the same two hops while a processor on other topics takes the loaded runs' load: what the
  load costs a path that does no work, on the same two cores.
"""

from __future__ import annotations

import gc
import multiprocessing
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as StopFlag
from typing import TypeVar

from kafka import KafkaConsumer, KafkaProducer

from bench.kafka_env import BenchError, KafkaEnv, Service, rig_producer, topic_reader
from bench.stats import Figure, Results, percentile
from bench.workload import (
    SEED,
    START,
    Encoded,
    QuietDisplay,
    bench_agents,
    build_workload,
    encode,
    enrolment,
    mouse_ids,
    rig_of,
    session_parameters,
)
from shaping.rig.agent import RunOptions
from shaping.rig.link.kafka import KafkaRigTransport
from shaping.rig.sim.mouse import SimulatedMouse
from shaping.schemas.codec import default_codec
from shaping.schemas.events import AssignmentIssued, Event, MouseEnrolled, SessionEnded

T = TypeVar("T")

STARTUP_TIMEOUT_S = 180.0
ANSWER_TIMEOUT_S = 30.0
STATS = (("median", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0))
LOAD_RATE = 1000
"""Trial events/s other mice send meanwhile in the loaded runs: about half of what the
processor replays in (b), far more than any lab's rigs (100 rigs send about 10 a second)."""
LOAD_SECONDS = 360
"""How long the load lasts at most (its events are built before the clocks start). A loaded
run takes 40-50 s; the rest is for a slow one: on 2026-12-07 about one in three took about
200 s, the rig waiting about 1.5 s for every assignment, until the processor's fetch wait was
shortened from faust's 1.5 s (services/processor/fetching.py)."""

LOAD_ROUNDS = 4
"""Sessions per load mouse, back to back (:func:`staggered`)."""


@dataclass(frozen=True)
class Load:
    """Other mice's work during a loaded run.

    Attributes:
        enrolments: the load's mice, enrolled with the timed mice before the clocks start
            (a cohort's enrolment is a one-off; the load is its sessions).
        events: their sessions' events, encoded, sent at :data:`LOAD_RATE` while the clocks
            run.
    """

    enrolments: list[MouseEnrolled]
    events: Encoded


def _publish_load(bootstrap: str, topic: str, load: Encoded, rate: float, stop: StopFlag) -> None:
    """Sends ``load`` at ``rate`` messages a second (in a process of its own, so the rig and
    this load do not share an interpreter) until it is sent or ``stop`` is set."""
    producer = rig_producer(bootstrap, "bench-load")
    start = time.perf_counter()
    done = 0
    try:
        while done < len(load) and not stop.is_set():
            due = min(len(load), int((time.perf_counter() - start) * rate) + 1)
            while done < due:
                producer.send(topic, key=load.keys[done], value=load.values[done])
                done += 1
            time.sleep(0.005)
        producer.flush()
    finally:
        producer.close()


def wait_for_assignment(
    rig: KafkaRigTransport,
    mouse_id: str,
    session_number: int,
    timeout_s: float,
    processor: Service,
) -> AssignmentIssued:
    """The mouse's assignment numbered at least ``session_number``; BenchError if none comes."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = rig.latest_assignment(mouse_id, session_number, timeout_s=1.0)
        if found is not None and found.session_number >= session_number:
            return found
        processor.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(
                f"no assignment #{session_number} for {mouse_id} within {timeout_s:g} s "
                f"(latest: {found.session_number if found else None})\n{processor.log_tail()}"
            )


class TimedRig:
    """The rig's Kafka transport, timing each session's end: a batch that ends a session is
    published as its start and trials, then (clock started) its SessionEnded alone. Assignments
    come with exactly ``trials_per_session`` trials and no time limit."""

    def __init__(self, rig: KafkaRigTransport, trials_per_session: int) -> None:
        self.rig = rig
        self.trials_per_session = trials_per_session
        self.ended_at = 0.0  # perf_counter when the last SessionEnded was handed to the broker
        self.acked_at = 0.0  # ... and when the broker acknowledged it

    def publish(self, events: Sequence[Event]) -> None:
        if not events or not isinstance(events[-1], SessionEnded):
            self.rig.publish(events)
            return
        *body, ended = events
        self.rig.publish(body)
        self.ended_at = time.perf_counter()
        self.rig.publish([ended])
        self.acked_at = time.perf_counter()

    def latest_assignment(
        self, mouse_id: str, min_session_number: int = 1, timeout_s: float = 0.0
    ) -> AssignmentIssued | None:
        found = self.rig.latest_assignment(mouse_id, min_session_number, timeout_s)
        return None if found is None else session_parameters(found, self.trials_per_session)


def staggered(streams: Sequence[Sequence[T]], spread: int) -> list[T]:
    """The streams merged one event from each in turn (each stream's order kept), stream ``i``
    of ``n`` joining ``i * spread // n`` turns after the first: with ``spread`` the length of a
    session, the rigs' sessions start and end evenly spread in time, as in a lab whose rigs
    started at different times, not all in the same tenth of a second."""
    n = len(streams)
    offsets = [i * spread // n for i in range(n)]
    turns = max((o + len(s) for o, s in zip(offsets, streams, strict=True)), default=0)
    return [
        s[turn - o]
        for turn in range(turns)
        for o, s in zip(offsets, streams, strict=True)
        if 0 <= turn - o < len(s)
    ]


def run_sessions(
    env: KafkaEnv,
    n_mice: int,
    n_sessions: int,
    trials_per_session: int,
    load: Load | None = None,
) -> tuple[list[float], list[float]]:
    """One repeat; returns per session (ms until SessionEnded acked, ms until the assignment).
    With ``load``, its mice are enrolled with the timed ones, and their sessions are sent at
    :data:`LOAD_RATE` messages a second from another process the whole time the sessions are
    timed."""
    topics = env.fresh_topics()
    processor = env.start_processor(topics)
    rig = KafkaRigTransport(
        env.bootstrap, topics.events, topics.assignments, "bench-rig", codec=default_codec()
    )
    timed = TimedRig(rig, trials_per_session)
    sims = {m: SimulatedMouse(m, SEED) for m in mouse_ids(n_mice, tag="L")}
    ids = list(sims)
    agents = bench_agents(timed, sims, QuietDisplay())
    acked, answered = [], []
    try:
        enrolled = [enrolment(sim) for sim in sims.values()]
        with _under_load(env, topics.events, processor, rig, enrolled, load) as loader:
            done = dict.fromkeys(ids, 0)
            for index in range(n_mice + n_sessions):  # the first round is the warm-up
                mouse_id = ids[index % n_mice]
                options = RunOptions(
                    mouse_id,
                    start=START + timedelta(days=done[mouse_id], minutes=index % n_mice),
                    assignment_timeout_s=ANSWER_TIMEOUT_S,
                    session_number=done[mouse_id] + 1,
                )
                report = agents[rig_of(index % n_mice)].run(options)
                assert report.assignment is not None
                wait_for_assignment(
                    rig,
                    mouse_id,
                    report.assignment.session_number + 1,
                    ANSWER_TIMEOUT_S,
                    processor,
                )
                answer = time.perf_counter()
                done[mouse_id] += 1
                if index >= n_mice:
                    acked.append((timed.acked_at - timed.ended_at) * 1000)
                    answered.append((answer - timed.ended_at) * 1000)
            _check_load_lasted(loader)
    finally:
        rig.close()
        env.stop_service(processor)
    return acked, answered


@contextmanager
def _under_load(
    env: KafkaEnv,
    events_topic: str,
    processor: Service,
    rig: KafkaRigTransport,
    enrolled: list[MouseEnrolled],
    load: Load | None,
) -> Iterator[BaseProcess | None]:
    """Enrols ``enrolled`` and the load's mice and waits for their first assignments; then,
    with ``load``, sends its sessions from another process while the block runs (yields that
    process, or None without load)."""
    mice = [*enrolled, *(load.enrolments if load is not None else [])]
    rig.publish(mice)
    for event in mice:
        wait_for_assignment(rig, event.mouse_id, 1, STARTUP_TIMEOUT_S, processor)
    if load is None:
        yield None
        return
    stop = multiprocessing.get_context("fork").Event()
    loader = multiprocessing.get_context("fork").Process(
        target=_publish_load,
        args=(env.bootstrap, events_topic, load.events, LOAD_RATE, stop),
        daemon=True,
    )
    loader.start()
    try:
        yield loader
    finally:
        stop.set()
        loader.join(30)


def _check_load_lasted(loader: BaseProcess | None) -> None:
    if loader is not None and not loader.is_alive():
        raise BenchError(
            f"the load ran out before the clocks stopped ({LOAD_SECONDS} s of it at "
            f"{LOAD_RATE:,} messages/s): raise LOAD_SECONDS"
        )


def _round_trips(
    producer: KafkaProducer,
    consumer: KafkaConsumer,
    topic: str,
    key: bytes,
    value: bytes,
    count: int,
    timeout_s: float,
    relay: Service | None = None,
) -> list[float]:
    """Sends one message at a time and waits until ``consumer`` got it; returns ms each."""
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        producer.send(topic, key=key, value=value)
        producer.flush()
        deadline = time.monotonic() + timeout_s
        while not any(consumer.poll(timeout_ms=100).values()):
            if relay is not None:
                relay.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"a message sent to {topic} did not come back in {timeout_s} s")
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def raw_round_trips(
    env: KafkaEnv, n: int, value: bytes, relayed: bool, load: Load | None = None
) -> list[float]:
    """``n`` produce -> consume round trips (through the relay process if ``relayed``). With
    ``load``, a processor on fresh topics processes it meanwhile, as in the loaded runs of
    :func:`run_sessions`: the same load on the same two cores, none of it on the path timed."""
    source = env.raw_topic()
    target = env.raw_topic() if relayed else source
    topics = env.fresh_topics() if load is not None else None
    processor = env.start_processor(topics) if topics is not None else None
    relay = (
        env.start_service("relay", ["-m", "bench.relay", env.bootstrap, source, target])
        if relayed
        else None
    )
    producer = rig_producer(env.bootstrap, "bench-raw-rig")
    consumer = topic_reader(env.bootstrap, [target], "bench-raw-rig-reader")
    key = b"L001"
    try:
        # Warm-up (also waits for the relay process to start).
        _round_trips(producer, consumer, source, key, value, 1, STARTUP_TIMEOUT_S, relay)
        _round_trips(producer, consumer, source, key, value, 10, ANSWER_TIMEOUT_S, relay)
        if topics is None or processor is None:
            return _round_trips(producer, consumer, source, key, value, n, ANSWER_TIMEOUT_S, relay)
        rig = KafkaRigTransport(
            env.bootstrap, topics.events, topics.assignments, "bench-rig", codec=default_codec()
        )
        try:
            with _under_load(env, topics.events, processor, rig, [], load) as loader:
                samples = _round_trips(
                    producer, consumer, source, key, value, n, ANSWER_TIMEOUT_S, relay
                )
                _check_load_lasted(loader)
                return samples
        finally:
            rig.close()
    finally:
        consumer.close()
        producer.close()
        if relay is not None:
            env.stop_service(relay)
        if processor is not None:
            env.stop_service(processor)


def _figures(
    results: Results, name: str, runs: list[list[float]], note: str, baseline: bool
) -> None:
    for label, q in STATS:
        results.add(
            Figure(
                "latency",
                f"{name}: {label}",
                "ms",
                tuple(percentile(run, q) for run in runs),
                note if label == "median" else "",
                baseline,
            )
        )


def measure(
    results: Results,
    env: KafkaEnv,
    repeats: int,
    n_mice: int = 8,
    n_sessions: int = 200,
    trials_per_session: int = 5,
) -> None:
    print(f"(c) latency: {n_sessions} sessions over {n_mice} mice per repeat", flush=True)
    results.detail(
        f"(c) workload per repeat: {n_sessions} sessions of {trials_per_session} trials, "
        f"round robin over {n_mice} mice, one at a time, after {n_mice} warm-up sessions; "
        f"raw round trips: {n_sessions} per repeat after 11 warm-up messages."
    )
    acked_runs, answered_runs, loaded_runs = [], [], []
    for repeat in range(repeats):
        print(f"  processor run {repeat + 1}/{repeats} ...", flush=True)
        acked, answered = run_sessions(env, n_mice, n_sessions, trials_per_session)
        acked_runs.append(acked)
        answered_runs.append(answered)
        env.drop_topics()
    # The load: 100 other mice (as on 100 rigs), LOAD_ROUNDS sessions each, back to back, the
    # rigs' events interleaved as rigs running at once send them, and their sessions staggered
    # (one starts about every 0.9 s, another ends); sessions of a usual length (900 trials at
    # most), so a batch's state writes cost what they cost in a lab; enough for LOAD_SECONDS.
    load_mice = 100
    load_trials = LOAD_RATE * LOAD_SECONDS // (load_mice * LOAD_ROUNDS)
    workload = build_workload(load_mice, LOAD_ROUNDS, load_trials, tag="X")
    # workload.sessions holds round 1 of every mouse, then round 2, ...
    rigs = [
        [event for session in workload.sessions[index::load_mice] for event in session]
        for index in range(load_mice)
    ]
    merged = staggered(rigs, spread=load_trials + 2)
    load = Load(workload.enrolments, encode(merged))
    # The rig's process must not carry the load's events (600k objects the collector would
    # walk: a full collection took 623 ms with them, 45 ms without); only their bytes go on.
    del workload, rigs, merged
    gc.collect()
    results.detail(
        f"(c) loaded runs: the same sessions while {load_mice} other mice's sessions of "
        f"{load_trials:,} trials ({LOAD_ROUNDS} each, back to back; the rigs' sessions "
        f"staggered, one starting about every {load_trials / LOAD_RATE:.1f} s) are "
        f"sent at {LOAD_RATE:,} messages/s from another process; those mice are enrolled "
        "with the timed ones, before the clocks start."
    )
    for repeat in range(repeats):
        print(f"  processor run under load {repeat + 1}/{repeats} ...", flush=True)
        _, answered = run_sessions(env, n_mice, n_sessions, trials_per_session, load)
        loaded_runs.append(answered)
        env.drop_topics()
    _figures(
        results,
        "SessionEnded published -> AssignmentIssued at the rig",
        answered_runs,
        "RigAgent (scripted task) over KafkaRigTransport, then latest_assignment; "
        "processor in its own process",
        baseline=False,
    )
    _figures(
        results,
        f"the same under a load of {LOAD_RATE:,} trial events/s",
        loaded_runs,
        "other mice's trials sent meanwhile from another process (see the sizes below)",
        baseline=False,
    )
    results.add(
        Figure(
            "latency",
            "of which: SessionEnded acknowledged (publish returns): median",
            "ms",
            tuple(percentile(run, 50) for run in acked_runs),
            "acks=all, idempotent producer, flush",
        )
    )
    value = default_codec().encode(
        SessionEnded(
            event_id="00000000-0000-4000-8000-000000000000",
            mouse_id="L001",
            rig_id="rig-1",
            session_id="L001-20260302T0900",
            occurred_at=START,
            n_trials=trials_per_session,
            end_reason="max_trials",
            duration_s=60.0,
        )
    )
    one_hop, two_hops, two_hops_loaded = [], [], []
    for repeat in range(repeats):
        print(f"  raw Kafka round trips {repeat + 1}/{repeats} ...", flush=True)
        one_hop.append(raw_round_trips(env, n_sessions, value, relayed=False))
        two_hops.append(raw_round_trips(env, n_sessions, value, relayed=True))
        env.drop_topics()
        print(f"  raw Kafka round trips under load {repeat + 1}/{repeats} ...", flush=True)
        two_hops_loaded.append(raw_round_trips(env, n_sessions, value, relayed=True, load=load))
        env.drop_topics()
    _figures(
        results,
        "raw produce -> consume, one hop",
        one_hop,
        f"one {len(value)} B message at a time, consumer already polling",
        baseline=True,
    )
    _figures(
        results,
        "raw two hops through a kafka-python relay process",
        two_hops,
        "bench.relay copies each record on and waits for its ack; no decoding",
        baseline=True,
    )
    _figures(
        results,
        "the same two hops while a processor takes the same load",
        two_hops_loaded,
        "the loaded runs' load and processor on other topics, on the same two cores",
        baseline=True,
    )
