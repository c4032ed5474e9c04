"""The rigs a mouse may train on, end to end: real Kafka (plaintext), the faust processor in its
own process, the projector on a real PostgreSQL, and ``shaping rigs allow``, which sends an
AllowRigs command and waits for the processor's RigsAllowed.

Mouse M1 is allowed on rig-1 and rig-3. A whole session of M1 from rig-2, and a movement, are
each refused with one dead letter naming the rule and the command that would allow the rig; the
status tables do not change. The same session from rig-3 is judged. Mouse M2, which has no
list, trains on rig-2. A list for a mouse the processor does not know is refused. The audit
shows the list and the refusal.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from shaping.schemas.events import Event, EventRejected, MovementDetected
from shaping.schemas.topics import TopicNames
from tests.support.processes import wait_until
from tests.support.processor_stack import WAIT_S, Stack, fresh_database
from tests.support.story import T0, enrolled, next_id, session, trials

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

GOOD = trials(correct=250)


@pytest.fixture
def stack(
    kafka_bootstrap: str, kafka_topics: TopicNames, postgres_url: str, tmp_path: Path
) -> Iterator[Stack]:
    running = Stack(kafka_bootstrap, kafka_topics, fresh_database(postgres_url), tmp_path)
    try:
        yield running
    finally:
        running.close()


def on_rig(events: list[Event], rig: str) -> list[Event]:
    return [e.model_copy(update={"rig_id": rig}) for e in events]


def movement(rig: str, mouse: str, session_id: str, day: int) -> MovementDetected:
    return MovementDetected(
        event_id=next_id(),
        mouse_id=mouse,
        rig_id=rig,
        session_id=session_id,
        occurred_at=T0 + timedelta(days=day, seconds=5),
        movement="spout_touch",
        side="right",
        phase="iti",
        trial_index=0,
    )


def unrefused(tables: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """The tables a refused fact must leave as they are (the dead letters aside)."""
    return {name: rows for name, rows in tables.items() if name != "rejected_events"}


def test_a_mouse_trains_only_on_the_rigs_it_is_allowed_on(stack: Stack) -> None:
    stack.publish([enrolled("M1"), enrolled("M2")])
    stack.wait_for_status("M1", stage="s1_habituation", last_reason="enrolled")
    stack.wait_for_status("M2", stage="s1_habituation", last_reason="enrolled")

    code, out = stack.shaping("rigs", "allow", "M1", "rig-1", "rig-3", "--reason", "room B")
    flat = " ".join(out.split())
    assert code == 0, out + stack.tail()
    assert "mouse M1 may now train only on rig-1, rig-3" in flat, flat

    # A list for a mouse the processor does not know: refused, with the reason.
    code, out = stack.shaping("rigs", "allow", "M404", "rig-1")
    flat = " ".join(out.split())
    assert code == 1, out
    assert "the processor refused the rigs of M404" in flat and "not enrolled" in flat, flat
    audit = wait_until(
        lambda: (
            (rows := stack.tables()["interventions"])
            and len(rows) == 2
            and all(r["honoured_at"] or r["refused_at"] for r in rows)
            and rows
        ),
        WAIT_S,
        "the two lists in the audit",
    )
    by_mouse = {r["mouse_id"]: r for r in audit}
    assert by_mouse["M1"]["kind"] == "allow-rigs" and by_mouse["M1"]["requested_by"] == "ada"
    assert json.loads(by_mouse["M1"]["rig_ids_json"]) == ["rig-1", "rig-3"]
    assert by_mouse["M1"]["refused_reason"] is None and by_mouse["M1"]["reason"] == "room B"
    assert "not enrolled" in by_mouse["M404"]["refused_reason"]

    # A whole session of M1 from rig-2, and a movement: one dead letter each, no table changes.
    before = unrefused(stack.tables())
    foreign = on_rig(session("M1", "s-foreign", trials(correct=30)), "rig-2")
    foreign.append(movement("rig-2", "M1", "s-foreign", 0))
    stack.publish(foreign)
    ids = {e.event_id for e in foreign}
    letters = stack.reader.wait_for(
        lambda _: (
            (
                found := [
                    e
                    for e in stack.reader.events(event_type=EventRejected)
                    if e.causation_id in ids
                ]
            )
            and len(found) == len(foreign)
            and found
        ),
        WAIT_S,
        "a dead letter for every fact of rig-2",
        stack.tail,
    )
    reason = (
        "mouse M1 is not allowed on rig rig-2 (allowed: rig-1, rig-3); an operator allows it "
        "with `shaping rigs allow M1 rig-1 rig-3 rig-2`"
    )
    assert {(e.error_kind, e.reason, e.rig_id) for e in letters} == {
        ("impossible", reason, "rig-2")
    }
    wait_until(
        lambda: (
            len([r for r in stack.tables()["rejected_events"] if r["reason"] == reason])
            == len(foreign)
        ),
        WAIT_S,
        "the dead letters in the status tables",
    )
    assert unrefused(stack.tables()) == before

    # The same session from rig-3 is judged; M2, which has no list, trains on rig-2.
    stack.publish(on_rig(session("M1", "s-ok", GOOD, day=1), "rig-3"))
    assert stack.decision_on("s-ok").to_stage == "s2_training"
    stack.publish(on_rig(session("M2", "s-free", GOOD, day=1), "rig-2"))
    assert stack.decision_on("s-free").to_stage == "s2_training"
    stack.wait_for_status("M1", stage="s2_training", sessions_completed=1)
    stack.wait_for_status("M2", stage="s2_training", sessions_completed=1)
    sessions = {r["session_id"] for r in stack.tables()["session_summaries"]}
    assert {"s-ok", "s-free"} <= sessions and "s-foreign" not in sessions

    code, out = stack.shaping("history", "M1")
    flat = " ".join(out.split())
    assert code == 0, out
    assert "allow rigs rig-1, rig-3" in flat and "honoured: other rigs are refused" in flat, flat
    assert stack.processor.poll() is None, stack.tail()  # the processor never stopped
