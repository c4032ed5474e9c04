"""``python -m bench.faults [--mice N] [--days N] [--hostile N] [--no-report]``: the fault and
hostile-input check on the real parts.

It starts its own Kafka broker (``infra/kafka/kafka.sh`` on free ports, data in a temporary
directory), a PostgreSQL (``infra/postgres/postgres.sh``, or ``--db-url``), the processor and
the projector as separate processes (``python -m shaping.services.cli processor|projector``), and a
seeded simulated lab (:func:`shaping.rig.sim.lab.run_lab` through :class:`~rig.link.kafka.
KafkaRigTransport`) in a thread. While the lab trains, the main thread kills, at spaced
moments: the processor with SIGKILL (restarted at once), the broker with SIGKILL (restarted
after 2 s, from its data dir, without reformatting), the projector with SIGKILL (restarted),
and it stops the broker for a 30 s outage. For every fault it measures the seconds from the
kill to the next new decision on the decisions topic and to the projector's tables advancing.

At the end it checks: no session lost (every session has a decision), no decision duplicated
(an id with two contents, or two decisions in force for one session), no false rejection (the
lab sends only valid events, so every dead letter is one), and the PostgreSQL tables equal those
of the embedded run of the same plan. Then it sends a burst of hostile messages (garbage and
mutated records) to the processor, measures how fast they become dead letters, and checks that
a valid enrolment sent after them is honoured.

Prints a report and rewrites the "Faults and hostile input" section of bench/REPORT.md
(between its markers). Everything it starts is stopped at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as day_time
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import fastavro
from kafka import KafkaConsumer, TopicPartition
from sqlalchemy import func, select

from bench.kafka_env import BenchError, rig_producer
from shaping.rig.link.kafka import KafkaRigTransport
from shaping.rig.sim.lab import LabPlan, LabRun, run_lab
from shaping.schemas.codec import HEADER_LEN, MAGIC, default_codec, encode_key
from shaping.schemas.errors import SerializationError
from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    EventRejected,
    MouseEnrolled,
    SessionEnded,
    SessionStarted,
    StageTransitioned,
)
from shaping.schemas.headers import headers_for
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.topics import ensure_topics, wait_for_partitions
from shaping.services.curricula.catalog import default_catalog
from shaping.services.domain import TrainingCore
from shaping.services.embedded.runtime import EmbeddedRuntime
from shaping.services.processor.step import ProcessorStep
from shaping.services.projector.store import SqlProjectionStore
from shaping.services.projector.tables import projector_offsets

REPO = Path(__file__).resolve().parents[1]
REPORT = Path(__file__).resolve().parent / "REPORT.md"
KAFKA_SH = REPO / "infra" / "kafka" / "kafka.sh"
PARTITIONS = 4

BEGIN = "<!-- bench.faults: begin (written by python -m bench.faults) -->"
END = "<!-- bench.faults: end -->"

# Bounds of every wait (seconds).
RECOVERY_TIMEOUT_S = 120.0  # a fault until the next decision / the tables move again
BROKER_START_TIMEOUT_S = 180.0
BROKER_STOP_TIMEOUT_S = 90.0
SERVICE_STOP_TIMEOUT_S = 30.0
CATCH_UP_TIMEOUT_S = 120.0
HOSTILE_TIMEOUT_S = 120.0
RESTART_PAUSE_S = 1.0  # between restarts of a service that exited by itself

PROCESSOR = "processor kill -9"
BROKER = "broker kill -9"
PROJECTOR = "projector kill -9"
OUTAGE = "broker outage"

T = TypeVar("T")


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class FaultPlan:
    """What to run and which faults to inject.

    Attributes:
        mice, rigs, days, seed: the simulated lab (one session per mouse per day).
        processor_kills, broker_kills, projector_kills: how many SIGKILLs of each.
        outages: broker outages (stop, wait ``outage_s``, start).
        broker_restart_after_s: pause between a broker's SIGKILL and its restart.
        hostile: hostile messages in the burst at the end (0: no burst).
        wait_s: how long a rig waits for the assignment of its next session before it would
            run a stale one (generous: the lab must never run stale assignments here).
        settle_s: pause after a recovery before the next fault.
    """

    mice: int = 4
    rigs: int = 4
    days: int = 6
    seed: int = 11
    processor_kills: int = 5
    broker_kills: int = 2
    projector_kills: int = 3
    outages: int = 1
    outage_s: float = 30.0
    broker_restart_after_s: float = 2.0
    hostile: int = 5000
    wait_s: float = 240.0
    settle_s: float = 1.0

    @property
    def sessions(self) -> int:
        return self.mice * self.days

    def faults_text(self) -> str:
        return (
            f"{self.processor_kills} processor, {self.broker_kills} broker and "
            f"{self.projector_kills} projector kills and {self.outages} outage(s)"
        )

    def lab(self, today: datetime | None = None) -> LabPlan:
        """The lab plan: its days end yesterday (UTC), inside the processor's clock window."""
        day = (today or datetime.now(UTC)).astimezone(UTC).date()
        start = datetime.combine(day - timedelta(days=self.days + 1), day_time(), tzinfo=UTC)
        return LabPlan(
            n_mice=self.mice, n_rigs=self.rigs, n_days=self.days, seed=self.seed, start=start
        )

    def schedule(self) -> list[str]:
        """The faults in the order they are injected: each kind spread evenly over the run."""
        counts = {
            PROCESSOR: self.processor_kills,
            PROJECTOR: self.projector_kills,
            BROKER: self.broker_kills,
            OUTAGE: self.outages,
        }
        spread = [
            ((k + 0.5) / count, rank, kind)
            for rank, (kind, count) in enumerate(counts.items())
            for k in range(count)
        ]
        return [kind for _, _, kind in sorted(spread)]


# --------------------------------------------------------------------------- results


@dataclass
class FaultRecord:
    """One injected fault and how long the system took to come back.

    Attributes:
        kind: one of PROCESSOR, BROKER, PROJECTOR, OUTAGE.
        at_s: seconds into the run when it was injected.
        down_s: how long the part was away (kill to restarted; outage: stop to up again).
        to_decision_s: seconds from the fault to the next new decision on the decisions topic.
        to_tables_s: seconds from the fault to the projector's next applied batch.
        after_back_s: (broker faults) seconds from ``kafka.sh up`` returning (its probe saw
            the broker registered and answering) to the next decision; negative when the
            decision came first (clients reconnect as soon as the port is open).
        restart_s: (broker faults) how long ``kafka.sh up`` took.
        to_rig_s: (broker faults) seconds from the fault to the broker's acknowledgement of
            the session the lab published right after it (the rig's producer reconnecting).
    """

    kind: str
    at_s: float
    down_s: float | None = None
    to_decision_s: float | None = None
    to_tables_s: float | None = None
    after_back_s: float | None = None
    restart_s: float | None = None
    to_rig_s: float | None = None


