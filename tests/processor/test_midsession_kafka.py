"""A decision during a session, end to end on the real broker: the rig agent (reach task on
gpiozero mock pins, over its outbox and follower) trains a mouse on
curricula/reach-autopilot.yaml against a processor process; the processor moves the mouse after
the threshold trial, and the rig applies the new stage at its next trial boundary within the same
session. The session's end brings no second decision."""

from __future__ import annotations

from pathlib import Path

import pytest

from shaping.rig.agent import RunOptions
from shaping.rig.bootstrap import rig_agent
from shaping.rig.link.store import RigStore
from shaping.rig.task.midsession import FIRST_TRIAL_METRIC, RESTARTS_METRIC
from shaping.schemas.events import (
    AssignmentIssued,
    MouseEnrolled,
    SessionEnded,
    StageTransitioned,
    TrialCompleted,
)
from shaping.schemas.topics import TopicNames
from tests.support.kafka_io import TopicReader
from tests.support.processor import ProcessorRunner, new_processor_id, processors, publisher
from tests.support.rig import CODEC, START, FakeDisplay, config_in

__all__ = ["processors", "publisher"]

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.filterwarnings("ignore::gpiozero.exc.PinFactoryFallback"),
]

MOUSE = "M001"


def test_the_rig_applies_a_decision_taken_during_its_session(
    kafka_bootstrap: str,
    kafka_topics: TopicNames,
    processors: ProcessorRunner,
    publisher: object,
    tmp_path: Path,
) -> None:
    processors.start(new_processor_id())
    enrolled = MouseEnrolled(
        event_id="00000000-0000-4000-8000-000000000d01",
        mouse_id=MOUSE,
        occurred_at=START,
        curriculum_name="reach-autopilot",
        enrolled_by="tests",
    )
    publisher.events([enrolled])  # type: ignore[attr-defined]
    with TopicReader(kafka_bootstrap, [kafka_topics.assignments]) as reader:
        reader.wait_for(
            lambda _: reader.events(event_type=AssignmentIssued),
            timeout_s=120,
            what="the enrolment's assignment",
            on_timeout=processors.log_tail,
        )
    folder = tmp_path / "rig"
    folder.mkdir()
    config = config_in(
        folder,
        mice=[MOUSE],
        bootstrap=kafka_bootstrap,
        prefix=kafka_topics.events.removesuffix(".events"),
    )
    store = RigStore(config.store_path, codec=CODEC)
    display = FakeDisplay()
    # A 30-minute session at most 60 times faster than real time: a trial every ~0.6 s, and
    # the inter-trial interval ~80 ms, time enough for the decision to come back.
    report = rig_agent(config, display, store).run(
        RunOptions(MOUSE, simulate=True, seed=7, start=START, pace=60.0, decision_timeout_s=60)
    )
    ended = report.ended
    trials = [e for e in store.events(ended.session_id or "") if isinstance(e, TrialCompleted)]
    assert isinstance(ended, SessionEnded)
    assert ended.metrics.get(RESTARTS_METRIC) == 1.0, display.messages
    first_after = int(ended.metrics[FIRST_TRIAL_METRIC] or 0)
    before = [t for t in trials if t.trial_index < first_after]
    after = [t for t in trials if t.trial_index >= first_after]
    assert before and after
    assert {t.trial_parameters["spout_position_left"] for t in before} == {1}
    assert after[0].trial_parameters["spout_position_left"] == 2
    assert after[0].trial_parameters["cue_duration_s"] == 6.0
    # the decision the rig shows is the one taken during the session
    decision = report.decision
    assert isinstance(decision, StageTransitioned)
    assert (decision.from_stage, decision.to_stage) == ("free_reaching", "cued_reaching")
    assert decision.session_summary.end_reason == "mid_session"
    finished = [t for t in trials if t.outcome != "miss"]
    assert decision.causation_id == finished[29].event_id  # the 30th reach
    # the processor decided once for this session: the end brought nothing more
    with TopicReader(kafka_bootstrap, [kafka_topics.decisions, kafka_topics.assignments]) as out:
        out.wait_for(
            lambda _: [
                e
                for e in out.events(event_type=AssignmentIssued)
                if e.causation_id == decision.event_id
            ],
            timeout_s=60,
            what="the mid-session assignment",
            on_timeout=processors.log_tail,
        )
        decisions = out.events(event_type=StageTransitioned)
        assignments = out.events(event_type=AssignmentIssued)
    assert [d.event_id for d in decisions] == [decision.event_id]
    assert [a.reason for a in assignments] == ["enrolled", "progress"]
    assert assignments[-1].session_id == ended.session_id
