"""The rig agent against the real Kafka broker and the processor, each a separate process.

The agent runs as ``shaping rig run`` in its own process (a simulated mouse on gpiozero mock
pins). Crashes are real: the hidden ``--fault-plan`` option makes the process SIGKILL itself at
a chosen point (after the N-th event it stored, or after the N-th broker acknowledgement, before
it marked the event sent). The broker is cut by stopping a second, private broker mid-session
(``infra/kafka/kafka.sh down``) and starting it again on the same data.

Each test compares what reached the events topic with the events of an uninterrupted run of
the same session (computed in-process), and the processor's decision with the decision the
same processing step takes on the uninterrupted run's events.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer

from shaping.rig.agent import RunOptions
from shaping.rig.bootstrap import rig_agent
from shaping.rig.link.store import RigStore
from shaping.schemas.codec import default_codec
from shaping.schemas.events import AssignmentIssued, Event, MouseEnrolled, StageTransitioned
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.topics import ensure_topics, wait_for_partitions
from tests.support.kafka import KAFKA_SH, TEST_PARTITIONS, KafkaBroker, start_kafka
from tests.support.kafka_io import Publisher, TopicReader
from tests.support.ops import free_port
from tests.support.processes import stop, wait_until
from tests.support.rig import CODEC, START, FakeDisplay, config_in, write_config
from tests.support.scripts import REPO, STOP_TIMEOUT_S, run_script
from tests.support.wiring import embedded_runtime

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.filterwarnings("ignore::gpiozero.exc.PinFactoryFallback"),
]

MOUSE = "M001"
SEED = 11
RUN_TIMEOUT_S = 240.0
ENROLLED = MouseEnrolled(
    event_id="00000000-0000-4000-8000-00000000e001",
    mouse_id=MOUSE,
    occurred_at=START,
    curriculum_name="basic-shaping",
    enrolled_by="rig-tests",
)


@dataclass
class Lab:
    """A broker, its topics, a processor process and a rig folder for one test."""

    bootstrap: str
    topics: TopicNames
    workdir: Path
    processor_id: str
    processor: subprocess.Popen[bytes] | None = None
    processor_logs: int = 0

    @property
    def prefix(self) -> str:
        return self.topics.events.removesuffix(".events")

    def start_processor(self) -> None:
        self.processor_logs += 1
        log = (self.workdir / f"processor-{self.processor_logs}.log").open("wb")
        env = {
            **os.environ,
            "SHAPING_BOOTSTRAP": self.bootstrap,
            "SHAPING_TOPIC_PREFIX": self.prefix,
            "SHAPING_PARTITIONS": str(TEST_PARTITIONS),
            "SHAPING_PROCESSOR_ID": self.processor_id,
            "SHAPING_DATA_DIR": str(self.workdir / "processor-data"),
        }
        self.processor = subprocess.Popen(
            [sys.executable, "-m", "shaping.services.processor"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop_processor(self) -> None:
        if self.processor is not None:
            stop(self.processor)
            self.processor = None

    def processor_tail(self) -> str:
        parts = []
        for n in range(1, self.processor_logs + 1):
            text = (self.workdir / f"processor-{n}.log").read_text(errors="replace")
            parts.append(f"--- processor-{n}.log ---\n" + "\n".join(text.splitlines()[-30:]))
        return "\n".join(parts)

    def rig_config(self) -> Path:
        folder = self.workdir / "rig"
        folder.mkdir(exist_ok=True)
        return write_config(folder, mice=[MOUSE], bootstrap=self.bootstrap, prefix=self.prefix)

    def enroll_and_wait_for_the_assignment(self) -> AssignmentIssued:
        with Publisher(self.bootstrap, self.topics.events) as publisher:
            publisher.events([ENROLLED])
        with TopicReader(self.bootstrap, [self.topics.assignments]) as reader:
            [first] = reader.wait_for(
                lambda _: reader.events(event_type=AssignmentIssued),
                timeout_s=120,
                what="the enrolment's assignment",
                on_timeout=self.processor_tail,
            )
        assert isinstance(first, AssignmentIssued)
        return first


@pytest.fixture
def lab(kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(kafka_bootstrap, kafka_topics, tmp_path, f"processor-{tmp_path.name[-12:]}")
    try:
        yield lab
    finally:
        if lab.processor is not None:
            lab.processor.kill()
            lab.processor.wait()


def run_rig(
    config: Path, *args: str, fault: str | None = None, log: Path, wait: bool = True
) -> subprocess.Popen[bytes]:
    """``shaping rig ARGS --config CONFIG [--fault-plan FAULT]`` in its own process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    faults = ["--fault-plan", fault] if fault else []
    command = [sys.executable, "-m", "shaping.services.cli", "rig", *args, "--config", str(config)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, *faults],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if wait:
        try:
            proc.wait(RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"rig process hung:\n{log.read_text()}") from None
    return proc