@dataclass
class HostileResult:
    """The hostile burst: what was sent and what came of it."""

    sent: int = 0
    sent_by_kind: dict[str, int] = field(default_factory=dict)
    dead_by_kind: dict[str, int] = field(default_factory=dict)
    expected_mismatch: int = 0  # dead letters whose error_kind differs from the in-process step
    missing: int = 0  # hostile messages without a dead letter
    extra: int = 0  # dead letters beyond one per hostile message
    seconds: float = 0.0  # first send to the last of their dead letters (broker times)
    per_second: float = 0.0
    enrolment_honoured: bool = False
    enrolment_s: float | None = None  # the valid enrolment sent last: send to its assignment


@dataclass
class FaultReport:
    """Everything a fault run found."""

    plan: FaultPlan
    lab_start: str = ""
    sessions: int = 0
    decisions: int = 0  # distinct StageTransitioned ids on the decisions topic
    resent: int = 0  # decision records repeated with the same id and content
    duplicated: int = 0  # ids seen with other content + sessions with two decisions in force
    lost: int = 0  # sessions without a decision
    stale_sessions: int = 0  # sessions a rig ran on a stale assignment
    false_rejections: dict[str, int] = field(default_factory=dict)  # error_kind -> count
    tables_identical: bool = False
    table_differences: list[str] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    unexpected_exits: list[str] = field(default_factory=list)
    hostile: HostileResult = field(default_factory=HostileResult)
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def false_rejection_count(self) -> int:
        return sum(self.false_rejections.values())

    def stalls(self, kind: str) -> list[float | None]:
        return [f.to_decision_s for f in self.faults if f.kind == kind]

    def problems(self) -> list[str]:
        """What broke the run's promises (empty: all held)."""
        out = []
        if self.lost:
            out.append(f"{self.lost} session(s) without a decision")
        if self.duplicated:
            out.append(f"{self.duplicated} duplicated decision(s)")
        if self.false_rejection_count:
            out.append(f"{self.false_rejection_count} false rejection(s) {self.false_rejections}")
        if not self.tables_identical:
            out.append("tables differ from the embedded run: " + "; ".join(self.table_differences))
        if self.stale_sessions:
            out.append(f"{self.stale_sessions} session(s) ran a stale assignment")
        return out


# --------------------------------------------------------------------------- infrastructure


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the thread that started it dies (Linux), so a
    killed driver leaves no service behind. Services are started from the main thread only."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"(no log {path}: {exc})"
    return f"----- {path} (last {lines} lines) -----\n" + "\n".join(text)


class Broker:
    """A single-node KRaft broker run by infra/kafka/kafka.sh on free ports; it can be killed
    and started again on the same data directory (``kafka.sh up`` formats only a new one)."""

    def __init__(self, workdir: Path) -> None:
        self.port = _free_port()
        self.controller_port = _free_port()
        while self.controller_port == self.port:
            self.controller_port = _free_port()
        self.data_dir = workdir / "kafka-data"
        self.started = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _script(self, command: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "SHAPING_KAFKA_PORT": str(self.port),
            "SHAPING_KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "SHAPING_KAFKA_DATA": str(self.data_dir),
            "SHAPING_OWNER_PID": str(os.getpid()),  # kafka.sh's watchdog: no orphan broker
            "PYTHON": sys.executable,
        }
        try:
            return subprocess.run(
                ["bash", str(KAFKA_SH), command],
                env=env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"`kafka.sh {command}` took longer than {timeout_s:g} s") from exc

    def up(self) -> float:
        """Starts the broker (a no-op if it runs); returns the seconds it took."""
        began = time.monotonic()
        self.started = True
        result = self._script("up", BROKER_START_TIMEOUT_S)
        if result.returncode != 0:
            raise BenchError(
                f"`kafka.sh up` failed ({result.returncode}):\n{result.stdout}{result.stderr}\n"
                + _tail(self.data_dir / "kafka.log")
            )
        return time.monotonic() - began

    def down(self) -> None:
        result = self._script("down", BROKER_STOP_TIMEOUT_S)
        if result.returncode != 0:
            raise BenchError(f"`kafka.sh down` failed:\n{result.stdout}{result.stderr}")

    def pid(self) -> int:
        return int((self.data_dir / "kafka.pid").read_text().strip())

    def kill(self) -> None:
        """SIGKILL to the broker's JVM (its pid from the data dir's kafka.pid); returns once
        it is gone."""
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists():
            try:  # a zombie until kafka.sh's subshell (already gone) is reaped by init
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            except OSError:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"the broker (pid {pid}) survived SIGKILL for 30 s")
            time.sleep(0.05)


