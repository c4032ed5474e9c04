"""Decisions during a session: trial published -> new assignment applied at the rig, with 100
rigs running at once on this machine (issue 14, item 5).

``python -m bench.midsession [--rigs 100] [--interval 1.0] [--repeats 3]`` starts the
benchmark broker (:class:`bench.kafka_env.KafkaEnv`; run it under
``flock /tmp/shaping-kafka.lock``), then per repeat, on fresh topics:

* **Shaping**: a processor process (``python -m shaping.services.processor``, the shipped
  curricula). ``--rigs`` simulated rigs, one mouse each, enrolled on
  ``curricula/reach-autopilot.yaml``, run at once, driven from one thread of this process
  (:class:`RigPool`: a schedule of each rig's next trial, one kafka-python producer configured
  as a rig's, acks=all and idempotent, and one follower consumer of the assignments and
  decisions topics; 100 producers and consumers of their own, one thread each, spent a whole
  core on the clients and measured that, not the system). A rig runs three sessions
  (free_reaching, cued_reaching, full_task); it publishes one trial every ``--interval``
  seconds (the rigs' starts staggered at random within the first interval), and between trials
  the pool polls the follower. When an assignment naming a rig's session in progress arrives,
  the rig applies it as the reach task does at a trial boundary
  (:func:`shaping.rig.task.midsession.prepare`: the safety screening against the rig's limits,
  the task's parameters and rewards) and notes the time; it runs 5 more trials at the new stage
  and ends the session. The sample is *applied time - time the trial whose decision it was (the
  decision's causation_id) was handed to the producer*: the trial's publish, the processor, and
  the assignment back to the rig. Every rig checks that each session got exactly one decision
  (the end of a session decided mid-session brings none).
* **Baseline**, same rigs, same clients, same pace and the same number of trials: a minimal
  kafka-python relay process (``bench.relay``) copies every record of the events topic to the
  assignments topic, and each rig times each of its trials until it reads it back (two hops
  through a Python process, no decoding or domain work in the middle). And, unloaded, one
  message at a time: raw produce -> consume, one hop and two hops through the relay
  (:func:`bench.latency.raw_round_trips`).

What is not in the figure: on a real rig the reach task applies the assignment at its next trial
boundary, which is the end of the interval before the next trial (seconds later: the rig has
the assignment long before it needs it), and moving the spouts. The figure is how long after the
threshold trial the rig holds the new parameters, screened and ready.

The figures go to stdout and, with ``--write``, to ``bench/MIDSESSION.md``.
"""

from __future__ import annotations

import argparse
import heapq
import os
import random
import resource
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from kafka import KafkaConsumer

from bench.kafka_env import BenchError, KafkaEnv, Service, kafka_version, rig_producer
from bench.latency import raw_round_trips
from bench.stats import percentile
from bench.workload import START
from shaping.rig.config import SafetyLimits, ValveCalibration
from shaping.rig.task.midsession import Restart, issued_during, prepare
from shaping.schemas.codec import default_codec, encode_key
from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    MouseEnrolled,
    SessionEnded,
    SessionStarted,
    StageTransitioned,
    TrialCompleted,
)
from shaping.schemas.headers import headers_for
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.topics import wait_for_partitions

REPO = Path(__file__).resolve().parents[1]
CURRICULUM = "reach-autopilot"
SESSIONS = 3  # free_reaching -> cued_reaching -> full_task -> expert, one move each
AFTER_APPLIED = 5  # trials a rig runs at the new stage before it ends the session
MAX_TRIALS = 120  # a session with no decision by then is a failure
STARTUP_TIMEOUT_S = 180.0
ANSWER_TIMEOUT_S = 60.0
STATS = (("median", 50.0), ("p90", 90.0), ("p99", 99.0), ("max", 100.0))
CALIBRATIONS = {side: ValveCalibration(side, 1e-4) for side in ("left", "right")}
CODEC = default_codec()


