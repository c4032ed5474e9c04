"""Scale-out on a real broker (issue 14, item 6): processor workers in one consumer group split
the partitions, decide exactly as one worker does, never dead-letter valid input redelivered
after a rebalance, and survive one of them being stopped (SIGTERM) or killed (SIGKILL).

The input is the benchmark's workload (the rig runtime and the simulated mouse, following the
core's real decisions) on mice spread over all four partitions. One worker alone processes it
on topics of its own: the reference. On the test's topics the sessions are published at a
steady pace from a thread while, in one consumer group, never more than two workers at a time:

1. worker 1 alone;
2. worker 2 joins mid-stream (a rebalance with input in flight): the two split the partitions,
   and each processes messages;
3. worker 1 is stopped with SIGTERM: worker 2 takes all partitions over;
4. worker 3 joins (another rebalance), the two split the partitions again;
5. worker 2 is killed with SIGKILL mid-stream (no commit, no leaving the group): worker 3
   takes over once the broker gives up on worker 2, and finishes.

Then every mouse's decisions, and its assignments, each id once, are the reference's in the
same order (each topic on its own: the two are not ordered with each other), and nothing
reached the dead-letter topic (checked at every read). How long the handovers took is printed
(the figure and its target are bench/scaleout.py's, bench/SCALEOUT.md; no timed assertion here).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from bench.workload import Workload, encode
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.topics import ensure_topics
from tests.support.kafka import TEST_PARTITIONS
from tests.support.processes import wait_until
from tests.support.scaleout import (
    Outputs,
    PacedPublisher,
    Worker,
    group_assignment,
    is_split,
    publish_all,
    scaleout_workload,
)

pytestmark = pytest.mark.kafka

N_MICE, SESSIONS, TRIALS = 12, 6, 100
WAIT_S = 120.0
ALL = set(range(TEST_PARTITIONS))
# The sessions go out 60 events every 0.2 s (about 25 s for the whole workload). The publisher
# stops at half of them until worker 2 has joined (so both workers have input after the split),
# and at 90 % until worker 2 is killed (so the survivor has input left to take over).
CHUNK, EVERY_S = 60, 0.2
FIRST_HOLD, SECOND_HOLD = 0.5, 0.9

Sequences = dict[tuple[str, str], list[dict[str, Any]]]


@pytest.fixture(scope="module")
def workload() -> tuple[Workload, dict[str, int]]:
    return scaleout_workload(N_MICE, SESSIONS, TRIALS)


@pytest.fixture(scope="module")
def reference(
    kafka_bootstrap: str,
    workload: tuple[Workload, dict[str, int]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Sequences]:
    """Each mouse's decisions and assignments from one worker alone, on topics of its own."""
    work, _ = workload
    topics = TopicNames.with_prefix(f"t{uuid4().hex[:8]}")
    ensure_topics(kafka_bootstrap, topics, partitions=TEST_PARTITIONS)
    outputs = Outputs.of(kafka_bootstrap, topics)
    publish_all(kafka_bootstrap, topics.events, encode(work.events()))
    alone = Worker(
        kafka_bootstrap, topics, new_group(), tmp_path_factory.mktemp("reference"), "alone"
    )
    try:
        outputs.wait(work.last_session, WAIT_S, [alone])
        assert outputs.dead_letters() == [], "one worker alone dead-lettered valid input"
        assert alone.terminate() == 0, alone.tail()
        yield outputs.sequences()
    finally:
        alone.close()
        outputs.close()


def new_group() -> str:
    return f"processor-{uuid4().hex[:8]}"