class Service:
    """``python -m shaping.services.cli ARGS`` in a process; restarted with the same settings."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.starts = 0

    def start(self) -> None:
        """Starts (again); only ever called from the main thread (see _die_with_parent)."""
        assert threading.current_thread() is threading.main_thread()
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n===== start {self.starts} at {time.time():.3f} =====\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shaping.services.cli", *self.args],
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self.started_at = time.monotonic()

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """SIGKILL; returns once the process is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(SERVICE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


# --------------------------------------------------------------------------- watching topics


class TopicWatch(threading.Thread):
    """Reads the decisions, assignments and dead-letter topics (a consumer with no group) and
    keeps what the checks need, with the producer's timestamp of every record."""

    def __init__(self, bootstrap: str, topics: TopicNames) -> None:
        super().__init__(name="faults-watch", daemon=True)
        self.topics = topics
        self.codec = default_codec()
        # A reader like a rig's, but quick to reconnect after an outage (kafka-python's own
        # backoff grows to 30 s): it must time the services, not its own retries.
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            client_id="faults-watch",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            reconnect_backoff_max_ms=500,
        )
        partitions = (
            wait_for_partitions(
                self.consumer, [topics.decisions, topics.assignments, topics.dead_letter]
            )
            or []
        )
        self.consumer.assign(partitions)
        self.consumer.seek_to_beginning(*partitions)
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.decision_bytes: dict[str, bytes] = {}  # event id -> first value seen
        self.conflicts: set[str] = set()  # ids seen with other content
        self.resent = 0
        self.new_decisions: list[tuple[float, str]] = []  # (producer time, id), first sightings
        self.session_decisions: dict[str, set[str]] = {}
        self.assignments: dict[str, int] = {}  # mouse -> highest session number
        self.assignment_times: dict[tuple[str, int], float] = {}
        self.dead_letters: list[tuple[float, EventRejected]] = []

    def run(self) -> None:
        try:
            while not self.stop_flag.is_set():
                polled = self.consumer.poll(timeout_ms=100)
                arrived = time.time()
                for records in polled.values():
                    for record in records:
                        self._take(record, arrived)
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            self.consumer.close(autocommit=False)

    def _take(self, record: Any, arrived: float) -> None:
        """Keeps one record; ``arrived``: when this reader received it (the decisions'
        times), rather than the producer's timestamp, which is set before the broker has the
        record (a decision sent just before a broker kill reaches readers only after the
        restart)."""
        at = record.timestamp / 1000
        try:
            event = self.codec.decode(record.value)
        except SerializationError:
            return
        with self.lock:
            if record.topic == self.topics.decisions and isinstance(event, StageTransitioned):
                known = self.decision_bytes.get(event.event_id)
                if known is None:
                    self.decision_bytes[event.event_id] = record.value
                    self.new_decisions.append((arrived, event.event_id))
                    if event.session_id:
                        self.session_decisions.setdefault(event.session_id, set()).add(
                            event.event_id
                        )
                elif known == record.value:
                    self.resent += 1
                else:
                    self.conflicts.add(event.event_id)
            elif record.topic == self.topics.assignments and isinstance(event, AssignmentIssued):
                number = event.session_number
                self.assignments[event.mouse_id] = max(
                    number, self.assignments.get(event.mouse_id, 0)
                )
                self.assignment_times.setdefault((event.mouse_id, number), at)
            elif record.topic == self.topics.dead_letter and isinstance(event, EventRejected):
                self.dead_letters.append((at, event))

    def decision_count(self) -> int:
        with self.lock:
            return len(self.new_decisions)

    def first_decision_after(self, t: float) -> float | None:
        """When the first decision id first seen at or after ``t`` arrived."""
        with self.lock:
            times = [at for at, _ in self.new_decisions if at >= t]
        return min(times) if times else None

    def close(self) -> None:
        self.stop_flag.set()
        self.join(10)


# --------------------------------------------------------------------------- the lab


class GatedTransport:
    """The rig's Kafka transport, with the driver deciding when the next session may start.

    A session's events go out in one :meth:`publish` (as ``run_lab`` sends them); it waits for
    a credit from :meth:`allow` (or for :meth:`open`). So the lab runs a known number of
    sessions around each fault instead of racing through its days while the driver waits for
    a recovery, and a fault can be timed to land while the processor works on a session. Every
    wait ends when the run is aborted.
    """

    def __init__(self, inner: KafkaRigTransport, stop: threading.Event) -> None:
        self.inner = inner
        self.stop = stop
        self.cond = threading.Condition()
        self.credits = 0
        self.free = False
        self.taken = 0  # sessions that started publishing
        self.published = 0  # sessions published so far
        self.published_at = 0.0  # time.monotonic() of the last one

    def allow(self, sessions: int) -> None:
        with self.cond:
            self.credits += sessions
            self.cond.notify_all()

    def open(self) -> None:
        """No more gating: the lab runs its remaining sessions at its own pace."""
        with self.cond:
            self.free = True
            self.cond.notify_all()

    def publish(self, events: Sequence[Event]) -> None:
        session = any(isinstance(e, SessionStarted) for e in events)
        if session:
            with self.cond:
                while not (self.free or self.credits > 0):
                    if self.stop.is_set():
                        raise BenchError("the run was aborted")
                    self.cond.wait(0.2)
                self.credits -= 0 if self.free else 1
                self.taken += 1
        if self.stop.is_set():
            raise BenchError("the run was aborted")
        self.inner.publish(events)
        if session:
            with self.cond:
                self.published += 1
                self.published_at = time.monotonic()
                self.cond.notify_all()

    def latest_assignment(
        self, mouse_id: str, min_session_number: int = 1, timeout_s: float = 0.0
    ) -> AssignmentIssued | None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.stop.is_set():
                raise BenchError("the run was aborted")
            left = max(0.0, min(1.0, deadline - time.monotonic()))
            found = self.inner.latest_assignment(mouse_id, min_session_number, left)
            if found is not None and found.session_number >= min_session_number:
                return found
            if time.monotonic() >= deadline:
                return found


class LabThread(threading.Thread):
    """Runs the seeded lab through Kafka, as rigs would (through a :class:`GatedTransport`)."""

    def __init__(self, plan: LabPlan, bootstrap: str, topics: TopicNames, wait_s: float) -> None:
        super().__init__(name="faults-lab", daemon=True)
        self.plan = plan
        self.wait_s = wait_s
        self.stop_flag = threading.Event()
        self.result: LabRun | None = None
        self.trace = ""
        self.error: BaseException | None = None
        # made here, in the caller's thread, so the driver can gate it at once
        self.inner = KafkaRigTransport(
            bootstrap, topics.events, topics.assignments, "faults-rigs", codec=default_codec()
        )
        self.transport = GatedTransport(self.inner, self.stop_flag)

    def run(self) -> None:
        try:
            self.result = run_lab(self.plan, self.transport, self.wait_s)
        except BaseException as exc:
            import traceback

            self.error = exc
            self.trace = traceback.format_exc()
        finally:
            with contextlib.suppress(Exception):
                self.inner.close()


# --------------------------------------------------------------------------- hostile input


def _unchecked(event: Event, **fields: Any) -> bytes:
    """The event in the wire format with ``fields`` replaced, past every validation (what a
    producer in another language could send)."""
    codec = default_codec()
    schema = codec.newest(event.event_type)
    record = {**event.model_dump(), **fields, "schema_version": schema.version}
    out = io.BytesIO()
    out.write(MAGIC + schema.fingerprint)
    fastavro.schemaless_writer(out, schema.parsed, record)
    return out.getvalue()


