"""Against a real broker: the forged assignment (500 µL per trial, 600-minute sessions, 5,000
trials) arrives on the assignments topic, read by the rig's own KafkaConsumer, and the rig's
safety limits refuse it before any session starts: nothing runs, or the last safe assignment,
as the rig's config says. The simulated lab (``shaping rig simulate``), which ran the attack
for every session of a mouse, refuses it as well.

No processor runs here: the test writes what the attacker wrote (and the safe assignment a
processor wrote before it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from shaping.rig.agent import RunOptions
from shaping.rig.bootstrap import rig_agent
from shaping.rig.config import load_config
from shaping.rig.link.drain import OutboxDrainer
from shaping.rig.link.store import RigStore
from shaping.rig.metrics import read_metrics
from shaping.rig.safety import UnsafeAssignmentRefusedError
from shaping.schemas.events import SessionStarted, TrialCompleted
from shaping.schemas.topics import TopicNames
from shaping.services.cli import app
from tests.support.kafka_io import Publisher, TopicReader
from tests.support.rig import (
    ATTACK,
    CODEC,
    LAST_SAFE,
    SAFE,
    START,
    FakeDisplay,
    assignment,
    forged,
    write_config,
)

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.filterwarnings("ignore::gpiozero.exc.PinFactoryFallback"),
]


def prefix_of(topics: TopicNames) -> str:
    return topics.events.removesuffix(".events")


def rig_config(folder: Path, bootstrap: str, topics: TopicNames, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_config(
        folder, mice=["M001"], bootstrap=bootstrap, prefix=prefix_of(topics), extra=extra
    )


def run(path: Path, display: FakeDisplay | None = None) -> object:
    return rig_agent(load_config(path), display or FakeDisplay()).run(
        RunOptions("M001", simulate=True, seed=4, start=START, decision_timeout_s=0.0)
    )


def test_a_forged_assignment_on_the_topic_is_refused_or_replaced_by_the_last_safe_one(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
) -> None:
    with Publisher(kafka_bootstrap, kafka_topics.assignments) as publisher:
        publisher.events([assignment(parameters=SAFE), forged()])

    refusing = rig_config(tmp_path / "refusing", kafka_bootstrap, kafka_topics)
    with pytest.raises(UnsafeAssignmentRefusedError) as refused:
        run(refusing)
    message = str(refused.value)
    assert "UNSAFE ASSIGNMENT for M001: assignment forged-M001-2 (session 2" in message
    for name, value in ATTACK.items():
        assert f"{name} = {value:g}" in message
    store = RigStore(load_config(refusing).store_path, codec=CODEC)
    cached = store.cached_assignment("M001")
    assert cached is not None and cached.assignment.event_id == "forged-M001-2"  # it arrived
    assert store.unsent_count() == 0  # and nothing ran
    assert read_metrics(store.path).unsafe == {"ran_last_safe": 0, "refused": 1}

    fallback = rig_config(tmp_path / "fallback", kafka_bootstrap, kafka_topics, LAST_SAFE)
    display = FakeDisplay()
    run(fallback, display)
    assert any("Running the last safe assignment instead" in m for m in display.messages)
    assert read_metrics(load_config(fallback).store_path).unsafe == {
        "ran_last_safe": 1,
        "refused": 0,
    }
    drainer = OutboxDrainer(
        RigStore(load_config(fallback).store_path, CODEC), kafka_bootstrap, codec=CODEC
    )
    try:
        assert drainer.drain(60), drainer.status.last_error
    finally:
        drainer.close()
    with TopicReader(kafka_bootstrap, [kafka_topics.events]) as reader:
        reader.wait_for(lambda _: reader.events(event_type=SessionStarted), what="the session")
        [started] = reader.events(event_type=SessionStarted)
        trials = reader.events(event_type=TrialCompleted)
    assert isinstance(started, SessionStarted)
    assert started.assignment_id == "assignment-M001-1" and started.assignment_stale is True
    assert trials and all(
        isinstance(t, TrialCompleted) and t.reward_volume_ul <= 20.0 for t in trials
    )


def test_the_simulated_lab_refuses_the_forged_assignment_for_every_session(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
) -> None:
    attack = forged(session_number=6).model_copy(
        update={"occurred_at": START.replace(month=1, day=2)}
    )
    with Publisher(kafka_bootstrap, kafka_topics.assignments) as publisher:
        publisher.events([attack])
    config = write_config(tmp_path)
    args = ["rig", "simulate", "--mice", "1", "--rigs", "1", "--days", "3", "--wait", "1"]
    args += ["--bootstrap", kafka_bootstrap, "--prefix", prefix_of(kafka_topics)]
    result = CliRunner().invoke(app, [*args, "--config", str(config)])
    assert result.exit_code == 0, result.output
    refusals = [line for line in result.output.splitlines() if "UNSAFE ASSIGNMENT" in line]
    assert len(refusals) == 3, result.output
    assert all("Refusing to run it (safety.on_violation = refuse)" in r for r in refusals)
    with TopicReader(kafka_bootstrap, [kafka_topics.events]) as reader:
        reader.poll(2.0)
        assert reader.events(event_type=SessionStarted) == []  # no session ran
