"""Processor processes for tests on a real broker: a runner that starts ``python -m
shaping.services.processor`` with a test's settings (and kills what is left at the end), helpers
to read its outputs, and the fixtures ``processors``, ``outputs`` and ``publisher``.

A test folder gets the fixtures by importing them (tests/integration/conftest.py does).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from shaping.schemas.events import Event
from shaping.schemas.topics import TopicNames
from tests.support.kafka import TEST_PARTITIONS
from tests.support.kafka_io import Publisher, TopicReader
from tests.support.scripts import REPO

STOP_TIMEOUT_S = 60.0


class ProcessorRunner:
    """Starts and stops processor processes for one test; kills leftovers at the end."""

    def __init__(self, bootstrap: str, topics: TopicNames, workdir: Path) -> None:
        self.bootstrap = bootstrap
        self.prefix = topics.events.removesuffix(".events")
        self.workdir = workdir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self, processor_id: str) -> subprocess.Popen[bytes]:
        """Starts ``python -m shaping.services.processor`` with this test's settings."""
        env = {
            **os.environ,
            "SHAPING_BOOTSTRAP": self.bootstrap,
            "SHAPING_TOPIC_PREFIX": self.prefix,
            "SHAPING_PARTITIONS": str(TEST_PARTITIONS),
            "SHAPING_PROCESSOR_ID": processor_id,
            "SHAPING_DATA_DIR": str(self.workdir / "data"),
            "PYTHONUNBUFFERED": "1",
        }
        log = self.workdir / f"processor-{len(self.logs) + 1}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "shaping.services.processor"],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(proc)
        self.logs.append(log)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> int:
        """Sends SIGTERM and waits for the process to exit; returns its exit code."""
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(
                f"processor ignored SIGTERM for {STOP_TIMEOUT_S:g} s\n{self.log_tail()}"
            ) from None

    def log_tail(self, lines: int = 40) -> str:
        """The end of every processor log of this test (for failure messages)."""
        parts = []
        for log in self.logs:
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"----- {log.name} -----\n" + "\n".join(text))
        return "\n".join(parts)

    def kill_all(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def new_processor_id() -> str:
    return f"processor-{uuid.uuid4().hex[:8]}"


def of_mouse(reader: TopicReader, mouse: str, event_type: type[Event]) -> list[Event]:
    return [e for e in reader.events(event_type=event_type) if e.mouse_id == mouse]


@pytest.fixture
def processors(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
) -> Iterator[ProcessorRunner]:
    runner = ProcessorRunner(kafka_bootstrap, kafka_topics, tmp_path)
    try:
        yield runner
    finally:
        runner.kill_all()


@pytest.fixture
def outputs(kafka_bootstrap: str, kafka_topics: TopicNames) -> Iterator[TopicReader]:
    with TopicReader(
        kafka_bootstrap,
        [kafka_topics.decisions, kafka_topics.assignments, kafka_topics.dead_letter],
    ) as reader:
        yield reader


@pytest.fixture
def publisher(kafka_bootstrap: str, kafka_topics: TopicNames) -> Iterator[Publisher]:
    with Publisher(kafka_bootstrap, kafka_topics.events) as pub:
        yield pub
