"""Against a real broker: the stale assignment policy when the processor is slow or down, an
old rig facing an assignment in a newer schema, and the rig's clock skew measured from the
broker's LogAppendTime.

No processor runs here: the tests play its part by publishing assignments and decisions (or by
publishing nothing, the processor being down).
"""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from kafka.admin import KafkaAdminClient, NewTopic
from typer.testing import CliRunner

from shaping.rig.agent import RunOptions, SessionReport, StaleAssignmentRefusedError
from shaping.rig.bootstrap import rig_agent
from shaping.rig.config import load_config
from shaping.rig.link.drain import OutboxDrainer
from shaping.rig.link.store import SKEW_SMOOTHING, RigStore
from shaping.rig.metrics import read_metrics
from shaping.schemas.events import SessionStarted
from shaping.schemas.topics import TopicNames
from shaping.services.cli import app
from tests.support.examples import example_events
from tests.support.kafka_io import Publisher, TopicReader
from tests.support.rig import (
    CODEC,
    START,
    FakeDisplay,
    assignment,
    encode_as,
    older_rig_codec,
    write_config,
)

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.filterwarnings("ignore::gpiozero.exc.PinFactoryFallback"),
]

PARAMS = {"session_minutes": 5, "iti_min_s": 2.0, "iti_max_s": 3.0}


def prefix_of(topics: TopicNames) -> str:
    return topics.events.removesuffix(".events")


