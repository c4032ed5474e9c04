"""Two processor workers in one consumer group, for the scale-out test (issue 14, item 6).

:func:`scaleout_workload` builds the benchmark's workload (the rig runtime and the simulated
mouse, following the core's real decisions) on mice spread over every partition.
:class:`Worker` is one ``shaping processor`` process of a group, serving its metrics so a test
can see what it has processed; :func:`group_assignment` (bench/scaleout.py's) asks the broker
which member of the group owns which partition now. :class:`PacedPublisher` sends the sessions
from a thread at a steady pace, so workers can join and leave while input is in flight.
:class:`Outputs` reads the decisions, assignments and dead letters back and gives each mouse's
decision and assignment sequences (each id once: a redelivered input re-sends its outputs with
the same ids, and consumers drop ids they have seen).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from bench.scaleout import group_assignment, is_split, partition_of
from bench.workload import Encoded, Workload, build_workload
from shaping.schemas.events import AssignmentIssued, EventRejected, StageTransitioned
from shaping.schemas.topics import TopicNames
from tests.support.kafka import TEST_PARTITIONS
from tests.support.kafka_io import TopicReader
from tests.support.ops import free_port
from tests.support.scripts import REPO

__all__ = [
    "Outputs",
    "PacedPublisher",
    "Worker",
    "group_assignment",
    "is_split",
    "partition_of",
    "publish_all",
    "scaleout_workload",
]

STOP_TIMEOUT_S = 60.0


def scaleout_workload(
    n_mice: int, sessions: int, trials: int, per_partition: int = 2
) -> tuple[Workload, dict[str, int]]:
    """The benchmark's workload on ``n_mice`` mice, with at least ``per_partition`` mice on
    every partition (the first id tag that gives that); returns it and each mouse's partition.

    Raises:
        ValueError: no tag spreads ``n_mice`` mice that way.
    """
    for tag in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        ids = [f"{tag}{i + 1:03d}" for i in range(n_mice)]  # bench.workload.mouse_ids
        where = {m: partition_of(m.encode(), TEST_PARTITIONS) for m in ids}
        counts = Counter(where.values())
        if len(counts) == TEST_PARTITIONS and min(counts.values()) >= per_partition:
            return build_workload(n_mice, sessions, trials, tag=tag), where
    raise ValueError(f"no tag puts {per_partition} of {n_mice} mice on every partition")


class Worker:
    """One processor process (``shaping processor``) of the consumer group ``group``.

    Each worker has its own data directory and serves its metrics on a port of its own.
    """

    def __init__(
        self, bootstrap: str, topics: TopicNames, group: str, workdir: Path, name: str
    ) -> None:
        self.name = name
        self.metrics_port = free_port()
        self.log = workdir / f"{name}.log"
        env = {
            **os.environ,
            "SHAPING_PROCESSOR_ID": group,
            "SHAPING_DATA_DIR": str(workdir / name),
            "PYTHONUNBUFFERED": "1",
        }
        argv = [sys.executable, "-m", "shaping.services.cli", "processor"]
        argv += ["--bootstrap", bootstrap, "--prefix", topics.events.removesuffix(".events")]
        argv += ["--partitions", str(TEST_PARTITIONS), "--loglevel", "info"]
        argv += ["--metrics-port", str(self.metrics_port), "--metrics-host", "127.0.0.1"]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def metrics(self) -> str:
        """The worker's Prometheus text ('' while it is not serving yet)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())
        except OSError:
            return ""

    def consumed(self) -> float:
        """Messages this worker has processed so far (by its metrics)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("shaping_events_consumed_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def terminate(self) -> int:
        """SIGTERM, and wait for the worker to finish its batch, commit and exit."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} ignored SIGTERM\n{self.tail()}") from None

    def kill(self) -> None:
        """SIGKILL: no commit, no leaving the group (the broker notices after its timeout)."""
        self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.alive():
            self.kill()

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace").splitlines()[-lines:]
        return f"----- {self.name} -----\n" + "\n".join(text)


