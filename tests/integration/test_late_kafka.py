"""Late sessions on the real parts: Kafka, the faust processor (its own process) and the
projector on PostgreSQL.

Two mice run the same sessions. ``M-ref``'s arrive in date order; ``M-late``'s arrive as a rig
that was offline drains its outbox: later sessions first, the early ones days late. Each rig
runs the stage of the newest assignment it read, as real rigs do. The processor's corrections
must be exactly what the pure core decides, and the SQL tables' effective history must equal
the in-order mouse's.
"""

from __future__ import annotations

from typing import Any

import pytest

from shaping.schemas.codec import default_codec
from shaping.schemas.events import AssignmentIssued, Event, StageTransitioned
from shaping.schemas.topics import TopicNames
from shaping.services.projector.runner import run_projector
from tests.support.kafka_io import Publisher, TopicReader
from tests.support.late_sessions import (
    Plan,
    World,
    effective,
    effective_rows,
    enrolment,
    mixed,
    session_events,
    status_view,
)
from tests.support.processor import ProcessorRunner, new_processor_id
from tests.support.wiring import sql_store

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

LATE_ORDER = [1, 2, 4, 0, 3]
"""d2, d3 and d5 arrive first; d1 and then d4 drain late."""


def plans(mouse: str) -> list[Plan]:
    """Five sessions on five dates that walk basic-shaping's ladder (ids unique per mouse)."""
    return [
        Plan(f"{mouse}-d1", 0, 0, mixed(150, 0.9, seed=1)),
        Plan(f"{mouse}-d2", 1, 0, mixed(180, 0.95, seed=2)),
        Plan(f"{mouse}-d3", 2, 0, mixed(220, 0.95, seed=3)),
        Plan(f"{mouse}-d4", 3, 0, mixed(220, 0.95, seed=4)),
        Plan(f"{mouse}-d5", 4, 0, mixed(220, 0.95, seed=5)),
    ]


def of_mouse(reader: TopicReader, mouse: str, event_type: type[Event]) -> list[Any]:
    return [e for e in reader.events(event_type=event_type) if e.mouse_id == mouse]


def deliver(
    publisher: Publisher,
    outputs: TopicReader,
    processors: ProcessorRunner,
    mouse: str,
    order: list[int],
) -> list[Event]:
    """Enrols the mouse, then publishes its sessions in ``order``, each at the stage of the
    newest assignment (waiting for it, as a rig reads it before its next session). Returns
    every event published."""
    sessions = plans(mouse)
    sent: list[Event] = [enrolment(mouse)]
    publisher.events(sent)
    for count, index in enumerate(order, start=1):
        assignments = outputs.wait_for(
            lambda _, n=count: (
                len(of_mouse(outputs, mouse, AssignmentIssued)) >= n
                and of_mouse(outputs, mouse, AssignmentIssued)
            ),
            what=f"{mouse}'s assignment {count}",
            on_timeout=processors.log_tail,
        )
        events = session_events(mouse, sessions[index], assignments[-1].stage)
        publisher.events(events)
        sent.extend(events)
    outputs.wait_for(
        lambda _: len(of_mouse(outputs, mouse, AssignmentIssued)) > len(order),
        what=f"{mouse}'s last assignment",
        on_timeout=processors.log_tail,
    )
    return sent


def for_mouse(tables: dict[str, list[dict[str, Any]]], mouse: str) -> dict[str, list[Any]]:
    """The mouse's rows, with its session ids stripped of the mouse prefix."""
    prefix = f"{mouse}-"

    def strip(row: dict[str, Any]) -> dict[str, Any]:
        row = dict(row)
        for column in ("session_id", "last_session_id"):
            if isinstance(row.get(column), str):
                row[column] = row[column].removeprefix(prefix)
        return row

    return {
        name: [strip(r) for r in rows if r.get("mouse_id") == mouse]
        for name, rows in tables.items()
    }