def hostile_messages(n: int, seed: int, now: datetime) -> list[tuple[str, bytes, bytes, str]]:
    """``n`` messages no valid producer sends: (what, key, value, expected error_kind).

    Garbage, truncated records, bytes after a record, unknown fingerprints, a broken marker,
    a key that is not the mouse id, ids with escape sequences, dates in the future, a session
    end for a session that never started. Every message is for a mouse of its own that the
    lab does not know, and is checked in-process with the processor's own step first: only
    messages the step refuses are kept, with the kind it gives (so a mutation that happens to
    be valid is never counted as a rejection)."""
    rng = random.Random(seed)
    codec = default_codec()
    step = ProcessorStep(TrainingCore(default_catalog()), codec)
    kinds = (
        "garbage",
        "truncated",
        "trailing bytes",
        "unknown fingerprint",
        "broken marker",
        "key not the mouse id",
        "escape sequence in id",
        "dated in the future",
        "end of a session never started",
    )
    out: list[tuple[str, bytes, bytes, str]] = []
    i = 0
    while len(out) < n:
        what = kinds[i % len(kinds)]
        mouse = f"HX{i:06d}"
        i += 1
        enrol = MouseEnrolled(
            event_id=str(uuid.UUID(int=rng.getrandbits(128))),
            mouse_id=mouse,
            occurred_at=now - timedelta(minutes=5),
            curriculum_name="basic-shaping",
            enrolled_by="bench-hostile",
        )
        valid = codec.encode(enrol)
        key = encode_key(mouse)
        if what == "garbage":
            value = rng.randbytes(rng.randint(1, 600))
        elif what == "truncated":
            value = valid[: rng.randint(1, len(valid) - 1)]
        elif what == "trailing bytes":
            value = valid + rng.randbytes(rng.randint(1, 40))
        elif what == "unknown fingerprint":
            value = valid[:2] + rng.randbytes(HEADER_LEN - 2) + valid[HEADER_LEN:]
        elif what == "broken marker":
            value = bytes([valid[0] ^ (1 << rng.randrange(8))]) + valid[1:]
        elif what == "key not the mouse id":
            key = encode_key(f"HY{i:06d}")
            value = valid
        elif what == "escape sequence in id":
            bad = f"\x1b[2J{mouse}"
            key = bad.encode()
            value = _unchecked(enrol, mouse_id=bad)
        elif what == "dated in the future":
            value = codec.encode(enrol.model_copy(update={"occurred_at": now + timedelta(days=30)}))
        else:
            ended = SessionEnded(
                event_id=str(uuid.UUID(int=rng.getrandbits(128))),
                mouse_id=mouse,
                rig_id="rig-1",
                session_id=f"{mouse}-s1",
                occurred_at=now - timedelta(minutes=5),
                n_trials=10,
                end_reason="completed",
                duration_s=600.0,
            )
            value = codec.encode(ended)
        result = step.process(None, key, value, "hostile", 0, i, now)
        rejected = [o.event for o in result.outputs if isinstance(o.event, EventRejected)]
        if result.outcome == "rejected" and len(rejected) == 1:
            out.append((what, key, value, rejected[0].error_kind))
    return out


# --------------------------------------------------------------------------- the run