def session_args(*extra: str) -> list[str]:
    return [
        "run", "--mouse", MOUSE, "--simulate", "--seed", str(SEED),
        "--start", START.isoformat(), "--decision-timeout", "180", "--every", "20", *extra,
    ]  # fmt: skip


def uninterrupted(tmp_path: Path, assignment: AssignmentIssued) -> list[Event]:
    """The same session run in one go, in-process and offline: the reference."""
    folder = tmp_path / "reference"
    folder.mkdir()
    config = config_in(folder, mice=[MOUSE])
    store = RigStore(config.store_path, codec=CODEC)
    store.save_assignment(assignment)
    rig_agent(config, FakeDisplay(), store).run(
        RunOptions(MOUSE, simulate=True, seed=SEED, start=START, offline=True)
    )
    return [store.codec.decode(r.value) for r in store.unsent(limit=100_000, max_bytes=1 << 40)]


def reference_decision(events: list[Event]) -> StageTransitioned:
    """What the processing step decides on the uninterrupted run (embedded, same step)."""
    runtime = embedded_runtime()
    runtime.publish([ENROLLED, *events])
    codec = default_codec()
    [decision] = [codec.decode(r.value) for r in runtime.log.read(runtime.topics.decisions)]
    assert isinstance(decision, StageTransitioned)
    return decision


def read_to_end(bootstrap: str, topic: str) -> list[Event]:
    """Every event on a topic, partition by partition in offset order (the whole topic)."""
    codec = default_codec()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        partitions = wait_for_partitions(consumer, [topic]) or []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records: dict[int, list[Any]] = {tp.partition: [] for tp in partitions}
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            assert time.monotonic() < deadline, "could not read the topic to its end"
            for tp, batch in consumer.poll(timeout_ms=500).items():
                records[tp.partition].extend(batch)
    finally:
        consumer.close()
    return [codec.decode(r.value) for batch in records.values() for r in batch]


def decisions_for(bootstrap: str, topics: TopicNames, session_id: str) -> list[StageTransitioned]:
    return [
        e
        for e in read_to_end(bootstrap, topics.decisions)
        if isinstance(e, StageTransitioned) and e.session_id == session_id
    ]


def assert_delivered_once_in_order(lab: Lab, expected: list[Event]) -> None:
    on_topic = [e for e in read_to_end(lab.bootstrap, lab.topics.events) if e.mouse_id == MOUSE]
    assert on_topic[0] == ENROLLED
    delivered = on_topic[1:]
    ids = [e.event_id for e in delivered]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} events arrived twice"
    assert ids == [e.event_id for e in expected]
    assert delivered == expected
    # The processor took every one of them, MovementDetected included: no dead letters.
    assert read_to_end(lab.bootstrap, lab.topics.dead_letter) == []