def test_late_sessions_through_kafka_and_postgres_give_the_in_order_history(
    processors: ProcessorRunner,
    publisher: Publisher,
    outputs: TopicReader,
    kafka_bootstrap: str,
    kafka_topics: TopicNames,
    postgres_url: str,
) -> None:
    processors.start(new_processor_id())

    deliver(publisher, outputs, processors, "M-ref", [0, 1, 2, 3, 4])
    late_sent = deliver(publisher, outputs, processors, "M-late", LATE_ORDER)

    # The processor decided exactly what the pure core decides for the same inputs.
    world = World("M-late")
    world.send(late_sent)
    assert world.refused == []
    # (Per topic: the reader sees the decisions and assignments topics interleaved anyhow.)
    for kind in (StageTransitioned, AssignmentIssued):
        published = of_mouse(outputs, "M-late", kind)
        assert published == [e for e in world.outputs if isinstance(e, kind)]
    superseding = [e for e in of_mouse(outputs, "M-late", StageTransitioned) if e.supersedes]
    # d1 supersedes the decisions on d2, d3 and d5; then d4 supersedes d5's again.
    assert [e.session_id for e in superseding] == [f"M-late-d{n}" for n in (2, 3, 5, 5)]

    # Redelivered, the late session's end changes nothing; the next session shows it was read.
    publisher.events([late_sent[-1]])
    extra = Plan("M-late-d6", 5, 0, mixed(200, 0.95, seed=6))
    stage = of_mouse(outputs, "M-late", AssignmentIssued)[-1].stage
    publisher.events(session_events("M-late", extra, stage))
    decisions_before = len(of_mouse(outputs, "M-late", StageTransitioned))
    outputs.wait_for(
        lambda _: any(
            e.session_id == "M-late-d6" for e in of_mouse(outputs, "M-late", StageTransitioned)
        ),
        what="the decision on M-late-d6",
        on_timeout=processors.log_tail,
    )
    new = of_mouse(outputs, "M-late", StageTransitioned)[decisions_before:]
    assert [e.session_id for e in new] == ["M-late-d6"]

    ref_extra = Plan("M-ref-d6", 5, 0, mixed(200, 0.95, seed=6))
    ref_stage = of_mouse(outputs, "M-ref", AssignmentIssued)[-1].stage
    publisher.events(session_events("M-ref", ref_extra, ref_stage))
    outputs.wait_for(
        lambda _: any(
            e.session_id == "M-ref-d6" for e in of_mouse(outputs, "M-ref", StageTransitioned)
        ),
        what="the decision on M-ref-d6",
        on_timeout=processors.log_tail,
    )
    ref_decisions = of_mouse(outputs, "M-ref", StageTransitioned)
    late_decisions = of_mouse(outputs, "M-late", StageTransitioned)

    def by_session(history: dict[str, dict[str, Any]], mouse: str) -> dict[str, Any]:
        return {
            sid.removeprefix(f"{mouse}-"): {
                k: v for k, v in row.items() if k not in ("mouse_id", "session_id")
            }
            for sid, row in history.items()
        }

    assert by_session(effective(late_decisions), "M-late") == by_session(
        effective(ref_decisions), "M-ref"
    )

    # The projector on PostgreSQL: the effective history and the status are the in-order ones.
    store = sql_store(postgres_url)
    try:
        store.reset()
        run_projector(
            kafka_bootstrap,
            kafka_topics,
            store,
            default_codec(),
            consumer="late-test",
            idle_exit_s=3,
        )
        tables = store.snapshot()
    finally:
        store.close()
    ref_tables, late_tables = for_mouse(tables, "M-ref"), for_mouse(tables, "M-late")
    assert len(late_tables["decision_log"]) == 6 + len(superseding)
    assert effective_rows(late_tables) == effective_rows(ref_tables)
    assert status_view(late_tables) == status_view(ref_tables)
    assert [r["stage"] for r in late_tables["stage_reached"]] == [
        "graduated",
        "s1_habituation",
        "s2_training",
        "s3_full_task",
    ]