class FaultRun:
    """One run: infrastructure, services, lab, faults, checks. Use :func:`run_faults`."""

    def __init__(
        self, plan: FaultPlan, db_url: str | None, log: Callable[[str], None], keep: bool = False
    ) -> None:
        self.plan = plan
        self.keep = keep
        self.db_url_given = db_url
        self.say = log
        self.workdir = Path(tempfile.mkdtemp(prefix="shaping-faults-"))
        self.report = FaultReport(plan)
        self.began = time.monotonic()
        self.broker: Broker | None = None
        self.postgres: Any = None
        self.db_url = ""
        self.store: SqlProjectionStore | None = None
        self.processor: Service | None = None
        self.projector: Service | None = None
        self.watch: TopicWatch | None = None
        self.lab: LabThread | None = None
        self.killed: set[str] = set()  # services whose next exit is ours
        self.last_restart: dict[str, float] = {}
        self.failed = False

    # -- helpers --------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def log(self, text: str) -> None:
        self.say(f"[{self.elapsed():6.1f} s] {text}")

    def wait(
        self, predicate: Callable[[], T], timeout_s: float, what: str, every_s: float = 0.05
    ) -> T:
        """Polls ``predicate`` (and looks after the services meanwhile) until it holds."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.supervise()
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise BenchError(f"no {what} within {timeout_s:g} s\n{self.tails()}")
            time.sleep(every_s)

    def tails(self) -> str:
        parts = []
        for service in (self.processor, self.projector):
            if service is not None:
                parts.append(_tail(service.log))
        if self.lab is not None:
            gate = self.lab.transport
            parts.append(
                f"lab: alive {self.lab.is_alive()}, sessions taken {gate.taken}, published "
                f"{gate.published}, credits {gate.credits}; decisions seen "
                f"{self.watch.decision_count() if self.watch else '?'}"
            )
            if self.lab.error is not None:
                parts.append(f"lab failed: {self.lab.trace or repr(self.lab.error)}")
            elif self.lab.ident is not None:
                import traceback

                frame = sys._current_frames().get(self.lab.ident)
                if frame is not None:
                    parts.append("lab thread at:\n" + "".join(traceback.format_stack(frame)[-6:]))
        return "\n".join(parts)

    def supervise(self) -> None:
        """Restarts a service that exited by itself (a real deployment restarts it too), and
        records it; checks the helper threads."""
        for service in (self.processor, self.projector):
            if service is None:
                continue
            code = service.exited()
            if code is None:
                continue
            if service.name in self.killed:
                continue  # ours: the fault code restarts it
            if time.monotonic() - self.last_restart.get(service.name, 0.0) < RESTART_PAUSE_S:
                continue
            note = f"{service.name} exited by itself with {code} at {self.elapsed():.1f} s"
            self.report.unexpected_exits.append(note)
            self.log(note + "; restarting it")
            self.last_restart[service.name] = time.monotonic()
            service.start()
        if self.watch is not None and self.watch.error is not None:
            raise BenchError(f"the topic watcher failed: {self.watch.error!r}")

    def progress(self) -> int:
        """Sum of the projector's committed next offsets: grows with every applied batch."""
        assert self.store is not None
        with self.store.engine.connect() as conn:
            value = conn.execute(
                select(func.coalesce(func.sum(projector_offsets.c.next_offset), 0)).where(
                    projector_offsets.c.consumer == "faults-projector"
                )
            ).scalar()
        return int(value or 0)

    # -- setting up -------------------------------------------------------------------------

    def start(self) -> None:
        self.broker = Broker(self.workdir)
        self.log(f"starting a broker on {self.broker.bootstrap} (data {self.broker.data_dir})")
        self.broker.up()
        if self.db_url_given:
            self.db_url = self.db_url_given
        else:
            from tests.support.postgres import start_postgres

            self.log("starting a PostgreSQL")
            self.postgres = start_postgres(port=_free_port())
            self.db_url = self.postgres.url
        self.store = SqlProjectionStore(self.db_url, codec=default_codec())
        self.store.reset()
        prefix = f"faults{uuid.uuid4().hex[:6]}"
        self.topics = TopicNames.with_prefix(prefix)
        ensure_topics(self.broker.bootstrap, self.topics, partitions=PARTITIONS)
        common = ["--bootstrap", self.broker.bootstrap, "--prefix", prefix]
        data = self.workdir / "data"
        data.mkdir()
        env = {
            "SHAPING_PROCESSOR_ID": f"faults-processor-{uuid.uuid4().hex[:6]}",
            "SHAPING_PROJECTOR_ID": "faults-projector",
            "SHAPING_PARTITIONS": str(PARTITIONS),
            "SHAPING_DATA_DIR": str(data),
        }
        self.processor = Service(
            "processor",
            # SHAPING_FAULTS_LOGLEVEL=info shows the worker's restarts and rebalances in its log
            ["processor", *common, "--loglevel", os.environ.get("SHAPING_FAULTS_LOGLEVEL", "warn")],
            env,
            self.workdir / "processor.log",
        )
        self.projector = Service(
            "projector",
            ["projector", *common, "--db-url", self.db_url],
            env,
            self.workdir / "projector.log",
        )
        self.processor.start()
        self.projector.start()
        self.watch = TopicWatch(self.broker.bootstrap, self.topics)
        self.watch.start()

    def close(self) -> None:
        """Stops everything that was started (each step on its own: one failing never keeps
        the others running)."""
        problems = []
        if self.lab is not None:
            self.lab.stop_flag.set()
        for service in (self.processor, self.projector):
            if service is not None:
                try:
                    service.stop()
                except Exception as exc:
                    problems.append(f"stopping {service.name}: {exc}")
        if self.watch is not None:
            self.watch.close()
        if self.lab is not None:
            self.lab.join(15)
        if self.store is not None:
            self.store.close()
        if self.broker is not None and self.broker.started:
            try:
                self.broker.down()
            except Exception as exc:
                problems.append(str(exc))
        if self.postgres is not None:
            try:
                self.postgres.stop()
            except Exception as exc:
                problems.append(f"stopping PostgreSQL: {exc}")
        if self.failed or problems or self.keep:
            self.say(f"fault run files (service logs) kept in {self.workdir}")
            for problem in problems:
                self.say(f"warning: {problem}")
        else:
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- faults ------------------------------------------------------------------------------

    def restart(self, service: Service) -> None:
        self.killed.discard(service.name)
        self.last_restart[service.name] = time.monotonic()
        service.start()

    def inject(self, kind: str, after: Callable[[], None]) -> FaultRecord:
        """Injects one fault, calls ``after`` right after the kill (or the stop), restarts
        what it killed and measures the recovery."""
        assert self.broker and self.processor and self.projector and self.watch
        record = FaultRecord(kind, self.elapsed())
        before = self.progress()
        assert self.lab is not None
        gate = self.lab.transport
        sessions_before = gate.published
        t0 = time.time()
        began = time.monotonic()
        back: float | None = None
        if kind == PROCESSOR:
            self.killed.add("processor")
            self.processor.kill()
            after()
            self.restart(self.processor)
            record.down_s = time.monotonic() - began
        elif kind == PROJECTOR:
            self.killed.add("projector")
            self.projector.kill()
            after()
            before = self.progress()  # what the dead projector had committed
            self.restart(self.projector)
            record.down_s = time.monotonic() - began
        elif kind == BROKER:
            self.broker.kill()
            after()
            time.sleep(self.plan.broker_restart_after_s)
            record.restart_s = self.broker.up()
            back = time.time()
            record.down_s = time.monotonic() - began
        elif kind == OUTAGE:
            # timed from the moment the broker is gone: a session already in the processor
            # is decided while `kafka.sh down` shuts the broker down cleanly
            self.broker.down()
            t0, began = time.time(), time.monotonic()
            record.at_s = self.elapsed()
            after()
            stopped = time.monotonic()
            while time.monotonic() - stopped < self.plan.outage_s:
                self.supervise()
                time.sleep(0.2)
            record.restart_s = self.broker.up()
            back = time.time()
            record.down_s = time.monotonic() - began
        decided = self.wait(
            lambda: self.watch.first_decision_after(t0) if self.watch else None,
            RECOVERY_TIMEOUT_S,
            f"decision after the {kind} at {record.at_s:.1f} s",
        )
        record.to_decision_s = decided - t0
        if back is not None:
            record.after_back_s = decided - back
        if kind != PROCESSOR:
            self.wait(
                lambda: self.progress() > before,
                RECOVERY_TIMEOUT_S,
                f"projector progress after the {kind} at {record.at_s:.1f} s",
            )
            record.to_tables_s = time.time() - t0
        if kind in (BROKER, OUTAGE):  # else it goes out at once: its mouse has its assignment
            self.wait(
                lambda: gate.published > sessions_before,
                RECOVERY_TIMEOUT_S,
                f"the rig's next session after the {kind} at {record.at_s:.1f} s",
            )
            record.to_rig_s = gate.published_at - began
        self.log(
            f"{kind}: down {record.down_s:.1f} s, next decision after "
            f"{record.to_decision_s:.1f} s"
            + (f", tables moved after {record.to_tables_s:.1f} s" if record.to_tables_s else "")
            + (
                f", the rig's next session out after {record.to_rig_s:.1f} s"
                if record.to_rig_s
                else ""
            )
        )
        return record

    def run_faults(self) -> None:
        """Injects the faults of the plan's schedule, one at a time.

        Before each, the system is quiet (every session published so far decided); then the
        lab may run one session, the fault lands a seeded 0-1 s after it went out (while the
        processor works through it, or just after), and the lab may run one more session right
        after the kill, which the recovery is measured on.
        """
        assert self.watch is not None and self.lab is not None
        gate = self.lab.transport
        schedule = self.plan.schedule()
        jitter = random.Random(self.plan.seed)
        for kind in schedule:
            self.wait(
                lambda: (
                    self.watch is not None
                    and gate.credits == 0
                    and gate.published == gate.taken
                    and self.watch.decision_count() >= gate.published
                ),
                RECOVERY_TIMEOUT_S,
                "decision on every session published so far",
            )
            if self.lab_finished() or gate.published >= self.plan.sessions:
                self.lab_failed()
                raise BenchError(
                    f"the lab ended before every fault was injected ({len(self.report.faults)} "
                    f"of {len(schedule)}); plan more days"
                )
            time.sleep(self.plan.settle_s)
            target = gate.published + 1
            gate.allow(1)
            self.wait(
                lambda target=target: gate.published >= target,
                RECOVERY_TIMEOUT_S,
                "the lab's next session",
                every_s=0.01,
            )
            time.sleep(jitter.uniform(0.0, 1.0))
            self.report.faults.append(self.inject(kind, lambda: gate.allow(1)))
        gate.open()

    def lab_failed(self) -> None:
        """Raises the lab's own error, if it failed."""
        if self.lab is not None and self.lab.error is not None:
            raise BenchError(f"the lab failed: {self.lab.error!r}\n{self.tails()}")

    def lab_finished(self) -> bool:
        return self.lab is not None and not self.lab.is_alive()

    # -- checks --------------------------------------------------------------------------------

    def caught_up(self) -> bool:
        """The projector's committed offsets reach the end of every topic it reads."""
        assert self.broker is not None and self.store is not None
        consumer = KafkaConsumer(bootstrap_servers=self.broker.bootstrap, group_id=None)
        try:
            tps = [
                TopicPartition(topic, p)
                for topic in (
                    self.topics.accepted,
                    self.topics.decisions,
                    self.topics.assignments,
                    self.topics.dead_letter,
                )
                for p in range(PARTITIONS)
            ]
            ends = consumer.end_offsets(tps)
        finally:
            consumer.close()
        committed = self.store.committed_offsets("faults-projector")
        return all(committed.get((tp.topic, tp.partition), 0) >= end for tp, end in ends.items())

    def check(self, run: LabRun, lab_plan: LabPlan) -> dict[str, list[dict[str, Any]]]:
        assert self.watch is not None and self.store is not None
        report = self.report
        report.sessions = len(run.sessions)
        report.stale_sessions = sum(1 for s in run.sessions if s.stale_assignment)
        session_ids = [s.started.session_id for s in run.sessions if s.started.session_id]
        # every mouse's last session judged: its next assignment is out
        self.wait(
            lambda: all(
                self.watch is not None and self.watch.assignments.get(m, 0) > self.plan.days
                for m, _ in lab_plan.mice()
            ),
            CATCH_UP_TIMEOUT_S,
            "decision on every mouse's last session",
        )
        self.wait(self.caught_up, CATCH_UP_TIMEOUT_S, "projector catching up", every_s=1.0)
        tables = self.store.snapshot()
        with self.watch.lock:
            report.decisions = len(self.watch.decision_bytes)
            report.resent = self.watch.resent
            decided = dict(self.watch.session_decisions)
            conflicts = len(self.watch.conflicts)
            letters = list(self.watch.dead_letters)
        in_force = Counter(
            row["session_id"] for row in tables["decision_log"] if row["superseded_by"] is None
        )
        # lost: no decision on the topic, or none in force in the table
        report.lost = sum(1 for s in session_ids if not decided.get(s) or not in_force.get(s))
        report.duplicated = conflicts + sum(1 for n in in_force.values() if n > 1)
        report.false_rejections = dict(Counter(e.error_kind for _, e in letters))
        return tables

    def compare(self, tables: dict[str, list[dict[str, Any]]], lab_plan: LabPlan) -> None:
        codec = default_codec()
        embedded = EmbeddedRuntime(
            SqlProjectionStore("sqlite://", codec=codec), catalog=default_catalog(), codec=codec
        )
        run_lab(lab_plan, embedded)
        assert embedded.store is not None
        expected = embedded.store.snapshot()
        embedded.store.close()
        differences = []
        for name in sorted(set(expected) | set(tables)):
            want, got = expected.get(name, []), tables.get(name, [])
            if want == got:
                continue
            first = next(
                (f"{w} != {g}" for w, g in zip(want, got, strict=False) if w != g), "(a row more)"
            )
            differences.append(f"{name}: {len(got)} rows, embedded {len(want)}; {first[:300]}")
        self.report.tables_identical = not differences
        self.report.table_differences = differences

    def hostile_burst(self) -> None:
        assert self.broker is not None and self.watch is not None
        plan = self.plan
        result = self.report.hostile
        now = datetime.now(UTC)
        messages = hostile_messages(plan.hostile, plan.seed, now)
        result.sent = len(messages)
        result.sent_by_kind = dict(Counter(what for what, *_ in messages))
        # short truncations and garbage can repeat a message byte for byte: count by digest
        expected = {hashlib.sha256(value).hexdigest(): kind for _, _, value, kind in messages}
        copies = Counter(hashlib.sha256(value).hexdigest() for _, _, value, _ in messages)
        with self.watch.lock:
            already = len(self.watch.dead_letters)
        producer = rig_producer(self.broker.bootstrap, "faults-hostile")
        self.log(f"sending {len(messages):,} hostile messages")
        try:
            began = time.time()
            for _, key, value, _ in messages:
                producer.send(self.topics.events, key=key, value=value)
            after = MouseEnrolled(
                mouse_id="HOK001",
                occurred_at=now,
                curriculum_name="basic-shaping",
                enrolled_by="bench-hostile",
            )
            encoded = default_codec().encode(after)
            producer.send(
                self.topics.events,
                key=encode_key(after.mouse_id),
                value=encoded,
                headers=headers_for(encoded),
            )
            producer.flush(60)
            sent_after = time.time()
        finally:
            producer.close(10)

        def hostile_letters() -> list[tuple[float, EventRejected]]:
            assert self.watch is not None
            with self.watch.lock:
                return self.watch.dead_letters[already:]

        self.wait(
            lambda: len(hostile_letters()) >= len(messages),
            HOSTILE_TIMEOUT_S,
            f"a dead letter for each of {len(messages):,} hostile messages",
        )
        honoured = self.wait(
            lambda: self.watch is not None and self.watch.assignment_times.get((after.mouse_id, 1)),
            HOSTILE_TIMEOUT_S,
            "assignment for the enrolment sent after the hostile messages",
        )
        time.sleep(1.0)  # anything beyond one dead letter per message would show by now
        letters = hostile_letters()
        result.dead_by_kind = dict(Counter(e.error_kind for _, e in letters))
        seen: Counter[str] = Counter(e.original_sha256 or "" for _, e in letters)
        result.missing = sum(max(0, n - seen[digest]) for digest, n in copies.items())
        result.extra = sum(max(0, n - copies[digest]) for digest, n in seen.items())
        result.expected_mismatch = sum(
            1
            for _, e in letters
            if e.original_sha256 in expected and expected[e.original_sha256] != e.error_kind
        )
        last = max(at for at, _ in letters)
        result.seconds = last - began
        result.per_second = len(letters) / result.seconds if result.seconds > 0 else 0.0
        result.enrolment_honoured = bool(honoured)
        result.enrolment_s = float(honoured) - sent_after if honoured else None
        self.log(
            f"hostile burst: {len(letters):,} dead letters in {result.seconds:.1f} s "
            f"({result.per_second:,.0f}/s); the enrolment after them honoured: "
            f"{result.enrolment_honoured}"
        )

    # -- the whole run -----------------------------------------------------------------------

    def run(self) -> FaultReport:
        needed = 2 * len(self.plan.schedule())
        if self.plan.sessions < needed:
            raise BenchError(
                f"{self.plan.faults_text()} need {needed} sessions (two per fault), but the lab "
                f"runs {self.plan.sessions}: plan more mice or days"
            )
        lab_plan = self.plan.lab()
        self.report.lab_start = lab_plan.start.date().isoformat()
        try:
            mark = time.monotonic()
            self.start()
            assert self.broker is not None
            self.report.phase_seconds["start-up"] = time.monotonic() - mark
            mark = time.monotonic()
            self.lab = LabThread(lab_plan, self.broker.bootstrap, self.topics, self.plan.wait_s)
            self.lab.start()
            self.log(
                f"lab: {self.plan.mice} mice x {self.plan.days} days from "
                f"{self.report.lab_start}; faults: {', '.join(self.plan.schedule())}"
            )
            self.run_faults()
            self.wait(
                self.lab_finished,
                self.plan.wait_s + RECOVERY_TIMEOUT_S,
                "end of the lab",
            )
            if self.lab.error is not None:
                raise BenchError(f"the lab failed: {self.lab.error!r}\n{self.tails()}")
            assert self.lab.result is not None
            self.report.phase_seconds["lab with faults"] = time.monotonic() - mark
            mark = time.monotonic()
            tables = self.check(self.lab.result, lab_plan)
            self.compare(tables, lab_plan)
            self.report.phase_seconds["checks and embedded run"] = time.monotonic() - mark
            if self.plan.hostile:
                mark = time.monotonic()
                self.hostile_burst()
                self.report.phase_seconds["hostile burst"] = time.monotonic() - mark
            for service in (self.processor, self.projector):
                if service is not None and service.exited() is not None:
                    raise BenchError(f"{service.name} is not running at the end\n{self.tails()}")
        except BaseException:
            self.failed = True
            raise
        finally:
            mark = time.monotonic()
            self.close()
            self.report.phase_seconds["shut-down"] = time.monotonic() - mark
            self.report.seconds = self.elapsed()
        return self.report