def outcome(index: int) -> str:
    """The simulated mouse's outcome on trial ``index``: correct but every 8th (87.5 %)."""
    return "incorrect" if index % 8 == 7 else "correct"


@dataclass
class Rig:
    """One simulated rig and its mouse, and what it measured."""

    index: int
    mouse: str
    rig_id: str
    key: bytes
    plan: list[int] = field(default_factory=list)  # baseline: trials per session to run
    number: int = 0  # the session running (1..SESSIONS), 0 before the first
    session_id: str | None = None
    trial_index: int = 0
    applied_after: int | None = None  # trials done when the assignment was applied
    day: datetime = START
    assignment: AssignmentIssued | None = None
    published: dict[str, float] = field(default_factory=dict)  # trial id -> sent at
    applied: dict[str, float] = field(default_factory=dict)  # session id -> applied at
    decisions: dict[str, StageTransitioned] = field(default_factory=dict)
    samples_ms: list[float] = field(default_factory=list)
    ran_trials: list[int] = field(default_factory=list)
    trials: int = 0
    done: bool = False
    # the same clock for all three (this machine's wall clock, ms): when a trial was sent and
    # appended (the events topic's LogAppendTime), when its assignment was created (the record's
    # CreateTime, the processor's) and when the rig applied it
    sent_wall: dict[str, float] = field(default_factory=dict)
    appended: dict[str, int] = field(default_factory=dict)
    created: dict[str, int] = field(default_factory=dict)
    applied_wall: dict[str, float] = field(default_factory=dict)
    parts_ms: list[tuple[float, float, float]] = field(default_factory=list)

    def common(self) -> dict[str, str]:
        return {"mouse_id": self.mouse, "rig_id": self.rig_id, "session_id": self.session_id or ""}


