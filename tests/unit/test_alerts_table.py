"""The projector's ``alerts`` table (issue 15, items 3-4): one row per alert, raised, updated,
resolved, acknowledged and reopened by a new episode; an older event applied late changes
nothing, and alerts of different partitions interleave in any order to the same rows."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from shaping.schemas.alerts import alert_id
from shaping.services.projector.alert_rows import alert_rows
from shaping.services.projector.store import ProjectedMessage, SqlProjectionStore
from shaping.services.projector.tables import PROJECTION_TABLES, alerts
from tests.support.alert_events import TOPIC, alert_event
from tests.support.wiring import sql_store

M1 = alert_id("weight", "mouse", "M1")
RIG = alert_id("rig_silent", "rig", "rig-1")


@pytest.fixture
def store() -> Any:
    found = sql_store("sqlite://")
    yield found
    found.close()


def rows(store: SqlProjectionStore) -> dict[str, dict[str, Any]]:
    return {row["alert_id"]: row for row in store.snapshot()["alerts"]}


def apply(store: SqlProjectionStore, *events: Any, partition: int = 0) -> None:
    start = store.committed_offsets("p").get((TOPIC, partition), 0)
    store.apply_batch(
        "p",
        [
            ProjectedMessage(TOPIC, partition, start + n, event, "alerts")
            for n, event in enumerate(events)
        ],
    )


def first_episode() -> list[Any]:
    return [
        alert_event("AlertRaised", "M1", 0, "attention", "M1 near its minimum"),
        alert_event(
            "AlertUpdated", "M1", 60, "critical", "M1 at 76 %", revision=1, raised_minute=0
        ),
        alert_event(
            "AlertAcknowledged",
            "M1",
            70,
            "critical",
            "M1 at 76 %",
            revision=1,
            raised_minute=0,
            note="on it",
        ),
        alert_event(
            "AlertResolved", "M1", 1440, "critical", "weighed above", revision=2, raised_minute=0
        ),
    ]


def test_the_table_is_a_projection_table_with_its_columns() -> None:
    assert alerts in PROJECTION_TABLES
    assert [c.name for c in alerts.columns] == [
        "alert_id",
        "rule",
        "severity",
        "scope",
        "scope_key",
        "mouse_id",
        "lab",
        "message",
        "evidence_json",
        "raised_at",
        "updated_at",
        "resolved_at",
        "resolution",
        "acknowledged_by",
        "acknowledged_at",
        "episode",
        "revision",
    ]


def test_raise_update_ack_resolve_and_reopen(store: SqlProjectionStore) -> None:
    raised, updated, acked, resolved = first_episode()
    apply(store, raised)
    row = rows(store)[M1]
    assert (row["rule"], row["severity"], row["scope"], row["scope_key"]) == (
        "weight",
        "attention",
        "mouse",
        "M1",
    )
    assert row["mouse_id"] == "M1" and row["lab"] == "lab-a"
    assert json.loads(row["evidence_json"]) == {"percent": "76.0"}
    assert row["resolved_at"] is None and row["acknowledged_by"] is None
    assert row["raised_at"] == row["updated_at"] == "2026-02-02T08:00:00+00:00"
    assert (row["episode"], row["revision"]) == (1, 0)

    apply(store, updated)
    row = rows(store)[M1]
    assert (row["severity"], row["message"], row["revision"]) == ("critical", "M1 at 76 %", 1)
    assert row["raised_at"] == "2026-02-02T08:00:00+00:00"
    assert row["updated_at"] == "2026-02-02T09:00:00+00:00"

    apply(store, acked)
    row = rows(store)[M1]
    assert row["acknowledged_by"] == "ada"
    assert row["acknowledged_at"] == "2026-02-02T09:10:00+00:00"
    assert row["resolved_at"] is None and row["updated_at"] == "2026-02-02T09:00:00+00:00"

    apply(store, resolved)
    row = rows(store)[M1]
    assert row["resolved_at"] == "2026-02-03T08:00:00+00:00" and row["revision"] == 2
    assert row["resolution"] == "weighed above"
    # the alert's own message and severity stay; the acknowledgement of the episode too
    assert (row["message"], row["severity"], row["acknowledged_by"]) == (
        "M1 at 76 %",
        "critical",
        "ada",
    )
    [listed] = alert_rows(store.engine, include_resolved=True) or []
    assert not listed.open and alert_rows(store.engine) == []

    # a new episode reopens the row and clears the old episode's acknowledgement
    apply(store, alert_event("AlertRaised", "M1", 2880, "warning", "M1 at 79 %", episode=2))
    row = rows(store)[M1]
    assert (row["episode"], row["revision"], row["severity"]) == (2, 0, "warning")
    assert row["resolved_at"] is None and row["resolution"] is None
    assert row["acknowledged_by"] is None and row["acknowledged_at"] is None
    assert row["raised_at"] == "2026-02-04T08:00:00+00:00"
    [listed] = alert_rows(store.engine) or []
    assert listed.open and listed.subject == "M1" and listed.evidence == {"percent": "76.0"}


def test_a_person_resolving_is_named_and_a_late_ack_of_an_old_episode_changes_nothing(
    store: SqlProjectionStore,
) -> None:
    raised, _, acked, _ = first_episode()
    by_person = alert_event(
        "AlertResolved", "M1", 30, "attention", "closed by hand", revision=1, resolved_by="bob"
    )
    apply(store, raised, by_person)
    assert rows(store)[M1]["resolution"] == "bob: closed by hand"
    apply(store, alert_event("AlertRaised", "M1", 100, "warning", "again", episode=2))
    apply(store, acked)  # acknowledges episode 1, which is over
    row = rows(store)[M1]
    assert row["acknowledged_by"] is None and row["episode"] == 2


def test_an_older_event_applied_late_changes_nothing(store: SqlProjectionStore) -> None:
    """A stale copy (say republished with a new id by hand) never rolls the row back."""
    raised, updated, _, resolved = first_episode()
    apply(store, raised, updated, resolved)
    before = rows(store)
    stale = [
        e.model_copy(update={"event_id": f"copy-{n}"}) for n, e in enumerate((raised, updated))
    ]
    apply(store, *stale)
    assert rows(store) == before
    # the same event twice (a redelivery) is applied once
    apply(store, resolved)
    assert rows(store) == before


def test_rig_and_service_alerts_have_no_mouse(store: SqlProjectionStore) -> None:
    apply(
        store,
        alert_event(
            "AlertRaised", "rig-1", 0, "warning", "rig-1 silent", rule="rig_silent", scope="rig"
        ),
    )
    row = rows(store)[RIG]
    assert row["mouse_id"] is None and (row["scope"], row["scope_key"]) == ("rig", "rig-1")
    [listed] = alert_rows(store.engine) or []
    assert listed.subject == "rig:rig-1"


def test_alerts_of_different_partitions_interleave_in_any_order_to_the_same_rows() -> None:
    """Each alert's events share its partition (keyed by alert id), so they keep their order;
    any interleaving of two alerts' partitions gives the same table."""
    mouse = [*first_episode(), alert_event("AlertRaised", "M1", 2880, "warning", "M1", episode=2)]
    rig = [
        alert_event("AlertRaised", "rig-1", 5, "warning", "silent", rule="rig_silent", scope="rig"),
        alert_event(
            "AlertResolved",
            "rig-1",
            50,
            "warning",
            "heard",
            rule="rig_silent",
            scope="rig",
            revision=1,
            raised_minute=5,
        ),
    ]
    tables = set()
    for slots in itertools.combinations(range(len(mouse) + len(rig)), len(rig)):
        store = sql_store("sqlite://")
        try:
            m, r = iter(mouse), iter(rig)
            for n in range(len(mouse) + len(rig)):
                if n in slots:
                    apply(store, next(r), partition=1)
                else:
                    apply(store, next(m), partition=0)
            tables.add(json.dumps(store.snapshot()["alerts"], sort_keys=True))
        finally:
            store.close()
    assert len(tables) == 1
    final = json.loads(tables.pop())
    assert [(r["scope_key"], r["episode"], r["resolved_at"] is None) for r in final] in (
        [("M1", 2, True), ("rig-1", 1, False)],
        [("rig-1", 1, False), ("M1", 2, True)],
    )


def test_tables_without_the_alerts_table_read_as_none(tmp_path: Any) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{tmp_path / 'old.sqlite'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE mouse_status (mouse_id TEXT PRIMARY KEY)"))
    assert alert_rows(engine) is None
    engine.dispose()
