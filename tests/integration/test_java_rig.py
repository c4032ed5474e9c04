"""The example rig in Java (examples/java-rig) against the real broker and a real processor.

Maven builds it (``mvn -q -B package``, its local repository cached under ``.cache/m2`` like
the broker's jars), and the program runs as a separate JVM: it enrols a mouse, waits for the
processor's first assignment, runs a session with it and decodes the next assignment. The test
checks both sides: the processor accepted every event the Java program wrote (a decision, two
assignments, no dead letter), and what Java printed is the assignment the processor issued.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer

from shaping.schemas.codec import default_codec
from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    EventRejected,
    SessionEnded,
    SessionStarted,
    StageTransitioned,
)
from shaping.schemas.headers import header_text, headers_for
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.topics import wait_for_partitions
from tests.support.kafka_io import TopicReader
from tests.support.processor import ProcessorRunner, new_processor_id, of_mouse
from tests.support.scripts import REPO

pytestmark = pytest.mark.kafka

JAVA_RIG = REPO / "examples" / "java-rig"
SCHEMAS = REPO / "schemas" / "avro"
BUILD_TIMEOUT_S = 900.0  # the first build downloads Avro, the Kafka client and Maven plugins
RUN_TIMEOUT_S = 180.0
TRIALS = 120


def maven_repository() -> Path:
    """Maven's local repository for the example: under the project's cache, as the broker's."""
    return Path(os.environ.get("SHAPING_CACHE", REPO / ".cache")) / "m2"


@pytest.fixture(scope="module")
def java_rig_jar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Builds the example with Maven into a temporary folder; FAILS (never skips) without
    Java 17 or Maven, like the broker fixture."""
    for tool in ("mvn", "java", "javac"):
        if shutil.which(tool) is None:
            pytest.fail(
                f"{tool!r} is not installed (apt-get install maven openjdk-17-jdk-headless)"
            )
    build = tmp_path_factory.mktemp("java-rig-build")
    repository = maven_repository()
    repository.mkdir(parents=True, exist_ok=True)
    command = [
        "mvn",
        "-q",
        "-B",
        "-Dstyle.color=never",
        f"-Dmaven.repo.local={repository}",
        f"-Drig.build.dir={build}",
        "-f",
        str(JAVA_RIG / "pom.xml"),
        "package",
    ]
    # One Maven at a time writes the local repository (its downloads are not safe to share).
    with (repository.parent / "m2.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
        )
    jar = build / "shaping-java-rig.jar"
    if result.returncode != 0 or not jar.exists():
        pytest.fail(
            f"`{' '.join(command)}` failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}",
            pytrace=False,
        )
    yield jar


def events_of(bootstrap: str, topic: str, mouse: str) -> list[tuple[Event, Any]]:
    """(event, headers) of every record of ``mouse`` on ``topic``, in offset order."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        partitions = wait_for_partitions(consumer, [topic]) or []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records: list[Any] = []
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(r for r in batch if r.key == mouse.encode())
    finally:
        consumer.close()
    records.sort(key=lambda r: r.offset)
    return [(default_codec().decode(r.value), r) for r in records]


def test_the_java_rig_trains_a_mouse_through_the_processor(
    java_rig_jar: Path,
    processors: ProcessorRunner,
    outputs: TopicReader,
    kafka_bootstrap: str,
    kafka_topics: TopicNames,
) -> None:
    mouse = f"J-{uuid.uuid4().hex[:6]}"
    prefix = kafka_topics.events.removesuffix(".events")
    processors.start(new_processor_id())

    run = subprocess.run(
        [
            "java",
            "-jar",
            str(java_rig_jar),
            "--bootstrap",
            kafka_bootstrap,
            "--prefix",
            prefix,
            "--schemas",
            str(SCHEMAS),
            "--mouse",
            mouse,
            "--trials",
            str(TRIALS),
            "--timeout",
            "90",
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    said = f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert run.returncode == 0, f"{said}\n{processors.log_tail()}"

    # The processor accepted everything: one decision, two assignments, no dead letter.
    outputs.wait_for(
        lambda _: len(of_mouse(outputs, mouse, AssignmentIssued)) >= 2,
        what="the two assignments",
        on_timeout=processors.log_tail,
    )
    assignments = of_mouse(outputs, mouse, AssignmentIssued)
    [decision] = of_mouse(outputs, mouse, StageTransitioned)
    assert isinstance(decision, StageTransitioned)
    assert not of_mouse(outputs, mouse, EventRejected), of_mouse(outputs, mouse, EventRejected)
    assert (decision.from_stage, decision.decision, decision.to_stage) == (
        "s1_habituation",
        "progress",
        "s2_training",
    )
    assert decision.session_summary.n_trials == TRIALS
    first, last = assignments[0], assignments[-1]
    assert isinstance(first, AssignmentIssued) and isinstance(last, AssignmentIssued)

    # What Java decoded and printed is the assignment the processor issued.
    [result] = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    printed = json.loads(result.removeprefix("RESULT "))
    assert printed == {
        "event_id": last.event_id,
        "mouse_id": mouse,
        "stage": "s2_training",
        "curriculum_name": "basic-shaping",
        "curriculum_version": last.curriculum_version,
        "session_number": 2,
        "sessions_at_stage": last.sessions_at_stage,
        "reason": last.reason,
    }
    written = default_codec().newest("AssignmentIssued")
    assert f"written with AssignmentIssued v{written.version}, fingerprint" in run.stdout
    assert f"session 1 at stage s1_habituation of basic-shaping {first.curriculum_version}" in (
        run.stdout
    )

    # The events Java wrote decode in Python with the newest schemas, and carry the headers.
    written_events = events_of(kafka_bootstrap, kafka_topics.events, mouse)
    types = [event.event_type for event, _ in written_events]
    assert types == ["MouseEnrolled", "SessionStarted"] + ["TrialCompleted"] * TRIALS + [
        "SessionEnded"
    ]
    for _, record in written_events:
        assert header_text(record.headers) == header_text(headers_for(record.value))
    start = written_events[1][0]
    end = written_events[-1][0]
    assert isinstance(start, SessionStarted) and isinstance(end, SessionEnded)
    assert start.assignment_id == first.event_id
    assert start.stage == first.stage
    assert start.parameters == first.parameters
    assert end.n_trials == TRIALS