class RigPool:
    """``n`` simulated rigs driven from one thread (see the module's doc): a schedule of their
    next trials, one producer configured as a rig's and one follower consumer of the
    assignments and decisions topics. ``echo``: the baseline, timing each trial back from the
    relay instead of waiting for decisions."""

    def __init__(
        self,
        bootstrap: str,
        topics: TopicNames,
        n: int,
        interval_s: float,
        echo: bool,
        tag: str,
        plan: list[list[int]] | None = None,
        service: Service | None = None,
    ) -> None:
        self.topics = topics
        self.interval_s = interval_s
        self.echo = echo
        self.service = service
        self.rigs: dict[bytes, Rig] = {}
        for i in range(n):
            mouse = f"{tag}{i:03d}"
            key = encode_key(mouse)
            self.rigs[key] = Rig(i, mouse, f"rig-{i:03d}", key, plan[i] if plan else [])
        self.producer = rig_producer(bootstrap, "bench-rigs")
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id="bench-rigs-follower",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        partitions = (
            wait_for_partitions(self.consumer, [topics.assignments, topics.decisions]) or []
        )
        self.consumer.assign(partitions)
        self.consumer.seek_to_beginning(*partitions)

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()
        self.consumer.close()

    # -- I/O ----------------------------------------------------------------------------------

    def send(self, rig: Rig, event: Event) -> float:
        """Hands one event to the producer (acks=all, idempotent); returns when."""
        value = CODEC.encode(event)
        sent = time.perf_counter()
        future = self.producer.send(
            self.topics.events, key=rig.key, value=value, headers=headers_for(value)
        )
        if isinstance(event, TrialCompleted) and not self.echo:
            rig.sent_wall[event.event_id] = time.time() * 1000
            event_id = event.event_id
            future.add_callback(lambda meta: rig.appended.__setitem__(event_id, meta.timestamp))
        return sent

    def poll(self, timeout_s: float) -> None:
        """Reads what arrived; an assignment issued during a rig's session in progress is
        applied at once (the trial boundary), noting the time."""
        batches = self.consumer.poll(timeout_ms=max(0, int(timeout_s * 1000)))
        for records in batches.values():
            for record in records:
                rig = self.rigs.get(record.key)
                if rig is None:
                    continue
                now = time.perf_counter()
                event = CODEC.decode(record.value)
                if self.echo:
                    if isinstance(event, TrialCompleted) and event.event_id in rig.published:
                        rig.samples_ms.append((now - rig.published.pop(event.event_id)) * 1000)
                    continue
                if isinstance(event, StageTransitioned):
                    rig.decisions[event.event_id] = event
                elif isinstance(event, AssignmentIssued):
                    session_id = rig.session_id
                    if session_id is not None and issued_during(event, session_id):
                        prepared = prepare(event, SafetyLimits(), CALIBRATIONS)
                        if not isinstance(prepared, Restart):
                            raise BenchError(f"{rig.mouse}: refused {prepared}")
                        if session_id not in rig.applied:
                            rig.applied[session_id] = time.perf_counter()
                            rig.applied_wall[session_id] = time.time() * 1000
                            rig.created[session_id] = record.timestamp
                    if rig.assignment is None or (
                        event.session_number >= rig.assignment.session_number
                    ):
                        rig.assignment = event

    # -- the run ------------------------------------------------------------------------------

    def enrol(self) -> None:
        for rig in self.rigs.values():
            self.send(
                rig,
                MouseEnrolled(
                    event_id=str(uuid.uuid4()),
                    mouse_id=rig.mouse,
                    occurred_at=START,
                    curriculum_name=CURRICULUM,
                    enrolled_by="bench",
                ),
            )
        self.producer.flush()
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while any(r.assignment is None for r in self.rigs.values()):
            if self.service is not None:
                self.service.check_alive()
            if time.monotonic() > deadline:
                raise BenchError("not every rig got its first assignment")
            self.poll(0.2)

    def run(self) -> None:
        rng = random.Random(len(self.rigs))
        now = time.perf_counter()
        schedule = [(now + rng.uniform(0, self.interval_s), r.index, r) for r in self.rigs.values()]
        heapq.heapify(schedule)
        while schedule:
            now = time.perf_counter()
            while schedule and schedule[0][0] <= now:
                at, index, rig = heapq.heappop(schedule)
                self.step(rig)
                if not rig.done:
                    heapq.heappush(schedule, (at + self.interval_s, index, rig))
            if self.service is not None:
                self.service.check_alive()
            wait = schedule[0][0] - time.perf_counter() if schedule else 0.0
            self.poll(min(max(wait, 0.0), 0.05))
        self.producer.flush()
        if not self.echo:
            deadline = time.monotonic() + 3.0  # late answers: a second decision would show
            while time.monotonic() < deadline:
                self.poll(0.2)
            for rig in self.rigs.values():
                self.attribute(rig)
        else:
            deadline = time.monotonic() + 10.0
            while any(r.published for r in self.rigs.values()) and time.monotonic() < deadline:
                self.poll(0.2)

    def step(self, rig: Rig) -> None:
        """The rig's trial boundary: the session ends when it is done, else the next trial."""
        if rig.session_id is not None:
            if not self.echo and rig.applied_after is None and rig.session_id in rig.applied:
                rig.applied_after = rig.trial_index
            limit = rig.plan[rig.number - 1] if self.echo else MAX_TRIALS
            finished = rig.trial_index >= limit or (
                rig.applied_after is not None
                and rig.trial_index >= rig.applied_after + AFTER_APPLIED
            )
            if finished:
                if not self.echo and rig.applied_after is None:
                    raise BenchError(f"{rig.mouse}: no decision in session {rig.number}")
                self.send(rig, self._ended(rig))
                rig.ran_trials.append(rig.trial_index)
                rig.session_id = None
                if rig.number == SESSIONS:
                    rig.done = True
                    return
        if rig.session_id is None:
            rig.number += 1
            rig.day = START + timedelta(days=rig.number - 1, minutes=rig.index % 60)
            rig.session_id = f"{rig.mouse}-{rig.rig_id}-{rig.number}"
            rig.trial_index = 0
            rig.applied_after = None
            self.send(rig, self._started(rig))
        trial = self._trial(rig)
        rig.published[trial.event_id] = self.send(rig, trial)
        rig.trial_index += 1
        rig.trials += 1

    def attribute(self, rig: Rig) -> None:
        """Each applied assignment's sample: from its decision's trial to when it was applied;
        a decision on a session beyond the one it moved is a session judged twice."""
        by_session: dict[str, list[StageTransitioned]] = {}
        for decision in rig.decisions.values():
            by_session.setdefault(decision.session_id or "", []).append(decision)
        for session_id, decisions in by_session.items():
            if len(decisions) != 1 or session_id not in rig.applied:
                raise BenchError(f"{rig.mouse}: {len(decisions)} decisions on {session_id}")
        for session_id, applied in rig.applied.items():
            [decision] = by_session[session_id]
            if decision.causation_id not in rig.published:
                raise BenchError(f"{rig.mouse}: decision on {session_id} not after a trial")
            rig.samples_ms.append((applied - rig.published[decision.causation_id]) * 1000)
            trial = decision.causation_id
            if trial in rig.appended:
                rig.parts_ms.append(
                    (
                        rig.appended[trial] - rig.sent_wall[trial],
                        rig.created[session_id] - rig.appended[trial],
                        rig.applied_wall[session_id] - rig.created[session_id],
                    )
                )

    # -- events -------------------------------------------------------------------------------

    def _started(self, rig: Rig) -> SessionStarted:
        assignment = rig.assignment
        return SessionStarted(
            event_id=str(uuid.uuid4()),
            occurred_at=rig.day,
            stage=assignment.stage if assignment is not None else "free_reaching",
            curriculum_name=CURRICULUM,
            curriculum_version="1.0.0",
            parameters=dict(assignment.parameters) if assignment is not None else {},
            **rig.common(),  # type: ignore[arg-type]
        )

    def _trial(self, rig: Rig) -> TrialCompleted:
        result = outcome(rig.trial_index)
        return TrialCompleted(
            event_id=str(uuid.uuid4()),
            occurred_at=rig.day + timedelta(seconds=10 * (rig.trial_index + 1)),
            trial_index=rig.trial_index,
            outcome=result,  # type: ignore[arg-type]
            target_side="left",
            response_side="left" if result == "correct" else "right",
            reaction_time_s=0.4,
            **rig.common(),  # type: ignore[arg-type]
        )

    def _ended(self, rig: Rig) -> SessionEnded:
        return SessionEnded(
            event_id=str(uuid.uuid4()),
            occurred_at=rig.day + timedelta(seconds=10 * (rig.trial_index + 1)),
            n_trials=rig.trial_index,
            end_reason="completed",
            duration_s=10.0 * (rig.trial_index + 1),
            **rig.common(),  # type: ignore[arg-type]
        )


