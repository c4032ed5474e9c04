"""The rig shows why: the evidence that travels with the assignment after a session.

Offline parts (the lines, ``shaping rig status`` over a cache, an ejected mouse) run without a
broker; the last test runs a simulated session with ``shaping rig run`` against the real Kafka
broker and processor, and checks what the person at the rig sees and what the rig logs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shaping.rig.agent import EVIDENCE_LOG, RunOptions
from shaping.rig.bootstrap import rig_agent
from shaping.rig.errors import RigError
from shaping.rig.evidence import evidence_lines, next_session_line
from shaping.rig.link.store import RigStore
from shaping.schemas.events import (
    AssignmentIssued,
    MouseEnrolled,
    Observation,
    RuleEvaluation,
    SessionSummary,
    StageTransitioned,
)
from shaping.schemas.topics import TopicNames
from shaping.services.cli import app
from tests.support.kafka_io import Publisher, TopicReader
from tests.support.rig import CODEC, START, FakeDisplay, assignment, config_in, write_config
from tests.support.scripts import REPO

pytestmark = pytest.mark.filterwarnings("ignore::gpiozero.exc.PinFactoryFallback")

RULE = RuleEvaluation(
    rule="engaged_and_accurate",
    description="Accuracy over the last 200 trials is at least 65% and 100 trials.",
    decision="progress",
    to_stage="s2_training",
    verdict=False,
    observations=[
        Observation(
            metric="accuracy(window=200)", observed=0.72, comparator=">=", threshold=0.65,
            passed=True,
        ),
        Observation(
            metric="session_trials", observed=80.0, comparator=">=", threshold=100, passed=False
        ),
    ],
)  # fmt: skip
DECISION = StageTransitioned(
    event_id="decision-1",
    mouse_id="M001",
    session_id="M001-rig-1-20260302T090000",
    occurred_at=START,
    curriculum_name="basic-shaping",
    curriculum_version="0.1.0",
    from_stage="s1_habituation",
    to_stage="s1_habituation",
    decision="stay",
    rule_evaluations=[RULE],
    sessions_at_stage=1,
    session_total=1,
    session_summary=SessionSummary(
        n_trials=80,
        n_correct=52,
        n_incorrect=20,
        n_miss=8,
        accuracy=52 / 72,
        duration_s=1200,
        end_reason="time_limit",
    ),
    metrics={"accuracy": 0.72, "bias": None},
)
AFTER = assignment().model_copy(
    update={
        "event_id": "assignment-after-1",
        "causation_id": DECISION.event_id,
        "reason": "stay",
        "reason_detail": "No rule held; stays at s1_habituation.",
        "session_number": 2,
        "evidence": [RULE],
        "metrics": {"accuracy": 0.72, "bias": None},
        "warnings": ["Still in training after 30 sessions: untrainable at 40."],
        "adjustments": {"max_trials": 150},
    }
)


def test_the_lines_show_status_rules_values_verdicts_metrics_and_warnings() -> None:
    lines = evidence_lines(DECISION, AFTER)
    assert lines == [
        "decision: stay s1_habituation -> s1_habituation",
        "  judged: 80 trials, accuracy 72%, session 1 of the mouse, 1 at this stage",
        "  status reached: s1_habituation (basic-shaping 0.1.0)",
        f"  rule engaged_and_accurate (progress to s2_training) did not hold: {RULE.description}",
        "    [ok] accuracy(window=200) = 0.72 >= 0.65",
        "    [no] session_trials = 80 >= 100",
        "  metrics: accuracy = 0.72, bias = -",
        "  WARNING: Still in training after 30 sessions: untrainable at 40.",
        "  per-mouse adjustments: max_trials = 150",
    ]
    assert next_session_line(AFTER) == (
        "next session (2): stage s1_habituation; No rule held; stays at s1_habituation."
    )


def test_the_assignment_alone_is_enough_to_show_the_evidence() -> None:
    """The decision may not have arrived (another partition); the assignment carries it."""
    lines = evidence_lines(None, AFTER)
    assert lines[:2] == [
        "decision: stay -> s1_habituation",
        "  status reached: s1_habituation (basic-shaping 0.1.0)",
    ]
    assert "    [no] session_trials = 80 >= 100" in lines
    assert lines[-2].startswith("  WARNING: ")


def test_rig_status_shows_the_last_decision_evidence_even_after_an_adjustment(
    tmp_path: Path,
) -> None:
    path = write_config(tmp_path, mice=["M001"], bootstrap="127.0.0.1:9")
    config = config_in(tmp_path, mice=["M001"], bootstrap="127.0.0.1:9")
    store = RigStore(config.store_path, codec=CODEC)
    # What the follower keeps from the topics: the decision, the assignment after it, and a
    # trainer's adjustment issued later (it replaces the cached assignment, not the evidence).
    store.save_decision(DECISION)
    for item in (AFTER, AFTER.model_copy(update={"event_id": "adjusted", "reason": "adjusted"})):
        store.save_assignment(item)
        if item.reason == "stay":
            store.save_evidence(item)
    result = CliRunner().invoke(
        app, ["rig", "status", "--config", str(path), "--timeout", "0.5"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    assert "assignment: session 2, stage s1_habituation (basic-shaping 0.1.0; adjusted)" in (
        result.output
    )
    assert "evidence of the last decision" in result.output
    for line in evidence_lines(DECISION, AFTER):
        assert f"      {line}" in result.output


def test_an_ejected_mouse_is_shown_and_not_run(tmp_path: Path) -> None:
    path = write_config(tmp_path, mice=["M001"], bootstrap="127.0.0.1:9")
    config = config_in(tmp_path, mice=["M001"], bootstrap="127.0.0.1:9")
    store = RigStore(config.store_path, codec=CODEC)
    ejected = assignment(session_number=3).model_copy(
        update={
            "reason": "ejected",
            "parameters": {},
            "reason_detail": "Ejected by ada. Reason: end of experiment.",
        }
    )
    store.save_assignment(ejected)
    with pytest.raises(RigError, match=r"M001 was ejected: Ejected by ada\. Reason: end of exp"):
        rig_agent(config, FakeDisplay(), store).run(
            RunOptions("M001", simulate=True, seed=1, start=START, offline=True)
        )
    assert store.unsent_count() == 0  # nothing recorded
    result = CliRunner().invoke(app, ["rig", "status", "--config", str(path), "--timeout", "0.5"])
    assert result.exit_code == 0, result.output
    assert "EJECTED: Ejected by ada. Reason: end of experiment.; `shaping rig run` refuses" in (
        result.output
    )
    result = CliRunner().invoke(
        app, ["rig", "run", "--mouse", "M001", "--offline", "--simulate", "--config", str(path)]
    )
    assert result.exit_code == 1 and "M001 was ejected" in result.output
    assert "Traceback" not in result.output


@pytest.mark.kafka
def test_after_a_session_the_rig_prints_and_logs_the_evidence_it_received(
    kafka_bootstrap: str, kafka_topics: TopicNames, tmp_path: Path
) -> None:
    prefix = kafka_topics.events.removesuffix(".events")
    env = {
        **os.environ,
        "SHAPING_BOOTSTRAP": kafka_bootstrap,
        "SHAPING_TOPIC_PREFIX": prefix,
        "SHAPING_PARTITIONS": "4",
        "SHAPING_PROCESSOR_ID": f"processor-{tmp_path.name[-12:]}",
        "SHAPING_DATA_DIR": str(tmp_path / "processor-data"),
        "PYTHONUNBUFFERED": "1",
    }
    processor_log = tmp_path / "processor.log"
    with processor_log.open("wb") as out:
        processor = subprocess.Popen(
            [sys.executable, "-m", "shaping.services.processor"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with Publisher(kafka_bootstrap, kafka_topics.events) as publisher:
            publisher.events(
                [
                    MouseEnrolled(
                        mouse_id="M001",
                        occurred_at=START,
                        curriculum_name="basic-shaping",
                        enrolled_by="tests",
                    )
                ]
            )
        folder = tmp_path / "rig"
        folder.mkdir()
        config = write_config(folder, mice=["M001"], bootstrap=kafka_bootstrap, prefix=prefix)
        run = subprocess.run(
            [sys.executable, "-m", "shaping.services.cli", "rig", "run", "--mouse", "M001",
             "--simulate", "--seed", "3", "--start", START.isoformat(),
             "--assignment-timeout", "120",
             "--decision-timeout", "180", "--every", "50", "--config", str(config)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        output = run.stdout + run.stderr
        assert run.returncode == 0, output + processor_log.read_text()
        with TopicReader(kafka_bootstrap, [kafka_topics.assignments]) as reader:
            after = reader.wait_for(
                lambda _: [
                    a for a in reader.events(event_type=AssignmentIssued) if a.reason != "enrolled"
                ],
                what="the assignment after the session",
            )[0]
        assert after.evidence, "the assignment carries the evidence"
        shown = output.splitlines()
        at = shown.index(f"  status reached: {after.stage} (basic-shaping 0.1.0)")
        assert shown[at - 2].startswith(f"decision: {after.reason} s1_habituation -> ")
        for evaluation in after.evidence:
            verdict = "held" if evaluation.verdict else "did not hold"
            assert any(f"rule {evaluation.rule} " in line and verdict in line for line in shown)
            for o in evaluation.observations:
                mark = "ok" if o.passed else "no"
                assert any(line.startswith(f"    [{mark}] {o.metric} = ") for line in shown)
        assert next_session_line(after) in shown
        logged = (folder / "state" / EVIDENCE_LOG).read_text()
        assert "M001 session M001-rig-1-20260302T090000" in logged
        assert f"    status reached: {after.stage} (basic-shaping 0.1.0)" in logged

        status = subprocess.run(
            [sys.executable, "-m", "shaping.services.cli", "rig", "status",
             "--config", str(config)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert status.returncode == 0, status.stdout + status.stderr
        assert "evidence of the last decision" in status.stdout
        assert f"        status reached: {after.stage} (basic-shaping 0.1.0)" in status.stdout
    finally:
        processor.terminate()
        try:
            processor.wait(60)
        except subprocess.TimeoutExpired:
            processor.kill()
            processor.wait()