def rig_config(folder: Path, bootstrap: str, topics: TopicNames, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(
        folder, mice=["M001"], bootstrap=bootstrap, prefix=prefix_of(topics), extra=extra
    )


def run(path: Path, display: FakeDisplay, hours: int = 0, codec: Any = None) -> SessionReport:
    return rig_agent(load_config(path), display, codec=codec).run(
        RunOptions(
            "M001",
            simulate=True,
            seed=4,
            start=START + timedelta(hours=hours),
            decision_timeout_s=0.0,
        )
    )


def send_outbox(path: Path, bootstrap: str) -> None:
    drainer = OutboxDrainer(RigStore(load_config(path).store_path, CODEC), bootstrap, codec=CODEC)
    try:
        assert drainer.drain(60), drainer.status.last_error
    finally:
        drainer.close()


def test_an_old_rig_facing_a_newer_assignment_says_so_and_applies_its_policy(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
) -> None:
    with Publisher(kafka_bootstrap, kafka_topics.assignments) as publisher:
        publisher.raw(b"M001", encode_as(assignment(parameters=PARAMS), 1))  # an old processor
        publisher.events([assignment(parameters=PARAMS, session_number=2)])  # the new one: v2
    old = older_rig_codec("AssignmentIssued", 1)

    path = rig_config(tmp_path / "old", kafka_bootstrap, kafka_topics)
    display = FakeDisplay()
    report = run(path, display, codec=old)
    started = report.started
    assert started.assignment_id == "assignment-M001-1"
    assert started.assignment_stale is True
    assert "the newest assignment for M001 cannot be read by this rig" in (
        started.assignment_stale_reason or ""
    )
    assert any(
        "UNREADABLE: this rig cannot read its newest assignment" in m for m in display.messages
    )
    assert read_metrics(load_config(path).store_path).undecodable["assignments"] == 1
    send_outbox(path, kafka_bootstrap)
    with TopicReader(kafka_bootstrap, [kafka_topics.events]) as reader:
        [on_wire] = reader.wait_for(
            lambda _: reader.events(event_type=SessionStarted), what="the SessionStarted"
        )
    assert isinstance(on_wire, SessionStarted)
    assert (on_wire.schema_version, on_wire.assignment_stale) == (3, True)
    assert on_wire.assignment_stale_reason == started.assignment_stale_reason

    refusing = rig_config(
        tmp_path / "old-refusing",
        kafka_bootstrap,
        kafka_topics,
        '[stale_assignment]\npolicy = "refuse"\n',
    )
    with pytest.raises(StaleAssignmentRefusedError, match="cannot be read by this rig"):
        run(refusing, FakeDisplay(), codec=old)
    assert RigStore(load_config(refusing).store_path, codec=CODEC).unsent_count() == 0

    current = rig_config(tmp_path / "new", kafka_bootstrap, kafka_topics)
    display = FakeDisplay()
    report = run(current, display)
    assert report.started.assignment_id == "assignment-M001-2"
    assert report.started.assignment_stale is False
    assert not any("UNREADABLE" in m or "STALE" in m for m in display.messages)
    assert read_metrics(load_config(current).store_path).undecodable["assignments"] == 0


def test_with_the_processor_down_the_rig_waits_its_bound_then_runs_stale_or_refuses(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
) -> None:
    with Publisher(kafka_bootstrap, kafka_topics.assignments) as publisher:
        publisher.events([assignment(parameters=PARAMS)])
    path = rig_config(
        tmp_path / "rig", kafka_bootstrap, kafka_topics, "[stale_assignment]\nmax_wait_s = 1.5\n"
    )
    first = run(path, FakeDisplay())
    assert (first.started.assignment_stale, first.started.assignment_wait_s) == (False, 0.0)

    display = FakeDisplay()
    began = time.monotonic()
    second = run(path, display, hours=2)  # nobody decides on the first session
    assert time.monotonic() - began >= 1.5
    started = second.started
    assert started.assignment_stale is True
    assert started.assignment_wait_s is not None and 1.5 <= started.assignment_wait_s < 10
    assert f"waiting up to 1.5 s for the decision on {first.session_id} ..." in display.messages
    assert f"the decision on {first.session_id} has not arrived after " in (
        started.assignment_stale_reason or ""
    )

    # The processor answers while the rig waits: the rig runs the new assignment, not stale.
    decision = example_events()["StageTransitioned"].model_copy(
        update={"event_id": f"d-{uuid4()}", "mouse_id": "M001", "session_id": second.session_id}
    )
    answer = assignment(parameters=PARAMS, session_number=3).model_copy(
        update={"causation_id": decision.event_id, "reason": "stay"}
    )

    def processor_answers() -> None:
        with Publisher(kafka_bootstrap, kafka_topics.decisions) as decisions:
            decisions.events([decision])
        with Publisher(kafka_bootstrap, kafka_topics.assignments) as assignments:
            assignments.events([answer])

    rewritten = rig_config(
        tmp_path / "rig", kafka_bootstrap, kafka_topics, "[stale_assignment]\nmax_wait_s = 60\n"
    )
    timer = threading.Timer(1.0, processor_answers)
    timer.start()
    try:
        third = run(rewritten, FakeDisplay(), hours=4)
    finally:
        timer.join()
    assert third.started.assignment_id == answer.event_id
    assert third.started.assignment_stale is False
    assert third.started.assignment_wait_s is not None
    assert 0 < third.started.assignment_wait_s < 60  # it waited, less than its bound

    refusing = rig_config(
        tmp_path / "refusing",
        kafka_bootstrap,
        kafka_topics,
        '[stale_assignment]\npolicy = "refuse"\nmax_wait_s = 1\n',
    )
    RigStore(load_config(refusing).store_path, codec=CODEC).save_assignment(answer)
    run(refusing, FakeDisplay())
    began = time.monotonic()
    with pytest.raises(StaleAssignmentRefusedError, match=r"has not arrived after 1(\.\d+)? s"):
        run(refusing, FakeDisplay(), hours=2)
    assert time.monotonic() - began >= 1
    assert read_metrics(load_config(refusing).store_path).stale == {"ran_cached": 0, "refused": 1}


class OffsetClock:
    """The rig's clock, set ``offset_s`` away from the machine's."""

    def __init__(self, offset_s: float) -> None:
        self.offset_s = offset_s

    def now(self) -> float:
        return time.time() + self.offset_s

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wait(self, flag: threading.Event, timeout_s: float) -> bool:
        return flag.wait(timeout_s)


def create_topic(bootstrap: str, name: str, timestamp_type: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="shaping-tests")
    try:
        admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=1,
                    replication_factor=1,
                    topic_configs={"message.timestamp.type": timestamp_type},
                )
            ]
        )
    finally:
        admin.close()