@dataclass
class RunResult:
    samples_ms: list[float]
    trials: int
    wall_s: float
    rigs: list[Rig]
    service_cpu_s: float = 0.0
    bench_cpu_s: float = 0.0


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_rigs(
    env: KafkaEnv,
    topics: TopicNames,
    n_rigs: int,
    interval_s: float,
    echo: bool,
    tag: str,
    plan: list[list[int]] | None = None,
    service: Service | None = None,
) -> RunResult:
    pool = RigPool(env.bootstrap, topics, n_rigs, interval_s, echo, tag, plan, service)
    try:
        if not echo:
            pool.enrol()
        else:
            time.sleep(3.0)  # the relay process starts
        cpu_before = _cpu_self()
        service_before = service.cpu_seconds() if service is not None else 0.0
        began = time.perf_counter()
        pool.run()
        wall = time.perf_counter() - began
        service_cpu = service.cpu_seconds() - service_before if service is not None else 0.0
        bench_cpu = _cpu_self() - cpu_before
    finally:
        pool.close()
    rigs = list(pool.rigs.values())
    samples = [s for r in rigs for s in r.samples_ms]
    return RunResult(samples, sum(r.trials for r in rigs), wall, rigs, service_cpu, bench_cpu)


def summary(samples: list[float]) -> dict[str, float]:
    return {label: percentile(samples, q) for label, q in STATS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rigs", type=int, default=100)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between trials")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--raw", type=int, default=200, help="unloaded raw round trips")
    parser.add_argument("--write", action="store_true", help="write bench/MIDSESSION.md")
    args = parser.parse_args(argv)
    rows: list[tuple[str, list[dict[str, float]], str]] = []
    details: list[str] = []
    shaping_runs: list[dict[str, float]] = []
    breakdown: dict[str, list[dict[str, float]]] = {}
    relay_runs: list[dict[str, float]] = []
    with KafkaEnv() as env:
        env.start()
        for repeat in range(args.repeats):
            tag = f"R{repeat}M"
            topics = env.fresh_topics()
            processor = env.start_processor(topics)
            print(f"repeat {repeat + 1}: {args.rigs} rigs on the processor ...", flush=True)
            run = run_rigs(env, topics, args.rigs, args.interval, False, tag, service=processor)
            env.stop_service(processor)
            shaping_runs.append(summary(run.samples_ms))
            parts = [p for r in run.rigs for p in r.parts_ms]
            for label, position in (
                ("rig -> trial appended at the broker", 0),
                ("trial appended -> assignment created by the processor", 1),
                ("assignment created -> applied at the rig", 2),
            ):
                values = [p[position] for p in parts]
                breakdown.setdefault(label, []).append(summary(values))
            details.append(
                f"repeat {repeat + 1}, Shaping: {len(run.samples_ms)} mid-session decisions "
                f"applied, {run.trials} trials in {run.wall_s:.0f} s "
                f"({run.trials / run.wall_s:.0f} trials/s over {args.rigs} rigs); processor "
                f"CPU {run.service_cpu_s:.0f} s, bench process (the rigs) CPU "
                f"{run.bench_cpu_s:.0f} s; no session judged twice"
            )
            print(f"  {details[-1]}\n  {shaping_runs[-1]}", flush=True)
            plan = [rig.ran_trials for rig in run.rigs]
            topics = env.fresh_topics()
            relay = env.start_service(
                "relay", ["-m", "bench.relay", env.bootstrap, topics.events, topics.assignments]
            )
            print(f"repeat {repeat + 1}: {args.rigs} rigs through the relay ...", flush=True)
            echo = run_rigs(env, topics, args.rigs, args.interval, True, f"R{repeat}E", plan, relay)
            env.stop_service(relay)
            relay_runs.append(summary(echo.samples_ms))
            details.append(
                f"repeat {repeat + 1}, relay baseline: {len(echo.samples_ms)} trials timed back "
                f"in {echo.wall_s:.0f} s ({echo.trials / echo.wall_s:.0f} trials/s); relay CPU "
                f"{echo.service_cpu_s:.0f} s, bench process CPU {echo.bench_cpu_s:.0f} s"
            )
            print(f"  {details[-1]}\n  {relay_runs[-1]}", flush=True)
        value = CODEC.encode(
            TrialCompleted(
                event_id="00000000-0000-4000-8000-000000000000",
                mouse_id="R0M000",
                rig_id="rig-000",
                session_id="R0M000-rig-000-1",
                occurred_at=START,
                trial_index=0,
                outcome="correct",
            )
        )
        one_hop, two_hops = [], []
        for repeat in range(args.repeats):
            print(f"raw round trips {repeat + 1}/{args.repeats} ...", flush=True)
            one_hop.append(summary(raw_round_trips(env, args.raw, value, relayed=False)))
            two_hops.append(summary(raw_round_trips(env, args.raw, value, relayed=True)))
    rows.append(
        (
            "trial published -> assignment applied at the rig, Shaping",
            shaping_runs,
            f"{args.rigs} rigs at once, a trial every {args.interval:g} s each; processor in its "
            "own process",
        )
    )
    rows.append(
        (
            "trial published -> read back at the rig, kafka-python relay (baseline)",
            relay_runs,
            "same rigs, clients, pace and trials; every record relayed, no decoding in between",
        )
    )
    for label, runs in breakdown.items():
        rows.append(
            (
                f"of which: {label}",
                runs,
                "broker and wall clock of this machine, ms resolution; percentiles of each part "
                "alone (they do not add up)",
            )
        )
    rows.append(("raw produce -> consume, one hop, unloaded", one_hop, f"{args.raw} round trips"))
    rows.append(("raw two hops through the relay, unloaded", two_hops, f"{args.raw} round trips"))
    table = render(rows)
    print(table)
    if args.write:
        write_report(args, table, details)
    return 0