def run_faults(
    plan: FaultPlan | None = None,
    db_url: str | None = None,
    log: Callable[[str], None] = print,
    keep: bool = False,
) -> FaultReport:
    """Runs the fault check; returns what it found (see :class:`FaultReport`).

    Args:
        plan: the lab and the faults (the defaults of :class:`FaultPlan`).
        db_url: a PostgreSQL (SQLAlchemy URL) whose projection tables may be reset; None
            starts a throwaway one.
        log: where progress lines go.
        keep: keep the run's files (service logs, broker data) even when it succeeds.

    Raises:
        BenchError: a part did not start or a bounded wait ran out.
    """

    return FaultRun(plan or FaultPlan(), db_url, log, keep).run()


# --------------------------------------------------------------------------- the report


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n:,}" for kind, n in sorted(counts.items())) or "none"


def summary(report: FaultReport) -> list[str]:
    """The figures as lines of text (printed, and the body of the report section)."""
    plan = report.plan
    stalls = [s for s in report.stalls(PROCESSOR) if s is not None]
    lines = [
        f"- Lab: {plan.mice} mice on {plan.rigs} rigs x {plan.days} days (seed {plan.seed}, "
        f"from {report.lab_start}): {report.sessions} sessions run, "
        f"{report.stale_sessions} on a stale assignment.",
        f"- Decisions on the topic: {report.decisions} distinct; {report.resent} re-sent "
        "with the same id and content after a restart (consumers drop them).",
        f"- **Lost: {report.lost}. Duplicated: {report.duplicated}. False rejections: "
        f"{report.false_rejection_count}** ({_kinds(report.false_rejections)}).",
        "- PostgreSQL tables equal to the embedded run of the same plan: "
        + (
            "**yes**"
            if report.tables_identical
            else "**no**: " + "; ".join(report.table_differences)
        ),
        "- Services that exited by themselves (restarted by the driver): "
        + ("; ".join(report.unexpected_exits) if report.unexpected_exits else "none"),
    ]
    if stalls:
        lines.append(
            f"- Processor kill -9 to the next decision: {', '.join(f'{s:.1f}' for s in stalls)} s "
            f"(worst {max(stalls):.1f} s; target < 10 s: "
            f"{'met' if max(stalls) < 10 else 'NOT met'})."
        )
    if stalls:
        from shaping.services.processor.app import SESSION_TIMEOUT_S

        lines.append(
            f"- Most of that is the broker waiting up to {SESSION_TIMEOUT_S:g} s (the processor's "
            "`SESSION_TIMEOUT_S`, Kafka's lowest allowed by default) for the killed worker's "
            "session to expire before it gives the partitions to the restarted one, whose start "
            "(imports, curricula, faust's own start) runs meanwhile; then it recovers the tables "
            "from their changelogs and works through the session waiting for it."
        )
    waits = [
        f
        for f in report.faults
        if f.kind in (BROKER, OUTAGE)
        and f.to_rig_s is not None
        and f.to_decision_s is not None
        and abs(f.to_decision_s - f.to_rig_s) < 2.0
    ]
    if waits:
        lines.append(
            f"- After {len(waits)} of the broker faults the decision came within 2 s of the "
            "session the lab published after the fault reaching the broker, so those figures "
            "include the rig's `KafkaRigTransport` producer reconnecting (kafka-python's "
            "reconnect backoff grows to 30 s while the broker is away); the processor and the "
            "projector may have been ready before it."
        )
    kills = [f.restart_s for f in report.faults if f.kind == BROKER and f.restart_s]
    clean = [f.restart_s for f in report.faults if f.kind == OUTAGE and f.restart_s]
    if kills:
        lines.append(
            "- `kafka.sh up` after the broker's kill -9 took "
            + ", ".join(f"{s:.1f}" for s in kills)
            + " s"
            + (
                f", after the outage's clean stop {', '.join(f'{s:.1f}' for s in clean)} s"
                if clean
                else ""
            )
            + ": after an unclean stop the KRaft controller keeps the old broker registration"
            " until its session times out (`broker.session.timeout.ms`, 9 s by default) before"
            " the restarted broker is unfenced."
        )
    hostile = report.hostile
    if hostile.sent:
        lines += [
            f"- Hostile burst: {hostile.sent:,} messages ({_kinds(hostile.sent_by_kind)}).",
            f"- Dead letters: {_kinds(hostile.dead_by_kind)}; {hostile.missing} message(s) "
            f"without one, {hostile.extra} extra, {hostile.expected_mismatch} of another kind "
            "than the in-process step gives.",
            f"- Dead-letter throughput: **{hostile.per_second:,.0f} dead letters/s** "
            f"({hostile.sent:,} in {hostile.seconds:.1f} s, first send to last dead letter).",
            "- The valid enrolment sent after them: "
            + (
                f"honoured, its assignment {hostile.enrolment_s:.1f} s after the send"
                if hostile.enrolment_honoured and hostile.enrolment_s is not None
                else "NOT honoured"
            )
            + ".",
        ]
    return lines


