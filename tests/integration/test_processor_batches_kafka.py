"""The batching processor on a real broker: state written once per mouse per batch, and a worker
killed with SIGKILL between publishing a batch's outputs and writing its state.

The processor runs as a separate process (tests/support/processor.py). The kill uses the rig's
fault plan (``shaping.rig.faults``, a real SIGKILL at a count), reached from the processor's
hook between the two steps (``FaustProcessor.after_publish``) by a small launcher.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from shaping.schemas.events import AssignmentIssued, EventRejected, StageTransitioned
from shaping.services.domain import MouseState
from shaping.services.processor.state_store import Changelogs, join_sessions
from tests.support.kafka import TEST_PARTITIONS
from tests.support.kafka_io import Publisher, ReadRecord, TopicReader
from tests.support.processor import ProcessorRunner, new_processor_id, of_mouse
from tests.support.scripts import REPO
from tests.support.story import enrolled, session, trials

pytestmark = pytest.mark.kafka

KILL_TIMEOUT_S = 120.0

# Kills the processor (SIGKILL, through the rig's fault plan) right after the outputs of the
# first batch holding a decision are acknowledged, before that batch's state is written.
KILLING_PROCESSOR = textwrap.dedent(
    """
    from shaping.rig.faults import FaultPlan
    from shaping.schemas.events import StageTransitioned
    from shaping.services.processor import app

    plan = FaultPlan.parse("kill-after-event:1")
    build = app.FaustProcessor.__init__

    def with_fault(self, *args, **kwargs):
        build(self, *args, **kwargs)

        def after_publish(results):
            if any(isinstance(o.event, StageTransitioned) for r in results for o in r.outputs):
                print("killing the processor before it stores the batch", flush=True)
                plan.after_store(1)

        self.after_publish = after_publish

    app.FaustProcessor.__init__ = with_fault
    from shaping.services.processor.__main__ import main

    main()
    """
)


def start_killing_processor(runner: ProcessorRunner, processor_id: str) -> subprocess.Popen[bytes]:
    """Like ``runner.start``, through the launcher above (the runner still cleans it up)."""
    env = {
        **os.environ,
        "SHAPING_BOOTSTRAP": runner.bootstrap,
        "SHAPING_TOPIC_PREFIX": runner.prefix,
        "SHAPING_PARTITIONS": str(TEST_PARTITIONS),
        "SHAPING_PROCESSOR_ID": processor_id,
        "SHAPING_DATA_DIR": str(runner.workdir / "data"),
        "PYTHONUNBUFFERED": "1",
    }
    log = runner.workdir / f"processor-{len(runner.logs) + 1}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", KILLING_PROCESSOR],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    runner.processes.append(proc)
    runner.logs.append(log)
    return proc


def read_changelogs(bootstrap: str, processor_id: str) -> list[ReadRecord]:
    """Every record on the processor's two changelogs (read until two polls bring nothing)."""
    with TopicReader(bootstrap, Changelogs.of(processor_id).all()) as reader:
        quiet = 0
        while quiet < 2:
            quiet = quiet + 1 if not reader.poll(1.0) else 0
        return reader.records


def stored_state(records: list[ReadRecord], processor_id: str, mouse: str) -> MouseState | None:
    """The mouse's state as the changelogs hold it (None: no state record yet)."""
    changelogs = Changelogs.of(processor_id)
    latest = {r.topic: r.value for r in records if r.key == mouse.encode()}
    if changelogs.state not in latest:
        return None
    return join_sessions(latest[changelogs.state], latest.get(changelogs.sessions))


