"""The welfare gate end to end (issue 15, item 2): real Kafka, the faust processor in its own
process, the projector on a real PostgreSQL, and ``shaping restrict start``, ``weigh``,
``release`` and ``welfare``: a weight below the minimum puts an AssignmentHeld (then the
assignment re-issued held) on the assignments topic; a trainer's release re-issues it cleared
for the lab day, audited as an intervention."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shaping.schemas.events import AssignmentHeld, AssignmentIssued
from shaping.schemas.topics import TopicNames
from tests.support.processes import wait_until
from tests.support.processor_stack import Stack, fresh_database
from tests.support.story import enrolled

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

WAIT_S = 120.0


@pytest.fixture
def stack(
    kafka_bootstrap: str, kafka_topics: TopicNames, postgres_url: str, tmp_path: Path
) -> Iterator[Stack]:
    running = Stack(kafka_bootstrap, kafka_topics, fresh_database(postgres_url), tmp_path)
    try:
        yield running
    finally:
        running.close()


def test_a_weight_below_the_minimum_holds_the_mouse_until_a_trainer_releases_it(
    stack: Stack,
) -> None:
    stack.publish([enrolled("G1")])
    stack.wait_for_status("G1", last_reason="enrolled")
    code, out = stack.shaping("restrict", "start", "G1", "--reference", "25")
    assert code == 0, out + stack.tail()
    code, out = stack.shaping("weigh", "G1", "19", "--confirm")
    assert code == 0 and "weight of G1 recorded: 19 g" in out, out + stack.tail()

    def assignments() -> list[AssignmentIssued]:
        return [e for e in stack.reader.events(event_type=AssignmentIssued) if e.mouse_id == "G1"]

    [held] = stack.reader.wait_for(
        lambda _: [e for e in stack.reader.events(event_type=AssignmentHeld)],
        WAIT_S,
        "the AssignmentHeld of G1",
        stack.tail,
    )
    assert held.mouse_id == "G1" and held.session_number == 1
    assert held.reason.startswith("19 g is 76.0 % of expected 25.0 g (minimum 80 %)")
    reissued = stack.reader.wait_for(
        lambda _: [a for a in assignments() if a.reason == "held"],
        WAIT_S,
        "the held assignment",
        stack.tail,
    )[0]
    assert reissued.welfare is not None and reissued.welfare.held_reason == held.reason
    assert reissued.welfare.cleared_on is None

    code, out = stack.shaping("release", "G1", "--reason", "vet checked: fine")
    assert code == 0 and "G1 released for today: vet checked: fine" in out, out + stack.tail()
    cleared = stack.reader.wait_for(
        lambda _: [a for a in assignments() if a.reason == "released"],
        WAIT_S,
        "the assignment re-issued by the release",
        stack.tail,
    )[0]
    assert cleared.welfare is not None and cleared.welfare.held_reason is None
    assert cleared.welfare.cleared_on == cleared.occurred_at.date().isoformat()  # UTC policy

    def projected() -> bool:
        tables = stack.tables()
        gate = [r for r in tables["welfare_gate"] if r["mouse_id"] == "G1"]
        audit = [r for r in tables["interventions"] if r["kind"] == "release"]
        return bool(gate and not gate[0]["held"] and audit and audit[0]["assignment_id"])

    wait_until(projected, WAIT_S, "the release in the status tables")
    [audit] = [r for r in stack.tables()["interventions"] if r["kind"] == "release"]
    assert (audit["requested_by"], audit["reason"]) == ("ada", "vet checked: fine")
    assert audit["assignment_id"] == cleared.event_id
    code, out = stack.shaping("welfare", "G1")
    assert code == 0 and "cleared" in out and "HELD" not in out, out