def fault_table(report: FaultReport) -> list[str]:
    lines = [
        "| # | Fault | At (s) | Away (s) | Fault -> next decision (s) | Broker up done -> "
        "decision (s) | Fault -> tables move (s) | Fault -> rig's next session out (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n, f in enumerate(report.faults, 1):
        lines.append(
            f"| {n} | {f.kind} | {f.at_s:.0f} | {_s(f.down_s)} | **{_s(f.to_decision_s)}** | "
            f"{_s(f.after_back_s)} | {_s(f.to_tables_s)} | {_s(f.to_rig_s)} |"
        )
    return lines


METHOD = """\
Method: `bench.faults` starts its own single-node KRaft broker (`infra/kafka/kafka.sh` on free
ports, data in a temporary directory), a PostgreSQL (`infra/postgres/postgres.sh`, or
`--db-url`), the processor and the projector as separate processes (`python -m shaping.services.cli
processor|projector`, 4 partitions), and the seeded lab (`shaping.rig.sim.lab.run_lab` through
`KafkaRigTransport`, rigs waiting up to {wait:.0f} s for each fresh assignment) in a thread. The
driver gates the lab's sessions so that the faults spread over it: once every session sent so
far is decided, it lets one session go out, injects the fault a seeded 0-1 s later (while the
processor works through that session, or just after) and lets one more session go out right
after the kill, which the recovery is measured on. The faults: processor SIGKILL (restarted at
once, same consumer group), broker SIGKILL (its pid from the data dir's `kafka.pid`; `kafka.sh
up` {after:.0f} s later on the same data, no reformat), projector SIGKILL (restarted; it resumes
from the offsets in its tables), and a {outage:.0f} s broker outage (`kafka.sh down`,
{outage:.0f} s, `kafka.sh up`; timed from the broker being gone). "Next decision" is when the
first StageTransitioned with a new event id reached a reader of the decisions topic (a
kafka-python consumer with no group, reconnecting within 0.5 s) after the fault; "up done" is
`kafka.sh up` returning (its probe saw the broker registered and answering; a negative figure
means the decision came first); "rig's next session out" is when the session the lab published
right after a broker fault was acknowledged (the rig's `KafkaRigTransport` producer
reconnecting; the decision after a broker fault is often on that session, so it waits for it);
"tables move" is the projector committing a batch beyond what it had committed at the fault. A
service that exits by itself is restarted and listed above. Lost: a session without a decision
on the topic or in force in `decision_log`; duplicated: an event id seen with two contents, or a
session with two decisions in force; false rejection: any dead letter of the lab's run (it sends
only valid events). The tables are compared with `store.snapshot()` of an embedded run
(`EmbeddedRuntime` on SQLite) of the same plan. The hostile burst then sends {hostile:,}
messages with an idempotent acks=all producer (each for a mouse of its own, each checked first
to be refused by the processor's step in-process, with the kind it gives), then a valid
enrolment; throughput is from the first send to the producer timestamp of the last dead letter.
The machine is shared with other test runs, so the times vary from run to run."""


def section(report: FaultReport, command: str) -> str:
    """The report's faults section, markers included."""
    from bench.report import Machine

    machine = Machine.describe()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    phases = ", ".join(f"{name} {s:.0f} s" for name, s in report.phase_seconds.items())
    lines = [
        BEGIN,
        "## Faults and hostile input",
        "",
        f"Written by `{command}` on {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}. "
        f"The run took {report.seconds:.0f} s ({phases}).",
        "",
        f"- Machine: {machine.cpus} CPUs ({machine.cpu_model}), {machine.ram_gib:.0f} GiB RAM; "
        f"load average after the run {load}; Apache Kafka {machine.kafka}; Shaping commit "
        f"{machine.commit}",
        "",
        *fault_table(report),
        "",
        *summary(report),
        "",
        METHOD.format(
            wait=report.plan.wait_s,
            after=report.plan.broker_restart_after_s,
            outage=report.plan.outage_s,
            hostile=report.hostile.sent,
        ),
        END,
    ]
    return "\n".join(lines) + "\n"


def write_section(report: Path, text: str) -> None:
    """Replaces the faults section of the report (appends it when there is none); the other
    sections stay as they are."""
    old = report.read_text(encoding="utf-8") if report.exists() else "# Shaping benchmarks\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        new = head + text + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    report.write_text(new, encoding="utf-8")


def kept_section(report: Path) -> str:
    """The faults section of an existing report (empty when there is none), for a writer of
    the whole report that must keep it."""
    if not report.exists():
        return ""
    text = report.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        return ""
    return BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END + "\n"


# --------------------------------------------------------------------------- command line


def parse(argv: Sequence[str]) -> argparse.Namespace:
    defaults = FaultPlan()
    parser = argparse.ArgumentParser(
        prog="python -m bench.faults", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--mice", type=int, default=defaults.mice, help="simulated mice")
    parser.add_argument("--days", type=int, default=defaults.days, help="days of sessions")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="the lab's seed")
    parser.add_argument(
        "--hostile", type=int, default=defaults.hostile, help="hostile messages (0: none)"
    )
    parser.add_argument(
        "--outage", type=float, default=defaults.outage_s, help="seconds of broker outage"
    )
    parser.add_argument("--db-url", help="a PostgreSQL to use (its projection tables are reset)")
    parser.add_argument("--report", type=Path, default=REPORT, help="the report to update")
    parser.add_argument("--no-report", action="store_true", help="print only")
    parser.add_argument("--keep", action="store_true", help="keep the logs and broker data")
    args = parser.parse_args(list(argv))
    for name in ("mice", "days"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.hostile < 0 or args.outage < 0:
        parser.error("--hostile and --outage cannot be negative")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    # SIGTERM becomes an exception, so every ``finally`` runs and stops what was started.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    signal.signal(signal.SIGTERM, _terminate)
    plan = FaultPlan(
        mice=args.mice, days=args.days, seed=args.seed, hostile=args.hostile, outage_s=args.outage
    )
    command = " ".join(["python -m bench.faults", *argv])
    try:
        report = run_faults(plan, args.db_url, lambda text: print(text, flush=True), args.keep)
    except BenchError as exc:
        print(f"fault run failed: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("fault run interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    print()
    print("\n".join(fault_table(report)))
    print()
    print("\n".join(summary(report)))
    print(f"\ndone in {report.seconds:.0f} s")
    if not args.no_report:
        write_section(args.report, section(report, command))
        print(f"wrote the faults section of {args.report}")
    problems = report.problems()
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