def test_a_backlog_is_stored_once_per_mouse_per_batch_not_per_trial(
    processors: ProcessorRunner,
    publisher: Publisher,
    outputs: TopicReader,
    kafka_bootstrap: str,
) -> None:
    """Sent before the processor starts, the inputs wait as a backlog and come in batches:
    each batch writes one record per mouse it touched, so far fewer records than inputs."""
    mice = ["M-batch-a", "M-batch-b", "M-batch-c"]
    inputs = Counter[str]()
    for mouse in mice:
        story = [enrolled(mouse), *session(mouse, f"{mouse}-s1", trials(correct=250, incorrect=50))]
        publisher.events(story)
        inputs[mouse] = len(story)
    processor_id = new_processor_id()
    processors.start(processor_id)
    outputs.wait_for(
        lambda _: all(of_mouse(outputs, m, StageTransitioned) for m in mice),
        what="a decision for every mouse",
        on_timeout=processors.log_tail,
    )
    records = read_changelogs(kafka_bootstrap, processor_id)
    per_mouse = Counter(r.key.decode() for r in records if r.key is not None)
    for mouse in mice:
        # 303 inputs each; a batch holds up to hundreds: a handful of records, not 303.
        assert 1 <= per_mouse[mouse] <= inputs[mouse] // 10, (per_mouse, processors.log_tail())
        state = stored_state(records, processor_id, mouse)
        assert state is not None and state.session_total == 1
        assert [h.session_id for h in state.history] == [f"{mouse}-s1"]
        [decision] = of_mouse(outputs, mouse, StageTransitioned)
        assert decision.session_summary.n_trials == 300
    assert [r for r in outputs.records if isinstance(r.event, EventRejected)] == []


def test_a_worker_killed_between_publishing_and_storing_reprocesses_without_loss_or_duplicates(
    processors: ProcessorRunner,
    publisher: Publisher,
    outputs: TopicReader,
    kafka_bootstrap: str,
) -> None:
    mouse = "M-killed"
    processor_id = new_processor_id()
    killed = start_killing_processor(processors, processor_id)
    story = [enrolled(mouse), *session(mouse, "M-killed-s1", trials(correct=100, incorrect=20))]
    publisher.events(story)
    try:
        code = killed.wait(timeout=KILL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the processor was not killed\n{processors.log_tail()}") from None
    assert code == -9, processors.log_tail()
    log = Path(processors.logs[-1]).read_text(errors="replace")
    assert "killing the processor before it stores the batch" in log
    # The decision was published before the kill; the state that records it was not.
    outputs.wait_for(
        lambda _: of_mouse(outputs, mouse, StageTransitioned),
        what="the decision published before the kill",
        on_timeout=processors.log_tail,
    )
    before = stored_state(read_changelogs(kafka_bootstrap, processor_id), processor_id, mouse)
    assert before is None or before.session_total == 0

    processors.start(processor_id)
    second = session(mouse, "M-killed-s2", trials(correct=100, incorrect=20), "s2_training", 1)
    publisher.events(second)
    outputs.wait_for(
        lambda _: len({e.session_number for e in of_mouse(outputs, mouse, AssignmentIssued)}) >= 3,
        what="the assignment after the second session",
        on_timeout=processors.log_tail,
    )

    decisions = of_mouse(outputs, mouse, StageTransitioned)
    # The redelivered SessionEnded may send its decision again: with the same id and content.
    by_id = {d.event_id: d for d in decisions}
    assert all(d == by_id[d.event_id] for d in decisions)
    assert sorted(d.session_id for d in by_id.values()) == ["M-killed-s1", "M-killed-s2"]
    assert [d.session_summary.n_trials for d in by_id.values()] == [120, 120]
    assignments = {e.event_id: e for e in of_mouse(outputs, mouse, AssignmentIssued)}
    assert sorted(a.session_number for a in assignments.values()) == [1, 2, 3]
    assert [r for r in outputs.records if isinstance(r.event, EventRejected)] == []

    # The stored state counts each session once: nothing folded twice, nothing lost.
    after = stored_state(read_changelogs(kafka_bootstrap, processor_id), processor_id, mouse)
    assert after is not None and after.session_total == 2
    assert [h.session_id for h in after.history] == ["M-killed-s1", "M-killed-s2"]
    assert after.open_session is None and after.parked_sessions == ()