def drain_with(store: RigStore, bootstrap: str, topic: str, clock: OffsetClock, n: int) -> None:
    trial = example_events()["TrialCompleted"]
    for _ in range(n):
        store.append(trial.model_copy(update={"event_id": str(uuid4()), "mouse_id": "M001"}), topic)
    drainer = OutboxDrainer(store, bootstrap, clock=clock, codec=CODEC)
    try:
        assert drainer.drain(60), drainer.status.last_error
    finally:
        drainer.close()


def test_the_clock_skew_is_measured_from_log_append_time_and_shown(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
) -> None:
    appended = f"t{uuid4().hex[:8]}.log-append-time"
    created = f"t{uuid4().hex[:8]}.create-time"
    create_topic(kafka_bootstrap, appended, "LogAppendTime")
    create_topic(kafka_bootstrap, created, "CreateTime")

    path = rig_config(tmp_path / "rig", kafka_bootstrap, kafka_topics)
    store = RigStore(load_config(path).store_path, codec=CODEC)
    drain_with(store, kafka_bootstrap, appended, OffsetClock(+120.0), 3)
    first = store.clock_skew()
    assert first is not None and first.samples == 1
    assert abs(first.latest_s - 120.0) < 3 and first.smoothed_s == first.latest_s
    assert first.uncertainty_s < 3
    drain_with(store, kafka_bootstrap, appended, OffsetClock(-90.0), 2)
    second = store.clock_skew()
    assert second is not None and second.samples == 2
    assert abs(second.latest_s + 90.0) < 3
    assert second.smoothed_s == pytest.approx(
        first.smoothed_s + SKEW_SMOOTHING * (second.latest_s - first.smoothed_s)
    )
    assert read_metrics(store.path).clock_skew_s == pytest.approx(second.smoothed_s)

    result = CliRunner().invoke(app, ["rig", "status", "--config", str(path), "--timeout", "10"])
    assert result.exit_code == 0, result.output
    assert re.search(
        r"clock: \d+\.\d\d s ahead of the broker's \(smoothed over 2 sends", result.output
    )
    assert re.search(
        r"WARNING: this rig's clock runs \d+ s ahead of the broker's; configure NTP", result.output
    )

    # CreateTime: the broker echoes the rig's own timestamp; nothing is measured.
    other = RigStore(tmp_path / "create-time" / "rig.sqlite", codec=CODEC)
    drain_with(other, kafka_bootstrap, created, OffsetClock(+120.0), 2)
    assert other.unsent_count() == 0
    assert other.clock_skew() is None


def test_an_old_rig_says_it_cannot_read_the_decision_on_its_session(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
) -> None:
    """The processor answers the session in a StageTransitioned version the rig lacks: the rig
    stops waiting at once and says why, instead of waiting out its decision timeout."""
    with Publisher(kafka_bootstrap, kafka_topics.assignments) as publisher:
        publisher.events([assignment(parameters=PARAMS)])
    session_id = f"M001-rig-1-{START:%Y%m%dT%H%M%S}"
    decision = example_events()["StageTransitioned"].model_copy(
        update={"event_id": f"d-{uuid4()}", "mouse_id": "M001", "session_id": session_id}
    )

    class AnsweringDisplay(FakeDisplay):
        """The processor (played here) answers as soon as the session ends."""

        def session_ended(self, ended: Any, state: Any) -> None:
            super().session_ended(ended, state)
            with Publisher(kafka_bootstrap, kafka_topics.decisions) as decisions:
                decisions.events([decision])

    path = rig_config(tmp_path / "rig", kafka_bootstrap, kafka_topics)
    display = AnsweringDisplay()
    began = time.monotonic()
    report = rig_agent(
        load_config(path), display, codec=older_rig_codec("StageTransitioned", 1)
    ).run(RunOptions("M001", simulate=True, seed=4, start=START, decision_timeout_s=60.0))
    assert time.monotonic() - began < 45
    assert report.session_id == session_id and report.decision is None
    assert "unreadable answer" in report.notes
    [said] = [m for m in display.messages if m.startswith("UNREADABLE")]
    assert said.startswith("UNREADABLE: this rig cannot read the processor's answer on this")
    assert "unknown writer schema fingerprint" in said and "upgrade the rig software" in said
    assert read_metrics(load_config(path).store_path).undecodable["decisions"] == 1