def test_workers_in_one_group_split_take_over_and_decide_as_one(
    kafka_bootstrap: str,
    kafka_topics: TopicNames,
    tmp_path: Path,
    workload: tuple[Workload, dict[str, int]],
    reference: Sequences,
) -> None:
    work, where = workload
    group = new_group()
    outputs = Outputs.of(kafka_bootstrap, kafka_topics)
    workers: list[Worker] = []

    def start(name: str) -> Worker:
        worker = Worker(kafka_bootstrap, kafka_topics, group, tmp_path, name)
        workers.append(worker)
        return worker

    def logs() -> str:
        return "\n".join(w.tail() for w in workers)

    def owned(members: int) -> dict[str, set[int]]:
        """Waits until the group is stable with ``members`` members that split the partitions
        of the events topic (each some, none twice, all of them); returns who owns what."""

        def split() -> dict[str, set[int]] | None:
            outputs.poll()
            assignment = group_assignment(kafka_bootstrap, group, kafka_topics.events)
            return assignment if is_split(assignment, members, TEST_PARTITIONS) else None

        try:
            return wait_until(split, WAIT_S, f"{members} member(s) splitting {sorted(ALL)}", 0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs()}") from None

    def processes(worker: Worker, more_than: float) -> float:
        """Waits until ``worker`` has processed more than ``more_than`` messages."""

        def count() -> float | None:
            outputs.poll()
            done = worker.consumed()
            return done if done > more_than else None

        try:
            return float(wait_until(count, WAIT_S, f"{worker.name} processing input", 0.2))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{logs()}") from None

    sessions = encode(work.session_events())
    paced = PacedPublisher(
        kafka_bootstrap,
        kafka_topics.events,
        sessions,
        CHUNK,
        EVERY_S,
        limit=round(len(sessions) * FIRST_HOLD),
    )
    try:
        first = start("worker-1")
        publish_all(kafka_bootstrap, kafka_topics.events, encode(list(work.enrolments)))

        def all_assigned() -> bool:
            outputs.poll()
            return {m for m, _ in outputs.sequences()} >= set(work.mice)

        wait_until(all_assigned, WAIT_S, "an assignment for every enrolled mouse from worker 1")
        paced.start()

        # 2. A second worker joins while sessions are being published.
        wait_until(lambda: paced.sent > 0, WAIT_S, "the first sessions sent")
        second = start("worker-2")
        owned(2)
        assert not paced.held(), "the rebalance came after the input, not during it"
        joined_at = paced.fraction
        paced.release(SECOND_HOLD)
        processes(second, 0)
        before = first.consumed()
        processes(first, before)  # both work after the split, each on its own partitions

        # 3. Worker 1 stops (SIGTERM), while sessions are being published if it is still on.
        stopped_at = paced.fraction
        terminated = time.monotonic()
        assert first.terminate() == 0, logs()
        [(member_of_second, alone)] = owned(1).items()
        assert alone == ALL
        handed_over_s = time.monotonic() - terminated

        # 4. A third worker joins: the group splits the partitions again.
        third = start("worker-3")
        resplit = owned(2)
        # (a member keeps its id across rebalances: worker 2 is the one that was alone)
        assert member_of_second in resplit, resplit
        second_parts = resplit[member_of_second]

        # 5. Worker 2 is killed (SIGKILL) mid-stream; the rest of the input follows the kill.
        outputs.poll()  # what came before the kill is read before it
        killed_frac = paced.fraction
        killed_at = time.monotonic()
        second.kill()
        paced.release()
        [survivor] = owned(1).values()
        assert survivor == ALL
        outputs.wait(work.last_session, WAIT_S, workers)
        paced.join()
        mice_of_second = {m for m, p in where.items() if p in second_parts}
        taken_over = outputs.decisions_since(killed_at, mice_of_second)
        assert taken_over, "no decision on worker 2's mice after it was killed"
        takeover_s = min(outputs.first_seen[e.event_id] for e in taken_over) - killed_at
        print(
            f"worker 2 joined at {joined_at:.0%} of the sessions; worker 1 got SIGTERM at "
            f"{stopped_at:.0%} and worker 2 owned everything {handed_over_s:.1f} s later; "
            f"worker 2 got SIGKILL at {killed_frac:.0%} and the first decision on its mice "
            f"came {takeover_s:.1f} s later; {outputs.repeats()} output(s) re-sent"
        )
        assert third.alive(), logs()

        dead = [
            (d.mouse_id, d.error_kind, d.reason, d.source_partition, d.source_offset)
            for d in outputs.dead_letters()
        ]
        assert dead == [], f"valid input dead-lettered: {dead}\n{logs()}"
        assert outputs.sequences() == reference
    finally:
        for worker in workers:
            worker.close()
        outputs.close()