def test_a_rig_killed_mid_session_and_mid_send_loses_nothing_and_duplicates_nothing(
    lab: Lab, tmp_path: Path
) -> None:
    lab.start_processor()
    assignment = lab.enroll_and_wait_for_the_assignment()
    config = lab.rig_config()
    store_path = config.parent / "state" / "rig.sqlite"

    # 1. Killed (SIGKILL) right after its 60th event, mid-session, while it was sending.
    first = run_rig(config, *session_args(), fault="kill-after-event:60", log=tmp_path / "1.log")
    assert first.returncode == -signal.SIGKILL, (tmp_path / "1.log").read_text()
    assert RigStore(store_path, codec=CODEC).open_session(MOUSE) is not None

    # 2. Restarted: it resumes the session and finishes it (offline, so nothing is sent).
    second = run_rig(config, *session_args("--offline"), log=tmp_path / "2.log")
    output = (tmp_path / "2.log").read_text()
    assert second.returncode == 0, output
    assert f"resuming session {MOUSE}-rig-1-20260302T090000 of {MOUSE} at trial" in output
    waiting = RigStore(store_path, codec=CODEC).unsent_count()
    assert waiting > 50
    # The first run may have been killed after the broker took some events and before it
    # marked them sent: the next drain finds those on the broker first (reconciliation).
    unsent = RigStore(store_path, codec=CODEC).unsent(limit=100_000, max_bytes=1 << 40)
    on_broker = {e.event_id for e in read_to_end(lab.bootstrap, lab.topics.events)}
    delivered_unmarked = sum(
        row.topic == lab.topics.events and CODEC.decode(row.value).event_id in on_broker
        for row in unsent
    )

    # 3. Killed between a broker acknowledgement and marking the event sent.
    third = run_rig(config, "sync", fault="kill-after-ack:25", log=tmp_path / "3.log")
    assert third.returncode == -signal.SIGKILL, (tmp_path / "3.log").read_text()
    left = RigStore(store_path, codec=CODEC).unsent_count()
    # Only reconciliation marked anything: none of the 25 acknowledged events was marked.
    assert 0 < left == waiting - delivered_unmarked

    # 4. Restarted: it finds what already arrived and sends only the rest.
    fourth = run_rig(config, "sync", log=tmp_path / "4.log")
    output = (tmp_path / "4.log").read_text()
    assert fourth.returncode == 0, output
    assert f"outbox: sent {left} of {left} events" in output
    already = int(output.split("(")[1].split()[0])
    assert already >= 25  # found on the broker, not sent again
    assert RigStore(store_path, codec=CODEC).unsent_count() == 0

    expected = uninterrupted(tmp_path, assignment)
    session_id = expected[0].session_id or ""
    [decision] = wait_until(
        lambda: decisions_for(lab.bootstrap, lab.topics, session_id),
        120,
        "the processor's decision",
    )
    assert decision == reference_decision(expected)
    assert_delivered_once_in_order(lab, expected)

    status = run_rig(config, "status", log=tmp_path / "status.log")
    output = (tmp_path / "status.log").read_text()
    assert status.returncode == 0, output
    assert f"broker {lab.bootstrap}: reachable (assignment cache refreshed)" in output
    assert "outbox: 0 events waiting" in output
    verdict = f"{decision.decision} {decision.from_stage} -> {decision.to_stage}"
    assert f"last session {session_id}: {verdict}" in output
    assert "assignment: session 2, stage " in output


@pytest.fixture
def private_broker() -> Iterator[KafkaBroker]:
    """A broker of its own, so a test can cut it without disturbing the session's broker."""
    broker = start_kafka(free_port(), free_port())
    try:
        yield broker
    finally:
        broker.stop()


def broker_down(broker: KafkaBroker) -> None:
    result = run_script(KAFKA_SH, "down", broker.env(), STOP_TIMEOUT_S)
    assert result.returncode == 0, result.stderr


def broker_up(broker: KafkaBroker) -> None:
    result = run_script(KAFKA_SH, "up", broker.env(), 300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broker_cut_mid_session_delays_events_but_loses_none(
    private_broker: KafkaBroker, tmp_path: Path
) -> None:
    topics = TopicNames.with_prefix("cut")
    ensure_topics(private_broker.bootstrap, topics, partitions=TEST_PARTITIONS)
    lab = Lab(private_broker.bootstrap, topics, tmp_path, "processor-cut")
    try:
        lab.start_processor()
        assignment = lab.enroll_and_wait_for_the_assignment()
        config = lab.rig_config()
        store_path = config.parent / "state" / "rig.sqlite"
        gate = tmp_path / "gate"
        log = tmp_path / "rig.log"

        rig = run_rig(
            config, *session_args(), fault=f"pause-after-event:80:{gate}", log=log, wait=False
        )
        wait_until(lambda: Path(f"{gate}.reached").exists(), 120, "the rig to reach event 80")
        wait_until(  # the rig was online: what it recorded so far went out
            lambda: RigStore(store_path, codec=CODEC).unsent_count() == 0,
            60,
            "the first 80 events to go out",
        )
        lab.stop_processor()
        broker_down(private_broker)
        gate.touch()  # the session goes on with the broker gone
        wait_until(lambda: "session ended" in log.read_text(), 120, "the end of the session")
        held = RigStore(store_path, codec=CODEC).unsent_count()
        assert held > 0 and rig.poll() is None  # kept in the outbox, still waiting

        broker_up(private_broker)
        lab.start_processor()
        rig.wait(RUN_TIMEOUT_S)
        output = log.read_text()
        assert rig.returncode == 0, output + lab.processor_tail()
        assert "decision: " in output and "rule engaged_and_accurate" in output
        assert RigStore(store_path, codec=CODEC).unsent_count() == 0

        expected = uninterrupted(tmp_path, assignment)
        assert_delivered_once_in_order(lab, expected)
        [decision] = decisions_for(lab.bootstrap, topics, expected[0].session_id or "")
        assert decision == reference_decision(expected)
        shown = f"decision: {decision.decision} {decision.from_stage} -> {decision.to_stage}"
        assert shown in output
    finally:
        if lab.processor is not None:
            lab.processor.kill()
            lab.processor.wait()