def render(rows: list[tuple[str, list[dict[str, float]], str]]) -> str:
    lines = [
        "| figure | median | p90 | p99 | max | repeats (p99) | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs, note in rows:
        cells = [f"{percentile([r[label] for r in runs], 50):.1f} ms" for label, _ in STATS]
        each = ", ".join(f"{r['p99']:.1f}" for r in runs)
        lines.append(f"| {name} | {' | '.join(cells)} | {each} | {note} |")
    return "\n".join(lines)


def write_report(args: argparse.Namespace, table: str, details: list[str]) -> None:
    cpus = os.cpu_count()
    text = f"""# Decisions during a session: latency at the rig

Issue 14, item 5: a curriculum may mark rules `evaluate: trial`; the processor judges the
session after every trial and, when such a rule holds, publishes the decision and the mouse's
next assignment at once; the rig applies it at its next trial boundary. Target: trial published
-> new assignment applied at the rig, p99 <= 50 ms, with 100 rigs running at once.

Measured with `flock /tmp/shaping-kafka.lock .venv/bin/python -m bench.midsession --rigs
{args.rigs} --interval {args.interval:g} --repeats {args.repeats} --raw {args.raw} --write` on
this machine
({cpus} cores, shared; Kafka {kafka_version()} single node, 4 partitions). Each figure is the
median over {args.repeats} repeats of that repeat's percentile; "repeats (p99)" lists every
repeat's p99.

{table}

How it is measured (bench/midsession.py, its docstring has the details): {args.rigs} simulated
rigs run at once, driven from one thread with one kafka-python producer (acks=all, idempotent,
as a rig's) and one follower consumer (a first version with a producer, a consumer and a thread
per rig spent a whole core on its clients, and its figures measured that); every rig runs
three sessions of curricula/reach-autopilot.yaml (free_reaching -> cued_reaching -> full_task ->
expert, each move decided mid-session by an `evaluate: trial` rule), a trial every
{args.interval:g} s. A sample runs from the moment the threshold trial is handed to the producer
(linger 5 ms, acks=all) to the moment the rig has applied the
assignment: screened against its safety limits and turned into the reach task's parameters and
rewards (`shaping.rig.task.midsession.prepare`). On a real rig the task then restarts at the end
of the interval before the next trial, seconds later. The baseline runs the same rigs through a
kafka-python relay process instead of the processor. Every rig also checks that each of its
sessions got exactly one decision (the end of a session judged mid-session brings none). The
"of which" rows split each Shaping sample on this machine's clock: the trial's LogAppendTime on
the events topic, the assignment record's CreateTime (set by the processor's producer), and the
rig's wall clock when it applied it.

Per repeat:

{chr(10).join(f"- {d}" for d in details)}
"""
    (REPO / "bench" / "MIDSESSION.md").write_text(text)
    print("wrote bench/MIDSESSION.md", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