class PacedPublisher:
    """Publishes encoded events from a thread, ``chunk`` at a time every ``every_s`` seconds
    (each chunk acknowledged by the broker before the next), like rigs sending all along.

    It sends only the events before index :attr:`limit` and waits there until the test moves
    the limit on (:meth:`release`), so that some input is certainly left for after a step of
    the test.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        encoded: Encoded,
        chunk: int,
        every_s: float,
        limit: int | None = None,
    ) -> None:
        self.topic = topic
        self.encoded = encoded
        self.chunk = chunk
        self.every_s = every_s
        self.limit = len(encoded) if limit is None else limit
        self.sent = 0
        self.error: BaseException | None = None
        self.producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="shaping-tests-paced",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
        )
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> PacedPublisher:
        self.thread.start()
        return self

    def release(self, fraction: float = 1.0) -> None:
        """Lets the publisher go on to ``fraction`` of the events (all of them: to the end)."""
        self.limit = max(self.limit, round(len(self.encoded) * fraction))

    def _run(self) -> None:
        try:
            pairs = list(zip(self.encoded.keys, self.encoded.values, strict=True))
            while self.sent < len(pairs):
                if self.sent >= self.limit:
                    time.sleep(0.05)
                    continue
                began = time.monotonic()
                end = min(self.sent + self.chunk, self.limit)
                for key, value in pairs[self.sent : end]:
                    self.producer.send(self.topic, key=key, value=value)
                self.producer.flush()
                self.sent = end
                time.sleep(max(0.0, self.every_s - (time.monotonic() - began)))
        except BaseException as exc:  # reported by join()
            self.error = exc

    @property
    def fraction(self) -> float:
        return self.sent / max(1, len(self.encoded))

    def held(self) -> bool:
        """Whether it is waiting at its limit (and so not sending)."""
        return self.sent >= self.limit

    def join(self, timeout_s: float = 120.0) -> None:
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise AssertionError(f"the publisher did not finish within {timeout_s:g} s")
        self.producer.close()
        if self.error is not None:
            raise AssertionError(f"publishing failed: {self.error!r}") from self.error


def publish_all(bootstrap: str, topic: str, encoded: Encoded) -> None:
    """Publishes every event at once and waits until the broker has them."""
    publisher = PacedPublisher(bootstrap, topic, encoded, chunk=len(encoded) or 1, every_s=0)
    publisher.start().join()


@dataclass
class Outputs:
    """The decisions, assignments and dead letters of one set of topics, read as they come."""

    reader: TopicReader
    topics: TopicNames
    first_seen: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, bootstrap: str, topics: TopicNames) -> Outputs:
        reader = TopicReader(bootstrap, [topics.decisions, topics.assignments, topics.dead_letter])
        return cls(reader, topics)

    def poll(self) -> None:
        """Reads what has arrived.

        Raises:
            AssertionError: a dead letter arrived (every input of these tests is valid).
        """
        now = time.monotonic()
        for record in self.reader.poll(0.2):
            event = record.event
            if event is not None:
                self.first_seen.setdefault(event.event_id, now)
            if isinstance(event, EventRejected):
                raise AssertionError(
                    f"valid input dead-lettered: {event.error_kind} {event.reason!r} "
                    f"({event.mouse_id}, {event.source_topic}/{event.source_partition}"
                    f"@{event.source_offset})"
                )

    def decisions_since(self, moment: float, mice: set[str]) -> list[StageTransitioned]:
        """Decisions on these mice first read after ``moment`` (time.monotonic)."""
        return [
            e
            for e in self.reader.events(None, StageTransitioned)
            if e.mouse_id in mice and self.first_seen.get(e.event_id, 0.0) > moment
        ]

    def dead_letters(self) -> list[EventRejected]:
        return list(self.reader.events(self.topics.dead_letter, EventRejected))

    def decided(self, last_session: dict[str, str]) -> bool:
        """Whether every mouse's last session has its decision, and the assignment that
        decision issued has been read too (the processor publishes both in one batch, but they
        are on two topics, read in any order: stopping at the decision alone could leave its
        assignment unread)."""
        decided = {
            (e.mouse_id, e.session_id): e.event_id
            for e in self.reader.events(None, StageTransitioned)
        }
        caused = {e.causation_id for e in self.reader.events(None, AssignmentIssued)}
        return all((m, s) in decided and decided[(m, s)] in caused for m, s in last_session.items())

    def sequences(self) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """Each mouse's decisions, and its assignments, each in the order of their topic's
        partition, each id once, with their content; by (mouse, event type). (The two topics
        are not ordered with each other, so neither is their reading.)"""
        by_mouse: dict[tuple[str, str], list[dict[str, Any]]] = {}
        seen: set[str] = set()
        for event in self.reader.events():
            if not isinstance(event, StageTransitioned | AssignmentIssued):
                continue
            if event.event_id in seen:
                continue
            seen.add(event.event_id)
            key = (event.mouse_id, event.event_type)
            by_mouse.setdefault(key, []).append(event.model_dump(mode="json"))
        return by_mouse

    def repeats(self) -> int:
        """Decisions and assignments read more than once (re-sent after a redelivery)."""
        ids = Counter(
            e.event_id
            for e in self.reader.events()
            if isinstance(e, StageTransitioned | AssignmentIssued)
        )
        return sum(n - 1 for n in ids.values())

    def wait(
        self,
        last_session: dict[str, str],
        timeout_s: float,
        workers: Sequence[Worker],
    ) -> None:
        """Polls until every mouse's last session is decided; fails on timeout, and at once
        when anything reaches the dead-letter topic (the input is valid)."""
        deadline = time.monotonic() + timeout_s
        while not self.decided(last_session):
            dead = self.dead_letters()
            if dead:
                shown = [(d.mouse_id, d.error_kind, d.reason, d.source_offset) for d in dead]
                tails = "\n".join(w.tail() for w in workers)
                raise AssertionError(f"valid input dead-lettered: {shown}\n{tails}")
            if time.monotonic() > deadline:
                tails = "\n".join(w.tail() for w in workers)
                raise AssertionError(
                    f"not every last session decided within {timeout_s:g} s\n{tails}"
                )
            self.poll()

    def close(self) -> None:
        self.reader.close()
